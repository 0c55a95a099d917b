"""What the Knowledge page shows and does, as plain functions: table rows, captions and warnings, registry
validation, table imports, the reviewed rules' editor.

Pages keep only widgets and layout; everything here runs (and is tested) without a browser or Streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from engine.core.markdown import escape_markdown
from engine.core.workers import Progress
from engine.knowledge.ingest import FileOutcome, ingest_files
from engine.knowledge.knowledge_base import StoredChunk, StoredDocument
from engine.knowledge.search import SearchHit
from engine.knowledge.sources import CSV_COLUMNS, Source, replace_sources, sources_from_rows
from engine.registry.metric_keys import metric_spec
from engine.rules.criteria import NO_USE_CASE, AcceptanceCriterion, CriteriaError, UseCasePolicy
from engine.rules.proposed_rules import UNREAD


def upload_limit_mb(settings) -> int:
    """The uploader widget takes whole megabytes; ingestion still enforces the exact byte limit."""
    return max(1, math.ceil(settings.max_upload_mb))


def ingest_uploads(kb, chunker, uploads, max_bytes: int, on_progress: Progress | None = None) -> list[FileOutcome]:
    """Ingest uploaded files (anything with `.name` and `.getvalue()`, like Streamlit's UploadedFile)."""
    files = [(upload.name, upload.getvalue()) for upload in uploads]
    return ingest_files(kb, chunker, files, max_bytes=max_bytes, on_progress=on_progress)


def progress_reporter(bar):
    """The `on_progress` of an ingestion or a table import, drawn on a progress bar (anything with `.progress`)."""
    def report(done: int, total: int, message: str) -> None:
        bar.progress(done / total if total else 1.0, text=escape_markdown(message))  # messages name files and tables

    return report


def file_outcome_rows(outcomes: Iterable[FileOutcome]) -> list[dict]:
    return [
        {"file": o.name, "status": o.status, "chunks": o.chunk_count, "error": o.error or ""}
        for o in outcomes
    ]


def ingest_summary(outcomes: Iterable[FileOutcome]) -> str:
    """'3 files: 2 added, 1 failed' — counts per status in a fixed order."""
    outcomes = list(outcomes)
    counts = {status: sum(o.status == status for o in outcomes) for status in ("added", "updated", "unchanged", "failed")}
    parts = [f"{count} {status}" for status, count in counts.items() if count]
    return f"{len(outcomes)} file{'s' if len(outcomes) != 1 else ''}: {', '.join(parts) or 'nothing to do'}"


def document_label(document: StoredDocument) -> str:
    return f"{document.title} (#{document.id}, {document.chunk_count} chunks)"


def chunk_label(chunk: StoredChunk) -> str:
    return f"#{chunk.id} · {chunk.document_title} · chunk {chunk.chunk_index + 1}"


def chunk_page(
    kb, *, document_id: int | None, source_domain: str | None, contains: str, page: int, page_size: int
) -> tuple[list[StoredChunk], bool]:
    """One page (1-based) of filtered chunks, and whether another page follows (one extra row tells)."""
    rows = kb.chunks(
        document_id=document_id,
        source_domain=source_domain,
        contains=contains.strip() or None,
        limit=page_size + 1,
        offset=(page - 1) * page_size,
    )
    return rows[:page_size], len(rows) > page_size


def chunk_range_caption(page: int, page_size: int, shown: int, more: bool) -> str:
    """'Chunks 21–40 · more on the next page': which of the filtered chunks a page shows."""
    first = (page - 1) * page_size + 1
    return f"Chunks {first}–{first + shown - 1}" + (" · more on the next page" if more else "")


def chunk_rows(chunks: Iterable[StoredChunk], preview_chars: int = 160) -> list[dict]:
    return [
        {
            "id": c.id,
            "document": c.document_title,
            "chunk": c.chunk_index + 1,
            "source id": c.source_id,
            "tokens": c.token_count,
            "edited": c.edited,
            "text": c.text if len(c.text) <= preview_chars else c.text[:preview_chars] + "…",
        }
        for c in chunks
    ]


def hit_caption(hit: SearchHit) -> str:
    """Why a chunk ranked where it did: the fused score and its rank in each list ('—' when absent)."""
    keyword = hit.keyword_rank if hit.keyword_rank is not None else "—"
    vector = hit.vector_rank if hit.vector_rank is not None else "—"
    return f"score {hit.score:.4f} · keyword rank {keyword} · vector rank {vector}"


def registry_table(sources: Iterable[Source]) -> pd.DataFrame:
    """The registry as the editor's table; string columns even when empty, so new rows take text."""
    rows = [{"source_id": s.source_id, "display_name": s.display_name, "url": s.url, "kind": s.kind, "internal": s.internal}
            for s in sources]
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS), dtype=object)
    return table.astype({"internal": bool})


def registry_rows_to_sources(rows: Iterable[dict]) -> tuple[list[Source], list[str]]:
    """Check every edited registry row; each problem names its row (1-based, as shown)."""
    return sources_from_rows((f"row {number}", row) for number, row in enumerate(rows, start=1))


@dataclass(frozen=True)
class RegistryChange:
    written: int
    deleted: int


def save_registry(connection, previous: list[Source], edited: list[Source]) -> RegistryChange:
    """Store only what changed: new or edited rows are upserted, rows the admin removed are deleted."""
    before = {source.source_id: source for source in previous}
    changed = [source for source in edited if before.get(source.source_id) != source]
    removed = sorted(set(before) - {source.source_id for source in edited})
    return RegistryChange(*replace_sources(connection, changed, removed))


def detection_rows(plan) -> list[dict]:
    """One row per column: its type, whether it was detected as text, and why."""
    types = {column.name: column.type_name for column in plan.columns}
    return [
        {"column": choice.name, "type": types.get(choice.name, ""), "text": choice.is_text, "reason": choice.reason}
        for choice in plan.detection
    ]


def table_import_summary(outcomes: list) -> str:
    """'2 tables: 40 rows read, 37 added, 0 updated, 2 unchanged, 1 skipped, 0 failed, 3 removed' — totals over the tables."""
    fields = ("rows_read", "added", "updated", "unchanged", "skipped", "failed", "removed")
    totals = {field: sum(getattr(o, field) for o in outcomes) for field in fields}
    counts = ", ".join(f"{totals[field]} {field.replace('_', ' ')}" for field in fields)
    return f"{len(outcomes)} table{'s' if len(outcomes) != 1 else ''}: {counts}"


def table_outcome_rows(outcomes: Iterable) -> list[dict]:
    return [
        {
            "table": o.table,
            "rows read": o.rows_read,
            "added": o.added,
            "updated": o.updated,
            "unchanged": o.unchanged,
            "skipped": o.skipped,
            "failed": o.failed,
            "removed": o.removed,
            "errors": "; ".join(o.errors),
        }
        for o in outcomes
    ]


CRITERIA_COLUMNS = ("metric", "comparison", "threshold", "hard", "source_id", "sentence", "rationale")
DIRECTIONS = {"higher is better": True, "lower is better": False, "the metric's own": None}
FROM_TEXT = "(from its text)"  # the assignment choice that lets a document's own words decide
NONE_CHOICE = "(no use case)"
BETTER_IS = {"higher": True, "lower": False, "not set": None}  # the metric-direction form's choices, as stored


def criteria_table(criteria) -> pd.DataFrame:
    return pd.DataFrame([{column: getattr(c, column) for column in CRITERIA_COLUMNS} for c in criteria], columns=CRITERIA_COLUMNS)


@dataclass(frozen=True)
class PolicyFields:
    """The Criteria tab's ranking fields as typed (text and choices), before validation."""

    priority: str = ""
    priority_direction: str = "the metric's own"
    tie_breaker: str = ""
    tie_direction: str = "the metric's own"
    margin: str = ""
    relative: bool = False
    family_order: str = ""

    @classmethod
    def of(cls, policy: UseCasePolicy | None) -> PolicyFields:
        if policy is None:
            return cls()
        way = {value: label for label, value in DIRECTIONS.items()}
        return cls(policy.priority_metric, way[policy.priority_higher_is_better], policy.tie_breaker or "",
                   way[policy.tie_breaker_higher_is_better], "" if policy.near_best_margin is None else f"{policy.near_best_margin:g}",
                   policy.near_best_relative, ", ".join(policy.family_order))


def rules_from_editor(use_case: str, rows: list[dict], fields: PolicyFields, previous: UseCasePolicy | None = None):
    """The editor's rows and ranking fields as validated rules; the first malformed row raises CriteriaError naming it.

    The policy keeps citing the document the `previous` policy came from."""
    rules = []
    for number, row in enumerate(rows, start=1):
        if all(_blank(row.get(column)) for column in CRITERIA_COLUMNS):
            continue  # an added row left empty
        try:
            threshold = float(row.get("threshold"))
        except (TypeError, ValueError):
            raise CriteriaError(f"row {number}: threshold {row.get('threshold')!r} is not a number") from None
        try:
            rules.append(AcceptanceCriterion(
                use_case, str(row.get("metric") or "").strip(), str(row.get("comparison") or "").strip(), threshold,
                bool(row.get("hard")), str(row.get("source_id") or "").strip() or f"criteria:{use_case}",
                _text(row.get("rationale")), reviewed=True, sentence=_text(row.get("sentence")),
            ))
        except CriteriaError as error:
            raise CriteriaError(f"row {number}: {error}") from None
    policy = None
    if fields.priority.strip():
        try:
            margin = float(fields.margin) if fields.margin.strip() else None
        except ValueError:
            raise CriteriaError(f"near-best margin {fields.margin!r} is not a number") from None
        source = previous.source_id if previous else next((rule.source_id for rule in rules), f"criteria:{use_case}")
        policy = UseCasePolicy(
            use_case, fields.priority.strip(), fields.tie_breaker.strip() or None, source,
            reviewed=True, priority_higher_is_better=DIRECTIONS[fields.priority_direction],
            tie_breaker_higher_is_better=DIRECTIONS[fields.tie_direction], near_best_margin=margin,
            near_best_relative=fields.relative,
            family_order=tuple(part.strip() for part in fields.family_order.split(",") if part.strip()),
        )
    return rules, policy


def rules_state_caption(rules) -> str:
    """Where a use case's rules come from: an admin's review, its documents, or nowhere yet."""
    return escape_markdown({"reviewed": f"Reviewed by {rules.reviewed_by}: the documents below are shown, not used.",
                            "extracted": "As read from the documents, not reviewed yet.",
                            "none": "No rule found: " + rules.missing_text() + "."}[rules.state])


def conflict_warning(conflict) -> str:
    return escape_markdown(conflict.text + ". No model is recommended for this use case until you save reviewed rules.")


def unread_warning(unread) -> str:
    """A sentence that reads like a hard requirement but gave no rule: the use case is blocked until it is written."""
    return escape_markdown(f'"{unread.sentence}" ({unread.document}) reads like a hard requirement, but no rule on a logged '
                           "metric could be read from it. No model is recommended for this use case until you save "
                           "reviewed rules that include it.")


def governed_by_caption(rules) -> str:
    return escape_markdown("Governed by: " + ("; ".join(f"{d.title} ({d.how})" for d in rules.documents) or "no document"))


def provenance_rows(rules) -> list[dict]:
    """Each rule the documents state, beside the sentence and document it came from, and whether it is in force."""
    disputed = {statement for conflict in rules.conflicts for statement in conflict.statements}
    state = "reviewed by " + rules.reviewed_by if rules.state == "reviewed" else None
    source = rules.extracted if rules.state == "reviewed" else rules
    unread = set(source.unread) if source else set()
    return [{"rule": p.rule, "sentence": p.sentence, "document": p.document, "source_id": p.source_id,
             "state": "in conflict" if p in disputed else (f"not used: {state}" if state else
                                                           "not read: blocks the use case until written below" if p in unread
                                                           else "extracted")}
            for p in (source.provenance if source else ()) if p.kind != UNREAD or p in unread]


def governance_rows(documents, governance: dict) -> list[dict]:
    """Every document and the use cases it governs; one that governs none contributes no rule, and says why."""
    rows = []
    for document in documents:
        use_cases, how = governance.get(document.id, ((), "unknown"))
        rows.append({"document": document.title, "origin": document.origin,
                     "governs": ", ".join(use_cases) or "no use case: contributes no rule", "because": how})
    return rows


def assigned_use_case(choice: str) -> str | None:
    """The governance form's choice as stored: None lets the document's text decide, NO_USE_CASE governs none."""
    return {FROM_TEXT: None, NONE_CHOICE: NO_USE_CASE}.get(choice, choice)


def undirected_metrics(candidates, directions: dict[str, bool]) -> list[str]:
    """The logged metrics whose direction neither the catalog, the key's own words nor an admin gives."""
    keys = sorted({key for candidate in candidates for key in candidate.metrics})
    return [key for key in keys if metric_spec(key).higher_is_better is None and key not in directions]


def _text(value) -> str:
    return "" if _blank(value) else str(value).strip()


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())
