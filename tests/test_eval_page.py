"""The Evaluation page through AppTest and the real entry point, on a copy of the demo workspace with the tiny random
Llama as base model and one LoRA version of it: an evaluation started from the form runs in its own process, its
progress survives a reload, and its results show side by side with charts, every item's answers and the history."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_eval_harness import opening, register_adapter

from engine.core.settings import load_settings
from eval import worker
from tests.rendered_markdown import parse

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
PAGE = "pages/evaluation.py"


@pytest.fixture(scope="module")
def workspace(demo_copy, tiny_llama_folder):
    path = demo_copy()
    number = register_adapter(load_settings(workspace=path, base_model=str(tiny_llama_folder)), tiny_llama_folder)
    return path, number


@pytest.fixture
def settings(workspace, tiny_llama_folder, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace[0]))
    monkeypatch.setenv("DEPLOYWISE_BASE_MODEL", str(tiny_llama_folder))
    monkeypatch.setenv("DEPLOYWISE_LLM_BACKEND", "transformers")  # no GGUF of the tiny model; the worker inherits it
    return load_settings()


def open_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    """What a reader sees of each element's markdown."""
    return [parse(element.value).visible for element in at.get(kind)]


def frame_with(at: AppTest, column: str):
    return next(frame.value for frame in at.dataframe if column in frame.value.columns)


@pytest.mark.slow
def test_an_evaluation_from_the_form_runs_apart_and_its_results_show_side_by_side(settings, workspace):
    number = workspace[1]
    at = open_page()
    assert at.title[0].value == "Evaluation"
    assert [s.value for s in at.subheader] == ["New evaluation", "Running and recent", "Results"]
    assert "No evaluation has finished yet." in texts(at, "info") and "No evaluation started from here yet." in texts(at, "info")
    versions = at.multiselect(key="eval_versions")
    assert versions.value == ["base", number] and versions.options[:2] == ["base model (model)", f"deploywise-llm/{number}"]
    assert any(text.startswith("80 of 80 golden items per version") for text in texts(at, "caption"))
    at.number_input(key="eval_per_category").set_value(1)
    at.number_input(key="eval_max_new_tokens").set_value(4)
    next(b for b in at.button if b.label == "Run evaluation").click().run()
    assert not at.exception and not at.error, texts(at, "error")
    [job] = worker.list_evaluation_jobs(settings)
    assert texts(at, "success") == [f"Evaluation {job.id} started: base, {number}."]
    assert job.request["per_category"] == 1 and job.request["max_new_tokens"] == 4 and job.created_by == "test-admin"

    at = open_page()  # a reload while it runs: the evaluation is still there, with its progress
    table = frame_with(at, "evaluation").set_index("evaluation")
    assert table.loc[job.id, "versions"] == f"base, {number}"
    if table.loc[job.id, "state"] in ("queued", "running"):
        assert at.get("progress") and "Cancel" in [b.label for b in at.button]

    deadline = time.monotonic() + 240
    while not (job := worker.get_evaluation_job(settings, job.id)).finished:
        assert time.monotonic() < deadline, job.progress
        time.sleep(1)
    assert job.state == "succeeded", job.error

    at = open_page()
    assert frame_with(at, "evaluation").set_index("evaluation").loc[job.id, "state"] == "succeeded"
    assert at.selectbox(key="eval_chosen").value == job.id
    assert [text.split(" · ")[0] for text in texts(at, "error")] == ["base: NO-GO", f"v{number}: NO-GO"]
    assert any("a GO needs them all" in text for text in texts(at, "markdown"))
    comparison = frame_with(at, "metric")
    assert list(comparison.columns) == ["metric", "base (NO-GO)", f"v{number} (NO-GO)"]
    rates = comparison.set_index("metric").loc[["explanations kept whole (every sentence verified)",
                                                "explanations shown at least in part"]]
    assert rates.to_numpy().tolist() == [["0%", "0%"]] * 2  # the tiny random model's explanations never pass
    assert len(at.get("vega_lite_chart")) + len(at.get("arrow_vega_lite_chart")) == 3
    items = frame_with(at, "question")
    assert len(items) == 14 and {"base", f"v{number}"} <= set(items.columns)
    at.selectbox(key="eval_item").select("ts-rec-1").run()
    assert not at.exception
    answers = [text.value for text in at.get("text")]
    assert len(answers) >= 2  # each version's own explanation draft, from the prefilled opening on
    assert sum(text.startswith(opening("tumor-screening-linear")) for text in answers) == 2
    assert sum("explanation dropped" in text for text in texts(at, "markdown")) == 2
    assert any("expected one of" in text and "registry" in text for text in texts(at, "caption"))
    history = frame_with(at, "golden items")
    assert history.loc[0, "evaluation"] == job.id and history.loc[0, "golden items"] == "14/80"


def test_a_request_that_cannot_run_is_refused_in_the_form(settings):
    at = open_page()
    at.text_input(key="eval_golden").input("/nowhere/golden.jsonl")
    next(b for b in at.button if b.label == "Run evaluation").click().run()
    assert not at.exception
    assert any(text.startswith("The golden set cannot be used: cannot read the golden file /nowhere/golden.jsonl")
               for text in texts(at, "caption"))
    # Past evaluations of the shared workspace may show their NO-GO verdicts as errors too: only the refusal is new.
    refusals = [text for text in texts(at, "error") if text.startswith("Not started")]
    assert refusals == ["Not started: cannot read the golden file /nowhere/golden.jsonl: No such file or directory"]
    assert not any(worker.jobs_dir(settings).glob("*.json")) or all(
        job.request["golden"] != "/nowhere/golden.jsonl" for job in worker.list_evaluation_jobs(settings))


def test_others_neither_see_the_page_nor_open_it(settings, real_access):
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(PAGE)
