"""`deploywise snapshot`, `deploywise train cpt|sft` and `deploywise jobs list|logs|cancel`: the console's dataset
snapshot, launch and job controls for terminals and scripts."""

from __future__ import annotations

import json
import sys
import time

from cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, print_result
from engine.core import database
from engine.core.yaml_input import YamlError, load_yaml
from engine.lifecycle.training_jobs import list_jobs
from training.config import ConfigError, load_config
from training.dataset_snapshot import SnapshotError, check_settings, snapshot_workspace
from training.job_following import cancel_job, get_job, job_logs, job_progress, refresh_jobs
from training.job_launch import submit_cpt, submit_sft
from training.ray_cluster import JobError

POLL_S = 5.0


def register(commands) -> None:
    snapshot = commands.add_parser("snapshot", help="freeze the knowledge base and replay text into a training dataset snapshot")
    snapshot.add_argument("--replay-ratio", type=float, default=0.2,
                          help="share of training tokens that is general replay text (default 0.2)")
    snapshot.add_argument("--validation-share", type=float, default=0.1, help="share of documents held out for validation (default 0.1)")
    snapshot.add_argument("--json", action="store_true")
    snapshot.set_defaults(handler=_snapshot)

    train = commands.add_parser("train", help="launch a training job on Ray")
    recipes = train.add_subparsers(dest="recipe", required=True)
    for kind, help_text in (("cpt", "continual pretraining of a LoRA/QLoRA adapter on the knowledge base"),
                            ("sft", "supervised fine-tuning of a CPT version on an SFT dataset (loss on the answers)")):
        recipe = recipes.add_parser(kind, help=help_text)
        recipe.add_argument("--config", default=f"configs/{kind}.yaml", help=f"recipe YAML (default configs/{kind}.yaml)")
        recipe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a key, YAML value syntax (repeatable): --set max_steps=50 --set lora.r=8")
        recipe.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 1 unless it succeeded")
        recipe.add_argument("--json", action="store_true")
        recipe.set_defaults(handler=_train)

    jobs = commands.add_parser("jobs", help="list training jobs, show a job's log, cancel a job")
    actions = jobs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="recorded jobs, newest first, with their state refreshed from Ray")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_jobs_list)
    logs = actions.add_parser("logs", help="the last lines of a job's log")
    logs.add_argument("job_id")
    logs.add_argument("--tail", type=int, default=200)
    logs.set_defaults(handler=_jobs_logs)
    cancel = actions.add_parser("cancel", help="stop a queued or running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=_jobs_cancel)


def _snapshot(args, settings) -> int:
    try:
        check_settings(args.replay_ratio, args.validation_share)
    except SnapshotError as error:
        raise UsageError(str(error)) from None
    try:
        snapshot = snapshot_workspace(settings, replay_ratio=args.replay_ratio, validation_share=args.validation_share)
    except SnapshotError as error:
        print(f"deploywise: {error} (no snapshot written)", file=sys.stderr)
        return EXIT_PARTIAL
    splits = snapshot.manifest["splits"]
    payload = {
        "id": snapshot.id,
        "directory": str(snapshot.directory),
        "train": str(snapshot.train_path),
        "validation": str(snapshot.validation_path),
        "created_at": snapshot.manifest["created_at"],
        "splits": splits,
    }
    lines = [f"snapshot {snapshot.id} ({snapshot.manifest['created_at']})", f"  {snapshot.directory}"]
    lines += [
        f"  {name}: {split['domain_documents']} documents, {split['domain_tokens']} domain tokens + "
        f"{split['replay_tokens']} replay tokens ({split['replay_share']:.0%} replay)"
        for name, split in splits.items()
    ]
    print_result(args, payload, "\n".join(lines))
    return EXIT_OK


def _overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            parsed = load_yaml(value)
        except YamlError as error:
            raise UsageError(f"--set {pair!r}: {error}") from None
        *parents, name = key.strip().split(".")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UsageError(f"--set {pair!r}: {parent} is set both as a value and as a mapping")
        target[name] = parsed
    return overrides


def _train(args, settings) -> int:
    try:
        config = load_config(args.recipe, args.config, **_overrides(args.set))
    except ConfigError as error:
        raise UsageError(str(error)) from None
    connection = database.connect(settings.knowledge_db)
    try:
        try:
            job = (submit_cpt if args.recipe == "cpt" else submit_sft)(settings, connection, config)
        except JobError as error:
            raise UsageError(str(error)) from None
        print(f"submitted {job.id} ({job.data}, from {job.start_from}, MLflow run {job.mlflow_run_id})", file=sys.stderr)
        if args.wait:
            job = _follow(settings, connection, job.id)
        _print_job(args, job)
        return EXIT_PARTIAL if args.wait and job.state != "succeeded" else EXIT_OK
    finally:
        connection.close()


def _follow(settings, connection, job_id: str):
    shown = None
    while True:
        for problem in refresh_jobs(settings, connection):
            print(f"warning: {problem}", file=sys.stderr)
        job = get_job(connection, job_id)
        progress = job_progress(settings, job)
        line = f"{job.state}: step {progress.step}/{progress.total_steps or '?'}"
        if progress.loss:
            line += f", loss {progress.loss[-1][1]:.4f}"
        if progress.eta_s is not None:
            line += f", about {progress.eta_s:.0f} s left"
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
        if job.finished:
            return job
        time.sleep(POLL_S)


def _job_payload(job) -> dict:
    return {key: getattr(job, key) for key in ("id", "kind", "state", "data", "snapshot_id", "start_from", "mlflow_run_id",
                                               "llm_version", "message", "created_at", "finished_at", "log_location")}


def _print_job(args, job) -> None:
    if args.json:
        print(json.dumps(_job_payload(job), indent=2))
        return
    print(f"{job.id}: {job.state}" + (f", LLM version {job.llm_version}" if job.llm_version else "")
          + (f" ({job.message})" if job.message and job.state != "succeeded" else ""))


def _jobs_list(args, settings) -> int:
    connection = database.connect(settings.knowledge_db)
    try:
        problems = refresh_jobs(settings, connection)
        jobs = list_jobs(connection)
    finally:
        connection.close()
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps([_job_payload(job) for job in jobs], indent=2))
    else:
        for job in jobs:
            version = f"v{job.llm_version}" if job.llm_version else "-"
            print(f"{job.id}  {job.state:<10} {job.created_at}  {job.data}  {version}  {job.message or ''}".rstrip())
    return EXIT_PARTIAL if problems else EXIT_OK


def _jobs_logs(args, settings) -> int:
    connection = database.connect(settings.knowledge_db)
    try:
        get_job(connection, args.job_id)
        print(job_logs(settings, args.job_id, args.tail))
    except JobError as error:
        raise UsageError(str(error)) from None
    finally:
        connection.close()
    return EXIT_OK


def _jobs_cancel(args, settings) -> int:
    connection = database.connect(settings.knowledge_db)
    try:
        job = cancel_job(settings, connection, args.job_id)
    except JobError as error:
        raise UsageError(str(error)) from None
    finally:
        connection.close()
    print(f"{job.id}: {job.state}")
    return EXIT_OK
