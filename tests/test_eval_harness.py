"""The evaluation harness on a copy of the demo workspace with the tiny random Llama as the base model and a LoRA
version of it in the registry: perplexities, the golden set through the real chat pipeline, the gate, the MLflow
runs and the model version's gate tags; bad requests refused before anything is written; evaluations out of
process."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest
import torch
from mlflow import MlflowClient
from peft import LoraConfig, get_peft_model

from engine.access import roles
from engine.answering.prompting import explanation_opening
from engine.core import database
from engine.core.settings import load_settings
from engine.core.workers import StatusFile
from engine.llm.loading import load_base_model
from eval import worker
from eval.harness import evaluate_versions
from eval.plan import EvaluationError, plan_evaluation
from eval.results import EXPERIMENT, evaluation_history, load_evaluation, load_items
from training.dataset_snapshot import snapshot_workspace
from ui import evaluation_views

ITEMS = ["ts-rec-1", "dr-rej-2", "dp-crit-1", "ref-offtopic-1"]  # in the file's order


def opening(model: str) -> str:
    """The start of the LLM's reply the chat prefills when the rules recommend `model` (a demo registry model)."""
    return explanation_opening(SimpleNamespace(recommended=SimpleNamespace(name=model, source_id=f"registry:{model}")))


def register_adapter(settings, base_model, *, seed: int = 1, tags: dict | None = None) -> str:
    """A LoRA adapter of the base model (non-zero, so the version differs from it) registered as the next LLM version."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name("deploywise-training") or client.get_experiment(
        client.create_experiment("deploywise-training", artifact_location=(settings.workspace / "mlartifacts").as_uri()))
    model = get_peft_model(load_base_model(str(base_model)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    folder = settings.workspace / f"adapter-{seed}"
    model.save_pretrained(folder)
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, str(folder), "adapter")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(filter_string="name = 'deploywise-llm'"):
        client.create_registered_model("deploywise-llm")
    version = client.create_model_version("deploywise-llm", f"{run.info.artifact_uri}/adapter", run_id=run.info.run_id,
                                          tags={"base_model": str(base_model), **(tags or {})})
    return str(version.version)


@pytest.fixture(scope="module")
def workspace(demo_copy, tiny_llama_folder):
    """The demo copy with version 1 (trained, says its tag, on the workspace's snapshot) and one evaluation of base and 1."""
    path = demo_copy()
    settings = load_settings(workspace=path, base_model=str(tiny_llama_folder), llm_backend="transformers")  # no GGUF
    snapshot = snapshot_workspace(settings)
    number = register_adapter(settings, tiny_llama_folder, tags={"snapshot_id": snapshot.id})
    progress = []
    result = evaluate_versions(settings, ["base", number], item_ids=ITEMS, max_new_tokens=8,
                               on_progress=lambda done, total, message: progress.append((done, total, message)))
    return settings, number, snapshot, result, progress


def answers_stored(settings) -> int:
    connection = database.connect(settings.knowledge_db)
    try:
        return connection.execute("SELECT count(*) FROM answers").fetchone()[0]
    finally:
        connection.close()


def evaluation_runs(settings) -> list:
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_perplexity_is_measured_on_the_held_out_text_for_every_version(workspace):
    settings, number, snapshot, result, _ = workspace
    base, version = result.versions
    assert (base.planned.wanted, version.planned.wanted) == ("base", number)
    assert result.plan.snapshot_id == snapshot.id  # the version's training snapshot
    for evaluated in (base, version):
        assert set(evaluated.perplexities) == {"domain", "replay"}
        for found in evaluated.perplexities.values():
            assert 1 < found.value < 1e6 and found.tokens > 0
    assert base.perplexities["domain"].tokens == version.perplexities["domain"].tokens  # the same text
    assert version.perplexities["domain"].value != base.perplexities["domain"].value  # the adapter changed the model
    assert base.metrics["general_perplexity_change_pct"] == 0.0
    expected = (version.metrics["general_perplexity"] / base.metrics["general_perplexity"] - 1) * 100
    assert version.metrics["general_perplexity_change_pct"] == pytest.approx(expected)


def test_every_golden_item_goes_through_the_chat_and_is_scored(workspace):
    settings, _, _, result, progress = workspace
    for evaluated in result.versions:
        items = {item.id: item for item in evaluated.items}
        assert list(items) == ITEMS and all(item.status == "scored" for item in items.values())
        refusal = items["ref-offtopic-1"]
        assert not refusal.llm_asked and refusal.refused and refusal.attempts == [] and refusal.explanation_state == "none"
        for item_id in ("ts-rec-1", "dp-crit-1", "dr-rej-2"):
            item = items[item_id]
            assert item.llm_asked and len(item.attempts) == 1 and item.latency_ms > 0
            # the prefilled opening, then what the tiny random model wrote: gibberish, so no sentence was shown
            prefilled = opening(item.expected_recommendation)
            assert item.answer == prefilled + item.attempts[0] and item.attempts[0]
            assert item.explanation_state == "dropped" and item.sentences_kept == 0 and item.verification_problems
            assert item.shown.startswith("Recommendation:") and "\n\n" + prefilled not in item.shown and item.shown_correct
            assert item.agrees and item.recommended_in_answer == item.expected_recommendation  # given by the opening
        assert items["ts-rec-1"].accurate  # its one fact, the recommended model, is the opening's
        assert not items["dp-crit-1"].accurate and not items["dr-rej-2"].accurate
        assert evaluated.metrics["refusal_accuracy"] == 1.0 and evaluated.metrics["agreement"] == 1.0
        assert evaluated.metrics["explanation_kept_rate"] == evaluated.metrics["explanation_shown_rate"] == 0.0
        assert evaluated.metrics["accuracy"] == pytest.approx(1 / 3) and evaluated.metrics["shown_accuracy"] == 1.0
        assert evaluated.metrics["latency_p95_ms"] >= evaluated.metrics["latency_p50_ms"] > 0
        assert {"accuracy_recommendation", "accuracy_criteria", "accuracy_rejection", "accuracy_off_topic"} <= set(evaluated.metrics)
    assert progress[-1][0] == progress[-1][1] == result.plan.units() == 2 * (1 + len(ITEMS))
    assert answers_stored(settings) == 0  # asked on a private copy of the knowledge base


def test_the_gate_says_no_go_with_its_reasons(workspace):
    _, _, _, result, _ = workspace
    for evaluated in result.versions:
        reasons = evaluated.verdict.reasons
        assert evaluated.verdict.verdict == "NO-GO" and not result.all_go
        assert reasons[0].startswith(f"only 4 of the {len(result.plan.golden.items)} golden items were scored")
        assert "accuracy 33% is below the gate's 95%" in reasons
        # citations are scored on what the tiny random model wrote after the prefilled opening: none; refusals pass
        assert any(reason.startswith("citation presence 0%") for reason in reasons), reasons
        assert not any("refusal accuracy" in reason for reason in reasons)


def test_each_version_is_one_mlflow_run_and_the_registry_version_carries_the_gate(workspace):
    settings, number, snapshot, result, _ = workspace
    runs = {run.data.tags["llm_version"]: run for run in evaluation_runs(settings)}
    assert set(runs) == {"base", number}
    for evaluated in result.versions:
        run = runs[evaluated.planned.wanted]
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.run_id == evaluated.run_id and run.info.status == "FINISHED"
        assert tags["evaluation_id"] == result.plan.evaluation_id and tags["verdict"] == "NO-GO"
        assert json.loads(tags["verdict_reasons"]) == list(evaluated.verdict.reasons)
        assert (tags["snapshot_id"], tags["items_evaluated"], tags["items_total"]) == (snapshot.id, "4", str(len(result.plan.golden.items)))
        for name in ("domain_perplexity", "general_perplexity", "accuracy", "citation_presence", "citation_correctness",
                     "refusal_accuracy", "latency_p50_ms", "latency_p95_ms", "agreement", "accuracy_criteria"):
            assert metrics[name] == pytest.approx(evaluated.metrics[name]), name
        assert run.data.params["gate.accuracy_min"] == "0.95" and run.data.params["max_new_tokens"] == "8"
        stored = load_items(settings, run.info.run_id)
        assert [item["id"] for item in stored] == ITEMS and stored[0]["attempts"] == evaluated.items[0].attempts
    tags = MlflowClient(tracking_uri=settings.tracking_uri).get_model_version("deploywise-llm", number).tags
    assert not set(tags) & {"gate_verdict", "gate_evaluation_id", "gate_reasons"}  # 4 chosen items: not the gate's


def test_an_evaluation_on_the_whole_golden_set_sets_the_versions_gate(workspace, tmp_path):
    settings, number, _, _, _ = workspace
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps(item) + "\n" for item in (
        {"id": "dp-crit-1", "question": "What R2 must a diabetes progression model reach?", "type": "static",
         "category": "criteria", "use_case": "diabetes-progression", "key_facts": ["0.4"],
         "expected_sources": ["criteria:diabetes-progression"]},
        {"id": "ref-1", "question": "Write me a poem about the sea.", "type": "refusal", "category": "off-topic"})))
    result = evaluate_versions(settings, [number], golden, max_new_tokens=4)
    [evaluated] = result.versions
    tags = MlflowClient(tracking_uri=settings.tracking_uri).get_model_version("deploywise-llm", number).tags
    assert tags["gate_verdict"] == evaluated.verdict.verdict == "NO-GO"
    assert tags["gate_evaluation_id"] == result.plan.evaluation_id
    reasons = json.loads(tags["gate_reasons"])
    assert reasons == list(evaluated.verdict.reasons) and all(isinstance(reason, str) for reason in reasons)
    assert "accuracy 0% is below the gate's 95%" in reasons and not any("golden items were scored" in r for r in reasons)


def test_the_history_and_the_side_by_side_views(workspace):
    settings, number, _, result, _ = workspace
    summary = next(s for s in evaluation_history(settings) if s.evaluation_id == result.plan.evaluation_id)
    assert [v.label for v in summary.versions] == ["base", f"v{number}"]
    logged = load_evaluation(settings, summary.evaluation_id)
    table = evaluation_views.comparison_frame(logged).set_index("metric")
    assert list(table.columns) == ["base (NO-GO)", f"v{number} (NO-GO)"]
    assert table.loc["refusal accuracy"].tolist() == ["100%", "100%"] and table.loc["golden items scored"].tolist() == ["4", "4"]
    assert table.loc["general perplexity vs base (forgetting)", "base (NO-GO)"] == "+0.0%"
    changes = evaluation_views.perplexity_change_frame(logged)
    assert list(changes.index) == [f"v{number}"] and list(changes.columns) == ["domain", "general (forgetting)"]
    assert list(evaluation_views.category_frame(logged).index) == ["criteria", "off-topic", "recommendation", "rejection"]
    items = {version.label: load_items(settings, version.run_id) for version in logged}
    matrix = evaluation_views.items_frame(items).set_index("item")
    assert table.loc["explanations kept whole (every sentence verified)"].tolist() == ["0%", "0%"]
    assert table.loc["explanations shown at least in part"].tolist() == ["0%", "0%"]
    assert not any("replaced by the composed one" in label for label in table.index)  # older evaluations' metric
    assert matrix.loc["ref-offtopic-1", "base"] == "✓" and matrix.loc["dp-crit-1", f"v{number}"] == "✗"
    detail = evaluation_views.item_detail(items, "ts-rec-1")
    assert [d["version"] for d in detail] == ["base", f"v{number}"] and detail[0]["facts"] == [
        {"fact": "tumor-screening-linear", "found": "✓"}]  # the prefilled opening names it
    assert [(d["explanation_state"], d["origin"], d["sentences_kept"]) for d in detail] == [("dropped", "explanation dropped", 0)] * 2
    assert detail[0]["answer"].startswith(opening("tumor-screening-linear"))
    assert detail[0]["problems"] and detail[0]["shown"].startswith("Recommendation: tumor-screening-linear")
    refusal = evaluation_views.item_detail(items, "ref-offtopic-1")[0]
    assert (refusal["explanation_state"], refusal["origin"], refusal["llm_asked"]) == ("none", "no explanation", False)
    before = {"id": "x", "type": "static", "origin": "llm-retry", "llm_asked": True}  # an evaluation made before explanations
    assert [(d["explanation_state"], d["origin"]) for d in evaluation_views.item_detail({"v1": [before]}, "x")] == [("none", "llm-retry")]


@pytest.mark.parametrize("request_, problem", [
    ({"versions": ["7"]}, "LLM version 7: the MLflow registry has no LLM version deploywise-llm/7"),
    ({"versions": ["latest"]}, "unknown LLM version 'latest': use base, champion or a version number"),
    ({"versions": []}, "no LLM version to evaluate"),
    ({"versions": ["base", "base"]}, "LLM version base is listed twice"),
    ({"item_ids": ["nope"]}, "no golden item nope"),
    ({"gate": {"accuracy_min": 2}}, "accuracy_min: must be a share between 0 and 1 (got 2)"),
    ({"snapshot_id": "0000000000000000"}, "no held-out text for perplexity: no snapshot 0000000000000000"),
    ({"max_new_tokens": 0}, "max new tokens must be between 1 and 8192"),
])
def test_a_bad_request_is_one_error_and_writes_nothing(workspace, request_, problem):
    settings = workspace[0]
    before = len(evaluation_runs(settings))
    arguments = {"versions": ["base"], **request_}
    with pytest.raises(EvaluationError) as raised:
        evaluate_versions(settings, arguments.pop("versions"), **arguments)
    assert problem in str(raised.value) and "\n" not in str(raised.value)
    assert len(evaluation_runs(settings)) == before


def test_a_malformed_golden_file_or_one_for_another_registry_is_refused(workspace, tmp_path):
    settings = workspace[0]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "question": "q", "type": "static"}\n', encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"broken.jsonl, line 1 \(a\): category must be a non-empty string"):
        plan_evaluation(settings, ["base"], broken)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({"id": "f", "question": "Which fraud model?", "type": "static", "category": "c",
                                   "use_case": "fraud", "key_facts": ["x"], "expected_sources": ["criteria:fraud"]}) + "\n")
    with pytest.raises(EvaluationError, match=r"none of the golden set's use cases \(fraud\) has candidates in the registry"):
        plan_evaluation(settings, ["base"], foreign)


def test_versions_are_asked_on_the_chats_runtime_and_llama_cpp_needs_their_gguf_files(workspace):
    settings, number, _, _, _ = workspace
    llama = settings.model_copy(update={"llm_backend": "llama_cpp"})  # the chat's default runtime
    before = len(evaluation_runs(settings))
    with pytest.raises(EvaluationError, match=rf"^LLM version base: the base model {settings.base_model} has no GGUF file; "
                                              r"export it or use DEPLOYWISE_LLM_BACKEND=transformers$"):
        plan_evaluation(llama, ["base"], item_ids=ITEMS)
    bundled = llama.model_copy(update={"base_model": "bundled"})  # the bundled GGUF serves the base model
    with pytest.raises(EvaluationError, match=rf"^LLM version {number}: deploywise-llm/{number} has no checked GGUF export "
                                              r"\(gguf-q8_0 or gguf-f16\): export it"):
        plan_evaluation(bundled, ["base", number], item_ids=ITEMS)
    assert plan_evaluation(bundled, ["base"], item_ids=ITEMS).versions[0].wanted == "base"
    assert len(evaluation_runs(settings)) == before
    # each version gets the chat's backend for its own configuration; an endpoint cannot serve a chosen version
    from engine.llm.backends import llm_backend, version_settings
    from engine.llm.in_process import InProcessLlm

    one, two = (llm_backend(version_settings(settings, wanted)) for wanted in ("base", number))
    assert isinstance(one, InProcessLlm) and isinstance(two, InProcessLlm) and one is not two
    assert one is llm_backend(version_settings(settings, "base"))  # the chat's cache: loaded once per version
    endpoint = settings.model_copy(update={"llm_backend": "openai", "llm_endpoint": "http://127.0.0.1:9/v1", "llm_model": "m"})
    assert (version_settings(endpoint, number).llm_backend, version_settings(endpoint, number).llm_version) == ("transformers", number)


def test_champion_names_the_version_holding_the_alias(workspace):
    settings, number, _, _, _ = workspace
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    with pytest.raises(EvaluationError, match="LLM version base is listed twice \\(champion is that version\\)"):
        plan_evaluation(settings, ["base", "champion"], item_ids=ITEMS)  # no champion yet: the base model serves
    client.set_registered_model_alias("deploywise-llm", "champion", number)
    try:
        plan = plan_evaluation(settings, ["champion", "base"], item_ids=ITEMS)
        assert [p.wanted for p in plan.versions] == ["base", number]
    finally:
        client.delete_registered_model_alias("deploywise-llm", "champion")


def test_only_administrators_evaluate(workspace, monkeypatch):
    settings = workspace[0]
    monkeypatch.setattr(roles, "current_user_is_admin", lambda: False)
    with pytest.raises(roles.AccessDenied):
        evaluate_versions(settings, ["base"], item_ids=ITEMS)
    with pytest.raises(roles.AccessDenied):
        worker.start_evaluation(settings, ["base"], item_ids=ITEMS)
    assert not worker.jobs_dir(settings).exists()


# --- out of process ---------------------------------------------------------------------------------------------


def wait_for(settings, evaluation_id: str, states, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while (job := worker.get_evaluation_job(settings, evaluation_id)).state not in states:
        assert time.monotonic() < deadline, f"{evaluation_id} still {job.state}: {job.progress}"
        time.sleep(0.5)
    return job


@pytest.mark.slow
def test_an_evaluation_runs_out_of_process_and_can_be_cancelled(workspace, monkeypatch):
    settings = workspace[0]
    started = worker.start_evaluation(settings, ["base"], item_ids=["ts-rec-1", "ref-offtopic-1"], max_new_tokens=4,
                                    created_by="test-admin")
    assert started.state in ("queued", "running") and worker.log_path(settings, started.id).is_file()
    done = wait_for(settings, started.id, worker.FINAL_STATES)
    assert done.state == "succeeded", (done.error, worker.log_path(settings, started.id).read_text()[-2000:])
    assert done.progress["done"] == done.progress["total"] == 3 and done.results[0]["verdict"] == "NO-GO"
    [run] = [run for run in evaluation_runs(settings) if run.data.tags["evaluation_id"] == started.id]
    assert run.data.tags["evaluated_by"] == "test-admin" and run.info.run_id == done.results[0]["run_id"]

    long = worker.start_evaluation(settings, ["base"], max_new_tokens=4)  # the whole golden set: long enough to cancel
    running = wait_for(settings, long.id, ("running",))
    while worker.get_evaluation_job(settings, long.id).progress["done"] < 2:
        time.sleep(0.2)
    worker.cancel_evaluation(settings, running.id)
    cancelled = wait_for(settings, long.id, worker.FINAL_STATES, timeout_s=60)
    assert cancelled.state == "cancelled" and cancelled.error == "cancelled by an administrator"
    assert [job.id for job in worker.list_evaluation_jobs(settings)] == [long.id, started.id]
    with pytest.raises(ValueError, match="has already cancelled"):
        worker.cancel_evaluation(settings, long.id)


def test_a_worker_that_died_silently_is_marked_failed(workspace, tmp_path):
    settings = load_settings(workspace=tmp_path / "workspace")
    folder = worker.jobs_dir(settings)
    folder.mkdir(parents=True)
    job = worker.EvaluationJob("eval-20250101-000000-abcdef", "running", {"versions": ["base"]}, {}, "2025-01-01T00:00:00+00:00",
                             pid=os.getpid())
    path = worker.status_path(settings, job.id)
    StatusFile(path, worker.EvaluationJob).write(job)
    path.with_suffix(".pid").write_text(str(os.getpid()))  # a live process, but not this evaluation's worker
    [found] = worker.list_evaluation_jobs(settings)
    assert found.state == "failed" and "ended without finishing" in found.error and found.finished_at
    assert evaluation_views.jobs_frame([found]).loc[0, "state"] == "failed" and not evaluation_views.unfinished([found])
