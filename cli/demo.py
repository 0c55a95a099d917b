"""`deploywise demo prepare`: the embedded demo workspace `make run` starts on."""

from __future__ import annotations

import sys

from cli.common import EXIT_OK, EXIT_PARTIAL, stderr_progress
from engine.demo.workspace import prepare_demo


def register(commands) -> None:
    demo = commands.add_parser("demo", help="prepare the embedded demo workspace")
    demo.add_argument("action", choices=["prepare"])
    demo.set_defaults(handler=_demo)


def _demo(args, settings) -> int:
    outcomes = prepare_demo(settings, on_progress=stderr_progress)
    if not outcomes:
        print(f"demo workspace is ready in {settings.workspace}")
        return EXIT_OK
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"FAILED {outcome.name}: {outcome.error}", file=sys.stderr)
    print(f"demo workspace prepared in {settings.workspace}: {len(outcomes) - len(failed)} documents ingested")
    return EXIT_PARTIAL if failed else EXIT_OK
