"""What the Evaluation page shows, as plain functions: version choices, the running evaluations, the side-by-side
comparison, the chart data, the per-item drill-down and the history. No Streamlit here; the page lays it out."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from engine.core.markdown import escape_markdown
from engine.llm.versions import LlmVersion
from ui.formatting import format_eta, format_time
from ui.retraining_inputs import llm_versions

POLL_SECONDS = 3.0
SHARE, PERPLEXITY, MILLISECONDS, COUNT, PERCENT = "share", "perplexity", "ms", "count", "pct"
# The comparison table's rows, in order: metric, label, kind (how it is written)
ROWS = (
    ("domain_perplexity", "domain perplexity (held-out team text)", PERPLEXITY),
    ("domain_perplexity_change_pct", "domain perplexity vs base", PERCENT),
    ("general_perplexity", "general perplexity (held-out replay text)", PERPLEXITY),
    ("general_perplexity_change_pct", "general perplexity vs base (forgetting)", PERCENT),
    ("accuracy", "accuracy", SHARE),
    ("static_accuracy", "accuracy on document facts (static)", SHARE),
    ("dynamic_accuracy", "accuracy on registry facts (dynamic)", SHARE),
    ("citation_presence", "citation presence", SHARE),
    ("citation_correctness", "citation correctness", SHARE),
    ("refusal_accuracy", "refusal accuracy", SHARE),
    ("agreement", "agreement with the decision engine", SHARE),
    ("explanation_kept_rate", "explanations kept whole (every sentence verified)", SHARE),
    ("explanation_shown_rate", "explanations shown at least in part", SHARE),
    ("fallback_rate", "answers replaced by the composed one (evaluations before explanations)", SHARE),
    ("shown_accuracy", "accuracy of what users were shown", SHARE),
    ("latency_p50_ms", "latency p50", MILLISECONDS),
    ("latency_p95_ms", "latency p95", MILLISECONDS),
    ("items_scored", "golden items scored", COUNT),
    ("items_skipped", "golden items skipped", COUNT),
)


def formatted(kind: str, value: float | None) -> str:
    if value is None:
        return "—"
    return {SHARE: f"{value:.0%}", PERPLEXITY: f"{value:,.2f}", MILLISECONDS: f"{value:,.0f} ms", COUNT: f"{value:,.0f}",
            PERCENT: f"{value:+.1f}%"}[kind]


def version_options(settings) -> dict[str, str]:
    """Versions one can evaluate (value -> label): the base model, then the registry's versions, newest first."""
    options = {"base": f"base model ({LlmVersion(settings.base_model).label.removeprefix('base:')})"}
    options |= {v.number: v.label for v in llm_versions(settings)}
    return options


def default_versions(options: dict[str, str]) -> list[str]:
    """The base and the newest version: the comparison an admin makes after a training job."""
    return list(options)[:2]


# --- evaluations under way ----------------------------------------------------------------------------------------


def unfinished(jobs) -> bool:
    return any(not job.finished for job in jobs)


def eta_seconds(job, now: datetime | None = None) -> float | None:
    """Time left at the pace so far (every step counts the same; answers dominate)."""
    done, total = job.progress.get("done", 0), job.progress.get("total", 0)
    if job.finished or not job.started_at or not done or not total:
        return None
    elapsed = ((now or datetime.now(UTC)) - datetime.fromisoformat(job.started_at)).total_seconds()
    return elapsed / done * (total - done)


def progress_text(job, now: datetime | None = None) -> str:
    text = f"{job.progress.get('done', 0)}/{job.progress.get('total') or '?'} · {job.progress.get('message', '')}"
    eta = eta_seconds(job, now)
    return text + (f" · about {format_eta(eta)} left" if eta is not None else "")


def jobs_frame(jobs) -> pd.DataFrame:
    rows = []
    for job in jobs:
        verdicts = ", ".join(f"{r['label']}: {r['verdict']}" for r in job.results)
        rows.append({"evaluation": job.id, "state": job.state, "versions": ", ".join(job.request.get("versions", [])),
                     "progress": f"{job.progress.get('done', 0)}/{job.progress.get('total') or '?'}",
                     "verdicts": verdicts, "started": format_time(job.created_at),
                     "by": job.created_by or "", "problem": job.error or ""})
    return pd.DataFrame(rows, columns=["evaluation", "state", "versions", "progress", "verdicts", "started", "by", "problem"])


# --- results ------------------------------------------------------------------------------------------------------


def history_label(summary) -> str:
    verdicts = ", ".join(f"{v.label} {v.verdict or '?'}" for v in summary.versions)
    return f"{summary.evaluation_id} · {format_time(summary.finished_at)} · {verdicts}"


def history_frame(history) -> pd.DataFrame:
    rows = []
    for summary in history:
        first = summary.versions[0] if summary.versions else None
        rows.append({
            "evaluation": summary.evaluation_id, "finished": format_time(summary.finished_at),
            "versions": ", ".join(v.label for v in summary.versions),
            "verdicts": ", ".join(f"{v.label}: {v.verdict or '?'}" for v in summary.versions),
            "golden items": f"{first.tags.get('items_evaluated', '?')}/{first.tags.get('items_total', '?')}" if first else "",
            "snapshot": first.tags.get("snapshot_id", "") if first else "",
            "by": first.tags.get("evaluated_by", "") if first else "",
        })
    return pd.DataFrame(rows, columns=["evaluation", "finished", "versions", "verdicts", "golden items", "snapshot", "by"])


def comparison_frame(versions) -> pd.DataFrame:
    """Metrics as rows, versions side by side as columns, written for reading; per-category accuracy at the end."""
    categories = sorted({key for v in versions for key in v.metrics if key.startswith("accuracy_")})
    rows = [*ROWS, *((key, f"accuracy: {key.removeprefix('accuracy_').replace('_', ' ')}", SHARE) for key in categories)]
    data = {"metric": [label for key, label, kind in rows if any(key in v.metrics for v in versions)]}
    for version in versions:
        data[f"{version.label} ({version.verdict or '?'})"] = [formatted(kind, version.metrics.get(key))
                                                               for key, label, kind in rows
                                                               if any(key in v.metrics for v in versions)]
    return pd.DataFrame(data)


def perplexity_change_frame(versions) -> pd.DataFrame:
    """% change of each version's perplexities against its base model's (on the same held-out text)."""
    rows = {v.label: {"domain": v.metrics.get("domain_perplexity_change_pct"),
                      "general (forgetting)": v.metrics.get("general_perplexity_change_pct")}
            for v in versions if v.llm_version != "base"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("version") if rows else pd.DataFrame()


def category_frame(versions) -> pd.DataFrame:
    """Accuracy per golden category (rows) for each version (columns), as shares."""
    categories = sorted({key for v in versions for key in v.metrics if key.startswith("accuracy_")})
    frame = pd.DataFrame({v.label: [v.metrics.get(key) for key in categories] for v in versions},
                         index=[key.removeprefix("accuracy_").replace("_", "-") for key in categories])
    return frame.rename_axis("category")


def latency_frame(versions) -> pd.DataFrame:
    rows = {v.label: {"p50 (ms)": v.metrics.get("latency_p50_ms"), "p95 (ms)": v.metrics.get("latency_p95_ms")}
            for v in versions if "latency_p50_ms" in v.metrics}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("version") if rows else pd.DataFrame()


def _mark(item: dict | None) -> str:
    if item is None:
        return ""
    if item.get("status") == "skipped":
        return "skipped"
    correct = item.get("refused") if item.get("type") == "refusal" else item.get("accurate")
    return "✓" if correct else "✗"


def items_frame(items_by_version: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per golden item: its category and question, then ✓/✗ per version."""
    order: dict[str, dict] = {}
    for items in items_by_version.values():
        for item in items:
            order.setdefault(item["id"], item)
    by_version = {label: {item["id"]: item for item in items} for label, items in items_by_version.items()}
    rows = []
    for item_id, item in order.items():
        row = {"item": item_id, "type": item["type"], "category": item["category"], "question": item["question"]}
        row |= {label: _mark(found.get(item_id)) for label, found in by_version.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def explanation_state(item: dict) -> str:
    """'kept', 'partial', 'dropped', 'failed', or 'none' (the LLM was not asked); an item of an evaluation made
    before explanations, which has an answer `origin` instead, is 'none'."""
    return item.get("explanation_state") or "none"


def origin_text(item: dict) -> str:
    """What produced the item's scored text, in a few words: the explanation's outcome (an older evaluation's
    answer origin as it was recorded)."""
    if "explanation_state" not in item and item.get("origin"):
        return item["origin"]
    state = explanation_state(item)
    return f"explanation {state}" if state != "none" else "no explanation"


def item_detail(items_by_version: dict[str, list[dict]], item_id: str) -> list[dict]:
    """The item as each version answered it: verdict, the LLM's explanation draft, what was shown, facts found,
    citations, latency, and why the explanation was cut."""
    details = []
    for label, items in items_by_version.items():
        item = next((i for i in items if i["id"] == item_id), None)
        if item is None:
            continue
        facts = [{"fact": " | ".join(f["fact"]), "found": "✓" if f["found"] else "✗"} for f in item.get("facts", [])]
        details.append({
            "version": label, "mark": _mark(item), "status": item.get("status"), "skip_reason": item.get("skip_reason"),
            "explanation_state": explanation_state(item), "sentences_kept": item.get("sentences_kept", 0),
            "origin": origin_text(item), "llm_asked": item.get("llm_asked"), "answer": item.get("answer", ""),
            "shown": item.get("shown", ""), "facts": facts, "cited": item.get("cited", []),
            "expected_sources": item.get("expected_sources", []), "unknown_cited": item.get("unknown_cited", []),
            "recommended": item.get("recommended_in_answer"), "expected_recommendation": item.get("expected_recommendation"),
            "contradiction": item.get("contradiction"), "latency": formatted(MILLISECONDS, item.get("latency_ms")),
            "problems": item.get("verification_problems", []),
        })
    return details


def item_label(row: dict) -> str:
    return f"{row['item']} · {row['category']} · {row['question'][:90]}"


def citation_caption(detail: dict) -> str:
    cited = ", ".join(detail["cited"]) or "nothing"
    text = f"cited: {cited} · expected one of: {', '.join(detail['expected_sources']) or '—'}"
    if detail["unknown_cited"]:
        text += f" · unknown: {', '.join(detail['unknown_cited'])}"
    if detail["recommended"] or detail["expected_recommendation"]:
        text += f" · recommends {detail['recommended'] or 'nothing'} (decision: {detail['expected_recommendation'] or 'nothing'})"
    return escape_markdown(text)
