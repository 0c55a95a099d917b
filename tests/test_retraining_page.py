"""The Retraining page through AppTest: the real entry point on a small workspace (real knowledge base, tokenizer,
snapshot preview and sqlite MLflow store), jobs recorded in the database with real MLflow runs, and one job
launched from the form onto a real local Ray head with the tiny Llama."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from streamlit.testing.v1 import AppTest

from engine.access import roles
from engine.core.database import transaction
from engine.core.settings import load_settings
from engine.knowledge.workspace import ingest_paths
from engine.lifecycle.training_jobs import TrainingJob, list_jobs
from tests.rendered_markdown import parse
from training import job_following
from training.config import ConfigError, load_cpt_config
from training.dataset_snapshot import snapshot_workspace
from training.job_following import JobProgress, get_job, refresh_jobs
from training.job_launch import EXPERIMENT
from ui.formatting import format_eta
from ui.retraining_form import config_from_form, config_problems, form_values, widget_key
from ui.retraining_inputs import llm_versions, start_options
from ui.retraining_jobs import POLL_SECONDS, curve_frame, jobs_frame, open_database, polling_interval, table_progress

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
PAGE = "pages/retraining.py"
DOCUMENTS = {
    "fraud.md": "---\ntitle: Fraud acceptance criteria\nsource_id: guideline:fraud\nkind: guideline\n---\n"
                "# Fraud acceptance criteria\n\n" + "A fraud model may be deployed when its recall on the holdout set is "
                "at least 0.90 and its precision at least 0.75; latency must stay below 50 milliseconds. " * 6,
    "churn.md": "# Churn decision\n\n" + "The team chose the gradient boosted churn model because the retention "
                "managers could follow its explanations and its AUC was within one point of the network. " * 6,
    "vision.md": "# Vision notes\n\n" + "Image classifiers for the mobile app must fit in twenty megabytes and answer "
                 "within eighty milliseconds on a mid-range phone, so distilled models are preferred. " * 6,
}


@pytest.fixture
def workspace(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


@pytest.fixture
def documents(workspace, tmp_path) -> Path:
    """Three small markdown documents (two source domains) ingested as the CLI would; returns their folder."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCUMENTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    assert {o.status for o in ingest_paths(load_settings(), [folder])} == {"added"}
    return folder


def open_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest, kind: str) -> list[str]:
    """What a reader sees of each element's markdown."""
    return [parse(element.value).visible for element in at.get(kind)]


def job_rows() -> list:
    connection = open_database(load_settings())
    try:
        return connection.execute("SELECT * FROM training_jobs").fetchall()
    finally:
        connection.close()


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(frame.value for frame in at.dataframe if column in frame.value.columns)


def charts(at: AppTest) -> list:
    return [node for node in at.get("vega_lite_chart")]


# --- the page ---------------------------------------------------------------------------------------------------


def test_admins_reach_the_retraining_page_and_others_do_not(workspace, monkeypatch):
    at = open_page()  # raises unless the navigation registered the page
    assert at.title[0].value == "Retraining"
    assert [s.value for s in at.subheader] == ["New CPT job", "Snapshot", "Jobs"]
    assert "a snapshot needs at least 2" in at.warning[0].value  # an empty knowledge base: said, not crashed
    assert "No training job yet: launch one above." in texts(at, "info")
    assert at.number_input(key="cpt_lora_r").value == 16  # defaults from configs/cpt.yaml
    assert at.text_input(key="cpt_learning_rate").value == "2e-05"
    button(at, "Launch").click().run()
    assert texts(at, "error") == [
        "Not launched: snapshot: the knowledge base has 0 document(s); a snapshot needs at least 2, so that one can be held out "
        "for validation: ingest documents first"]
    assert job_rows() == []

    monkeypatch.setattr(roles, "current_user_is_admin", lambda: False)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(PAGE)


def test_malformed_values_are_named_and_nothing_is_launched(documents, workspace):
    at = open_page()
    at.number_input(key="cpt_batch_size").set_value(0)
    at.number_input(key="cpt_save_steps").set_value(7)
    button(at, "Launch").click().run()
    assert not at.exception
    [error] = at.error
    assert parse(error.value).visible.startswith("Not launched; fix these settings:")
    assert "\nbatch_size: must be a whole number >= 1 (got 0)" in parse(error.value).visible
    assert "\nsave_steps: must be a multiple of eval_steps (10)" in parse(error.value).visible
    assert "The preview follows the form once its settings are valid." in texts(at, "info")
    assert job_rows() == []
    assert not (workspace / "snapshots").exists()

    at.number_input(key="cpt_batch_size").set_value(2)
    at.number_input(key="cpt_save_steps").set_value(40)
    at.text_input(key="cpt_learning_rate").input("fast")
    button(at, "Launch").click().run()
    assert texts(at, "error") == ["Not launched; fix these settings: learning_rate: must be a number (got 'fast')"]
    at.text_input(key="cpt_learning_rate").input("2e-4")
    at.number_input(key="cpt_replay_ratio").set_value(1.5)
    button(at, "Check and preview").click().run()
    assert texts(at, "error") == ["Fix these settings: replay_ratio: must be at least 0 and below 1 (got 1.5)"]
    assert job_rows() == []


def test_the_snapshot_preview_counts_documents_and_tokens_and_what_is_new(documents, tmp_path):
    settings = load_settings()
    expected = snapshot_workspace(settings, write=False).manifest["splits"]
    at = open_page()
    assert not at.warning and not at.error
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Documents"] == "3"
    assert metrics["Tokens"] == f"{expected['train']['tokens'] + expected['validation']['tokens']:,}"
    assert metrics["Replay share"] == "20%"
    table = frame_with(at, "train tokens").set_index("source")
    assert {"guideline", "doc", "replay (general text)", "total"} == set(table.index)
    assert table.loc["total", "train tokens"] == expected["train"]["tokens"]
    assert table.loc["replay (general text)", "train tokens"] == expected["train"]["replay_tokens"]
    assert "No snapshot has been made yet: everything in the knowledge base is new." in texts(at, "caption")

    at.number_input(key="cpt_replay_ratio").set_value(0.0)
    button(at, "Check and preview").click().run()
    assert {m.label: m.value for m in at.metric}["Replay share"] == "0%"
    assert frame_with(at, "train tokens").set_index("source").loc["replay (general text)", "train tokens"] == 0

    written = snapshot_workspace(settings)
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "latency.md").write_text("# Latency budgets\n\nOnline scoring must answer within 30 ms at p99.", encoding="utf-8")
    ingest_paths(settings, [extra])
    at = open_page()
    assert f"New since snapshot {written.id}: 1 added, 0 changed, 0 removed document(s)" in texts(at, "markdown")
    assert frame_with(at, "change").to_dict("records") == [{"change": "added", "document": "file:latency.md"}]
    assert {m.label: m.value for m in at.metric}["Documents"] == "4"


def test_a_yaml_configuration_fills_the_form_and_a_bad_one_is_named(workspace):
    at = open_page()
    at.text_area(key="cpt_yaml").input("lora:\n  r: 8\nmax_steps: 5\nwarmup_ratio: 0.1\nquantization: 4bit\n")
    button(at, "Apply to the form").click().run()
    assert not at.exception and not at.error
    assert texts(at, "success")[0] == "The YAML configuration is in the form."
    assert (at.number_input(key="cpt_lora_r").value, at.number_input(key="cpt_max_steps").value) == (8, 5)
    assert at.selectbox(key="cpt_quantization").value == "4bit"
    assert at.session_state["cpt_base"]["warmup_ratio"] == 0.1  # a key the form does not show is kept

    at.text_area(key="cpt_yaml").input("learning_rat: 0.1\nlora: {r: zero}\n")
    button(at, "Apply to the form").click().run()
    [error] = at.error
    shown = parse(error.value).visible
    assert "learning_rat: unknown key" in shown and "lora.r: must be a whole number (got 'zero')" in shown
    assert at.number_input(key="cpt_lora_r").value == 8  # unchanged


# --- jobs recorded in the database ------------------------------------------------------------------------------


def record_job(settings, state: str, created_at: str, *, losses: int, total: int, llm_version: str | None = None,
               ray_address: str = "http://head.example.com:8265") -> TrainingJob:
    """A job row with a real MLflow run holding what the training callback logs."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    job_id = f"cpt-test-{state}"
    run_id = client.create_run(experiment_id, run_name=job_id).info.run_id
    start = int(time.time() * 1000) - 60_000
    metrics = [Metric("total_steps", total, start, 0)]
    for step in range(1, losses + 1):
        at_ms = start + step * 2_000
        metrics += [Metric("loss", 3.0 - 0.1 * step, at_ms, step), Metric("learning_rate", 1e-4 * step / losses, at_ms, step)]
        if step % 2 == 0:
            metrics += [Metric("eval_domain_perplexity", 20.0 - step, at_ms, step),
                        Metric("eval_replay_perplexity", 30.0 - step / 2, at_ms, step)]
    client.log_batch(run_id, metrics=metrics)
    config = load_cpt_config(None, max_steps=total)
    connection = open_database(settings)
    try:
        with transaction(connection):
            connection.execute(
                "INSERT INTO training_jobs (id, kind, state, config, config_hash, snapshot_id, start_from, mlflow_run_id,"
                " ray_address, log_location, llm_version, message, created_at, updated_at, finished_at)"
                " VALUES (?, 'cpt', ?, ?, ?, '0123456789abcdef', 'base', ?, ?, 'ray job logs', ?, ?, ?, ?, ?)",
                (job_id, state, json.dumps(config.to_dict()), config.config_hash, run_id, ray_address, llm_version,
                 "finished" if state == "succeeded" else None, created_at, created_at, created_at if state == "succeeded" else None),
            )
        return get_job(connection, job_id)
    finally:
        connection.close()


@pytest.fixture(scope="module")
def recorded_workspace(tmp_path_factory):
    """A workspace with a finished job (version 3) and a running one, made once: the tests using it change nothing."""
    workspace = tmp_path_factory.mktemp("recorded") / "workspace"
    settings = load_settings(workspace=workspace)
    done = record_job(settings, "succeeded", "2025-01-30T09:00:00+00:00", losses=10, total=10, llm_version="3")
    running = record_job(settings, "running", "2025-01-31T09:00:00+00:00", losses=4, total=10)
    return workspace, done, running


@pytest.fixture
def recorded_jobs(recorded_workspace, monkeypatch):
    """The recorded jobs, the running one on a remote cluster that cannot be reached now."""
    workspace, done, running = recorded_workspace
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    monkeypatch.setenv("DEPLOYWISE_RAY_ADDRESS", "http://127.0.0.1:9")  # nothing listens on the discard port
    return done, running


def test_recorded_jobs_show_progress_curves_and_the_version(recorded_jobs):
    done, running = recorded_jobs
    at = open_page()
    assert not at.exception
    # Ray cannot be reached: one line says so, and the page goes on from what the database and MLflow know.
    assert any("Job states may be out of date: cannot reach the Ray cluster at http://127.0.0.1:9" in w for w in texts(at, "warning"))
    table = frame_with(at, "job").set_index("job")
    assert table.loc[running.id, "state"] == "running" and table.loc[running.id, "step"] == "4/10"
    assert table.loc[running.id, "ETA"] == "12 s"  # 6 steps left at 2 s a step
    assert table.loc[done.id, "step"] == "10/10" and table.loc[done.id, "LLM version"] == "deploywise-llm/3"

    assert at.selectbox(key="training_job").value == running.id  # the newest job is shown first
    progress = at.get("progress")[0]
    assert progress.value == 40 and "step 4/10 · ETA 12 s" in parse(progress.proto.text).visible
    assert len(charts(at)) == 3  # loss, learning rate, evaluation perplexity (domain and replay)
    assert "Cancel job" in [b.label for b in at.button]
    assert any(text.startswith("No log: cannot read the logs") for text in texts(at, "caption"))

    at.selectbox(key="training_job").select(done.id).run()
    assert not at.exception
    assert any("LLM version deploywise-llm/3 (candidate)" in text for text in texts(at, "success"))
    assert "Cancel job" not in [b.label for b in at.button]
    assert at.get("progress")[0].value == 100 and len(charts(at)) == 3


def test_a_cancel_the_cluster_refuses_is_one_error_and_changes_nothing(recorded_jobs):
    _, running = recorded_jobs
    at = open_page()
    button(at, "Cancel job").click().run()
    assert not at.exception
    [error] = at.error
    assert parse(error.value).visible.startswith(f"Not cancelled: cannot cancel {running.id}: ") and "\n" not in error.value
    assert [row["state"] for row in job_rows() if row["id"] == running.id] == ["running"]


def test_a_job_whose_local_ray_head_is_gone_shows_as_failed_and_polling_stops(workspace, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_RAY_DASHBOARD_PORT", "9")  # the local head's port, where nothing listens
    settings = load_settings()
    job = record_job(settings, "running", "2025-01-31T09:00:00+00:00", losses=2, total=10, ray_address="http://127.0.0.1:9")
    at = open_page()
    assert not at.exception and not any("out of date" in text for text in texts(at, "warning"))
    assert frame_with(at, "job").set_index("job").loc[job.id, "state"] == "failed"
    assert any(text.startswith("Failed: the Ray cluster at http://127.0.0.1:9 is gone") for text in texts(at, "error"))
    assert "Cancel job" not in [b.label for b in at.button]
    assert polling_interval(list_jobs(open_database(settings))) is None


def test_a_failing_refresh_shows_a_warning_and_the_page_stays_up(recorded_jobs, monkeypatch):
    def broken(settings, connection):
        raise RuntimeError("the Ray dashboard answered garbage\nwith a traceback")

    monkeypatch.setattr(job_following, "refresh_jobs", broken)
    at = open_page()
    assert not at.exception
    assert "Job states may be out of date: RuntimeError: the Ray dashboard answered garbage" in texts(at, "warning")
    assert len(frame_with(at, "job")) == 2


def test_progress_of_finished_jobs_is_read_once_and_unreadable_runs_are_named():
    def job(job_id: str, state: str) -> TrainingJob:
        return TrainingJob(job_id, "cpt", state, {}, "h", "s", "base", f"run-{job_id}", "http://ray", "logs", None,
                           None, None, "2025-01-31T09:15:00+00:00", "2025-01-31T09:15:00+00:00", None)

    reads = []

    def read(settings, found):
        reads.append(found.id)
        if found.id == "gone":
            raise OSError("no such run\nmore")
        return JobProgress(step=2, total_steps=4)

    known: dict = {}
    jobs = [job("a", "succeeded"), job("b", "running"), job("gone", "failed")]
    progress, problems = table_progress(None, jobs, known, read)
    assert progress["gone"] is None and problems == ["gone: cannot read its MLflow run (no such run)"]
    table_progress(None, jobs, known, read)
    assert reads == ["a", "b", "gone", "b", "gone"]  # the finished, readable one only once
    frame = jobs_frame(jobs, progress, "deploywise-llm")
    assert list(frame["step"]) == ["2/4", "2/4", "?"] and list(frame["started"])[0] == "2025-01-31 09:15 UTC"
    assert polling_interval(jobs) == POLL_SECONDS and polling_interval(jobs[::2]) is None


def test_form_values_merge_into_the_yaml_base_and_problems_split_per_key():
    base = load_cpt_config(None, warmup_ratio=0.1).to_dict()
    config = config_from_form(base, {"lora.r": 4, "learning_rate": " 3e-4 ", "start_from": "2"})
    assert (config.lora.r, config.lora.alpha, config.learning_rate, config.warmup_ratio, config.start_from) == (4, 32, 3e-4, 0.1, "2")
    assert form_values(config)["learning_rate"] == "0.0003"
    with pytest.raises(ConfigError) as raised:
        config_from_form(base, {"lora.dropout": 1.0, "batch_size": 0})
    assert config_problems(raised.value) == [
        "lora.dropout: must be at least 0 and below 1 (got 1.0)", "batch_size: must be a whole number >= 1 (got 0)"]
    with pytest.raises(ConfigError) as raised:
        config_from_form(base, {"learning_rate": "a; b"})
    assert config_problems(raised.value) == ["learning_rate: must be a number (got 'a; b')"]
    assert [format_eta(s) for s in (None, 42.4, 200, 7260)] == ["", "42 s", "3 min 20 s", "2 h 01 min"]
    frame = curve_frame({"domain": [(0, 9.0), (3, 7.0)], "replay": [(3, 5.0)], "empty": []})
    assert list(frame.columns) == ["domain", "replay"] and list(frame.index) == [0, 3] and frame.index.name == "step"


# --- one job for real -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_launched_from_the_form_trains_and_shows_its_version(documents, monkeypatch, ray_head, tiny_llama_folder):
    monkeypatch.setenv("DEPLOYWISE_BASE_MODEL", str(tiny_llama_folder))
    monkeypatch.setenv("DEPLOYWISE_LLM_BACKEND", "transformers")  # a tiny HF folder has no GGUF file
    monkeypatch.setenv("DEPLOYWISE_RAY_DASHBOARD_PORT", str(ray_head))
    at = open_page()
    for key, value in {"max_steps": 6, "max_seq_length": 64, "batch_size": 2, "eval_steps": 3, "save_steps": 3}.items():
        at.number_input(key=widget_key(key)).set_value(value)
    at.text_input(key="cpt_learning_rate").input("1e-3")
    button(at, "Launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [job] = list_jobs(open_database(load_settings()))
    assert texts(at, "success")[0] == f"Job {job.id} launched on snapshot {job.snapshot_id}."
    assert job.config["max_steps"] == 6 and job.config["learning_rate"] == 1e-3
    assert job.id in frame_with(at, "job")["job"].tolist()

    settings = load_settings()
    connection = open_database(settings)
    try:
        deadline = time.monotonic() + 120
        while not (job := get_job(connection, job.id)).finished:
            assert refresh_jobs(settings, connection) == []
            assert time.monotonic() < deadline, f"{job.id} still {job.state}"
            time.sleep(1)
    finally:
        connection.close()
    assert job.state == "succeeded", job.message
    at = open_page()
    assert not at.exception
    table = frame_with(at, "job").set_index("job")
    assert table.loc[job.id, "state"] == "succeeded" and table.loc[job.id, "step"] == "6/6"
    assert table.loc[job.id, "LLM version"] == f"deploywise-llm/{job.llm_version}"
    assert any(f"LLM version deploywise-llm/{job.llm_version}" in text for text in texts(at, "success"))
    assert len(charts(at)) == 3
    assert "registered deploywise-llm version" in at.get("code")[0].value  # the log tail
    starts = at.selectbox(key="cpt_start_from")
    assert job.llm_version in starts.options or f"deploywise-llm/{job.llm_version}" in " ".join(starts.options)


def test_archived_and_failed_versions_are_not_offered_as_a_start(settings, tmp_path):
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    client.create_registered_model(settings.llm_registry_name)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for training, status in (("cpt", "candidate"), ("cpt", "archived"), ("sft", "failed"), ("sft", "deployed")):
        client.create_model_version(settings.llm_registry_name, str(adapter), tags={"training": training, "status": status})

    versions = llm_versions(settings)
    assert [v.number for v in versions] == ["4", "1"] and [v.starts_sft for v in versions] == [False, True]
    options = start_options(versions, "2")  # a config naming the archived one still shows it, as such
    assert list(options) == ["base", "4", "1", "2"] and "archived" in options["2"]
