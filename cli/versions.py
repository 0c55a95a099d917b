"""`deploywise versions list|promote|rollback|archive`: the LLM versions page's actions for terminals and scripts
(exit codes as cli.common's: a refusal exits 2 with its reason)."""

from __future__ import annotations

import getpass
import json
import sys

from cli.common import EXIT_OK, UsageError
from engine.lifecycle.version_actions import archive, promote, rollback
from engine.lifecycle.version_catalog import overview
from engine.lifecycle.version_records import VersionError, target_text
from ui.formatting import format_time
from ui.versions_views import versions_table


def register(commands) -> None:
    versions = commands.add_parser("versions", help="list, promote, roll back or archive LLM versions")
    actions = versions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every LLM version: lineage, status, gate verdict, answers and flags")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)
    promoting = actions.add_parser("promote", help="make version N the champion the chat serves")
    promoting.add_argument("version", metavar="N")
    promoting.add_argument("--reason", help="why; required unless the version's evaluation said GO")
    promoting.set_defaults(handler=_promote)
    back = actions.add_parser("rollback", help="give champion back to the version the current champion replaced")
    back.add_argument("--reason")
    back.set_defaults(handler=_rollback)
    retire = actions.add_parser("archive", help="retire version N (never the champion)")
    retire.add_argument("version", metavar="N")
    retire.add_argument("--reason")
    retire.set_defaults(handler=_archive)


def actor() -> str:
    """Who acts from a terminal: the operating-system user."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "cli"


def _refusing(action):
    """action()'s result; a VersionError becomes the CLI's usage error (exit 2, its reason on stderr)."""
    try:
        return action()
    except VersionError as error:
        raise UsageError(str(error)) from None


def _list(args, settings) -> int:
    view = _refusing(lambda: overview(settings))
    if args.json:
        print(json.dumps(view.to_dict(), indent=2, default=str))
        return EXIT_OK
    for notice in view.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(f"{view.registry_name}: the chat serves {view.serving}"
          + (f"; rollback would serve {target_text(view.registry_name, view.rollback_target)}" if view.rollback_target else ""))
    for row in versions_table(view):
        print(f"  {row['version']:>4}  {row['status']:<9} {row['gate']:<13} parent {row['parent']:<5} "
              f"data {row['data'] or '-'}  job {row['job'] or '-'}  {row['created']}"
              + (f" by {row['by']}" if row['by'] else "") + f"  {row['answers']} answers, {row['flags']} flags")
    if not view.versions:
        print("  no LLM version registered yet")
    base = view.base_usage
    print(f"{view.base_label}: {base.answers} answers, {base.flags} flags")
    return EXIT_OK


def _promote(args, settings) -> int:
    record = _refusing(lambda: promote(settings, args.version, actor=actor(), reason=args.reason))
    print(f"{record.label} is the champion (gate {record.promotion_gate}); the chat switches to it within a minute")
    return EXIT_OK


def _rollback(args, settings) -> int:
    target = _refusing(lambda: rollback(settings, actor(), args.reason))
    print(f"rolled back: the chat serves {target_text(settings.llm_registry_name, target)}")
    return EXIT_OK


def _archive(args, settings) -> int:
    record = _refusing(lambda: archive(settings, args.version, actor(), args.reason))
    print(f"{record.label} archived ({format_time(record.archived_at)})")
    return EXIT_OK
