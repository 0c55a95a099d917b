"""`deploywise ingest|import-uc|import-sql|search|sources`: the Knowledge page's work for terminals and scripts."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, print_result, stderr_progress
from engine.core import database
from engine.knowledge import sources
from engine.knowledge.search import hybrid_search
from engine.knowledge.table_import import IMPORT_FAILURES, choose_text_columns, plan_tables, run_table_import, table_source
from engine.knowledge.workspace import ingest_paths, make_chunker, open_knowledge_base


def register(commands) -> None:
    ingest = commands.add_parser("ingest", help="ingest documents (PDF, DOCX, TXT, Markdown, HTML) or folders of them")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(handler=_ingest)

    for name, target, help_text in (
        ("import-uc", "schema", "import rows of Unity Catalog tables of CATALOG.SCHEMA"),
        ("import-sql", "url", "import rows of tables behind a SQLAlchemy URL"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(target, metavar=target.upper() if target == "url" else "CATALOG.SCHEMA")
        command.add_argument("--tables", help="comma-separated table names (default: all tables)")
        command.add_argument(
            "--text-columns", action="append", default=[], metavar="TABLE=COL[,COL...]",
            help="override the detected text columns of a table (repeatable)",
        )
        command.add_argument("--limit", type=int, help="most rows per table (default: DEPLOYWISE_IMPORT_ROW_LIMIT)")
        command.add_argument("--dry-run", action="store_true", help="show the detected text columns, import nothing")
        command.add_argument("--json", action="store_true")
        if name == "import-uc":
            command.add_argument("--warehouse", help="SQL warehouse id (default: DEPLOYWISE_DATABRICKS_WAREHOUSE_ID)")
        command.set_defaults(handler=_import_tables, source=name)

    search = commands.add_parser("search", help="hybrid keyword + semantic search of the knowledge base")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=None, help="number of chunks (default: DEPLOYWISE_SEARCH_TOP_K)")
    search.add_argument("--domain", action="append", default=[], help="only this source domain (repeatable)")
    search.add_argument("--document", action="append", type=int, default=[], help="only this document id (repeatable)")
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=_search)

    sources = commands.add_parser("sources", help="export or import the source registry as CSV")
    sources.add_argument("action", choices=["export", "import"])
    sources.add_argument("file", help="CSV file ('-' for stdout on export)")
    sources.add_argument("--json", action="store_true")
    sources.set_defaults(handler=_sources)


def _ingest(args, settings) -> int:
    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    outcomes = ingest_paths(settings, args.paths, on_progress=None if args.json else stderr_progress)
    lines = [
        f"{'FAILED' if not o.ok else o.status.upper():9} {o.name}" + (f": {o.error}" if o.error else f" ({o.chunk_count} chunks)")
        for o in outcomes
    ]
    print_result(args, [asdict(o) for o in outcomes], "\n".join(lines) or "no supported files found")
    return EXIT_OK if outcomes and all(o.ok for o in outcomes) else EXIT_PARTIAL


def _import_tables(args, settings) -> int:
    overrides = _text_column_overrides(args.text_columns)
    if args.limit is not None and args.limit <= 0:
        raise UsageError("--limit must be a positive number of rows")
    try:
        if args.source == "import-uc":
            source = table_source("unity_catalog", args.schema, args.tables or "", args.warehouse or settings.databricks_warehouse_id or "")
        else:
            source = table_source("sql", args.url, args.tables or "")
        plans = choose_text_columns(plan_tables(settings, source), overrides)
        if args.dry_run:
            print_result(args, [_plan_summary(plan) for plan in plans], "\n".join(_plan_text(plan) for plan in plans))
            return EXIT_OK
        kb = open_knowledge_base(settings)
        try:
            outcomes = run_table_import(
                settings, kb, make_chunker(settings), source, plans, on_progress=stderr_progress, row_limit=args.limit
            )
        finally:
            kb.connection.close()
    except IMPORT_FAILURES as error:
        print(f"deploywise: {error}", file=sys.stderr)
        return EXIT_PARTIAL
    text = "\n".join(
        f"{o.table}: {o.rows_read} rows read, {o.added} added, {o.updated} updated, {o.unchanged} unchanged, "
        f"{o.skipped} skipped (no text), {o.failed} failed, {o.removed} removed (gone from the source)"
        + "".join(f"\n  {e}" for e in o.errors)
        for o in outcomes
    )
    print_result(args, [asdict(o) for o in outcomes], text)
    return EXIT_OK if all(o.failed == 0 and not o.errors for o in outcomes) else EXIT_PARTIAL


def _text_column_overrides(values: list[str]) -> dict[str, list[str]]:
    overrides = {}
    for value in values:
        table, sep, columns = value.partition("=")
        names = [c.strip() for c in columns.split(",") if c.strip()]
        if not sep or not table.strip() or not names:
            raise UsageError(f"--text-columns {value!r}: expected TABLE=COL[,COL...]")
        overrides[table.strip()] = names
    return overrides


def _plan_summary(plan) -> dict:
    return {
        "table": plan.table,
        "key_column": plan.key_column,
        "text_columns": plan.text_columns,
        "detection": [asdict(choice) for choice in plan.detection],
    }


def _plan_text(plan) -> str:
    rows = "\n".join(f"  [{'x' if c.name in plan.text_columns else ' '}] {c.name}: {c.reason}" for c in plan.detection)
    return f"{plan.table} (key: {plan.key_column or 'row hash'})\n{rows}"


def _search(args, settings) -> int:
    if not args.query.strip():
        raise UsageError("the search query is empty")
    k = args.k or settings.search_top_k
    if not 0 < k <= 200:
        raise UsageError("-k must be between 1 and 200")
    kb = open_knowledge_base(settings)
    try:
        hits = hybrid_search(kb, args.query, k=k, source_domains=args.domain or None, document_ids=args.document or None)
    finally:
        kb.connection.close()
    text = "\n\n".join(
        f"{rank}. [{hit.source_id}] {hit.document_title}  (score {hit.score:.4f})\n   {hit.text[:300].replace(chr(10), ' ')}"
        for rank, hit in enumerate(hits, start=1)
    )
    print_result(args, [asdict(hit) for hit in hits], text or "no matching chunks")
    return EXIT_OK


def _sources(args, settings) -> int:
    connection = database.connect(settings.knowledge_db)
    try:
        if args.action == "export":
            data = sources.export_csv(connection)
            if args.file == "-":
                sys.stdout.write(data)
            else:
                Path(args.file).write_text(data, encoding="utf-8")
                print_result(args, {"exported": data.count("\n") - 1, "file": args.file}, f"exported to {args.file}")
            return EXIT_OK
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"no such file: {args.file}")
        try:
            written = sources.import_csv(connection, path.read_bytes())
        except sources.SourceError as error:
            print(f"deploywise: {args.file}: {error} (nothing was imported)", file=sys.stderr)
            return EXIT_PARTIAL
        print_result(args, {"imported": written}, f"imported {written} sources")
        return EXIT_OK
    finally:
        connection.close()
