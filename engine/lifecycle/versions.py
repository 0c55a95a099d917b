"""LLM versions as an admin manages them: what each one is, how it did, and which one the chat serves.

Everything lives in MLflow, so no knowledge-database table is involved:
- each version of the registered model `settings.llm_registry_name` carries its lineage as tags (written at
  registration by `training.ray_job.register_version`), the evaluation's gate verdict (`gate_verdict`,
  `gate_evaluation_id`, `gate_reasons`, written by the evaluation) and, once promoted, who promoted it, when,
  why and past which gate (`promoted_by`, `promoted_at`, `promotion_reason`, `promotion_gate`,
  `promotion_evaluation_id`) and the champion it replaced (`previous_champion`: a number, or `base`);
- the alias `champion` is what the chat serves (`engine.llm.runtime` follows it within 30 s, without a restart);
- every promotion, rollback and archive is also one run of the experiment `deploywise-llm-versions`: an
  append-only history that survives tags being overwritten by later promotions.

Status: `deployed` while the version holds `champion`; `archived` once archived; `failed` when its training job
(the jobs table) or its MLflow run failed or was cancelled; `candidate` otherwise. The `status` tag records it
for readers of the MLflow UI; the alias decides.

Promoting, rolling back and archiving are admin actions (`engine.access.roles.require_admin`). Promotion needs a GO
verdict or a written reason. Rollback returns to the champion the current one replaced
(and again to the one before, since each promotion remembers its own predecessor). Every refusal is a
`VersionError` of one line, raised before anything is written; a write that fails midway is undone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine.access.roles import require_admin
from engine.answering.records import answer_counts_by_version
from engine.core import database
from engine.core.mlflow_client import ensure_experiment
from engine.lifecycle.training_jobs import list_jobs
from engine.llm.gguf import gguf_problem
from engine.llm.runtime import (
    ADAPTER_ARTIFACT,
    BASE_MODEL_TAG,
    CANDIDATE,
    CHAMPION,
    PARENT_VERSION_TAG,
    VERSION_STATUS_TAG,
    LlmError,
    LlmVersion,
    registry_version,
)
from engine.registry.mlflow_candidates import all_pages

DEPLOYED, ARCHIVED, FAILED = "deployed", "archived", "failed"
STATUSES = (CANDIDATE, DEPLOYED, ARCHIVED, FAILED)
GO = "GO"  # the evaluation's verdicts: GO | NO-GO
BASE = "base"  # `previous_champion` of a version promoted while the base model was serving
EVALUATION_EXPERIMENT = "deploywise-evaluation"
HISTORY_EXPERIMENT = "deploywise-llm-versions"
MAX_REASON_CHARS = 5_000  # MLflow run tags hold 8,000
# the evaluation's metrics in the order they are shown; others follow alphabetically
METRIC_ORDER = ("accuracy", "citation_presence", "citation_correctness", "refusal_accuracy", "latency_p50_ms",
                "latency_p95_ms", "domain_perplexity", "general_perplexity", "recommendation_agreement")


class VersionError(RuntimeError):
    """A refused or failed version action, as one line saying why; nothing was changed."""


@dataclass(frozen=True)
class Gate:
    """The latest evaluation's verdict on a version, as the evaluation tagged it."""
    verdict: str | None = None  # GO | NO-GO | None: never evaluated
    evaluation_id: str | None = None
    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict == GO


@dataclass(frozen=True)
class Evaluation:
    """One evaluation run of a version: its metrics (accuracy, perplexities, latency...)."""
    evaluation_id: str | None
    run_id: str
    verdict: str | None
    at: str | None  # ISO-8601 UTC
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """Chat answers a version wrote and what users thought of them."""
    answers: int = 0
    thumbs_up: int = 0
    flags: int = 0  # thumbs down


@dataclass(frozen=True)
class VersionRecord:
    number: str
    label: str  # "deploywise-llm/3", as answers record it
    status: str  # one of STATUSES
    recorded_status: str | None  # the `status` tag
    base_model: str | None
    parent_version: str | None
    snapshot_id: str | None
    config_hash: str | None
    job_id: str | None
    job_state: str | None  # from the jobs table, when this workspace launched the job
    training: str | None  # cpt, sft...
    run_id: str | None
    run_status: str | None
    created_at: str | None
    created_by: str | None
    description: str | None
    gate: Gate
    evaluation: Evaluation | None  # the gate's evaluation, else the latest one
    usage: Usage
    promoted_by: str | None = None
    promoted_at: str | None = None
    promotion_reason: str | None = None
    promotion_gate: str | None = None
    previous_champion: str | None = None
    archived_by: str | None = None
    archived_at: str | None = None
    sft_dataset: str | None = None  # what an SFT version learnt from (a CPT version's is its snapshot_id)

    @property
    def data(self) -> str:
        """What the version was trained on, for tables: the CPT snapshot or the SFT dataset."""
        return self.snapshot_id or (f"SFT dataset {self.sft_dataset}" if self.sft_dataset else "")


@dataclass(frozen=True)
class VersionEvent:
    """One promotion, rollback or archive, from the history experiment."""
    at: str
    action: str  # promote | rollback | archive
    version: str  # the version acted on: the new champion (BASE after a rollback to the base model), the archived one
    previous: str | None  # the champion before
    actor: str
    reason: str | None
    gate: str | None


@dataclass(frozen=True)
class VersionsOverview:
    registry_name: str
    champion: str | None  # None: the base model answers
    versions: list[VersionRecord]  # newest first
    rollback_target: str | None  # what `rollback` would serve: a number, BASE, or None (nothing to roll back to)
    base_label: str
    base_usage: Usage
    base_evaluation: Evaluation | None
    other_usage: dict[str, Usage]  # answers by LLMs outside this registry (endpoints, other registries)
    history: list[VersionEvent]
    notices: list[str]  # what the admin should know: the chat ignores the alias, unreadable jobs table...

    @property
    def serving(self) -> str:
        return f"{self.registry_name}/{self.champion}" if self.champion else self.base_label

    def version(self, number: str) -> VersionRecord:
        for record in self.versions:
            if record.number == str(number):
                return record
        raise VersionError(f"the MLflow registry has no LLM version {self.registry_name}/{number}")

    def to_dict(self) -> dict:
        return asdict(self) | {"serving": self.serving}


# --- reading ----------------------------------------------------------------------------------------------------


def overview(settings) -> VersionsOverview:
    """Every version with lineage, status, gate, evaluation and answers; the champion, rollback target, history."""
    name = settings.llm_registry_name
    usage, jobs, notices = _workspace_records(settings)
    versions, champion, evaluations, history, runs = [], None, {}, [], {}
    if _store_exists(settings):
        try:
            client = _client(settings)
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


def versions_table(view: VersionsOverview) -> list[dict]:
    """One row per version for the page's table and the CLI's listing."""
    rows = []
    for record in view.versions:
        metrics = record.evaluation.metrics if record.evaluation else {}
        rows.append({
            "version": record.number,
            "status": record.status,
            "gate": record.gate.verdict or ("partly evaluated" if record.evaluation else "not evaluated"),
            "accuracy": metrics.get("accuracy"),
            "citations": metrics.get("citation_presence"),
            "general ppl": metrics.get("general_perplexity"),
            "answers": record.usage.answers,
            "flags": record.usage.flags,
            "parent": record.parent_version or BASE,
            "data": record.data,
            "config": (record.config_hash or "")[:12],
            "job": record.job_id or "",
            "created": format_time(record.created_at),
            "by": record.created_by or "",
        })
    return rows


def target_text(registry_name: str, target: str, base_label: str | None = None) -> str:
    """What a rollback target or a champion means to a reader: 'deploywise-llm/3' or 'the base model'."""
    if target == BASE:
        return f"the base model ({base_label})" if base_label else "the base model"
    return f"{registry_name}/{target}"


def history_table(view: VersionsOverview) -> list[dict]:
    """The promotions, rollbacks and archives, newest first."""
    return [{"when": format_time(event.at), "action": event.action, "version": event.version,
             "previous champion": event.previous or "", "by": event.actor, "gate": event.gate or "",
             "reason": event.reason or ""} for event in view.history]


def metrics_rows(view: VersionsOverview, record: VersionRecord) -> list[dict]:
    """The version's evaluation metrics beside the base model's (when it was evaluated), in METRIC_ORDER."""
    mine = record.evaluation.metrics if record.evaluation else {}
    base = view.base_evaluation.metrics if view.base_evaluation else {}
    keys = [key for key in METRIC_ORDER if key in mine] + sorted(key for key in mine if key not in METRIC_ORDER)
    return [{"metric": key, record.label: mine[key]} | ({"base": base.get(key)} if base else {}) for key in keys]


def format_time(stamp: str | None) -> str:
    """'2025-01-31T09:15:00+00:00' -> '2025-01-31 09:15 UTC'."""
    return f"{stamp[:16].replace('T', ' ')} UTC" if stamp else ""


def _store_exists(settings) -> bool:
    """False for a local sqlite store not created yet: opening it would create it (seconds of migrations)."""
    uri = settings.tracking_uri
    return bool(settings.mlflow_registry_uri) or not uri.startswith("sqlite:///") \
        or Path(uri.removeprefix("sqlite:///")).exists()


def _client(settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

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
    from mlflow.entities import ViewType

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


# --- acting -----------------------------------------------------------------------------------------------------


def promote(settings, version: str, *, actor: str, reason: str | None = None) -> VersionRecord:
    """Make `version` the champion the chat serves. Without a GO verdict a written reason is required. The reason,
    gate, actor, time and the replaced champion (for rollback) are recorded on the version and in the history."""
    require_admin("promoting an LLM version")
    actor, reason = _actor(actor), _reason(reason)
    view = _current(settings)
    record = view.version(_number(version))
    if record.status == DEPLOYED:
        raise VersionError(f"{record.label} already holds {CHAMPION}: the chat serves it")
    if record.status in (ARCHIVED, FAILED):
        raise VersionError(f"{record.label} is {record.status}" + (
            f" (its training job {record.job_id} {record.job_state})" if record.job_state in ("failed", "cancelled") else "")
            + "; it cannot be promoted")
    if not record.gate.passed and not reason:
        verdict = (f"a {record.gate.verdict} verdict" if record.gate.verdict else
                   "no gate verdict (its evaluations covered part of the golden set)" if record.evaluation else "no evaluation")
        raise VersionError(f"{record.label} has {verdict}; promoting it without a GO needs a written reason")
    client = _client(settings)
    _check_loadable(settings, client, record.number)
    previous = view.champion or BASE
    tags = {
        "promoted_by": actor, "promoted_at": _now(), "promotion_reason": reason,
        "promotion_gate": record.gate.verdict or "none", "promotion_evaluation_id": record.gate.evaluation_id,
        "previous_champion": previous, VERSION_STATUS_TAG: DEPLOYED,
    }
    _apply(settings, client, view, tags={record.number: tags, **_demoted(view)},
           move=lambda: client.set_registered_model_alias(view.registry_name, CHAMPION, record.number),
           event={"action": "promote", "llm_version": record.number, "previous_champion": previous, "actor": actor,
                  "reason": reason, "gate": record.gate.verdict or "none"})
    return _current(settings).version(record.number)


def rollback(settings, actor: str, reason: str | None = None) -> str:
    """Give `champion` back to the version the current champion replaced (BASE: remove the alias, so the base
    model answers). Returns what the chat serves now: a version number or BASE."""
    require_admin("rolling back the LLM champion")
    actor, reason = _actor(actor), _reason(reason)
    view = _current(settings)
    if view.champion is None:
        raise VersionError(f"no version of {view.registry_name} holds {CHAMPION} (the base model answers); "
                           "there is nothing to roll back")
    current = view.version(view.champion)
    target = current.previous_champion
    if not target:
        raise VersionError(f"{current.label} holds {CHAMPION} but was not promoted here, so no previous champion is "
                           "recorded; promote the version you want instead")
    client = _client(settings)
    if target == BASE:
        move = lambda: client.delete_registered_model_alias(view.registry_name, CHAMPION)  # noqa: E731
        tags = {}
    else:
        record = view.version(target)
        if record.status in (ARCHIVED, FAILED):
            raise VersionError(f"the previous champion {record.label} is {record.status}; promote another version instead")
        _check_loadable(settings, client, target)
        move = lambda: client.set_registered_model_alias(view.registry_name, CHAMPION, target)  # noqa: E731
        tags = {target: {VERSION_STATUS_TAG: DEPLOYED}}
    tags |= {current.number: {VERSION_STATUS_TAG: CANDIDATE, "rolled_back_by": actor, "rolled_back_at": _now()}}
    _apply(settings, client, view, tags=tags, move=move,
           event={"action": "rollback", "llm_version": target, "previous_champion": current.number, "actor": actor,
                  "reason": reason, "gate": None})
    return target


def archive(settings, version: str, actor: str, reason: str | None = None) -> VersionRecord:
    """Retire a version: it stays in the registry with its lineage, but is no longer promoted or rolled back to."""
    require_admin("archiving an LLM version")
    actor, reason = _actor(actor), _reason(reason)
    view = _current(settings)
    record = view.version(_number(version))
    if record.status == DEPLOYED:
        raise VersionError(f"{record.label} holds {CHAMPION} (the chat serves it); promote another version or roll "
                           "back before archiving it")
    if record.status == ARCHIVED:
        raise VersionError(f"{record.label} is already archived")
    client = _client(settings)
    _apply(settings, client, view,
           tags={record.number: {VERSION_STATUS_TAG: ARCHIVED, "archived_by": actor, "archived_at": _now(),
                                 "archive_reason": reason}},
           move=None,
           event={"action": "archive", "llm_version": record.number, "previous_champion": view.champion, "actor": actor,
                  "reason": reason, "gate": None})
    return _current(settings).version(record.number)


def _current(settings) -> VersionsOverview:
    view = overview(settings)
    if not view.versions:
        raise VersionError(f"the MLflow registry has no LLM versions of {view.registry_name} yet: train one first")
    return view


def _number(version) -> str:
    text = str(version).strip().removeprefix("v")
    if not text.isdigit():
        raise VersionError(f"{version!r} is not a version number")
    return str(int(text))


def _actor(actor) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise VersionError("who is acting must be named")
    return actor.strip()


def _reason(reason) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise VersionError("the reason must be text")
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        raise VersionError(f"the reason is {len(reason):,} characters long; the limit is {MAX_REASON_CHARS:,}")
    return reason or None


def _demoted(view: VersionsOverview) -> dict[str, dict]:
    """The champion giving way goes back to candidate (a status recorded otherwise stays as it is)."""
    if view.champion is None:
        return {}
    recorded = view.version(view.champion).recorded_status
    return {view.champion: {VERSION_STATUS_TAG: CANDIDATE}} if recorded in (None, DEPLOYED, CANDIDATE) else {}


def _check_loadable(settings, client, number: str) -> None:
    """The chat must be able to load the version: lineage tags readable, every adapter of the chain present, and on
    llama.cpp (the chat's default runtime) a checked GGUF export, or the chat's explanations would all fail."""
    try:
        version = registry_version(settings.llm_registry_name, number, settings.tracking_uri, settings.mlflow_registry_uri)
    except LlmError as error:
        raise VersionError(f"{settings.llm_registry_name}/{number} cannot be served: {error}") from None
    except Exception as error:  # the store itself failed
        raise VersionError(f"cannot check {settings.llm_registry_name}/{number}: {mlflow_problem(error)}") from None
    if settings.llm_backend == "llama_cpp" and (problem := gguf_problem(settings, version)):
        raise VersionError(f"the chat runs llama.cpp and cannot serve it: {problem}")
    while version is not None and version.number is not None:
        try:
            present = client.list_artifacts(version.run_id, ADAPTER_ARTIFACT)
        except Exception as error:  # the store's own errors vary; all mean "cannot check"
            raise VersionError(f"cannot check the {ADAPTER_ARTIFACT}/ artifact of {version.label}: {mlflow_problem(error)}") from None
        if not present:
            raise VersionError(f"{version.label} cannot be served: its run {version.run_id} has no {ADAPTER_ARTIFACT}/ artifact")
        version = version.parent


def _apply(settings, client, view: VersionsOverview, *, tags: dict[str, dict], move, event: dict) -> None:
    """Write the version tags, the history run, then move the alias (the moment the chat's model changes).
    If any write fails, the ones already made are undone, so the registry is as it was."""
    undo = []
    try:
        for number, values in tags.items():
            old = _version_tags(client, view.registry_name, number)
            for key, value in values.items():
                undo.append(lambda n=number, k=key, v=old.get(key): _restore_tag(client, view.registry_name, n, k, v))
                if value is not None:
                    client.set_model_version_tag(view.registry_name, number, key, str(value))
                elif key in old:
                    client.delete_model_version_tag(view.registry_name, number, key)
        run_id = _record_event(settings, client, view.registry_name, event)
        undo.append(lambda: client.delete_run(run_id))
        if move is not None:
            move()
    except BaseException as error:
        for step in reversed(undo):
            try:
                step()
            except Exception:  # noqa: BLE001,S110 - best effort: the first failure is what the admin must see
                pass
        if isinstance(error, Exception):
            raise VersionError(f"{event['action']} not done, MLflow failed: {mlflow_problem(error)}") from None
        raise


def _version_tags(client, name: str, number: str) -> dict:
    return dict(client.get_model_version(name, number).tags or {})


def _restore_tag(client, name: str, number: str, key: str, value: str | None) -> None:
    if value is None:
        try:
            client.delete_model_version_tag(name, number, key)
        except Exception:  # noqa: BLE001,S110 - absent already
            pass
    else:
        client.set_model_version_tag(name, number, key, value)


def _record_event(settings, client, name: str, event: dict) -> str:
    experiment_id = ensure_experiment(client, settings, HISTORY_EXPERIMENT)
    tags = {key: str(value) for key, value in event.items() if value is not None} | {"registry_name": name}
    run = client.create_run(experiment_id, run_name=f"{event['action']} {target_text(name, event['llm_version'])}", tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(milliseconds: int | None) -> str | None:
    if not milliseconds:
        return None
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")


def mlflow_problem(error: Exception) -> str:
    """An MLflow failure in one line: MLflow's own message, else the error's type and first line."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return first_line(error.message)
    return f"{type(error).__name__}: {first_line(error)}"


def first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
