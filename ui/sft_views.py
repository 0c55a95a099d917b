"""What the SFT data page shows and how its review table's edits are applied, as plain functions tests can call."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from training.sft_data import REVIEW_STATES, SftDataError, SftDataset, SftPair, edit_pair, review_pairs
from training.sft_knowledge_pairs import source_groups
from training.sft_pair_checks import DROP_REASONS

REVIEW_COLUMNS = ("id", "decision", "style", "question", "output", "sources", "generator", "edited")


@dataclass
class ReviewChange:
    decided: dict[str, int] = field(default_factory=dict)  # review state -> pairs moved to it
    edited: int = 0
    problems: list[str] = field(default_factory=list)  # one per refused row; the other rows were applied

    @property
    def summary(self) -> str:
        moves = ", ".join(f"{count} {state}" for state, count in self.decided.items() if count)
        return "; ".join(part for part in (moves, f"{self.edited} edited" if self.edited else "") if part) or "nothing changed"


def generator_label(config: dict) -> str:
    if config.get("endpoint"):
        return f"{config.get('model')} at {config['endpoint']}"
    if config.get("llm_version"):
        return f"LLM version {config['llm_version']} (in process)"
    return "composer only"


def datasets_frame(datasets: list[SftDataset]) -> pd.DataFrame:
    return pd.DataFrame([{
        "name": d.name, "state": d.state, "pending": d.pending, "accepted": d.accepted, "rejected": d.rejected,
        "dropped": d.dropped, "styles": ", ".join(f"{style} {count}" for style, count in d.styles.items()),
        "generator": generator_label(d.config), "created": d.created_at.replace("T", " ")[:16],
        "by": d.created_by or "", "last export": d.exported_hash or "",
    } for d in datasets])


def drops_frame(dataset: SftDataset) -> pd.DataFrame:
    return pd.DataFrame([{"reason": reason, "dropped": count, "meaning": DROP_REASONS.get(reason, "")}
                         for reason, count in sorted(dataset.drops.items(), key=lambda item: -item[1])])


def pairs_frame(pairs: list[SftPair]) -> pd.DataFrame:
    """The review table: a recommendation pair shows its user question (its instruction is the chat's whole prompt)."""
    return pd.DataFrame([{
        "id": p.id, "decision": p.state, "style": p.style, "question": p.question if p.style == "recommendation" else p.instruction,
        "output": p.output, "sources": ", ".join(p.source_ids), "generator": p.generator, "edited": p.edited,
    } for p in pairs], columns=list(REVIEW_COLUMNS))


def apply_review(connection, name: str, shown: list[SftPair], rows: list[dict]) -> ReviewChange:
    """Apply the review table's rows (decision and output edits) to the pairs shown; a row that cannot be applied
    (an edit citing an unknown source, say) is reported and left as it was."""
    by_id = {pair.id: pair for pair in shown}
    change, moves = ReviewChange(), {state: [] for state in REVIEW_STATES}
    for row in rows:
        pair = by_id.get(int(row["id"]))
        if pair is None:
            continue
        output = str(row.get("output") or "").strip()
        if output != pair.output:
            try:
                edit_pair(connection, pair.id, output=output)
                change.edited += 1
            except SftDataError as error:
                change.problems.append(f"pair {pair.id}: {error}")
                continue
        if row.get("decision") != pair.state and row.get("decision") in REVIEW_STATES:
            moves[row["decision"]].append(pair.id)
    for state, ids in moves.items():
        if ids:
            change.decided[state] = review_pairs(connection, name, ids, state)
    return change


def source_options(connection) -> dict[str, str]:
    """Each source the sampler draws from (engine: training.sft_knowledge_pairs.source_group) -> a label with its size."""
    groups = source_groups(connection)
    titles = dict(connection.execute("SELECT id, title FROM documents").fetchall())
    labels = {}
    for key, ids in sorted(groups.items()):
        kind, _, value = key.partition(":")
        title = titles.get(int(value), value) if kind == "document" else f"table {value}"
        labels[key] = f"{title} ({len(ids)} chunk{'s' if len(ids) != 1 else ''})"
    return labels
