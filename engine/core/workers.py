"""Long work out of the app's process: a detached `python -m <module>` worker, found again after any page reload.

The app starts the worker in a session of its own (it survives page reloads and app restarts and never holds the
Streamlit process) and keeps its process id; any later reader decides from that id whether the work still runs.
The rules are subtle, and kept here only (eval.worker, training.export_worker):

- a process id outlives its worker: a finished worker stays a zombie of the app until reaped, and the id may be
  reused by an unrelated process. Only a live process with the worker's marker (an argument it was started with)
  on its command line is the worker (`is_worker`);
- a worker started moments ago may still show the app's command line (between fork and exec), its id may not be
  on file yet, and it has not written its own state: it is starting, not dead, for STARTING_S (`is_starting`);
- cancelling is SIGTERM (`stop_worker`), which the worker turns into `Cancelled`, a BaseException so that no
  `except Exception` in the work swallows it (`cancel_on_sigterm`, `run_work`).

A job described by a JSON status file (`StatusFile`) has its worker's id and output beside it; the app writes the
status when it queues the job, then only the worker writes it, until a reader finds the worker gone without
finishing and marks it failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.core.database import utc_now
from engine.core.errors import one_line

Progress = Callable[[int, int, str], None]  # (done, total, message): how far long work is, for a status or a bar
STARTING_S = 120.0  # how long a queued job's worker may take to write its own state
CANCELLED = "cancelled by an administrator"


class Cancelled(BaseException):
    """SIGTERM in a worker: an administrator cancelled the work."""


# --- the app's side -------------------------------------------------------------------------------------------


def start_worker(module: str, args: list[str], log: Path, *, pid_file: Path | None = None,
                 python_options: tuple[str, ...] = ()) -> int:
    """Start `python [options] -m module args` in a session of its own, its output appended to `log`; its pid.
    With `pid_file`, the pid is written there (atomically) at once, so a worker that dies before writing anything
    is still found."""
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, *python_options, "-m", module, *args], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=os.getcwd())
    if pid_file is not None:
        _write_atomically(pid_file, str(process.pid))
    return process.pid


def is_worker(pid: int, marker: str) -> bool:
    """Whether `pid` is still the worker: a live process (not a zombie awaiting its parent) with `marker` among its
    command-line arguments. Without /proc (not Linux), only whether a process has that id."""
    if not _live(pid):
        return False
    if not _HAS_PROC:
        return True
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return marker in arguments


def is_starting(pid: int | None, queued_at: str) -> bool:
    """Whether a job queued at `queued_at` whose worker has not written its own state yet may still be starting:
    queued less than STARTING_S ago, and its pid not on file yet or a live process (whatever its command line
    shows). A dead pid, or one reused long after, is not waited on."""
    age_s = (datetime.now(UTC) - datetime.fromisoformat(queued_at)).total_seconds()
    return age_s < STARTING_S and (pid is None or _live(pid))


def worker_alive(pid: int | None, marker: str, queued_at: str | None) -> bool:
    """Whether the work still runs or may still start; `queued_at` is when the job was queued while its worker has
    not written its own state yet, else None."""
    return (pid is not None and is_worker(pid, marker)) or (queued_at is not None and is_starting(pid, queued_at))


def stop_worker(pid: int | None, marker: str) -> bool:
    """Ask the worker to stop (SIGTERM: `Cancelled` in it); False when `pid` is not the worker (never signal a
    process that merely reuses its id)."""
    if pid is None or not is_worker(pid, marker):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


_HAS_PROC = Path("/proc/self").exists()


def _live(pid: int) -> bool:
    """A process has this id and is not a zombie (a finished child its parent has not reaped)."""
    if not _HAS_PROC:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:  # the command name, in parentheses, may itself hold ")"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _write_atomically(path: Path, text: str) -> None:
    """Readers see the old text or the new one, never a part."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


# --- the worker's side ------------------------------------------------------------------------------------------


def cancel_on_sigterm() -> None:
    """In a worker: SIGTERM (`stop_worker`) raises `Cancelled` wherever the work is."""

    def cancelled(signum, frame):
        raise Cancelled()

    signal.signal(signal.SIGTERM, cancelled)


def run_work(work: Callable[[], object], expected: tuple[type[Exception], ...] = ()) -> tuple[str, str | None]:
    """Run a worker's work; its final state and error: ("succeeded", None), ("cancelled", CANCELLED) on `Cancelled`
    (further SIGTERMs are then ignored while the worker writes that down), or ("failed", one line): an `expected`
    error's own text, any other error's type and first line, its traceback printed to the worker's log."""
    try:
        work()
    except Cancelled:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return "cancelled", CANCELLED
    except expected as error:
        return "failed", str(error)
    except Exception as error:
        traceback.print_exc()
        return "failed", one_line(error)
    return "succeeded", None


# --- jobs described by a status file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusFile:
    """A job's status `<id>.json` (a `kind` dataclass with at least state, created_at and updated_at), its worker's
    pid `<id>.pid` and its output `<id>.log` beside it. The worker is started with the status file's path as its
    argument: the marker that tells it from a process reusing its id."""

    path: Path
    kind: type

    @property
    def log(self) -> Path:
        return self.path.with_suffix(".log")

    def read(self):
        return self.kind(**json.loads(self.path.read_text(encoding="utf-8")))

    def write(self, job) -> None:
        """Atomically, with `updated_at` set to now."""
        job.updated_at = utc_now()
        _write_atomically(self.path, json.dumps(asdict(job), indent=1))

    def start(self, module: str, python_options: tuple[str, ...] = ()) -> int:
        """Start `python -m module <status file>`, whose pid goes beside the status."""
        return start_worker(module, [str(self.path)], self.log, pid_file=self.path.with_suffix(".pid"),
                            python_options=python_options)

    def pid(self) -> int | None:
        try:
            return int(self.path.with_suffix(".pid").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet
            return None

    def stop(self) -> bool:
        return stop_worker(self.pid(), str(self.path))

    def refreshed(self, job, final_states: tuple[str, ...], failed: dict):
        """The job, or, when its worker is gone without finishing, the job as read again (it may have finished between
        the two reads) with the `failed` fields (state failed, an error...) set and written."""
        queued_at = job.created_at if job.state == "queued" else None
        if job.state in final_states or worker_alive(self.pid(), str(self.path), queued_at):
            return job
        job = self.read()
        if job.state not in final_states:
            for name, value in failed.items():
                setattr(job, name, value)
            self.write(job)
        return job
