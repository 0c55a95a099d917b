"""Evaluations in MLflow: one run per (evaluation, LLM version) in the experiment `deploywise-evaluation`, and the
gate's verdict on the registry's model version. Read back for the Evaluation page's comparison and history.

A run holds:
- tags `evaluation_id`, `llm_version` ("base" or the version number), `llm_label`, `verdict` (GO | NO-GO),
  `verdict_reasons` (JSON list), `snapshot_id`, `golden_path`, `golden_sha256`, `items_evaluated`, `items_total`;
- params: the gate's thresholds (`gate.<key>`), `max_new_tokens`, `perplexity_sequence_length`;
- metrics: domain_perplexity, general_perplexity (and their `_change_pct` against the base model), accuracy,
  static_accuracy, dynamic_accuracy, `accuracy_<category>`, citation_presence, citation_correctness,
  refusal_accuracy, agreement, shown_accuracy, explanation_kept_rate, explanation_shown_rate, latency_p50_ms, latency_p95_ms, item counts;
- the artifact `items.json`: every golden item with the version's answer and each check.

Contract with the LLM versions page (engine/lifecycle/version_catalog.py): an evaluated registry version gets the model version
tags `gate_verdict` (GO | NO-GO), `gate_evaluation_id` and `gate_reasons` (JSON list of strings), written by an
evaluation on the whole golden set; a quick one on chosen items (which can only say NO-GO) is logged as a run but
leaves the version's gate as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine.core.mlflow_client import ensure_experiment, registry_client, store_missing
from engine.registry.mlflow_candidates import all_pages
from eval.perplexity import SEQUENCE_LENGTH

EXPERIMENT = "deploywise-evaluation"
ITEMS_ARTIFACT = "items.json"
MAX_TAG_CHARS = 4_000  # below MLflow's limits for run (8,000) and model version (5,000) tag values


def reasons_json(reasons) -> str:
    """A JSON list of reasons that fits a tag: the last reasons give way, never the JSON."""
    reasons = [str(reason)[:500] for reason in reasons]
    while len(text := json.dumps(reasons)) > MAX_TAG_CHARS:
        reasons = reasons[:-1]
    return text


def log_version(plan, result) -> str:
    """The version's run (all or nothing: a failed write deletes it), then the gate tags of a registry version."""
    from mlflow.entities import Metric, Param

    settings, planned = plan.settings, result.planned
    client = registry_client(settings)
    experiment_id = ensure_experiment(client, settings, EXPERIMENT)
    scored = sum(1 for item in result.items if item.status == "scored")
    tags = {
        "evaluation_id": plan.evaluation_id, "llm_version": planned.wanted, "llm_label": result.llm_label,
        "verdict": result.verdict.verdict, "verdict_reasons": reasons_json(result.verdict.reasons),
        "snapshot_id": plan.snapshot_id, "golden_path": str(plan.golden.path)[-500:], "golden_sha256": plan.golden.sha256,
        "items_evaluated": str(scored), "items_total": str(len(plan.golden.items)), "base_model": planned.version.base_model,
    }
    if plan.created_by:
        tags["evaluated_by"] = plan.created_by
    run_id = client.create_run(experiment_id, run_name=f"{plan.evaluation_id} {planned.label}", tags=tags).info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(f"gate.{key}", str(value)) for key, value in plan.gate.to_dict().items()]
        params += [Param("max_new_tokens", str(plan.max_new_tokens)), Param("perplexity_sequence_length", str(SEQUENCE_LENGTH))]
        client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in sorted(result.metrics.items())],
                         params=params)
        client.log_dict(run_id, {"evaluation_id": plan.evaluation_id, "llm_version": planned.wanted,
                                 "items": [item.to_dict() for item in result.items]}, ITEMS_ARTIFACT)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.delete_run(run_id)
        raise
    if planned.version.number is not None and not plan.subset:  # a quick look at some items never changes the gate
        tag_model_version(settings, planned.version.registry_name, planned.version.number,
                          {"gate_verdict": result.verdict.verdict, "gate_evaluation_id": plan.evaluation_id,
                           "gate_reasons": reasons_json(result.verdict.reasons)})
    return run_id


def tag_model_version(settings, name: str, number: str, tags: dict[str, str]) -> None:
    """Set the gate tags together: if one cannot be written, the ones before it are put back."""
    client = registry_client(settings)
    before = client.get_model_version(name, number).tags
    written = []
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, number, key, value)
            written.append(key)
    except BaseException:
        for key in written:
            if key in before:
                client.set_model_version_tag(name, number, key, before[key])
            else:
                client.delete_model_version_tag(name, number, key)
        raise


# --- reading back ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedVersion:
    """One version's run of an evaluation, as MLflow holds it."""
    run_id: str
    evaluation_id: str
    llm_version: str  # "base" or the number
    llm_label: str
    verdict: str | None
    reasons: tuple[str, ...]
    metrics: dict[str, float]
    tags: dict[str, str]
    finished_at: datetime | None

    @property
    def label(self) -> str:
        return "base" if self.llm_version == "base" else f"v{self.llm_version}"


@dataclass(frozen=True)
class EvaluationSummary:
    evaluation_id: str
    finished_at: datetime | None
    versions: tuple[LoggedVersion, ...] = field(default_factory=tuple)


def _version_order(logged: LoggedVersion) -> tuple:
    return (logged.llm_version != "base", int(logged.llm_version) if logged.llm_version.isdigit() else 0)


def _logged(run) -> LoggedVersion:
    tags = dict(run.data.tags)
    try:
        reasons = tuple(str(r) for r in json.loads(tags.get("verdict_reasons") or "[]"))
    except ValueError:
        reasons = (tags.get("verdict_reasons", ""),)
    end = run.info.end_time or run.info.start_time
    return LoggedVersion(run.info.run_id, tags.get("evaluation_id", ""), tags.get("llm_version", "?"),
                         tags.get("llm_label", ""), tags.get("verdict"), reasons, dict(run.data.metrics), tags,
                         datetime.fromtimestamp(end / 1000, UTC) if end else None)


def _runs(settings, filter_string: str = "") -> list:
    if store_missing(settings, registry=False):  # runs live in the tracking store, whatever the registry
        return []
    client = registry_client(settings)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return all_pages(client.search_runs, experiment_ids=[experiment.experiment_id], filter_string=filter_string,
                     order_by=["attributes.start_time DESC"])


def evaluation_history(settings, limit: int = 100) -> list[EvaluationSummary]:
    """Past evaluations, newest first, each with its versions' runs (base first, then by number)."""
    grouped: dict[str, list[LoggedVersion]] = {}
    for run in _runs(settings, "attributes.status = 'FINISHED'"):
        logged = _logged(run)
        if logged.evaluation_id:
            grouped.setdefault(logged.evaluation_id, []).append(logged)
    summaries = [EvaluationSummary(evaluation_id, max((v.finished_at for v in versions if v.finished_at), default=None),
                                   tuple(sorted(versions, key=_version_order)))
                 for evaluation_id, versions in grouped.items()]
    summaries.sort(key=lambda s: (s.finished_at or datetime.min.replace(tzinfo=UTC), s.evaluation_id), reverse=True)
    return summaries[:limit]


def load_evaluation(settings, evaluation_id: str) -> tuple[LoggedVersion, ...]:
    quoted = evaluation_id.replace("'", "")
    runs = _runs(settings, f"tags.evaluation_id = '{quoted}' and attributes.status = 'FINISHED'")
    return tuple(sorted((_logged(run) for run in runs), key=_version_order))


def load_items(settings, run_id: str) -> list[dict]:
    """The per-item results of one version's run (the items.json artifact)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar in the server's log per read
    with tempfile.TemporaryDirectory(prefix="deploywise-items-") as folder:
        path = registry_client(settings).download_artifacts(run_id, ITEMS_ARTIFACT, folder)
        return json.loads(Path(path).read_text(encoding="utf-8"))["items"]
