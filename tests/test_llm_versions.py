"""LLM version management on a real sqlite MLflow registry: versions are LoRA adapters on the tiny random Llama,
registered as the CPT job registers them; evaluations are simulated with the tags and runs the evaluation writes.
The chat's own `resolve_llm_version` shows what each promotion and rollback serves."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from peft import LoraConfig, get_peft_model

from cli.main import main
from engine.answering.records import AnswerRecord, save_answer, save_feedback
from engine.core import database
from engine.core.database import transaction
from engine.core.settings import load_settings
from engine.lifecycle.version_actions import archive, promote, rollback
from engine.lifecycle.version_catalog import overview
from engine.lifecycle.version_records import EVALUATION_EXPERIMENT, HISTORY_EXPERIMENT, VersionError
from engine.llm.loading import load_base_model
from engine.llm.versions import BASE, resolve_llm_version
from ui.versions_views import history_table, metrics_rows, versions_table

NAME = "deploywise-llm"
GO_METRICS = {"accuracy": 0.97, "citation_presence": 0.95, "refusal_accuracy": 0.92, "latency_p95_ms": 850.0,
              "domain_perplexity": 12.5, "general_perplexity": 20.1}


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory, tiny_llama_folder):
    """An MLflow store with four versions registered as `training.ray_job.register_version` does:
    1 (job-1) and 2 (job-2, trained on top of 1): servable adapters; 3: a run without an adapter/ artifact;
    4 (job-4): an adapter whose training job failed (the test workspace records the job)."""
    root = tmp_path_factory.mktemp("versions-registry")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment("deploywise-training", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model(NAME)
    for number in (1, 2, 3, 4):
        run = client.create_run(experiment, run_name=f"job-{number}")
        if number != 3:
            model = get_peft_model(load_base_model(str(tiny_llama_folder)), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
            torch.manual_seed(number)
            for key, parameter in model.named_parameters():
                if "lora_B" in key:
                    torch.nn.init.normal_(parameter, std=0.2)
            model.save_pretrained(root / f"adapter-{number}")
            client.log_artifacts(run.info.run_id, str(root / f"adapter-{number}"), "adapter")
        client.set_terminated(run.info.run_id)
        tags = {"base_model": str(tiny_llama_folder), "snapshot_id": f"snap{number}", "config_hash": f"{number}" * 16,
                "job_id": f"job-{number}", "training": "cpt", "status": "candidate"}
        if number == 2:
            tags["parent_version"] = "1"
        client.create_model_version(NAME, f"{run.info.artifact_uri}/adapter", run_id=run.info.run_id, tags=tags)
    return root / "mlflow.db"


@pytest.fixture
def settings(tmp_path, monkeypatch, registry_template, tiny_llama_folder):
    """A workspace holding a copy of the registry, the jobs table (job-1 by ana, job-4 failed) and some answers;
    the CLI sees the same workspace through the environment."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    shutil.copy(registry_template, workspace / "mlflow.db")
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    monkeypatch.setenv("DEPLOYWISE_BASE_MODEL", str(tiny_llama_folder))
    monkeypatch.setenv("DEPLOYWISE_LLM_BACKEND", "transformers")  # a tiny HF folder has no GGUF file
    settings = load_settings()
    connection = database.connect(settings.knowledge_db)
    with transaction(connection):
        for job_id, state, by in (("job-1", "succeeded", "ana@example.com"), ("job-4", "failed", None)):
            connection.execute(
                "INSERT INTO training_jobs (id, kind, state, config, config_hash, snapshot_id, start_from, mlflow_run_id,"
                " ray_address, log_location, llm_version, message, created_by, created_at, updated_at)"
                " VALUES (?, 'cpt', ?, '{}', 'h', 's', 'base', 'r', 'http://127.0.0.1:8265', 'l', NULL, NULL, ?, ?, ?)",
                (job_id, state, by, "2025-05-01T10:00:00+00:00", "2025-05-01T10:00:00+00:00"))
    for number, (label, rating) in enumerate([(f"{NAME}/1", 0), (f"{NAME}/1", 1), (f"{NAME}/1", None),
                                              ("base:model", 0), ("openai:localhost/x", None)]):
        answer_id = save_answer(connection, AnswerRecord(
            id=None, asked_at="2025-05-02T10:00:00+00:00", question=f"question {number}", use_case=None,
            answer="Deploy ts-boosting.", answer_origin="llm", llm_version=label, recommended_model=None))
        if rating is not None:
            save_feedback(connection, answer_id, rating)
    connection.close()
    return settings


def client(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri)


def evaluate(settings, number: str, verdict: str, reasons: list[str], metrics: dict | None = None,
             evaluation_id: str | None = None) -> str:
    """What the evaluation writes: a run in its experiment and the gate tags on the model version."""
    mlflow = client(settings)
    evaluation_id = evaluation_id or f"eval-{number}-{verdict}"
    experiment = mlflow.get_experiment_by_name(EVALUATION_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(EVALUATION_EXPERIMENT)
    run = mlflow.create_run(experiment_id, tags={"evaluation_id": evaluation_id,
                                                 "llm_version": f"{NAME}/{number}" if number != BASE else "base",
                                                 "verdict": verdict})
    for key, value in (metrics or GO_METRICS).items():
        mlflow.log_metric(run.info.run_id, key, value)
    mlflow.set_terminated(run.info.run_id)
    if number != BASE:
        for key, value in (("gate_verdict", verdict), ("gate_evaluation_id", evaluation_id), ("gate_reasons", json.dumps(reasons))):
            mlflow.set_model_version_tag(NAME, number, key, value)
    return evaluation_id


def registry_state(settings) -> tuple:
    """Aliases, every version's tags and the history runs: what a refused action must leave unchanged."""
    mlflow = client(settings)
    versions = mlflow.search_model_versions(f"name = '{NAME}'")
    history = mlflow.get_experiment_by_name(HISTORY_EXPERIMENT)
    runs = mlflow.search_runs([history.experiment_id]) if history else []
    return (mlflow.get_registered_model(NAME).aliases, {v.version: v.tags for v in versions}, len(runs))


def served(settings) -> str | None:
    """The version number the chat's backend would load for 'champion' (None: the base model)."""
    return resolve_llm_version(settings, "champion").number


# --- listing ----------------------------------------------------------------------------------------------------


def test_every_version_is_listed_with_lineage_status_gate_and_answers(settings):
    evaluate(settings, "1", "GO", ["every threshold met"])
    evaluate(settings, "2", "GO", [], metrics={"accuracy": 0.5}, evaluation_id="older")
    evaluate(settings, "2", "NO-GO", ["accuracy 0.81 < 0.95", "general perplexity +14% > 10%"],
             metrics={"accuracy": 0.81, "general_perplexity": 23.0})
    evaluate(settings, BASE, "NO-GO", [], metrics={"accuracy": 0.4})
    view = overview(settings)
    assert [r.number for r in view.versions] == ["4", "3", "2", "1"]
    assert view.champion is None and view.serving == "base:model" and view.rollback_target is None
    statuses = {r.number: r.status for r in view.versions}
    assert statuses == {"1": "candidate", "2": "candidate", "3": "candidate", "4": "failed"}
    one, two = view.version("1"), view.version("2")
    assert (one.parent_version, two.parent_version, two.snapshot_id, two.config_hash, two.job_id) == (None, "1", "snap2", "2" * 16, "job-2")
    assert (one.created_by, one.job_state, view.version("4").job_state) == ("ana@example.com", "succeeded", "failed")
    assert one.run_status == "FINISHED" and one.created_at.endswith("+00:00") and one.base_model == str(settings.base_model)
    assert (one.gate.verdict, one.gate.reasons, one.gate.passed) == ("GO", ("every threshold met",), True)
    assert (two.gate.verdict, two.gate.reasons) == ("NO-GO", ("accuracy 0.81 < 0.95", "general perplexity +14% > 10%"))
    assert two.evaluation.evaluation_id == "eval-2-NO-GO" and two.evaluation.metrics["general_perplexity"] == 23.0
    assert view.version("3").gate.verdict is None and view.version("3").evaluation is None
    assert (one.usage.answers, one.usage.thumbs_up, one.usage.flags) == (3, 1, 1)
    assert two.usage.answers == 0
    assert (view.base_label, view.base_usage.answers, view.base_usage.flags) == ("base:model", 1, 1)
    assert view.base_evaluation.metrics == {"accuracy": 0.4}
    assert metrics_rows(view, two) == [{"metric": "accuracy", f"{NAME}/2": 0.81, "base": 0.4},
                                       {"metric": "general_perplexity", f"{NAME}/2": 23.0, "base": None}]
    assert {label: usage.answers for label, usage in view.other_usage.items()} == {"openai:localhost/x": 1}
    rows = {row["version"]: row for row in versions_table(view)}
    assert rows["1"] | {"created": ""} == {
        "version": "1", "status": "candidate", "gate": "GO", "accuracy": 0.97, "citations": 0.95, "general ppl": 20.1,
        "answers": 3, "flags": 1, "parent": "base", "data": "snap1", "config": "1" * 12, "job": "job-1",
        "created": "", "by": "ana@example.com"}
    assert rows["3"]["gate"] == "not evaluated" and rows["2"]["parent"] == "1"
    assert view.notices == []


def test_without_a_registry_nothing_is_listed_or_created(tmp_path, tiny_llama_folder):
    settings = load_settings(workspace=tmp_path / "empty", base_model=str(tiny_llama_folder))
    view = overview(settings)
    assert (view.versions, view.champion, view.history) == ([], None, [])
    assert not (tmp_path / "empty" / "mlflow.db").exists()
    with pytest.raises(VersionError, match="no LLM versions of deploywise-llm yet"):
        promote(settings, "1", actor="ana", reason="why not")


def test_a_pinned_or_remote_chat_is_said_to_ignore_the_alias(settings, tiny_llama_folder):
    pinned = load_settings(workspace=settings.workspace, base_model=str(tiny_llama_folder), llm_version="2")
    assert "DEPLOYWISE_LLM_VERSION=2 pins the chat" in overview(pinned).notices[0]
    remote = load_settings(workspace=settings.workspace, base_model=str(tiny_llama_folder), llm_backend="openai",
                           llm_endpoint="http://localhost:11434/v1", llm_model="x")
    assert "not this registry" in overview(remote).notices[0]


# --- promoting --------------------------------------------------------------------------------------------------


def test_promoting_a_go_version_moves_the_champion_and_the_chat_follows(settings):
    evaluation = evaluate(settings, "1", "GO", [])
    assert served(settings) is None
    record = promote(settings, "1", actor="ana@example.com")
    assert served(settings) == "1"
    assert (record.status, record.promoted_by, record.promotion_gate, record.promotion_reason, record.previous_champion) == (
        "deployed", "ana@example.com", "GO", None, BASE)
    tags = client(settings).get_model_version(NAME, "1").tags
    assert tags["status"] == "deployed" and tags["promotion_evaluation_id"] == evaluation and tags["promoted_at"]
    view = overview(settings)
    assert view.champion == "1" and view.serving == f"{NAME}/1" and view.rollback_target == BASE
    [event] = view.history
    assert (event.action, event.version, event.previous, event.actor, event.gate) == ("promote", "1", BASE, "ana@example.com", "GO")
    assert history_table(view)[0]["previous champion"] == BASE
    with pytest.raises(VersionError, match="already holds champion"):
        promote(settings, "1", actor="ana@example.com")


@pytest.mark.parametrize("verdict", ["NO-GO", None])
def test_without_a_go_a_written_reason_is_required_and_recorded(settings, verdict):
    if verdict:
        evaluate(settings, "2", verdict, ["accuracy 0.81 < 0.95"])
    before = registry_state(settings)
    expected = "has a NO-GO verdict" if verdict else "has no evaluation"
    for reason in (None, "", "   \n "):
        with pytest.raises(VersionError, match=f"deploywise-llm/2 {expected}; promoting it without a GO needs a written reason"):
            promote(settings, "2", actor="ana", reason=reason)
    assert registry_state(settings) == before and served(settings) is None
    record = promote(settings, "2", actor="ana", reason="  Hotfix for the fraud criteria; evaluation reruns tonight. ")
    assert served(settings) == "2"  # version 2 is trained on top of 1: the chat loads both adapters
    assert (record.status, record.promotion_reason, record.promotion_gate) == (
        "deployed", "Hotfix for the fraud criteria; evaluation reruns tonight.", verdict or "none")
    [event] = overview(settings).history
    assert (event.reason, event.gate) == ("Hotfix for the fraud criteria; evaluation reruns tonight.", verdict or "none")


def test_versions_the_chat_could_not_serve_are_refused(settings):
    before = registry_state(settings)
    with pytest.raises(VersionError, match="deploywise-llm/3 cannot be served: its run .* has no adapter/ artifact"):
        promote(settings, "3", actor="ana", reason="try it")
    with pytest.raises(VersionError, match=r"deploywise-llm/4 is failed \(its training job job-4 failed\); it cannot be promoted"):
        promote(settings, "4", actor="ana", reason="try it")
    with pytest.raises(VersionError, match="no LLM version deploywise-llm/9"):
        promote(settings, "9", actor="ana", reason="try it")
    with pytest.raises(VersionError, match="'latest' is not a version number"):
        promote(settings, "latest", actor="ana", reason="try it")
    with pytest.raises(VersionError, match="who is acting must be named"):
        promote(settings, "1", actor=" ", reason="try it")
    with pytest.raises(VersionError, match="the reason is 5,001 characters long"):
        promote(settings, "1", actor="ana", reason="x" * 5001)
    assert registry_state(settings) == before


def test_a_failed_write_is_undone(settings, monkeypatch):
    evaluate(settings, "1", "GO", [])
    promote(settings, "1", actor="ana")
    before = registry_state(settings)

    def refuse(*args, **kwargs):
        raise MlflowException("database is locked\nsecond line")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(VersionError) as failure:
        promote(settings, "2", actor="bob", reason="urgent")
    assert str(failure.value) == "promote not done, MLflow failed: database is locked"
    assert registry_state(settings) == before and served(settings) == "1"


# --- rolling back and archiving -----------------------------------------------------------------------------------


def test_rollback_restores_each_previous_champion_in_turn(settings):
    with pytest.raises(VersionError, match="no version of deploywise-llm holds champion .* nothing to roll back"):
        rollback(settings, "ana")
    evaluate(settings, "1", "GO", [])
    promote(settings, "1", actor="ana")
    promote(settings, "2", actor="bob", reason="needs the new documents now")
    assert served(settings) == "2" and overview(settings).rollback_target == "1"
    assert rollback(settings, "carol", "answers got worse") == "1"
    view = overview(settings)
    assert served(settings) == "1" and view.version("2").status == "candidate" and view.version("1").status == "deployed"
    assert view.rollback_target == BASE  # version 1 replaced the base model
    assert (view.history[0].action, view.history[0].version, view.history[0].previous, view.history[0].reason) == (
        "rollback", "1", "2", "answers got worse")
    assert rollback(settings, "carol") == BASE
    assert served(settings) is None and overview(settings).champion is None
    with pytest.raises(VersionError, match="nothing to roll back"):
        rollback(settings, "carol")
    assert [e.action for e in overview(settings).history] == ["rollback", "rollback", "promote", "promote"]


def test_a_champion_set_outside_deploywise_has_no_rollback(settings):
    client(settings).set_registered_model_alias(NAME, "champion", "1")
    assert overview(settings).rollback_target is None
    with pytest.raises(VersionError, match="was not promoted here, so no previous champion is recorded"):
        rollback(settings, "ana")


def test_archiving_refuses_the_champion_and_retires_the_others(settings):
    evaluate(settings, "1", "GO", [])
    promote(settings, "1", actor="ana")
    before = registry_state(settings)
    with pytest.raises(VersionError, match="deploywise-llm/1 holds champion .* before archiving it"):
        archive(settings, "1", "ana")
    assert registry_state(settings) == before
    record = archive(settings, "2", "ana", "superseded")
    assert (record.status, record.archived_by) == ("archived", "ana") and record.archived_at
    with pytest.raises(VersionError, match="already archived"):
        archive(settings, "2", "ana")
    with pytest.raises(VersionError, match="deploywise-llm/2 is archived; it cannot be promoted"):
        promote(settings, "2", actor="ana", reason="bring it back")
    assert overview(settings).history[0].action == "archive"


def test_rollback_to_an_archived_version_is_refused(settings):
    evaluate(settings, "1", "GO", [])
    evaluate(settings, "2", "GO", [])
    promote(settings, "1", actor="ana")
    promote(settings, "2", actor="ana")
    archive(settings, "1", "ana")
    with pytest.raises(VersionError, match="the previous champion deploywise-llm/1 is archived"):
        rollback(settings, "ana")
    assert served(settings) == "2"


# --- the command line -------------------------------------------------------------------------------------------


def test_versions_commands_and_their_exit_codes(settings, capsys):
    evaluate(settings, "1", "GO", [])
    assert main(["versions", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["serving"] == "base:model" and [v["number"] for v in listed["versions"]] == ["4", "3", "2", "1"]
    assert listed["versions"][3]["gate"]["verdict"] == "GO" and listed["versions"][3]["usage"]["flags"] == 1

    assert main(["versions", "promote", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deploywise: deploywise-llm/2 has no evaluation; promoting it without a GO needs a written reason")
    assert main(["versions", "promote", "1"]) == 0
    assert "deploywise-llm/1 is the champion (gate GO)" in capsys.readouterr().out
    assert main(["versions", "promote", "2", "--reason", "urgent fix"]) == 0
    capsys.readouterr()
    assert served(settings) == "2"
    assert main(["versions", "archive", "2"]) == 2
    assert "holds champion" in capsys.readouterr().err
    assert main(["versions", "rollback"]) == 0
    assert capsys.readouterr().out.strip() == "rolled back: the chat serves deploywise-llm/1"
    assert main(["versions", "archive", "2", "--reason", "superseded"]) == 0
    capsys.readouterr()
    assert main(["versions", "list"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("deploywise-llm: the chat serves deploywise-llm/1; rollback would serve the base model\n")
    assert "     1  deployed  GO" in text and "     2  archived  not evaluated" in text and "3 answers, 1 flags" in text
    [event] = [e for e in overview(settings).history if e.action == "archive"]
    assert event.actor.endswith("(cli)") and event.reason == "superseded"
    assert main(["versions", "rollback"]) == 0 and served(settings) is None
    capsys.readouterr()
    assert main(["versions", "rollback"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
