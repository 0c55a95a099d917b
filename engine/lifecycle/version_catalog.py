"""The LLM versions catalog as an admin reads it: what each version is, how it did, and which one the chat serves.

Everything lives in MLflow, so no knowledge-database table is involved:
- each version of the registered model `settings.llm_registry_name` carries its lineage as tags (written at
  registration by `training.ray_job.register_version`), the evaluation's gate verdict (`gate_verdict`,
  `gate_evaluation_id`, `gate_reasons`, written by the evaluation) and, once promoted, who promoted it, when,
  why and past which gate (`promoted_by`, `promoted_at`, `promotion_reason`, `promotion_gate`,
  `promotion_evaluation_id`) and the champion it replaced (`previous_champion`: a number, or `base`);
- the alias `champion` is what the chat serves (`engine.llm.in_process` and `engine.llm.gguf` follow it within 30 s,
  without a restart);
- every promotion, rollback and archive is also one run of the experiment `deploywise-llm-versions`: an
  append-only history that survives tags being overwritten by later promotions.

Status: `deployed` while the version holds `champion`; `archived` once archived; `failed` when its training job
(the jobs table) or its MLflow run failed or was cancelled; `candidate` otherwise. The `status` tag records it
for readers of the MLflow UI; the alias decides.

Reading is apart from acting (engine.lifecycle.version_actions): the LLM versions page and `deploywise versions list`
read the catalog on every view, and every action reads it before it writes; only the actions need an administrator.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from engine.answering.records import answer_counts_by_version
from engine.core import database
from engine.core.mlflow_client import registry_client, store_missing
from engine.lifecycle.training_jobs import list_jobs
from engine.lifecycle.version_records import (
    ARCHIVED,
    DEPLOYED,
    EVALUATION_EXPERIMENT,
    FAILED,
    HISTORY_EXPERIMENT,
    Evaluation,
    Gate,
    Usage,
    VersionError,
    VersionEvent,
    VersionRecord,
    VersionsOverview,
    first_line,
    mlflow_problem,
)
from engine.llm.versions import BASE, BASE_MODEL_TAG, CANDIDATE, CHAMPION, PARENT_VERSION_TAG, VERSION_STATUS_TAG, LlmVersion
from engine.registry.mlflow_candidates import all_pages


def overview(settings) -> VersionsOverview:
    """Every version with lineage, status, gate, evaluation and answers; the champion, rollback target, history."""
    name = settings.llm_registry_name
    usage, jobs, notices = _workspace_records(settings)
    versions, champion, evaluations, history, runs = [], None, {}, [], {}
    if not store_missing(settings):
        try:
            client = registry_client(settings)
            model = _registered_model(client, name)
            if model is not None:
                champion = model.aliases.get(CHAMPION)
                champion = str(champion) if champion is not None else None
                quoted = f'"{name}"' if "'" in name else f"'{name}'"
                versions = all_pages(client.search_model_versions, filter_string=f"name = {quoted}")
                runs = _runs(client, [v.run_id for v in versions if v.run_id])
            evaluations = _evaluations(client, name)
            history = _history(client, name)
        except Exception as error:  # the store's errors vary (MLflow, SQLAlchemy, HTTP): each is one line
            raise VersionError(f"cannot read the LLM versions of {name} from MLflow: {mlflow_problem(error)}") from None
    records = sorted((_record(name, v, champion, runs.get(v.run_id), jobs, evaluations, usage) for v in versions),
                     key=lambda r: int(r.number), reverse=True)
    base_label = LlmVersion(settings.base_model).label
    known = {r.label for r in records} | {base_label}
    champion_record = next((r for r in records if r.number == champion), None)
    return VersionsOverview(
        registry_name=name, champion=champion, versions=records,
        rollback_target=champion_record.previous_champion if champion_record else None,
        base_label=base_label, base_usage=usage.get(base_label, Usage()),
        base_evaluation=_chosen_evaluation(evaluations.get(BASE, []), None),
        other_usage={label: counts for label, counts in usage.items() if label not in known},
        history=history, notices=_serving_notices(settings) + notices,
    )


def _registered_model(client, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _workspace_records(settings) -> tuple[dict[str, Usage], dict, list[str]]:
    """Answers and flags per version label, and the jobs table by job id, from the knowledge database."""
    if not settings.knowledge_db.exists():
        return {}, {}, []
    try:
        connection = database.connect(settings.knowledge_db)
        try:
            counts = answer_counts_by_version(connection)
            jobs = {job.id: job for job in list_jobs(connection, limit=1_000_000)}
        finally:
            connection.close()
    except Exception as error:  # a locked or damaged database must not hide the registry
        return {}, {}, [f"answers and jobs cannot be read from {settings.knowledge_db.name}: {first_line(error)}"]
    usage = {label: Usage(c["answers"], c["thumbs_up"], c["thumbs_down"]) for label, c in counts.items()}
    return usage, jobs, []


def _runs(client, run_ids: list[str]) -> dict:
    """The versions' runs by id, in one search per 100 runs whatever their experiments."""
    if not run_ids:
        return {}
    experiments = [e.experiment_id for e in all_pages(client.search_experiments, view_type=ViewType.ALL)]
    runs = {}
    for start in range(0, len(run_ids), 100):
        in_list = ", ".join(f"'{run_id}'" for run_id in run_ids[start:start + 100] if run_id.isalnum())
        if in_list:
            for run in all_pages(client.search_runs, experiment_ids=experiments, run_view_type=ViewType.ALL,
                                 filter_string=f"attributes.run_id IN ({in_list})"):
                runs[run.info.run_id] = run
    return runs


def _evaluations(client, name: str) -> dict[str, list[Evaluation]]:
    """Evaluation runs by version number (BASE for the base model), newest first."""
    experiment = client.get_experiment_by_name(EVALUATION_EXPERIMENT)
    if experiment is None:
        return {}
    found: dict[str, list[Evaluation]] = {}
    for run in all_pages(client.search_runs, experiment_ids=[experiment.experiment_id], order_by=["attributes.start_time DESC"]):
        number = _evaluated_version(run.data.tags.get("llm_version", ""), name)
        if number is not None:
            found.setdefault(number, []).append(Evaluation(
                evaluation_id=run.data.tags.get("evaluation_id"), run_id=run.info.run_id,
                verdict=run.data.tags.get("verdict"), at=_iso(run.info.end_time or run.info.start_time),
                metrics=dict(run.data.metrics)))
    return found


def _evaluated_version(label: str, name: str) -> str | None:
    """'3', 'deploywise-llm/3' -> '3'; 'base' or 'base:<model>' -> BASE; another registry's version -> None."""
    label = label.strip()
    if label == BASE or label.startswith(BASE + ":"):
        return BASE
    if label.isdigit():
        return label
    registry, _, number = label.rpartition("/")
    return number if registry == name and number.isdigit() else None


def _chosen_evaluation(evaluations: list[Evaluation], evaluation_id: str | None) -> Evaluation | None:
    """The evaluation the gate verdict came from, else the newest."""
    return next((e for e in evaluations if evaluation_id and e.evaluation_id == evaluation_id),
                evaluations[0] if evaluations else None)


def _gate(tags: dict) -> Gate:
    verdict = (tags.get("gate_verdict") or "").strip().upper() or None
    raw = tags.get("gate_reasons")
    try:
        reasons = json.loads(raw) if raw else []
        reasons = tuple(str(reason) for reason in reasons) if isinstance(reasons, list) else (str(reasons),)
    except ValueError:
        reasons = (raw,)
    return Gate(verdict, tags.get("gate_evaluation_id") or None, reasons)


def _record(name, version, champion, run, jobs, evaluations, usage) -> VersionRecord:
    tags = version.tags or {}
    number = str(version.version)
    job = jobs.get(tags.get("job_id"))
    run_status = run.info.status if run else None
    recorded = tags.get(VERSION_STATUS_TAG)
    if number == champion:
        status = DEPLOYED
    elif recorded == ARCHIVED:
        status = ARCHIVED
    elif recorded == FAILED or (job and job.state in ("failed", "cancelled")) or run_status in ("FAILED", "KILLED"):
        status = FAILED
    else:
        status = CANDIDATE
    gate = _gate(tags)
    label = f"{name}/{number}"
    return VersionRecord(
        number=number, label=label, status=status, recorded_status=recorded,
        base_model=tags.get(BASE_MODEL_TAG), parent_version=tags.get(PARENT_VERSION_TAG),
        snapshot_id=tags.get("snapshot_id"), config_hash=tags.get("config_hash"), job_id=tags.get("job_id"),
        job_state=job.state if job else None, training=tags.get("training"), run_id=version.run_id or None,
        run_status=run_status, created_at=_iso(version.creation_timestamp),
        created_by=(job.created_by if job else None) or version.user_id or None,
        description=version.description or None, gate=gate,
        evaluation=_chosen_evaluation(evaluations.get(number, []), gate.evaluation_id),
        usage=usage.get(label, Usage()), sft_dataset=tags.get("sft_dataset"),
        **{key: tags.get(key) or None for key in ("promoted_by", "promoted_at", "promotion_reason", "promotion_gate",
                                                  "previous_champion", "archived_by", "archived_at")},
    )


def _history(client, name: str, limit: int = 200) -> list[VersionEvent]:
    experiment = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if experiment is None:
        return []
    quoted = f'"{name}"' if "'" in name else f"'{name}'"
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.registry_name = {quoted}",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    return [VersionEvent(at=_iso(run.info.start_time), action=run.data.tags.get("action", ""),
                         version=run.data.tags.get("llm_version", ""), previous=run.data.tags.get("previous_champion"),
                         actor=run.data.tags.get("actor", ""), reason=run.data.tags.get("reason"),
                         gate=run.data.tags.get("gate"))
            for run in runs]


def _serving_notices(settings) -> list[str]:
    if settings.llm_backend == "openai":
        return [f"The chat uses the endpoint {settings.llm_endpoint} (DEPLOYWISE_LLM_BACKEND=openai), not this "
                "registry: promoting moves the alias but does not change the chat's answers."]
    if settings.llm_version != CHAMPION:
        return [f"DEPLOYWISE_LLM_VERSION={settings.llm_version} pins the chat to that model: promoting moves the "
                "alias but the chat follows it only with DEPLOYWISE_LLM_VERSION=champion."]
    return []


def _iso(milliseconds: int | None) -> str | None:
    if not milliseconds:
        return None
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")
