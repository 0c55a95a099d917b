"""Launching a training job: check the request, make its data, create its MLflow run, record it and submit it to
Ray. Separate from following jobs because a launch is the one place where a bad request must be refused, before
anything is recorded or submitted.

Both recipes launch the same way: CPT (`submit_cpt`) on a dataset snapshot, SFT (`submit_sft`) on an exported SFT
dataset, each logged to the job's MLflow run for the workers to fetch. Before anything is submitted the
configuration is checked, the start version is looked up and the data is made, so a bad launch fails in the form,
not minutes later in a log.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from engine.access.roles import require_admin
from engine.core.database import transaction, utc_now
from engine.core.errors import first_line
from engine.core.mlflow_client import ensure_experiment, registry_client
from engine.lifecycle.start_versions import starts_sft
from engine.lifecycle.training_jobs import TrainingJob
from engine.llm.backend_contract import LlmError
from engine.llm.bundled import load_tokenizer
from engine.llm.chat_prompt import chat_prompt_ids
from engine.llm.versions import registry_version
from engine.registry.mlflow_candidates import all_pages
from training.config import LATEST, AdapterTraining, CptConfig, SftConfig
from training.cpt import SNAPSHOT_ARTIFACT
from training.dataset_snapshot import DatasetSnapshot, SnapshotError, list_snapshots, load_snapshot, snapshot_workspace
from training.job_following import finish_job, get_job
from training.job_spec import FAILURE_TAG, SPEC_VARIABLE, JobSpec
from training.ray_cluster import JobError, cluster_address, jobs_client
from training.sft import DATASET_FILE, SFT_DATASET_ARTIFACT, answer_messages, chat_rows, read_pairs, split_pairs
from training.sft_data import SftDataError, list_datasets
from training.sft_export import export_dataset

EXPERIMENT = "deploywise-training"
_JOB_ENVIRONMENT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "DEPLOYWISE_CACHE_DIR")


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
    name = settings.llm_registry_name
    client = registry_client(settings)
    quoted = f'"{name}"' if "'" in name else f"'{name}'"
    try:
        found = all_pages(client.search_model_versions, filter_string=f"name = {quoted}")
    except MlflowException as error:
        raise JobError(f"start_from: cannot read the LLM versions of {name}: {first_line(error.message)}") from None
    cpt = [int(version.version) for version in found if starts_sft(version.tags or {})]
    if not cpt:
        raise JobError(f"start_from: 'latest' but {name} has no CPT version yet; train one first, or start from 'base'")
    return str(max(cpt))


def _start_version(settings, number: str | None, *, cpt_only: bool = False):
    """The registry's LLM version `number` with its lineage (None: the base model, None); JobError when there is no
    such version, or when `cpt_only` and it was not made by CPT."""
    if number is None:
        return None
    try:
        version = registry_version(settings.llm_registry_name, number, settings.tracking_uri, settings.mlflow_registry_uri)
    except LlmError as error:
        raise JobError(f"start_from: {error}") from None
    if cpt_only:
        client = registry_client(settings)
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
    kind = config.kind
    job_id = f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    base_model = start.base_model if start is not None else _portable_base_model(settings.base_model)
    client = registry_client(settings)
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
        raise JobError(f"cannot record the job's MLflow run at {settings.tracking_uri}: {first_line(error)}") from None
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
        message = f"not submitted: {first_line(error)}"
        finish_job(connection, job_id, "failed", message)
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
