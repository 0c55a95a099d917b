"""Evaluations out of the app's process: started from the Evaluation page, followed after any page reload.

`start_evaluation` checks the request completely (`eval.plan.plan_evaluation`: versions, golden file, gate,
registry, held-out text), then starts `python -m eval.worker <status file>` in a session of its own, so the
evaluation survives page reloads and app restarts and never holds the Streamlit process. The evaluation runs on
this machine: it asks the workspace's knowledge base and registry, as the chat does.

Each evaluation has a status file `<workspace>/evaluations/<id>.json` (written atomically, only by its worker
while that runs): state (queued, running, succeeded, failed, cancelled), progress (done, total, message), the
versions' verdicts as they finish, and the error of a failed one; its output goes to `<id>.log` beside it. A
worker that died without saying so (killed, machine restarted) is found by its process id and marked failed
(`engine.core.workers` holds those rules).
Results live in MLflow (`eval.results`) as soon as each version is done.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.access.roles import require_admin
from engine.answering.golden_set import DEFAULT_GOLDEN
from engine.core.database import utc_now
from engine.core.settings import load_settings, worker_settings
from engine.core.workers import StatusFile, cancel_on_sigterm, run_work
from eval.gate import DEFAULT_GATE
from eval.harness import run_evaluation
from eval.plan import EvaluationError, plan_evaluation

FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass
class EvaluationJob:
    id: str
    state: str
    request: dict  # versions, golden, gate, per_category, item_ids, max_new_tokens, snapshot_id
    settings: dict
    created_at: str
    created_by: str | None = None
    updated_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    progress: dict = field(default_factory=lambda: {"done": 0, "total": 0, "message": "waiting to start"})
    results: list = field(default_factory=list)  # {"label", "verdict", "run_id"} per finished version
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def jobs_dir(settings) -> Path:
    return settings.workspace.resolve() / "evaluations"


def status_path(settings, evaluation_id: str) -> Path:
    return jobs_dir(settings) / f"{evaluation_id}.json"


def log_path(settings, evaluation_id: str) -> Path:
    return jobs_dir(settings) / f"{evaluation_id}.log"


def _status(path: Path) -> StatusFile:
    return StatusFile(path, EvaluationJob)


# --- the app's side -------------------------------------------------------------------------------------------


def start_evaluation(settings, versions: list[str], *, golden: str | None = None, gate: str | None = None,
                     per_category: int | None = None, item_ids: list[str] | None = None,
                     max_new_tokens: int | None = None, snapshot_id: str | None = None,
                     created_by: str | None = None) -> EvaluationJob:
    """Check the request, then start its worker; EvaluationError (one line) before anything is written."""
    require_admin("running an evaluation")
    request = {"versions": list(versions), "golden": str(golden or DEFAULT_GOLDEN), "gate": str(gate or DEFAULT_GATE),
               "per_category": per_category, "item_ids": item_ids, "max_new_tokens": max_new_tokens,
               "snapshot_id": snapshot_id}
    plan = plan_evaluation(settings, request["versions"], request["golden"], gate=request["gate"],
                           per_category=per_category, item_ids=item_ids, max_new_tokens=max_new_tokens,
                           snapshot_id=snapshot_id)
    request["snapshot_id"] = plan.snapshot_id  # the worker measures the very text that was checked
    job = EvaluationJob(plan.evaluation_id, "queued", request, worker_settings(settings),
                        utc_now(), created_by)
    jobs_dir(settings).mkdir(parents=True, exist_ok=True)
    status = _status(status_path(settings, job.id))
    status.write(job)
    status.start("eval.worker")
    return get_evaluation_job(settings, job.id)


def get_evaluation_job(settings, evaluation_id: str) -> EvaluationJob:
    path = status_path(settings, evaluation_id)
    if not path.is_file():
        raise KeyError(f"no evaluation {evaluation_id}")
    return _refreshed(path, _status(path).read())


def list_evaluation_jobs(settings, limit: int = 50) -> list[EvaluationJob]:
    """Evaluations started from the app, newest first; a worker that died silently is marked failed."""
    folder = jobs_dir(settings)
    if not folder.is_dir():
        return []
    jobs = []
    for path in folder.glob("eval-*.json"):
        try:
            jobs.append(_refreshed(path, _status(path).read()))
        except (OSError, ValueError, TypeError):
            continue  # a status file being replaced this instant, or foreign: skipped this time
    return sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)[:limit]


def cancel_evaluation(settings, evaluation_id: str) -> EvaluationJob:
    """Ask the worker to stop (it marks itself cancelled; the versions it finished stay logged)."""
    require_admin("cancelling an evaluation")
    job = get_evaluation_job(settings, evaluation_id)
    if job.finished:
        raise ValueError(f"evaluation {evaluation_id} has already {job.state}")
    _status(status_path(settings, evaluation_id)).stop()
    return job


def _refreshed(path: Path, job: EvaluationJob) -> EvaluationJob:
    failed = {"state": "failed", "finished_at": utc_now(),
              "error": "the evaluation process ended without finishing (killed, or the machine restarted); see its log"}
    return _status(path).refreshed(job, FINAL_STATES, failed)


# --- the worker -------------------------------------------------------------------------------------------------


def run_worker(path: Path) -> int:
    """Run the evaluation a status file describes, keeping the file up to date; the exit code."""
    job = _status(path).read()
    cancel_on_sigterm()
    job.state, job.pid, job.started_at = "running", os.getpid(), utc_now()
    job.progress = {"done": 0, "total": 0, "message": "checking the versions, the golden set and the held-out text"}
    _status(path).write(job)

    def progress(done: int, total: int, message: str) -> None:
        job.progress = {"done": done, "total": total, "message": message}
        _status(path).write(job)
        print(f"[{done}/{total}] {message}", flush=True)

    def finished_version(result) -> None:
        job.results.append({"label": result.planned.label, "llm_version": result.planned.wanted,
                            "verdict": result.verdict.verdict, "run_id": result.run_id})
        _status(path).write(job)

    def evaluate() -> None:
        request = job.request
        plan = plan_evaluation(load_settings(**job.settings), request["versions"], request["golden"],
                               gate=request["gate"], snapshot_id=request.get("snapshot_id"),
                               per_category=request.get("per_category"), item_ids=request.get("item_ids"),
                               max_new_tokens=request.get("max_new_tokens"), evaluation_id=job.id,
                               created_by=job.created_by)
        run_evaluation(plan, on_progress=progress, on_version=finished_version)

    job.state, job.error = run_work(evaluate, expected=(EvaluationError,))
    job.finished_at = utc_now()
    _status(path).write(job)
    print(f"deploywise: evaluation {job.id} {job.state}" + (f": {job.error}" if job.error else ""), flush=True)
    return 0 if job.state == "succeeded" else 1


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m eval.worker <status file>", file=sys.stderr)
        return 2
    return run_worker(Path(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
