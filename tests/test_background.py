"""engine.core.workers with real worker processes: this file is also the worker (`python -m test_background <status>`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.core.database import utc_now
from engine.core.workers import StatusFile, cancel_on_sigterm, is_starting, is_worker, run_work, start_worker, worker_alive

FINAL_STATES = ("succeeded", "failed", "cancelled")
DIED = {"state": "failed", "error": "the worker ended without finishing"}


@dataclass
class Job:
    id: str
    state: str
    created_at: str
    work: str  # what the worker does: "succeed", "fail", "sleep"
    start_delay_s: float = 0.0  # before the worker writes its own state
    updated_at: str = ""
    error: str | None = None


def worker(path: Path) -> int:
    status = StatusFile(path, Job)
    job = status.read()
    time.sleep(job.start_delay_s)
    cancel_on_sigterm()
    job.state = "running"
    status.write(job)

    def work() -> None:
        if job.work == "fail":
            raise RuntimeError("the disk is full\nand a second line nobody reads")
        if job.work == "sleep":
            time.sleep(60)

    job.state, job.error = run_work(work)
    status.write(job)
    return 0 if job.state == "succeeded" else 1


# --- the app's side -----------------------------------------------------------------------------------------------


@pytest.fixture
def queue(tmp_path, monkeypatch):
    """Queue a job and start this file as its worker; the job's StatusFile."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.getcwd()]))

    def queue(work: str, start_delay_s: float = 0.0) -> StatusFile:
        status = StatusFile(tmp_path / f"job-{work}.json", Job)
        status.write(Job(f"job-{work}", "queued", utc_now(), work, start_delay_s))
        status.start("test_background")
        return status

    return queue


def refreshed(status: StatusFile) -> Job:
    return status.refreshed(status.read(), FINAL_STATES, DIED)


def wait_for(status: StatusFile, states: tuple[str, ...], timeout_s: float = 15) -> Job:
    deadline = time.monotonic() + timeout_s
    while (job := refreshed(status)).state not in states:
        assert time.monotonic() < deadline, f"still {job.state}: {status.log.read_text()[-2000:]}"
        time.sleep(0.05)
    return job


def test_a_worker_that_finishes_writes_its_outcome(queue):
    succeeding, failing = queue("succeed"), queue("fail")
    assert wait_for(succeeding, FINAL_STATES).state == "succeeded"
    failed = wait_for(failing, FINAL_STATES)
    assert (failed.state, failed.error) == ("failed", "RuntimeError: the disk is full")
    assert "Traceback" in failing.log.read_text()  # the traceback goes to the log, the status has one line


def test_a_worker_killed_with_sigkill_is_marked_failed(queue):
    status = queue("sleep")
    wait_for(status, ("running",))
    os.kill(status.pid(), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_worker(status.pid(), str(status.path)):  # a zombie of this process until reaped: not the worker
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = refreshed(status)
    assert (job.state, job.error) == ("failed", "the worker ended without finishing")
    assert status.read().state == "failed"  # written down


def test_a_worker_stopped_with_sigterm_ends_cancelled(queue):
    status = queue("sleep")
    wait_for(status, ("running",))
    assert status.stop()
    job = wait_for(status, FINAL_STATES)
    assert (job.state, job.error) == ("cancelled", "cancelled by an administrator")


def test_a_pid_reused_by_another_process_is_not_the_worker(tmp_path):
    status = StatusFile(tmp_path / "job-reused.json", Job)
    status.write(Job("job-reused", "running", utc_now(), "sleep"))
    other = subprocess.Popen(["sleep", "30"])
    try:
        status.path.with_suffix(".pid").write_text(str(other.pid))
        assert not is_worker(other.pid, str(status.path)) and not is_worker(os.getpid(), str(status.path))
        assert not status.stop()  # never signalled
        assert refreshed(status).state == "failed"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_just_started_worker_is_starting_not_dead(queue, tmp_path):
    status = queue("succeed", start_delay_s=1.5)  # a slow start: it writes its own state after 1.5 s
    seen = []
    while (job := refreshed(status)).state not in FINAL_STATES:
        seen.append(job.state)
        time.sleep(0.05)
    assert job.state == "succeeded" and seen[0] == "queued" and "failed" not in seen

    # Between fork and exec the worker still shows the app's command line; its pid may not be on file yet.
    queued_at = utc_now()
    assert is_starting(os.getpid(), queued_at) and is_starting(None, queued_at)
    assert worker_alive(None, "anything", queued_at) and not worker_alive(None, "anything", None)
    long_ago = "2025-01-01T00:00:00+00:00"
    assert not is_starting(os.getpid(), long_ago) and not is_starting(None, long_ago)
    never_started = StatusFile(tmp_path / "job-lost.json", Job)  # the app died before it wrote the pid
    never_started.write(Job("job-lost", "queued", long_ago, "succeed"))
    assert refreshed(never_started).state == "failed"


def test_a_dead_pid_is_not_starting(tmp_path):
    gone = start_worker("json.tool", ["--help"], tmp_path / "gone.log")
    deadline = time.monotonic() + 10
    while is_starting(gone, utc_now()):  # alive, then a zombie: not starting any more
        assert time.monotonic() < deadline
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
