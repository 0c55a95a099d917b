"""What every `deploywise` command shares: exit codes, the usage error and how results are printed.

Exit codes: 0 everything worked, 1 some items failed (the rest were done), 2 bad arguments or configuration.
`--json` prints one JSON document on stdout for scripts; human-readable text otherwise.
"""

from __future__ import annotations

import json
import sys

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """Arguments that cannot work; reported in one line with exit code 2."""


def print_result(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if args.json else text)


def stderr_progress(done: int, total: int, message: str) -> None:
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)
