"""`deploywise sft generate|list|pairs|accept|reject|export|delete`: SFT datasets from terminals and scripts
(exit codes as cli.common's: 2 for a request that cannot work, which changes nothing)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, print_result
from engine.core import database
from engine.knowledge.workspace import open_knowledge_base
from training.sft_data import REVIEW_STATES, SftDataError, accept_all, delete_dataset, get_dataset, list_pairs, review_pairs
from training.sft_export import export_dataset, exports_dir
from training.sft_generation import generate_dataset
from training.sft_generation_request import STYLES, GenerationRequest, check_backend, check_request
from training.sft_worker import refreshed_datasets


def register(commands) -> None:
    sft = commands.add_parser("sft", help="SFT datasets: generate pairs from the knowledge base, review, export JSONL")
    actions = sft.add_subparsers(dest="action", required=True)

    generate = actions.add_parser("generate", help="generate a named dataset (runs here, progress on stderr)")
    generate.add_argument("--name", required=True)
    generate.add_argument("--styles", required=True, help=f"comma-separated: {', '.join(STYLES)}")
    generate.add_argument("--per-source", type=int, default=2, help="chunks per source for the knowledge styles (default 2)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--questions-per-use-case", type=int, default=3)
    generate.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://localhost:11434/v1")
    generate.add_argument("--model", help="model name at the endpoint")
    generate.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the endpoint's API key")
    generate.add_argument("--llm-version", help="in-process LLM instead: base, champion or a version number")
    generate.add_argument("--prompt", action="append", default=[], metavar="STYLE=FILE",
                          help="replace a knowledge style's prompt with a file's text (needs {chunk}; repeatable)")
    generate.add_argument("--temperature", type=float, default=0.7)
    generate.add_argument("--max-new-tokens", type=int, default=320)
    generate.add_argument("--no-paraphrase", action="store_true", help="ask the recommendation questions as templated")
    generate.add_argument("--rewrite-recommendations", action="store_true",
                          help="use the LLM's own recommendation when it passes the chat's verifier")
    generate.add_argument("--no-corrections", action="store_true", help="leave accepted feedback corrections out")
    generate.add_argument("--json", action="store_true")
    generate.set_defaults(handler=_generate)

    listing = actions.add_parser("list", help="the named datasets with their pair counts and drops")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    pairs = actions.add_parser("pairs", help="a dataset's pairs")
    pairs.add_argument("name")
    pairs.add_argument("--state", choices=REVIEW_STATES)
    pairs.add_argument("--limit", type=int, default=50)
    pairs.add_argument("--json", action="store_true")
    pairs.set_defaults(handler=_pairs)

    for verb, state in (("accept", "accepted"), ("reject", "rejected")):
        review = actions.add_parser(verb, help=f"{verb} pairs of a dataset")
        review.add_argument("name")
        review.add_argument("--ids", help="comma-separated pair ids")
        if verb == "accept":
            review.add_argument("--all", action="store_true", help="every pending pair")
            review.add_argument("--style", help="with --all: only this style")
        review.set_defaults(handler=_review, state=state)

    export = actions.add_parser("export", help="write the accepted pairs as <out>/<name>.jsonl")
    export.add_argument("name")
    export.add_argument("--out", help="folder (default <workspace>/exports/sft)")
    export.add_argument("--json", action="store_true")
    export.set_defaults(handler=_export)

    delete = actions.add_parser("delete", help="delete a dataset and its pairs")
    delete.add_argument("name")
    delete.set_defaults(handler=_delete)


@contextmanager
def _refusing(settings):
    """The knowledge database for one command; a refused action is a usage error (exit 2), having changed nothing."""
    connection = database.connect(settings.knowledge_db)
    try:
        yield connection
    except SftDataError as error:
        raise UsageError(str(error)) from None
    finally:
        connection.close()


def _request(args) -> GenerationRequest:
    prompts = {}
    for pair in args.prompt:
        style, separator, file = pair.partition("=")
        if not separator:
            raise UsageError(f"--prompt {pair!r}: expected STYLE=FILE")
        try:
            prompts[style.strip()] = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--prompt {pair!r}: cannot read {file}: {getattr(error, 'strerror', None) or error}") from None
    return GenerationRequest(
        name=args.name, styles=tuple(style.strip() for style in args.styles.split(",") if style.strip()),
        per_source=args.per_source, seed=args.seed, endpoint=args.endpoint, model=args.model,
        api_key_env=args.api_key_env, llm_version=args.llm_version, prompts=prompts,
        questions_per_use_case=args.questions_per_use_case, paraphrase=not args.no_paraphrase,
        rewrite_recommendations=args.rewrite_recommendations, include_corrections=not args.no_corrections,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens)


def _generate(args, settings) -> int:
    request = _request(args)
    try:
        check_request(settings, request)
        check_backend(settings, request)
    except SftDataError as error:
        raise UsageError(str(error)) from None
    kb = open_knowledge_base(settings)
    try:
        dataset = generate_dataset(settings, kb, request, on_progress=_progress)
    except SftDataError as error:
        if "already exists" in str(error):
            raise UsageError(str(error)) from None
        print(f"deploywise: {error}", file=sys.stderr)
        return EXIT_PARTIAL
    finally:
        kb.connection.close()
    print_result(args, _dataset_payload(dataset), _dataset_line(dataset))
    return EXIT_OK


def _progress(done: int, total: int, message: str) -> None:
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)


def _dataset_payload(dataset) -> dict:
    payload = asdict(dataset)
    payload["config"] = {key: value for key, value in dataset.config.items() if key != "settings"}
    return payload


def _dataset_line(dataset) -> str:
    drops = ", ".join(f"{reason} {count}" for reason, count in dataset.drops.items()) or "none"
    styles = ", ".join(f"{style} {count}" for style, count in dataset.styles.items()) or "no pairs"
    return (f"{dataset.name}  {dataset.state:<10} {dataset.created_at}  pending {dataset.pending}, accepted {dataset.accepted}, "
            f"rejected {dataset.rejected} ({styles}); dropped: {drops}"
            + (f"; last export {dataset.exported_hash}" if dataset.exported_hash else "")
            + (f"; {dataset.error}" if dataset.error else ""))


def _list(args, settings) -> int:
    connection = database.connect(settings.knowledge_db)
    try:
        datasets = refreshed_datasets(connection)
    finally:
        connection.close()
    print_result(args, [_dataset_payload(dataset) for dataset in datasets],
           "\n".join(_dataset_line(dataset) for dataset in datasets) or "no SFT datasets yet")
    return EXIT_OK


def _pairs(args, settings) -> int:
    with _refusing(settings) as connection:
        pairs = list_pairs(connection, args.name, state=args.state, limit=args.limit)
    lines = [f"#{pair.id} {pair.state} {pair.style} [{', '.join(pair.source_ids)}]\n  Q: {pair.question[:200]}\n"
             f"  A: {' '.join(pair.output.split())[:300]}" for pair in pairs]
    print_result(args, [asdict(pair) for pair in pairs], "\n".join(lines) or "no pairs")
    return EXIT_OK


def _ids(text: str | None) -> list[int]:
    try:
        return [int(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--ids {text!r}: expected comma-separated pair numbers") from None


def _review(args, settings) -> int:
    ids = _ids(args.ids)
    every = getattr(args, "all", False)
    if bool(ids) == every:
        raise UsageError("give either --ids or --all" if args.state == "accepted" else "give --ids")
    with _refusing(settings) as connection:
        get_dataset(connection, args.name)
        changed = accept_all(connection, args.name, style=args.style) if every else review_pairs(connection, args.name, ids, args.state)
    print(f"{changed} pairs {args.state}")
    return EXIT_OK


def _export(args, settings) -> int:
    with _refusing(settings) as connection:
        export = export_dataset(settings, connection, args.name, Path(args.out) if args.out else exports_dir(settings))
    payload = {**asdict(export), "path": str(export.path)}
    print_result(args, payload, f"{export.pair_count} accepted pairs written to {export.path} (dataset {export.dataset_hash})")
    return EXIT_OK


def _delete(args, settings) -> int:
    with _refusing(settings) as connection:
        delete_dataset(connection, args.name)
    print(f"deleted {args.name}")
    return EXIT_OK
