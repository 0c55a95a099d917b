"""What the chat page shows of an answer, built from the stored answer record and its run (plain data, no Streamlit)."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from engine.answering.citations import render_answer_markdown, resolve_citations
from engine.answering.records import answer_label, answer_times
from engine.core.markdown import escape_markdown
from engine.registry.metric_keys import display_order, metric_spec


def candidates_frame(record) -> pd.DataFrame:
    """One row per candidate: standing, alias and every metric it logged, formatted with its unit."""
    standing = {row["name"]: row for row in record.decision.get("candidates", [])}
    metrics = display_order(name for c in record.candidates for name in c["metrics"])
    rows = []
    for candidate in record.candidates:
        decided = standing.get(candidate["name"], {})
        row = {
            "model": candidate["name"],
            "version": candidate["version"] + (" (champion)" if candidate.get("alias") == "champion" else ""),
            "family": candidate.get("family") or "",
            "passes hard criteria": "yes" if decided.get("passes_hard") else "no",
            "standing": decided.get("standing", ""),
        }
        for name in metrics:
            value = candidate["metrics"].get(name)
            row[metric_spec(name).label] = metric_spec(name).format(value) if value is not None else "—"
        rows.append(row)
    order = [row["name"] for row in record.decision.get("candidates", [])]
    rows.sort(key=lambda row: order.index(row["model"]) if row["model"] in order else len(order))
    return pd.DataFrame(rows)


def criteria_frame(record) -> pd.DataFrame:
    """One row per candidate and criterion: the value, the rule and whether it holds."""
    rows = []
    for candidate in record.decision.get("candidates", []):
        for check in candidate["checks"]:
            value = check["value"]
            if value is not None:  # written as everywhere else; answers stored before "metric" was recorded: %g
                value = metric_spec(check["metric"]).format(value) if "metric" in check else f"{value:g}"
            rows.append({"model": candidate["name"], "criterion": check["criterion"], "value": value or "missing",
                         "result": "pass" if check["passed"] else "FAIL"})
    return pd.DataFrame(rows)


def answer_caption(record) -> str:
    """Who wrote the answer (the LLM version's name comes from MLflow) and how long it took, as safe markdown."""
    return escape_markdown(f"{answer_label(record.answer_origin, record.explanation_state, record.llm_version)} · "
                           f"{answer_times(record.timings)} · answer #{record.id}")



def rendered_sentences(connection, answer: str, run) -> Iterator[str]:
    """The explanation's verified sentences as safe markdown, numbered as the whole answer numbers its sources."""
    shown = answer
    for sentence in run:
        shown += "\n\n" + sentence if shown == answer else sentence
        yield render_answer_markdown(sentence, resolve_citations(connection, shown, log=False))
