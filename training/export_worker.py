"""Exports out of the app's process: the versions page starts one as a detached worker that survives page
reloads, and follows it through its status file. Apart from the pipeline because the page starts and follows
exports without loading a model; the CLI (`deploywise export`) runs the pipeline in its own process instead.

The worker is `python -m training.export_worker <status file>`, its status in
`<workspace>/exports/jobs/<id>.json`, written atomically by the worker; a worker that died without saying so is
marked failed by the next reader (`engine.core.workers`). Exporting is an admin action
(`engine.access.roles.require_admin`).
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engine.access.roles import require_admin
from engine.core.database import utc_now
from engine.core.settings import load_settings, worker_settings
from engine.core.workers import StatusFile, run_work
from engine.llm.versions import EXPORTS_ARTIFACT
from training.export_formats import STEPS, ExportError, check_format, resolve_version
from training.export_pipeline import export_version

FINAL_STATES = ("succeeded", "failed")
DIED = "the export process ended without finishing (killed, or the machine restarted); see its log"


@dataclass
class ExportJob:
    id: str
    version: str
    format: str
    state: str  # queued, running, succeeded, failed
    settings: dict
    created_at: str
    created_by: str | None = None
    updated_at: str = ""
    progress: dict = field(default_factory=lambda: {"done": 0, "total": STEPS, "message": "waiting to start"})
    export: dict | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def jobs_folder(settings) -> Path:
    return settings.workspace.resolve() / EXPORTS_ARTIFACT / "jobs"


def start_export_job(settings, version: str, fmt: str, created_by: str | None = None) -> ExportJob:
    """Check the request, then export in a process of its own (it survives page reloads); ExportError before that."""
    require_admin("exporting an LLM version")
    check_format(fmt)
    resolve_version(settings, version)
    job = ExportJob(f"export-{uuid.uuid4().hex[:12]}", str(version), fmt, "queued", worker_settings(settings), utc_now(),
                    created_by)
    folder = jobs_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job.id}.json"
    status = StatusFile(path, ExportJob)
    status.write(job)
    status.start("training.export_worker", python_options=("-X", "faulthandler"))
    return job


def export_jobs(settings, version: str | None = None) -> list[ExportJob]:
    """Exports started from the app, newest first; one whose worker died without saying so is marked failed."""
    folder = jobs_folder(settings)
    jobs = []
    for path in folder.glob("export-*.json") if folder.is_dir() else ():
        try:
            status = StatusFile(path, ExportJob)
            job = status.read()
        except (OSError, ValueError, TypeError):
            continue  # being replaced this instant, or foreign
        if version is None or job.version == str(version):
            jobs.append(status.refreshed(job, FINAL_STATES, {"state": "failed", "error": DIED}))
    return sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)


def run_export_job(path: Path) -> int:
    """The worker: run the export a status file describes, keeping the file up to date; the exit code."""
    status = StatusFile(path, ExportJob)
    job = status.read()
    job.state = "running"
    status.write(job)

    def progress(done: int, total: int, message: str) -> None:
        job.progress = {"done": done, "total": total, "message": message}
        status.write(job)
        print(f"[{done}/{total}] {message}", flush=True)

    def export() -> None:
        job.export = export_version(load_settings(**job.settings), job.version, job.format, on_progress=progress).to_dict()

    job.state, job.error = run_work(export, expected=(ExportError,))
    status.write(job)
    print(f"deploywise: {job.id} {job.state}" + (f": {job.error}" if job.error else ""), flush=True)
    return 0 if job.state == "succeeded" else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m training.export_worker <status file>", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_export_job(Path(sys.argv[1])))
