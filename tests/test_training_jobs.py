"""CPT jobs for real: the Ray Jobs API on a local Ray head, Ray Train workers, HF Trainer + PEFT, a sqlite MLflow
store and registry. Tiny random Llama for the plumbing; the real SmolLM2 for the one test where learning matters."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from engine.core import database
from engine.core.settings import load_settings
from engine.lifecycle.training_jobs import list_jobs
from engine.llm.loading import build_model
from engine.llm.versions import resolve_llm_version
from training.config import ConfigError, load_cpt_config
from training.job_following import cancel_job, get_job, job_progress, refresh_jobs
from training.job_launch import submit_cpt
from training.ray_cluster import JobError

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = {"max_seq_length": 64, "batch_size": 2, "learning_rate": 1e-3, "eval_steps": 3, "save_steps": 3,
            "ray": {"cpus_per_worker": 1}}
pytestmark = pytest.mark.slow


def wait_for(settings, connection, job_id: str, *, until=lambda job, progress: job.finished, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while True:
        assert refresh_jobs(settings, connection) == []
        job = get_job(connection, job_id)
        progress = job_progress(settings, job)
        if until(job, progress):
            return job, progress
        assert not job.finished, f"{job.id} {job.state}: {job.message}"
        assert time.monotonic() < deadline, f"{job.id} still {job.state} at step {progress.step}"
        time.sleep(1)


@pytest.fixture(scope="module")
def workspace(demo_template, tmp_path_factory, tiny_llama_folder, ray_head):
    """A copy of the demo workspace whose base model is the tiny Llama, with jobs going to the test Ray head."""
    import shutil

    folder = shutil.copytree(demo_template, tmp_path_factory.mktemp("training") / "workspace")
    return {"workspace": folder, "base_model": str(tiny_llama_folder), "ray_dashboard_port": ray_head}


@pytest.fixture
def settings_and_db(workspace):
    settings = load_settings(**workspace)
    connection = database.connect(settings.knowledge_db)
    yield settings, connection
    connection.close()


@pytest.fixture(scope="module")
def finished_jobs(workspace):
    """A LoRA and a 4-bit QLoRA job, submitted together and run side by side on the two CPUs."""
    settings = load_settings(**workspace)
    connection = database.connect(settings.knowledge_db)
    lora = submit_cpt(settings, connection, load_cpt_config(ROOT / "configs/cpt.yaml", max_steps=6, **TINY_RUN))
    qlora = submit_cpt(settings, connection, load_cpt_config(ROOT / "configs/cpt.yaml", max_steps=6, quantization="4bit",
                                                             **TINY_RUN))
    done = {job.id: wait_for(settings, connection, job.id) for job in (lora, qlora)}
    connection.close()
    return done[lora.id], done[qlora.id]


def test_lora_and_qlora_jobs_register_llm_versions_with_their_lineage(settings_and_db, finished_jobs):
    settings, connection = settings_and_db
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    for (job, progress), quantization in zip(finished_jobs, ("none", "4bit"), strict=True):
        assert (job.state, job.message, job.config["quantization"]) == ("succeeded", "finished", quantization)
        version = client.get_model_version("deploywise-llm", job.llm_version)
        assert version.run_id == job.mlflow_run_id
        assert version.tags == {"base_model": str(Path(settings.base_model).resolve()), "snapshot_id": job.snapshot_id,
                                "config_hash": job.config_hash, "job_id": job.id, "training": "cpt", "status": "candidate"}
        run = client.get_run(job.mlflow_run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == job.id
        assert run.data.params["quantization"] == quantization and run.data.params["snapshot_id"] == job.snapshot_id
        assert run.data.params["learning_rate"] == "0.001" and run.data.params["lora.r"] == "16"
        assert run.data.metrics["snapshot_train_domain_documents"] > 0
        artifacts = {item.path for item in client.list_artifacts(job.mlflow_run_id)}
        assert {"adapter", "tokenizer", "config", "snapshot", "packing.json"} <= artifacts
        assert {item.path for item in client.list_artifacts(job.mlflow_run_id, "snapshot")} == {
            "snapshot/manifest.json", "snapshot/train.jsonl", "snapshot/validation.jsonl"}
        # Every step's loss and learning rate; perplexities at step 0 (the start) and every eval_steps after.
        assert [step for step, _ in progress.loss] == list(range(1, 7)) and progress.total_steps == 6
        assert [step for step, _ in progress.learning_rate] == list(range(1, 7))
        assert [step for step, _ in progress.eval_perplexity["domain"]] == [0, 3, 6]
        assert [step for step, _ in progress.eval_perplexity["replay"]] == [0, 3, 6]
    assert {job.snapshot_id for job, _ in finished_jobs} == {finished_jobs[0][0].snapshot_id}


def test_a_registered_version_loads_as_base_plus_its_merged_adapter(settings_and_db, finished_jobs):
    settings, _ = settings_and_db
    base = build_model(resolve_llm_version(settings, "base"))
    for job, _ in finished_jobs:
        version = resolve_llm_version(settings, job.llm_version)
        tuned = build_model(version)
        assert version.run_id == job.mlflow_run_id
        q_base = base.model.layers[0].self_attn.q_proj.weight
        q_tuned = tuned.model.layers[0].self_attn.q_proj.weight
        assert q_base.shape == q_tuned.shape and not torch.equal(q_base, q_tuned)  # training moved the weights


def test_a_job_can_start_from_an_llm_version_and_records_its_parent(settings_and_db, finished_jobs):
    settings, connection = settings_and_db
    parent = finished_jobs[0][0].llm_version
    job = submit_cpt(settings, connection, load_cpt_config(None, start_from=parent, max_steps=3, **TINY_RUN))
    job, _ = wait_for(settings, connection, job.id)
    assert job.state == "succeeded", job.message
    version = resolve_llm_version(settings, job.llm_version)
    assert version.parent is not None and version.parent.number == parent
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    assert client.get_model_version("deploywise-llm", job.llm_version).tags["parent_version"] == parent
    build_model(version)  # the chain loads: base, parent's adapter, then this one's


def test_a_killed_worker_resumes_from_its_last_checkpoint_in_the_same_run(settings_and_db):
    settings, connection = settings_and_db
    config = load_cpt_config(None, max_steps=30, **{**TINY_RUN, "eval_steps": 5, "save_steps": 10})
    job = submit_cpt(settings, connection, config)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    registered = Path(settings.storage_path) / job.id / "checkpoint_manager_snapshot.json"

    def checkpoint_registered(job, progress) -> bool:  # Ray Train's controller has taken the step-10 checkpoint
        return progress.step >= 11 and registered.is_file() and "checkpoint_" in registered.read_text()

    job, _ = wait_for(settings, connection, job.id, until=checkpoint_registered)
    killed = int(client.get_run(job.mlflow_run_id).data.tags["ray.worker_pid"])
    os.kill(killed, signal.SIGKILL)

    job, progress = wait_for(settings, connection, job.id)
    assert job.state == "succeeded", job.message
    run = client.get_run(job.mlflow_run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags["ray.worker_pid"]) != killed
    assert progress.resumed_from_step == 10  # the checkpoint, not the start
    assert [step for step, _ in progress.loss] == list(range(1, 31))
    # Steps 11.. ran twice (before the kill and after the resume) and the resumed run repeats them exactly:
    # the checkpoint held the weights, the optimizer, the schedule and the data order.
    history = {}
    for metric in client.get_metric_history(job.mlflow_run_id, "loss"):
        history.setdefault(metric.step, []).append(metric.value)
    repeated = [step for step, values in history.items() if len(values) > 1]
    assert repeated and min(repeated) == 11
    assert all(values[0] == pytest.approx(values[-1], rel=1e-4) for step, values in history.items() if step in repeated)
    assert get_job(connection, job.id).llm_version is not None


def test_a_cancelled_job_stops_and_its_run_is_killed(settings_and_db):
    settings, connection = settings_and_db
    job = submit_cpt(settings, connection, load_cpt_config(None, max_steps=2000, **TINY_RUN))
    wait_for(settings, connection, job.id, until=lambda job, progress: progress.step >= 1)
    assert cancel_job(settings, connection, job.id).state == "cancelling"
    job, _ = wait_for(settings, connection, job.id, timeout_s=60)
    assert (job.state, job.llm_version) == ("cancelled", None)
    run = MlflowClient(tracking_uri=settings.tracking_uri).get_run(job.mlflow_run_id)
    assert run.info.status == "KILLED"
    with pytest.raises(JobError, match="already cancelled"):
        cancel_job(settings, connection, job.id)


def test_jobs_outlive_the_app_and_a_job_the_cluster_lost_is_marked_failed(settings_and_db, finished_jobs):
    settings, connection = settings_and_db
    connection.close()
    reopened = database.connect(settings.knowledge_db)  # a restarted app
    try:
        assert {job.id for job, _ in finished_jobs} <= {job.id for job in list_jobs(reopened)}
        lost = {**json.loads(json.dumps(get_job(reopened, finished_jobs[0][0].id).__dict__)), "id": "cpt-lost",
                "state": "running", "llm_version": None, "finished_at": None}
        lost["config"] = json.dumps(lost["config"])
        reopened.execute(f"INSERT INTO training_jobs ({', '.join(lost)}) VALUES ({', '.join('?' * len(lost))})", list(lost.values()))
        # The lost job's run is the first job's finished run: ending a lost job never rewrites a finished run.
        assert refresh_jobs(settings, reopened) == []
        job = get_job(reopened, "cpt-lost")
        assert job.state == "failed" and "no longer knows this job" in job.message
        assert MlflowClient(tracking_uri=settings.tracking_uri).get_run(job.mlflow_run_id).info.status == "FINISHED"
    finally:
        reopened.close()


def test_a_malformed_config_is_refused_before_anything_runs(settings_and_db, tmp_path):
    settings, connection = settings_and_db
    bad = tmp_path / "cpt.yaml"
    bad.write_text("lora:\n  r: many\n  alpha: 0\nlearning_rat: 1e-4\nquantization: 8bit\n")
    with pytest.raises(ConfigError) as error:
        load_cpt_config(bad)
    assert "lora.r: must be a whole number (got 'many')" in str(error.value)
    assert "learning_rat: unknown key" in str(error.value)
    for text, problem in (("[1, 2]", "must be a mapping"), ("a: [", "not valid YAML"), ("", None)):
        bad.write_text(text)
        if problem is None:
            assert load_cpt_config(bad) == load_cpt_config(None)  # an empty file is the defaults
        else:
            with pytest.raises(ConfigError, match=problem):
                load_cpt_config(bad)
    with pytest.raises(ConfigError) as error:
        load_cpt_config(None, quantization="8bit", save_steps=7, eval_steps=5, max_seq_length=8, start_from="latest")
    assert [problem.split(":")[0] for problem in str(error.value).split("; ")] == [
        "start_from", "quantization", "max_seq_length", "save_steps"]

    before = list_jobs(connection)
    runs = len(MlflowClient(tracking_uri=settings.tracking_uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=settings.tracking_uri).search_experiments()]))
    with pytest.raises(JobError, match="start_from: the MLflow registry has no LLM version deploywise-llm/999"):
        submit_cpt(settings, connection, load_cpt_config(None, start_from="999"))
    assert list_jobs(connection) == before
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs


@pytest.mark.timeout(1200)
def test_cpt_on_the_real_smollm2_lowers_held_out_domain_perplexity(demo_template, tmp_path, ray_head):
    """The real base model, a short run at a higher learning rate than the default: the held-out team documents
    (validation split, never trained on) become more predictable."""
    import shutil

    settings = load_settings(workspace=shutil.copytree(demo_template, tmp_path / "workspace"), ray_dashboard_port=ray_head)
    connection = database.connect(settings.knowledge_db)
    try:
        config = load_cpt_config(None, max_steps=12, batch_size=2, max_seq_length=256, learning_rate=3e-4,
                                 eval_steps=12, save_steps=12, lora={"r": 8, "alpha": 16})
        job = submit_cpt(settings, connection, config)
        job, progress = wait_for(settings, connection, job.id, timeout_s=900)
    finally:
        connection.close()
    assert job.state == "succeeded", job.message
    (start, before), (end, after) = progress.eval_perplexity["domain"]
    assert (start, end) == (0, 12)
    assert after < before * 0.97, (before, after)
    assert progress.loss[-1][1] < progress.loss[0][1]
