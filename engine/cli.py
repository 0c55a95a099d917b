"""`deploywise` command line: the same functions the app calls, for scripts and terminals.

Exit codes: 0 everything worked, 1 some items failed (the rest were done), 2 bad arguments or configuration.
`--json` prints one JSON document on stdout for scripts; human-readable text otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from engine.answers import answer_label, answer_times
from engine.explanation import explanation_note
from engine.settings import SettingsError, load_settings

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """Arguments that cannot work; reported in one line with exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return args.handler(args, settings)
    except (SettingsError, UsageError) as error:
        print(f"deploywise: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deploywise: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploywise", description="Deployment advice from MLflow metrics and team knowledge.")
    commands = parser.add_subparsers(dest="command", required=True)

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

    ask = commands.add_parser("ask", help="ask which model to deploy; prints the verified recommendation")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true")
    ask.set_defaults(handler=_ask)

    snapshot = commands.add_parser("snapshot", help="freeze the knowledge base and replay text into a training dataset snapshot")
    snapshot.add_argument("--replay-ratio", type=float, default=0.2, help="share of training tokens that is general replay text (default 0.2)")
    snapshot.add_argument("--validation-share", type=float, default=0.1, help="share of documents held out for validation (default 0.1)")
    snapshot.add_argument("--json", action="store_true")
    snapshot.set_defaults(handler=_snapshot)

    from training.commands import register as register_training

    register_training(commands)
    from eval.commands import register as register_eval; register_eval(commands)  # noqa: E702
    from engine.versions_commands import register as register_versions

    register_versions(commands)
    from training.export import register as register_export

    register_export(commands)
    from training.sft_commands import register as register_sft

    register_sft(commands)

    from engine.local_admin import register as register_admin

    register_admin(commands)

    demo = commands.add_parser("demo", help="prepare the embedded demo workspace")
    demo.add_argument("action", choices=["prepare"])
    demo.set_defaults(handler=_demo)
    return parser


def _ask(args, settings) -> int:
    """The decision is printed as soon as it is ready, then the LLM's explanation sentence by sentence (--json: all
    at the end)."""
    from engine.assistant import QuestionError, ask
    from engine.citations import strip_markers
    from engine.llm_backends import llm_backend
    from engine.workspace import open_knowledge_base

    if not args.question.strip():
        raise UsageError("the question is empty")

    def show_decision(prepared, answer_id) -> None:
        print(strip_markers(prepared.fallback_text) + "\n", flush=True)

    def show_sentence(sentence: str) -> None:
        print(strip_markers(sentence), end="", flush=True)

    kb = open_knowledge_base(settings)
    try:
        answer = ask(settings, kb, llm_backend(settings), args.question,
                     on_decision=None if args.json else show_decision, on_sentence=None if args.json else show_sentence)
    except QuestionError as error:
        raise UsageError(str(error)) from None
    finally:
        kb.connection.close()
    lines = ["", ""] if answer.explanation and answer.explanation.text else [""]
    lines += [f"[{c.number}] {c.display_name}" + (f" <{c.url}>" if c.url else "") + f" ({c.source_id})" for c in answer.citations]
    lines += [f"note: {notice}" for notice in answer.notices]
    state = answer.explanation.state if answer.explanation else "none"
    if note := explanation_note(state, answer.explanation.problems if answer.explanation else ()):
        lines.append(f"note: {note}")
    lines.append(f"({answer_label('deterministic', state, answer.llm_version)}, "
                 f"{answer_times(answer.timings)}, answer #{answer.record_id})")
    _print(args, answer.to_dict(), "\n".join(lines))
    return EXIT_OK if answer.prepared.decision is not None else EXIT_PARTIAL


def _print(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if args.json else text)


def _ingest(args, settings) -> int:
    from engine.workspace import ingest_paths

    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    outcomes = ingest_paths(settings, args.paths, on_progress=None if args.json else _stderr_progress)
    lines = [
        f"{'FAILED' if not o.ok else o.status.upper():9} {o.name}" + (f": {o.error}" if o.error else f" ({o.chunk_count} chunks)")
        for o in outcomes
    ]
    _print(args, [asdict(o) for o in outcomes], "\n".join(lines) or "no supported files found")
    return EXIT_OK if outcomes and all(o.ok for o in outcomes) else EXIT_PARTIAL


def _import_tables(args, settings) -> int:
    from engine.table_import import IMPORT_FAILURES, choose_text_columns, plan_tables, run_table_import, table_source
    from engine.workspace import make_chunker, open_knowledge_base

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
            _print(args, [_plan_summary(plan) for plan in plans], "\n".join(_plan_text(plan) for plan in plans))
            return EXIT_OK
        kb = open_knowledge_base(settings)
        try:
            outcomes = run_table_import(
                settings, kb, make_chunker(settings), source, plans, on_progress=_stderr_progress, row_limit=args.limit
            )
        finally:
            kb.connection.close()
    except IMPORT_FAILURES as error:
        print(f"deploywise: {error}", file=sys.stderr)
        return EXIT_PARTIAL
    text = "\n".join(
        f"{o.table}: {o.rows_read} rows read, {o.added} added, {o.updated} updated, {o.unchanged} unchanged, "
        f"{o.skipped} skipped (no text), {o.failed} failed" + "".join(f"\n  {e}" for e in o.errors)
        for o in outcomes
    )
    _print(args, [asdict(o) for o in outcomes], text)
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
    from engine.search import hybrid_search
    from engine.workspace import open_knowledge_base

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
    _print(args, [asdict(hit) for hit in hits], text or "no matching chunks")
    return EXIT_OK


def _sources(args, settings) -> int:
    from engine import sources, store

    connection = store.connect(settings.ensure_workspace() / "knowledge.sqlite")
    try:
        if args.action == "export":
            data = sources.export_csv(connection)
            if args.file == "-":
                sys.stdout.write(data)
            else:
                Path(args.file).write_text(data, encoding="utf-8")
                _print(args, {"exported": data.count("\n") - 1, "file": args.file}, f"exported to {args.file}")
            return EXIT_OK
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"no such file: {args.file}")
        try:
            written = sources.import_csv(connection, path.read_bytes())
        except sources.SourceError as error:
            print(f"deploywise: {args.file}: {error} (nothing was imported)", file=sys.stderr)
            return EXIT_PARTIAL
        _print(args, {"imported": written}, f"imported {written} sources")
        return EXIT_OK
    finally:
        connection.close()


def _snapshot(args, settings) -> int:
    from training.snapshot import SnapshotError, check_settings, snapshot_workspace

    try:
        check_settings(args.replay_ratio, args.validation_share)
    except SnapshotError as error:
        raise UsageError(str(error)) from None
    try:
        snapshot = snapshot_workspace(settings, replay_ratio=args.replay_ratio, validation_share=args.validation_share)
    except SnapshotError as error:
        print(f"deploywise: {error} (no snapshot written)", file=sys.stderr)
        return EXIT_PARTIAL
    splits = snapshot.manifest["splits"]
    payload = {
        "id": snapshot.id,
        "directory": str(snapshot.directory),
        "train": str(snapshot.train_path),
        "validation": str(snapshot.validation_path),
        "created_at": snapshot.manifest["created_at"],
        "splits": splits,
    }
    lines = [f"snapshot {snapshot.id} ({snapshot.manifest['created_at']})", f"  {snapshot.directory}"]
    lines += [
        f"  {name}: {split['domain_documents']} documents, {split['domain_tokens']} domain tokens + "
        f"{split['replay_tokens']} replay tokens ({split['replay_share']:.0%} replay)"
        for name, split in splits.items()
    ]
    _print(args, payload, "\n".join(lines))
    return EXIT_OK


def _demo(args, settings) -> int:
    from engine.workspace import prepare_demo

    outcomes = prepare_demo(settings, on_progress=_stderr_progress)
    if not outcomes:
        print(f"demo workspace is ready in {settings.workspace}")
        return EXIT_OK
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"FAILED {outcome.name}: {outcome.error}", file=sys.stderr)
    print(f"demo workspace prepared in {settings.workspace}: {len(outcomes) - len(failed)} documents ingested")
    return EXIT_PARTIAL if failed else EXIT_OK


def _stderr_progress(done: int, total: int, message: str) -> None:
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
