"""`deploywise` command line: the same functions the app calls, for scripts and terminals.

One module per command group registers its commands (in the order `deploywise --help` lists them); exit codes and
printing are shared (cli.common).
"""

from __future__ import annotations

import argparse
import sys

from cli import admin, ask, demo, evaluation, export, knowledge, sft, training, versions
from cli.common import EXIT_USAGE, UsageError
from engine.core.settings import SettingsError, load_settings

GROUPS = (knowledge, ask, training, evaluation, versions, export, sft, admin, demo)


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
    for group in GROUPS:
        group.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
