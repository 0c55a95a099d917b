"""The LLM versions page's tables and the times they show, as plain rows (tested without Streamlit).

Apart from the catalog (engine.lifecycle.version_catalog) because how a version is laid out for a reader is the
page's and the CLI's concern, not the run-time domain's.
"""

from __future__ import annotations

from engine.lifecycle.version_records import VersionRecord, VersionsOverview
from engine.llm.versions import BASE
from ui.formatting import format_time

# the evaluation's metrics in the order they are shown; others follow alphabetically
METRIC_ORDER = ("accuracy", "citation_presence", "citation_correctness", "refusal_accuracy", "latency_p50_ms",
                "latency_p95_ms", "domain_perplexity", "general_perplexity", "recommendation_agreement")


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


