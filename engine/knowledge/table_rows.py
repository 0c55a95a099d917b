"""Table rows as knowledge: which columns hold prose, how a row becomes a cited document, and the import loop.

Shared by the Unity Catalog and the SQLAlchemy importers, which only differ in how they list tables and read
rows. Each row becomes one document citing `<domain>:<table>:<key>`; a table is stored in one transaction
(`KnowledgeBase.store_documents`), so a failure leaves the previous import whole, an unchanged row is not
embedded again, and the rows no longer at the source are removed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from engine.core import database
from engine.core.errors import first_line
from engine.core.workers import Progress
from engine.knowledge.documents import ParsedDocument, Section
from engine.knowledge.sources import Source, slug

STRING_TYPES = {"STRING", "VARCHAR", "CHAR", "NVARCHAR", "NCHAR", "TEXT", "NTEXT", "CLOB", "CITEXT", "UNICODE", "UNICODE_TEXT"}
IDENTIFIER_WORDS = {"id", "ids", "uuid", "guid", "key", "code", "hash", "sha", "md5", "checksum", "sku", "email", "url", "uri", "slug"}
MIN_MEAN_CHARS = 30
MIN_MEAN_WORDS = 5
MIN_LETTER_SHARE = 0.75  # letters and spaces; prose with a few numbers stays well above this
MAX_CODE_SHARE = 0.5  # values without any space
MAX_ERRORS = 20


class TableImportError(ValueError):
    """A table import cannot start or a table cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class TableColumn:
    name: str
    type_name: str  # upper-cased: STRING, VARCHAR, INT...


@dataclass(frozen=True)
class ColumnChoice:
    name: str
    is_text: bool
    reason: str


@dataclass(frozen=True)
class TablePlan:
    """What an import will read from one table; override the choice with `dataclasses.replace`."""

    table: str
    columns: list[TableColumn]
    detection: list[ColumnChoice]
    text_columns: list[str]
    key_column: str | None
    sample: list[dict]

    def __post_init__(self):
        names = [column.name for column in self.columns]
        unknown = [name for name in [*self.text_columns, self.key_column] if name is not None and name not in names]
        if unknown:
            raise TableImportError(f"{self.table} has no column {', '.join(map(repr, unknown))} (columns: {', '.join(names)})")


@dataclass(frozen=True)
class TableOutcome:
    table: str
    rows_read: int
    added: int
    updated: int
    unchanged: int
    failed: int
    errors: list[str]
    skipped: int = 0  # rows whose chosen text columns are all empty
    removed: int = 0  # rows imported before and no longer at the source (nor with text)


def detect_text_columns(columns: list[TableColumn], sample: list[dict]) -> list[ColumnChoice]:
    """Choose the columns worth learning from: string columns holding long natural-language values."""
    return [_choose(column, [row.get(column.name) for row in sample]) for column in columns]


def _choose(column: TableColumn, values: list) -> ColumnChoice:
    if column.type_name not in STRING_TYPES:
        return ColumnChoice(column.name, False, f"{column.type_name} column, not text")
    words = _name_words(column.name) & IDENTIFIER_WORDS
    if words:
        return ColumnChoice(column.name, False, f"name looks like an identifier ({', '.join(sorted(words))})")
    texts = [value.strip() for value in values if isinstance(value, str) and value.strip()]
    if not texts:
        return ColumnChoice(column.name, False, "string, no values in the sample")
    codes = [text for text in texts if not re.search(r"\s", text)]
    if len(codes) / len(texts) > MAX_CODE_SHARE:
        return ColumnChoice(column.name, False, f"string, values are single words or codes (e.g. {codes[0][:30]!r})")
    chars = sum(map(len, texts)) / len(texts)
    words_per_value = sum(len(text.split()) for text in texts) / len(texts)
    letters = sum(ch.isalpha() or ch.isspace() for text in texts for ch in text) / sum(map(len, texts))
    stats = f"string, avg {chars:.0f} chars, {words_per_value:.0f} words"
    if chars < MIN_MEAN_CHARS or words_per_value < MIN_MEAN_WORDS:
        return ColumnChoice(column.name, False, f"{stats}: too short for natural language")
    if letters < MIN_LETTER_SHARE:
        return ColumnChoice(column.name, False, f"{stats}: mostly digits and symbols")
    return ColumnChoice(column.name, True, f"{stats}: natural language")


def _name_words(name: str) -> set[str]:
    """`reviewer_email`, `modelURI` and `SKU-code` split into the words a human reads in them."""
    return {word.lower() for word in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)}


def choose_key_column(columns: list[TableColumn], primary_key: list[str], sample: list[dict]) -> str | None:
    """The declared single-column primary key, else `id` or an `*_id` column unique in the sample, else none (row hash)."""
    if len(primary_key) == 1:
        return primary_key[0]
    names = [column.name for column in columns]
    candidates = [name for name in names if name.lower() == "id"] + [name for name in names if name.lower().endswith("_id")]
    for name in candidates:
        values = [row.get(name) for row in sample]
        if None not in values and len(set(map(str, values))) == len(values):
            return name
    return None


def make_plan(table: str, columns: list[TableColumn], primary_key: list[str], sample: list[dict]) -> TablePlan:
    detection = detect_text_columns(columns, sample)
    return TablePlan(
        table=table,
        columns=columns,
        detection=detection,
        text_columns=[choice.name for choice in detection if choice.is_text],
        key_column=choose_key_column(columns, primary_key, sample),
        sample=sample,
    )


def columns_to_read(plan: TablePlan) -> list[str]:
    """The key and the text columns; the whole row when the key is a hash of it."""
    if plan.key_column is None:
        return [column.name for column in plan.columns]
    return list(dict.fromkeys([plan.key_column, *plan.text_columns]))


def row_document(plan: TablePlan, row: dict, id_prefix: str) -> ParsedDocument | None:
    """One row as a document citing `<id_prefix>:<key>`; None when its chosen text columns are all empty.

    The content hash covers the source id too: two rows with the same text stay two documents.
    """
    key = _row_key(plan, row)
    paragraphs = [
        f"{name}: {str(row[name]).strip()}" for name in plan.text_columns if row.get(name) is not None and str(row[name]).strip()
    ]
    if not paragraphs:
        return None
    text = "\n\n".join(paragraphs)
    source_id = f"{id_prefix}:{slug(key)}"
    title = f"{plan.table} · {key}"
    return ParsedDocument(
        title=title,
        origin=source_id,
        sha256=hashlib.sha256(f"{source_id}\n{text}".encode()).hexdigest(),
        sections=[Section(text, Source(source_id, title, url=None, kind="table-row"))],
        metadata={"format": "table-row", "table": plan.table, "key_column": plan.key_column, "key": key},
    )


def _row_key(plan: TablePlan, row: dict) -> str:
    if plan.key_column is None:
        return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]
    value = row.get(plan.key_column)
    if value is None or not str(value).strip():
        raise TableImportError(f"{plan.key_column} is empty")
    return str(value).strip()


RowReader = Callable[[TablePlan, int], list[dict]]  # (plan, row limit) -> rows with the columns_to_read


def import_tables(
    kb,
    chunker,
    plans: list[TablePlan],
    read_rows: RowReader,
    id_prefix: Callable[[TablePlan], str],
    row_limit: int,
    on_progress: Progress | None = None,
) -> list[TableOutcome]:
    """Read and store each planned table; a table that cannot be read gets an outcome with the error, the others go on."""
    if row_limit <= 0:
        raise TableImportError(f"the row limit must be a positive number of rows (got {row_limit})")
    report = on_progress or (lambda done, total, message: None)
    outcomes = []
    for done, plan in enumerate(plans):
        if not plan.text_columns:
            report(done, len(plans), f"{plan.table}: no text columns chosen, skipped")
            outcomes.append(TableOutcome(plan.table, 0, 0, 0, 0, 0, []))
            continue
        report(done, len(plans), f"Reading {plan.table}")
        try:
            rows = read_rows(plan, row_limit)
        except TableImportError as error:
            outcomes.append(TableOutcome(plan.table, 0, 0, 0, 0, 0, [str(error)]))
            continue

        def on_embedded(embedded: int, total: int, done=done, plan=plan) -> None:
            report(done, len(plans), f"{plan.table}: embedded {embedded}/{total} new chunks")

        outcomes.append(_import_rows(kb, chunker, plan, rows, id_prefix(plan), row_limit, on_embedded))
    report(len(plans), len(plans), "Done")
    return outcomes


def _import_rows(kb, chunker, plan: TablePlan, rows: list[dict], id_prefix: str, row_limit: int, on_embedded) -> TableOutcome:
    """Store a table's rows all or nothing, removing the rows no longer at the source; rows without a key, or
    sharing one, fail (a shared id would make documents replace each other)."""
    documents, errors, failed, skipped = [], [], 0, 0
    for number, row in enumerate(rows, start=1):
        try:
            document = row_document(plan, row, id_prefix)
        except TableImportError as error:
            failed += 1
            errors.append(f"row {number}: {error}")
            continue
        if document is None:
            skipped += 1
        else:
            documents.append(document)
    shared = Counter(document.origin for document in documents)
    for origin, count in shared.items():
        if count > 1:
            failed += count
            errors.append(f"{origin}: {count} rows have this key, none was imported (is {plan.key_column} unique?)")
    items = [
        (document, [] if kb.document_by_sha(document.sha256) is not None else chunker.split(document.sections))
        for document in documents if shared[document.origin] == 1
    ]
    complete = len(rows) < row_limit  # a read cut at the limit cannot tell a deleted row from an unread one
    try:
        outcomes, removed = kb.store_documents(items, prefix=id_prefix if complete else None, present=shared, on_embedded=on_embedded)
    except (ValueError, database.DatabaseError) as error:
        errors.append(f"nothing of {plan.table} was changed: {first_line(error)}")
        return TableOutcome(plan.table, len(rows), 0, 0, 0, failed + len(items), _capped(errors), skipped)
    if not complete:
        errors.append(f"the read stopped at the row limit ({row_limit}), so rows deleted at the source were kept")
    statuses = Counter(outcome.status for outcome in outcomes)
    return TableOutcome(
        plan.table, len(rows), statuses["added"], statuses["updated"], statuses["unchanged"], failed, _capped(errors), skipped, removed
    )


def _capped(errors: list[str]) -> list[str]:
    return [*errors[:MAX_ERRORS], f"... and {len(errors) - MAX_ERRORS} more"] if len(errors) > MAX_ERRORS else errors
