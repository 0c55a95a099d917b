"""The writes to the LLM versions catalog: which version the chat serves, and which ones are retired.

Promoting, rolling back and archiving are admin actions (`engine.access.roles.require_admin`). Promotion needs a GO
verdict or a written reason. Rollback returns to the champion the current one replaced
(and again to the one before, since each promotion remembers its own predecessor). Every refusal is a
`VersionError` of one line, raised before anything is written; a write that fails midway is undone.

Apart from reading (engine.lifecycle.version_catalog) because these are the only writes: the admin check, the
refusals and the undo on failure all live here and nowhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from engine.access.roles import require_admin
from engine.core.mlflow_client import ensure_experiment, registry_client
from engine.lifecycle.version_catalog import overview
from engine.lifecycle.version_records import (
    ARCHIVED,
    DEPLOYED,
    FAILED,
    HISTORY_EXPERIMENT,
    MAX_REASON_CHARS,
    VersionError,
    VersionRecord,
    VersionsOverview,
    mlflow_problem,
    target_text,
)
from engine.llm.backend_contract import LlmError
from engine.llm.gguf import gguf_problem
from engine.llm.versions import ADAPTER_ARTIFACT, BASE, CANDIDATE, CHAMPION, VERSION_STATUS_TAG, registry_version


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
    client = registry_client(settings)
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
    client = registry_client(settings)
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
    client = registry_client(settings)
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
