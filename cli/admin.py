"""`deploywise admin set-password`: the local administrator's password, set from a terminal (never an argument)."""

from __future__ import annotations

import argparse
import getpass
import sys

from cli.common import EXIT_OK, UsageError
from engine.access.local_account import PasswordError, set_password


def register(commands) -> None:
    """Adds `deploywise admin set-password` to the CLI's subcommands."""
    admin = commands.add_parser("admin", help="the local administrator account (used when no OIDC provider is configured)")
    actions = admin.add_subparsers(dest="admin_action", required=True)
    set_command = actions.add_parser(
        "set-password",
        help="set the local administrator's password: prompted twice on a terminal, else one line read from stdin",
        description="The password is never taken from the command line (it would show in the process list and the "
        "shell history). Sessions logged in with the old password are logged out.",
    )
    set_command.set_defaults(handler=_set_password_command)


def _set_password_command(args: argparse.Namespace, settings) -> int:
    password = _read_password()
    path = settings.admin_file
    try:
        account = set_password(path, settings.admin_user, password)
    except PasswordError as error:
        raise UsageError(str(error)) from None
    print(f"Password of the local administrator '{account.user}' stored hashed (bcrypt) in {path} (mode 600). "
          "Sessions logged in with an earlier password are logged out.")
    return EXIT_OK


def _read_password() -> str:
    if sys.stdin is not None and sys.stdin.isatty():
        first = getpass.getpass("New administrator password: ")
        if getpass.getpass("Again: ") != first:
            raise UsageError("the two passwords differ; nothing was changed")
        return first
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line.strip():
        raise UsageError("no password on stdin; nothing was changed")
    return line.rstrip("\r\n")
