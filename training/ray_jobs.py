"""Training jobs from the app's side: launch through the Ray Jobs API, record, follow, cancel.

A job is submitted to the configured cluster (DEPLOYWISE_RAY_ADDRESS, else RAY_ADDRESS) or to a local Ray head
that the app starts once and leaves running, so jobs outlive the Streamlit process. Each job is a row of
`training_jobs` in the knowledge database: its state is refreshed from Ray when someone looks, its progress and
curves are read from its MLflow run. Page reloads and app restarts lose nothing: the row, the Ray job and the run
are all outside the session.

Both recipes launch the same way: CPT (`submit_cpt`) on a dataset snapshot, SFT (`submit_sft`) on an exported SFT
dataset, each logged to the job's MLflow run for the workers to fetch. Before anything is submitted the
configuration is checked, the start version is looked up and the data is made, so a bad launch fails in the form,
not minutes later in a log.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from engine.access.roles import require_admin
from engine.core.database import transaction, utc_now
from engine.core.mlflow_client import ensure_experiment
from engine.lifecycle.training_jobs import FINAL_STATES, TrainingJob, list_jobs, training_job
from engine.llm.backend_contract import LlmError
from engine.llm.bundled import load_tokenizer
from engine.llm.chat_prompt import chat_prompt_ids
from engine.llm.versions import registry_version
from engine.registry.mlflow_candidates import all_pages
from training.config import LATEST, AdapterTraining, CptConfig, SftConfig
from training.cpt import SNAPSHOT_ARTIFACT
from training.dataset_snapshot import DatasetSnapshot, SnapshotError, list_snapshots, load_snapshot, snapshot_workspace
from training.job_spec import FAILURE_TAG, LLM_VERSION_TAG, SPEC_VARIABLE, JobSpec
from training.sft import DATASET_FILE, SFT_DATASET_ARTIFACT, answer_messages, chat_rows, read_pairs, split_pairs
from training.sft_data import SftDataError, list_datasets
from training.sft_export import export_dataset

EXPERIMENT = "deploywise-training"
_RAY_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "cancelled"}
_JOB_ENVIRONMENT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "DEPLOYWISE_CACHE_DIR")


class JobError(RuntimeError):
    """A job cannot be launched, found or cancelled; one line saying why."""


@dataclass(frozen=True)
class JobProgress:
    """What the job's MLflow run says so far."""
    step: int = 0
    total_steps: int | None = None
    eta_s: float | None = None
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, value), the last value of each step
    learning_rate: list[tuple[int, float]] = field(default_factory=list)
    eval_perplexity: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # CPT: domain, replay; SFT: answers
    tokens_per_s: float | None = None
    resumed_from_step: int | None = None


# --- the cluster ------------------------------------------------------------------------------------------------


def cluster_address(settings) -> str:
    """The Ray Jobs address: the configured cluster, else the local head's dashboard."""
    return settings.ray_address or os.environ.get("RAY_ADDRESS") or f"http://127.0.0.1:{settings.ray_dashboard_port}"


def jobs_client(settings, *, start_local: bool = True):
    """A JobSubmissionClient for the cluster; the local head is started first when none is configured."""
    from ray.job_submission import JobSubmissionClient

    address = cluster_address(settings)
    if not (settings.ray_address or os.environ.get("RAY_ADDRESS")) and not _dashboard_up(address):
        if not start_local:
            raise JobError(f"no Ray head is running at {address}")
        start_local_head(settings)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise JobError(f"cannot reach the Ray cluster at {address}: {_first_line(error)}") from None


def start_local_head(settings, timeout_s: float = 90.0) -> None:
    """`ray start --head` with the dashboard (the Jobs API) on 127.0.0.1, left running for later jobs."""
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray if ray.exists() else shutil.which("ray") or "ray"), "start", "--head",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={settings.ray_dashboard_port}",
               "--disable-usage-stats"]
    if settings.ray_num_cpus:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    address = cluster_address(settings)
    if done.returncode != 0 and not _dashboard_up(address):
        raise JobError(f"cannot start a local Ray head: {_first_line(done.stderr or done.stdout)}")
    deadline = time.monotonic() + timeout_s
    while not _dashboard_up(address):
        if time.monotonic() > deadline:
            raise JobError(f"the local Ray head started but its Jobs API at {address} did not answer in {timeout_s:.0f} s")
        time.sleep(0.5)


def _dashboard_up(address: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


# --- launching --------------------------------------------------------------------------------------------------


def choose_snapshot(settings, choice: str, replay_ratio: float, *, write: bool = True) -> DatasetSnapshot:
    """The snapshot a job trains on: made now ('new'; only previewed unless `write`), the newest written
    ('latest') or a given id. SnapshotError says why there is none."""
    if choice == "new":
        return snapshot_workspace(settings, replay_ratio=replay_ratio, write=write)
    if choice == "latest":
        snapshots = list_snapshots(settings.workspace)
        if not snapshots:
            raise SnapshotError("'latest' but no snapshot has been written yet; use 'new'")
        return snapshots[0]
    return load_snapshot(settings.workspace, choice)


def submit_cpt(settings, connection, config: CptConfig, *, created_by: str | None = None,
               snapshot: DatasetSnapshot | None = None) -> TrainingJob:
    """Check, snapshot, create the MLflow run, record the job and submit it to Ray; the recorded job.
    Every refusal is a JobError naming what is wrong; nothing is recorded or submitted then."""
    require_admin("launching a training job")
    start = _start_version(settings, config.start_version)
    try:
        snapshot = snapshot or choose_snapshot(settings, config.snapshot, config.replay_ratio)
    except SnapshotError as error:
        raise JobError(f"snapshot: {error}") from None
    counts = snapshot.manifest["splits"]
    stats = {f"snapshot_{split}_{key}": counts[split][key] for split in counts
             for key in ("domain_documents", "domain_tokens", "replay_documents", "replay_tokens", "tokens")}
    files = [snapshot.directory / name for name in ("manifest.json", "train.jsonl", "validation.jsonl")]
    return _launch(settings, connection, config, start, created_by=created_by, data_id=snapshot.id, dataset=None,
                   data_tags={"snapshot_id": snapshot.id}, stats=stats, artifacts=(SNAPSHOT_ARTIFACT, files))


def submit_sft(settings, connection, config: SftConfig, *, created_by: str | None = None) -> TrainingJob:
    """Check, resolve the start version ('latest': the newest CPT version) and the dataset, export the dataset into
    the job's MLflow run, record the job and submit it to Ray; the recorded job. The recorded configuration names
    the version and dataset actually used. Every refusal is a JobError; nothing is recorded or submitted then."""
    require_admin("launching a training job")

    number = newest_cpt_version(settings) if config.start_from == LATEST else config.start_from
    start = _start_version(settings, None if number == "base" else number, cpt_only=True)
    name = config.dataset
    if name == LATEST:
        datasets = [dataset for dataset in list_datasets(connection) if dataset.accepted]
        if not datasets:
            raise JobError("dataset: 'latest' but no SFT dataset has an accepted pair yet")
        name = datasets[0].name
    config = replace(config, start_from=number, dataset=name)
    with tempfile.TemporaryDirectory(prefix="deploywise-sft-") as folder:
        try:
            export = export_dataset(settings, connection, name, Path(folder))
        except SftDataError as error:
            raise JobError(f"dataset: {error}") from None
        pairs = read_pairs(export.path)
        train, held_out = split_pairs(pairs, config.validation_share)
        if not train or not held_out:
            distinct = len({pair["instruction"] for pair in pairs})
            raise JobError(f"dataset: {name} has {export.pair_count} accepted pair(s) with {distinct} distinct instruction(s); "
                           "SFT needs at least 2, one of them held out for the evaluation loss")
        _check_fit(start.base_model if start is not None else _portable_base_model(settings.base_model), train, held_out,
                   config.max_seq_length)
        data_file = export.path.rename(export.path.with_name(DATASET_FILE))
        stats = {"sft_pairs": export.pair_count, "sft_train_pairs": len(train), "sft_held_out_pairs": len(held_out),
                 **{f"sft_style_{style}": count for style, count in export.styles.items()}}
        return _launch(settings, connection, config, start, created_by=created_by, data_id=export.dataset_hash, dataset=name,
                       data_tags={"sft_dataset": name, "sft_dataset_hash": export.dataset_hash}, stats=stats,
                       artifacts=(SFT_DATASET_ARTIFACT, [data_file]))


def _check_fit(base_model: str, train: list[dict], held_out: list[dict], max_seq_length: int) -> None:
    """Refuse, before Ray starts (and retries), a dataset of which max_seq_length leaves nothing to train or evaluate
    on: the product's recommendation pairs carry the chat's whole prompt, well over a thousand tokens."""

    tokenizer = load_tokenizer(base_model)
    train_rows, held_rows, report = chat_rows(train, held_out, tokenizer, max_seq_length)
    if train_rows and held_rows:
        return
    longest = max(len(chat_prompt_ids(tokenizer, answer_messages(pair["instruction"]))) for pair in train + held_out)
    side = "to train on" if not train_rows else "held out for the evaluation loss"
    raise JobError(f"max_seq_length: {max_seq_length} tokens leave no answer token in any pair {side} ({report.dropped} of "
                   f"{report.pairs} pairs dropped; the longest prompt is {longest} tokens): raise max_seq_length")


def newest_cpt_version(settings) -> str:
    """The number of the newest CPT version that is neither archived nor failed: what SFT starts from by default."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = settings.llm_registry_name
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)
    quoted = f'"{name}"' if "'" in name else f"'{name}'"
    try:
        found = all_pages(client.search_model_versions, filter_string=f"name = {quoted}")
    except MlflowException as error:
        raise JobError(f"start_from: cannot read the LLM versions of {name}: {_first_line(error.message)}") from None
    cpt = [int(version.version) for version in found if starts_sft(version.tags or {})]
    if not cpt:
        raise JobError(f"start_from: 'latest' but {name} has no CPT version yet; train one first, or start from 'base'")
    return str(max(cpt))


def offered_as_start(tags: dict) -> bool:
    """Whether a version with these tags may start a training job: neither archived nor failed."""
    return tags.get("status") not in ("archived", "failed")


def starts_sft(tags: dict) -> bool:
    """Whether SFT's 'latest' may start from a version with these tags: a CPT version offered as a start."""
    return tags.get("training") == "cpt" and offered_as_start(tags)


def _start_version(settings, number: str | None, *, cpt_only: bool = False):
    """The registry's LLM version `number` with its lineage (None: the base model, None); JobError when there is no
    such version, or when `cpt_only` and it was not made by CPT."""
    from mlflow import MlflowClient

    if number is None:
        return None
    try:
        version = registry_version(settings.llm_registry_name, number, settings.tracking_uri, settings.mlflow_registry_uri)
    except LlmError as error:
        raise JobError(f"start_from: {error}") from None
    if cpt_only:
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)
        training = client.get_model_version(settings.llm_registry_name, number).tags.get("training")
        if training != "cpt":
            raise JobError(f"start_from: version {number} was made by {(training or 'no').upper()} training; "
                           "SFT starts from a CPT version (or 'base')")
    return version


def _launch(settings, connection, config: AdapterTraining, start, *, created_by: str | None, data_id: str,
            dataset: str | None, data_tags: dict[str, str], stats: dict[str, float],
            artifacts: tuple[str, list[Path]]) -> TrainingJob:
    """Create the job's MLflow run (params, lineage tags, data statistics, the data as artifacts), record the job and
    submit it to Ray. `start` is the LlmVersion trained on top of (None: the base model): its base model is the
    job's, whatever the workspace's base model is now. A cluster refusing the job leaves it recorded as failed, and
    raises JobError."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    kind = config.kind
    job_id = f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    base_model = start.base_model if start is not None else _portable_base_model(settings.base_model)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    try:
        experiment_id = ensure_experiment(client, settings, EXPERIMENT)
        run_id = client.create_run(experiment_id, run_name=job_id, tags={
            "job_id": job_id, "training": kind, "config_hash": config.config_hash, "base_model": base_model,
            "start_from": config.start_from, **data_tags}).info.run_id
        params = [Param(key, (",".join(value) if isinstance(value, list) else str(value))[:500])
                  for key, value in config.flat().items()]
        params += [Param(key, value) for key, value in data_tags.items() if key not in config.flat()]
        now = int(time.time() * 1000)
        client.log_batch(run_id, params=params, metrics=[Metric(key, float(value), now, 0) for key, value in stats.items()])
        folder, files = artifacts
        for path in files:
            client.log_artifact(run_id, str(path), folder)
    except (MlflowException, OSError) as error:
        raise JobError(f"cannot record the job's MLflow run at {settings.tracking_uri}: {_first_line(error)}") from None
    spec = JobSpec(
        job_id=job_id, kind=kind, config=config.to_dict(), config_hash=config.config_hash, run_id=run_id,
        tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow_registry_uri,
        registry_name=settings.llm_registry_name, base_model=base_model, start_version=config.start_version,
        snapshot_id=data_id, storage_path=settings.storage_path, dataset=dataset,
    )
    address = cluster_address(settings)
    now = utc_now()
    with transaction(connection):
        connection.execute(
            "INSERT INTO training_jobs (id, kind, state, config, config_hash, snapshot_id, start_from, mlflow_run_id,"
            " ray_address, log_location, created_by, created_at, updated_at)"
            " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, kind, json.dumps(spec.config, sort_keys=True), spec.config_hash, data_id, config.start_from, run_id,
             address, f"ray job logs {job_id} --address {address}", created_by, now, now),
        )
    try:
        jobs_client(settings).submit_job(
            entrypoint=f"{_job_python(settings)} -m training.ray_job",
            submission_id=job_id,
            runtime_env={"env_vars": {SPEC_VARIABLE: spec.to_json(), **_passed_environment()}},
            metadata={"deploywise_kind": kind, "mlflow_run_id": run_id, **data_tags},
        )
    except Exception as error:  # the cluster said no: the job never ran
        message = f"not submitted: {_first_line(error)}"
        _finish(connection, job_id, "failed", message)
        client.set_tag(run_id, FAILURE_TAG, message)
        client.set_terminated(run_id, "FAILED")
        raise JobError(message) from None
    return get_job(connection, job_id)


def _portable_base_model(base_model: str) -> str:
    return base_model if base_model == "bundled" else str(Path(base_model).resolve())


def _job_python(settings) -> str:
    """This interpreter for the local head (same machine, same packages); `python` on a configured cluster,
    whose nodes must have deploywise installed (README: Ray on Databricks)."""
    return sys.executable if not (settings.ray_address or os.environ.get("RAY_ADDRESS")) else "python"


def _passed_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in _JOB_ENVIRONMENT if name in os.environ}


# --- following --------------------------------------------------------------------------------------------------


def get_job(connection, job_id: str) -> TrainingJob:
    row = connection.execute("SELECT * FROM training_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobError(f"no training job {job_id}")
    return training_job(row)


def refresh_jobs(settings, connection) -> list[str]:
    """Bring unfinished jobs' states up to date from Ray and MLflow; problems reaching them, one line each."""
    unfinished = [job for job in list_jobs(connection, limit=1000) if not job.finished]
    if not unfinished:
        return []
    try:
        client = jobs_client(settings, start_local=False)
    except JobError as error:
        address = cluster_address(settings)
        local = not (settings.ray_address or os.environ.get("RAY_ADDRESS"))
        if not local or _dashboard_up(address, timeout_s=10.0):  # a remote cluster may come back; a busy head is slow
            return [str(error)]
        for job in unfinished:  # the local head is down (a reboot, `ray stop`): its jobs died with it
            if job.ray_address == address:
                _finish(connection, job.id, "failed", f"the Ray cluster at {address} is gone ({error})")
                _end_run(settings, job.mlflow_run_id, "FAILED", "the Ray cluster is gone")
        return []
    problems = []
    for job in unfinished:
        try:
            info = client.get_job_info(job.id)
        except Exception as error:  # the cluster does not know it: a new head
            if "does not exist" in str(error) or "not found" in str(error).lower():
                _finish(connection, job.id, "failed", "the Ray cluster no longer knows this job (its head was restarted)")
                _end_run(settings, job.mlflow_run_id, "FAILED", "job lost by the Ray cluster")
            else:
                problems.append(f"{job.id}: {_first_line(error)}")
            continue
        state = _RAY_STATES.get(str(getattr(info.status, "value", info.status)), job.state)
        if state == "running" and job.state == "cancelling":
            continue
        if state in FINAL_STATES:
            if state == "succeeded":  # before the job is final: a final job is never refreshed again
                _set_version(settings, connection, job)
            _finish(connection, job.id, state, _outcome(settings, job, state, info.message))
            if state != "succeeded":
                _end_run(settings, job.mlflow_run_id, "KILLED" if state == "cancelled" else "FAILED", info.message or state)
        elif state != job.state:
            with transaction(connection):
                connection.execute("UPDATE training_jobs SET state = ?, updated_at = ? WHERE id = ?", (state, utc_now(), job.id))
    return problems


def cancel_job(settings, connection, job_id: str) -> TrainingJob:
    """Ask Ray to stop the job (its driver ends the MLflow run as KILLED); the state shows 'cancelling' until then."""
    require_admin("cancelling a training job")
    job = get_job(connection, job_id)
    if job.finished:
        raise JobError(f"job {job_id} has already {job.state}")
    try:
        jobs_client(settings, start_local=False).stop_job(job_id)
    except Exception as error:
        raise JobError(f"cannot cancel {job_id}: {_first_line(error)}") from None
    with transaction(connection):
        connection.execute("UPDATE training_jobs SET state = 'cancelling', updated_at = ? WHERE id = ?", (utc_now(), job_id))
    return get_job(connection, job_id)


def job_logs(settings, job_id: str, tail_lines: int = 200) -> str:
    try:
        text = jobs_client(settings, start_local=False).get_job_logs(job_id)
    except Exception as error:
        raise JobError(f"cannot read the logs of {job_id}: {_first_line(error)}") from None
    return "\n".join(text.splitlines()[-tail_lines:])


def job_progress(settings, job: TrainingJob) -> JobProgress:
    """Step, total, ETA and curves from the job's MLflow run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.get_run(job.mlflow_run_id)
    history = {key: _last_per_step(client.get_metric_history(job.mlflow_run_id, key))
               for key in ("loss", "learning_rate", "total_steps", "resumed_from_step")}
    perplexity = {key.removeprefix("eval_").removesuffix("_perplexity"):
                  _last_per_step(client.get_metric_history(job.mlflow_run_id, key))
                  for key in sorted(run.data.metrics) if key.startswith("eval_") and key.endswith("_perplexity")}
    losses = history["loss"]
    step = losses[-1][0] if losses else 0
    total = int(history["total_steps"][-1][1]) if history["total_steps"] else None
    return JobProgress(
        step=step, total_steps=total, eta_s=_eta(client, job.mlflow_run_id, step, total) if not job.finished else None,
        loss=[(s, v) for s, v in losses], learning_rate=history["learning_rate"],
        eval_perplexity={kind: points for kind, points in perplexity.items() if points},
        tokens_per_s=run.data.metrics.get("train_tokens_per_s"),
        resumed_from_step=int(history["resumed_from_step"][-1][1]) if history["resumed_from_step"] else None,
    )


def _last_per_step(metrics) -> list[tuple[int, float]]:
    """A metric's values by step; a step logged again after a resume keeps its latest value."""
    latest: dict[int, tuple[int, float]] = {}
    for metric in metrics:
        if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
            latest[metric.step] = (metric.timestamp, metric.value)
    return [(step, value) for step, (_, value) in sorted(latest.items())]


def _eta(client, run_id: str, step: int, total: int | None) -> float | None:
    """Seconds left at the pace of the recent steps."""
    if not total or step <= 0 or step >= total:
        return None
    points = sorted((m.step, m.timestamp) for m in client.get_metric_history(run_id, "loss"))[-20:]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    per_step_ms = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
    return max(0.0, per_step_ms * (total - step) / 1000) if math.isfinite(per_step_ms) else None


def _outcome(settings, job: TrainingJob, state: str, ray_message: str | None) -> str:
    if state != "failed":
        return {"succeeded": "finished", "cancelled": "cancelled by an admin"}[state]
    from mlflow import MlflowClient

    try:
        failure = MlflowClient(tracking_uri=settings.tracking_uri).get_run(job.mlflow_run_id).data.tags.get(FAILURE_TAG)
    except Exception:  # the run's reason is a nicety; Ray's message is still there
        failure = None
    return failure or _first_line(ray_message or "failed")


def _set_version(settings, connection, job: TrainingJob) -> None:
    from mlflow import MlflowClient

    version = MlflowClient(tracking_uri=settings.tracking_uri).get_run(job.mlflow_run_id).data.tags.get(LLM_VERSION_TAG)
    with transaction(connection):
        connection.execute("UPDATE training_jobs SET llm_version = ? WHERE id = ?", (version, job.id))


def _end_run(settings, run_id: str, status: str, reason: str) -> None:
    """End a run its driver could not end (it was killed with its cluster); a finished run is left as it is."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, FAILURE_TAG, reason)
        client.set_terminated(run_id, status)


def _finish(connection, job_id: str, state: str, message: str) -> None:
    now = utc_now()
    with transaction(connection):
        connection.execute(
            "UPDATE training_jobs SET state = ?, message = ?, updated_at = ?, finished_at = ? WHERE id = ?",
            (state, message, now, now, job_id),
        )


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__

