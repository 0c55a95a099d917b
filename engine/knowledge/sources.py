"""The source registry: what a `<<SRC:domain:entity>>` marker points to.

Every chunk carries a source id; the registry maps it to a display name, a URL and a kind so answers can
turn markers into links. Ids that answers cite but the registry lacks are logged for an admin to add.

Who may read a source (`public_chunks_sql`, `is_public`): imported table rows (the `uc:` and `sql:` domains, kind
`table-row`) and sources an admin marks internal, with everything under them (`doc:guide.pdf` covers
`doc:guide.pdf:page-3`), are not public: only callers that `engine.access.roles.may_read_internal` see them.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from urllib.parse import urlparse

from engine.access.roles import current_identity, may_read_internal, require_admin
from engine.core.database import transaction, utc_now

SOURCE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]*:[A-Za-z0-9._\-:/]+$")
CSV_COLUMNS = ("source_id", "display_name", "url", "kind", "internal")
KINDS = ("guideline", "document", "dataset", "decision", "incident", "table-row", "model", "other")
TABLE_DOMAINS = ("uc", "sql")  # rows imported by engine.knowledge.unity_catalog and sql_import: never public
_CSV_BOOLEANS = {"": False, "false": False, "no": False, "0": False, "true": True, "yes": True, "1": True}


class SourceError(ValueError):
    """A source registry entry or file is malformed."""


@dataclass(frozen=True)
class Source:
    source_id: str
    display_name: str
    url: str | None = None
    kind: str = "document"
    internal: bool = False  # an admin's mark: for logged-in users (OIDC) or administrators only

    def __post_init__(self):
        if not SOURCE_ID_PATTERN.match(self.source_id or ""):
            raise SourceError(
                f"source id {self.source_id!r} is not 'domain:entity' (lowercase domain; entity of letters, digits, . _ - : /)"
            )
        if not (self.display_name or "").strip():
            raise SourceError(f"source {self.source_id}: display name is empty")
        if self.url and not is_web_url(self.url):
            raise SourceError(f"source {self.source_id}: URL {self.url!r} is not an http(s) URL")
        if self.kind not in KINDS:
            raise SourceError(f"source {self.source_id}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        object.__setattr__(self, "internal", bool(self.internal))  # SQLite's 0/1 and a data editor's None


def _restricted_by_registry(source_id_sql: str) -> str:
    """SQL that is true when the registry keeps the source `source_id_sql` from the public: its own entry is a table
    row or internal, or an entry above it is internal."""
    return f"""(EXISTS (SELECT 1 FROM sources s WHERE s.source_id = {source_id_sql} AND (s.internal = 1 OR s.kind = 'table-row'))
               OR EXISTS (SELECT 1 FROM sources s WHERE s.internal = 1
                          AND substr({source_id_sql}, 1, length(s.source_id) + 1) = s.source_id || ':'))"""


def public_chunks_sql(chunk: str = "c", document: str = "d") -> str:
    """SQL that is true for a public chunk (alias `chunk` of chunks, `document` of its document): not a table row by
    domain, by the document's format or by the registry, and not under an internal source."""
    return f"""({chunk}.source_domain NOT IN ({', '.join(f"'{domain}'" for domain in TABLE_DOMAINS)})
               AND coalesce(json_extract({document}.metadata, '$.format'), '') != 'table-row'
               AND NOT {_restricted_by_registry(f"{chunk}.source_id")})"""


def is_public(connection, source_id: str) -> bool:
    """Whether anyone may read this source: what `public_chunks_sql` says of a chunk, for an id."""
    if source_id.split(":", 1)[0] in TABLE_DOMAINS:
        return False
    return not connection.execute(f"SELECT {_restricted_by_registry('?1')}", (source_id,)).fetchone()[0]


def readable(connection, source_id: str) -> bool:
    """Whether the caller may read this source: a public one, or any for those who may read internal knowledge."""
    return may_read_internal() or is_public(connection, source_id)


def is_web_url(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def slug(text: str) -> str:
    """A file name or key as it appears inside a source id: lowercase, no spaces, only id-safe characters."""
    return re.sub(r"[^a-z0-9._\-]+", "-", text.strip().lower()).strip("-") or "unnamed"


def upsert_sources(connection, sources: list[Source], *, overwrite: bool = True) -> int:
    """Write entries in one transaction; with overwrite=False existing (possibly admin-edited) entries stay."""
    with transaction(connection):
        return write_sources(connection, sources, overwrite=overwrite)


def refresh_sources(connection, sources: list[Source]) -> int:
    """Bring entries whose truth lives elsewhere (candidates in MLflow) up to date, writing only what changed.

    An entry an administrator wrote (`edited_by` set) is theirs: a refresh adds missing entries and updates
    generated ones, never an admin's. Deleting the entry hands it back to the refresh."""
    ids = [source.source_id for source in sources]
    current = resolve(connection, ids)
    owned = {row[0] for row in connection.execute(
        f"SELECT source_id FROM sources WHERE edited_by IS NOT NULL AND source_id IN ({','.join('?' * len(ids))})", ids
    )} if ids else set()
    stale = [source for source in sources if source.source_id not in owned and current.get(source.source_id) != source]
    if not stale:
        return 0
    with transaction(connection):
        return _write(connection, stale, None, """ON CONFLICT(source_id) DO UPDATE SET display_name = excluded.display_name,
            url = excluded.url, kind = excluded.kind, updated_at = excluded.updated_at WHERE sources.edited_by IS NULL""")


def write_sources(connection, sources: list[Source], *, overwrite: bool) -> int:
    """The write itself, for callers that are already inside a transaction; returns rows written.

    overwrite=True is an administrator's (or the operator's) write: it replaces the entry and records who wrote
    it, so that `refresh_sources` keeps it. overwrite=False only adds missing entries, as generated ones."""
    if overwrite:
        return _write(connection, sources, current_identity().name or "admin", "ON CONFLICT(source_id) DO UPDATE SET "
                      "display_name = excluded.display_name, url = excluded.url, kind = excluded.kind, "
                      "internal = excluded.internal, updated_at = excluded.updated_at, edited_by = excluded.edited_by")
    return _write(connection, sources, None, "ON CONFLICT(source_id) DO NOTHING")


def _write(connection, sources: list[Source], edited_by: str | None, on_conflict: str) -> int:
    before = connection.total_changes
    connection.executemany(
        f"INSERT INTO sources(source_id, display_name, url, kind, internal, updated_at, edited_by) VALUES (?, ?, ?, ?, ?, ?, ?) "
        f"{on_conflict}",
        [(s.source_id, s.display_name.strip(), s.url or None, s.kind, int(s.internal), utc_now(), edited_by) for s in sources],
    )
    written = connection.total_changes - before
    connection.executemany("DELETE FROM unknown_sources WHERE source_id = ?", [(s.source_id,) for s in sources])
    return written


def replace_sources(connection, upserts: list[Source], deletions: list[str]) -> tuple[int, int]:
    """An admin's registry edit as one transaction: rows written and rows deleted, or nothing at all."""
    require_admin("editing the source registry")
    with transaction(connection):
        written = write_sources(connection, upserts, overwrite=True)
        deleted = sum(
            connection.execute("DELETE FROM sources WHERE source_id = ?", (source_id,)).rowcount for source_id in deletions
        )
    return written, deleted


def list_sources(connection) -> list[Source]:
    rows = connection.execute("SELECT source_id, display_name, url, kind, internal FROM sources ORDER BY source_id").fetchall()
    return [Source(*row) for row in rows]


def resolve(connection, source_ids: list[str]) -> dict[str, Source]:
    """The registry entries of the given ids; ids missing from the result are unknown.

    A row written around the validator (a `javascript:` URL put in with SQL, say) counts as unknown, so one
    bad row can neither fail every answer that cites it nor become a link."""
    if not source_ids:
        return {}
    rows = connection.execute(
        f"SELECT source_id, display_name, url, kind, internal FROM sources WHERE source_id IN ({','.join('?' * len(source_ids))})",
        list(source_ids),
    ).fetchall()
    entries = {}
    for row in rows:
        try:
            entries[row[0]] = Source(*row)
        except SourceError:
            continue
    return entries


def log_unknown(connection, source_ids: list[str], context: str = "") -> None:
    """Remember cited ids the registry does not know, with how often and where they were seen."""
    now = utc_now()
    with transaction(connection):
        connection.executemany(
            """INSERT INTO unknown_sources(source_id, first_seen, last_seen, occurrences, context) VALUES (?, ?, ?, 1, ?)
               ON CONFLICT(source_id) DO UPDATE SET last_seen = excluded.last_seen,
               occurrences = occurrences + 1, context = excluded.context""",
            [(source_id, now, now, context[:500]) for source_id in source_ids],
        )


def unknown_sources(connection) -> list[dict]:
    rows = connection.execute(
        "SELECT source_id, first_seen, last_seen, occurrences, context FROM unknown_sources ORDER BY occurrences DESC"
    ).fetchall()
    return [dict(row) for row in rows]


def export_csv(connection) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for source in list_sources(connection):
        writer.writerow({**asdict(source), "url": source.url or "", "internal": "true" if source.internal else "false"})
    return buffer.getvalue()


def parse_csv(data: bytes | str) -> list[Source]:
    """Read a registry CSV, checking every row before anything is stored; errors name the line."""
    reader = csv.DictReader(io.StringIO(_csv_text(data)))
    if reader.fieldnames is None:
        raise SourceError("the CSV file is empty")
    missing = [column for column in ("source_id", "display_name") if column not in reader.fieldnames]
    if missing:
        raise SourceError(f"the CSV header lacks {', '.join(missing)} (expected columns: {', '.join(CSV_COLUMNS)})")
    problems: list[str] = []

    def labelled_rows():
        try:
            for row in reader:
                yield f"line {reader.line_num}", row
        except csv.Error as error:
            problems.append(f"line {reader.line_num}: {error}")

    sources, row_problems = sources_from_rows(labelled_rows())
    problems[:0] = row_problems
    if problems:
        raise SourceError("; ".join(problems[:20]) + (f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""))
    if not sources:
        raise SourceError("the CSV file has a header but no rows")
    return sources


def _csv_text(data: bytes | str) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise SourceError(f"the CSV file is not UTF-8 text (byte {error.start})") from None
    return data


def sources_from_rows(rows: Iterable[tuple[str, dict]]) -> tuple[list[Source], list[str]]:
    """Check registry rows given as (where, row) pairs; each problem names where it is. Blank rows are skipped."""
    sources, problems, seen = [], [], set()
    for where, row in rows:
        cells = {column: _cell(row.get(column)) for column in CSV_COLUMNS}
        if not any(cells.values()):
            continue
        internal = _CSV_BOOLEANS.get(cells["internal"].lower())
        if internal is None:
            problems.append(f"{where}: internal {cells['internal']!r} is not true or false")
            continue
        try:
            source = Source(cells["source_id"], cells["display_name"], cells["url"] or None, cells["kind"] or "document", internal)
        except SourceError as error:
            problems.append(f"{where}: {error}")
            continue
        if source.source_id in seen:
            problems.append(f"{where}: source id {source.source_id} appears twice")
        seen.add(source.source_id)
        sources.append(source)
    return sources, problems


def _cell(value) -> str:
    """A table cell as clean text; None and NaN (an empty cell of a data editor) are empty, a checkbox's bool is its name."""
    if value is None or value != value:
        return ""
    return str(value).strip()


def import_csv(connection, data: bytes | str) -> int:
    """Replace or add registry entries from a CSV; a file with any bad row changes nothing."""
    require_admin("importing the source registry")
    sources = parse_csv(data)
    if "internal" not in next(csv.reader(io.StringIO(_csv_text(data))), []):  # a CSV from before the mark keeps the marks
        marks = resolve(connection, [source.source_id for source in sources])
        sources = [replace(s, internal=marks[s.source_id].internal) if s.source_id in marks else s for s in sources]
    return upsert_sources(connection, sources, overwrite=True)
