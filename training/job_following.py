"""Following training jobs once launched: their state refreshed from Ray, cancelling, logs, and progress and curves
from their MLflow runs. Separate from launching because the retraining page and the CLI follow jobs on every look,
long after the launch.

Each job is a row of `training_jobs` in the knowledge database: its state is refreshed from Ray when someone looks,
its progress and curves are read from its MLflow run. Page reloads and app restarts lose nothing: the row, the Ray
job and the run are all outside the session.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from engine.access.roles import require_admin
from engine.core.database import transaction, utc_now
from engine.core.errors import first_line
from engine.core.mlflow_client import registry_client
from engine.lifecycle.training_jobs import FINAL_STATES, TrainingJob, list_jobs, training_job
from training.job_spec import FAILURE_TAG, LLM_VERSION_TAG
from training.ray_cluster import JobError, cluster_address, dashboard_up, jobs_client

_RAY_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "cancelled"}


@dataclass(frozen=True)
class JobProgress:
    """What the job's MLflow run says so far."""
    step: int = 0
    total_steps: int | None = None
    eta_s: float | None = None
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, value), the last value of each step
    learning_rate: list[tuple[int, float]] = field(default_factory=list)
    eval_perplexity: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # CPT: domain, replay; SFT: answers
    tokens_per_s: float | None = None
    resumed_from_step: int | None = None


def get_job(connection, job_id: str) -> TrainingJob:
    row = connection.execute("SELECT * FROM training_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobError(f"no training job {job_id}")
    return training_job(row)


def refresh_jobs(settings, connection) -> list[str]:
    """Bring unfinished jobs' states up to date from Ray and MLflow; problems reaching them, one line each."""
    unfinished = [job for job in list_jobs(connection, limit=1000) if not job.finished]
    if not unfinished:
        return []
    try:
        client = jobs_client(settings, start_local=False)
    except JobError as error:
        address = cluster_address(settings)
        local = not (settings.ray_address or os.environ.get("RAY_ADDRESS"))
        if not local or dashboard_up(address, timeout_s=10.0):  # a remote cluster may come back; a busy head is slow
            return [str(error)]
        for job in unfinished:  # the local head is down (a reboot, `ray stop`): its jobs died with it
            if job.ray_address == address:
                finish_job(connection, job.id, "failed", f"the Ray cluster at {address} is gone ({error})")
                _end_run(settings, job.mlflow_run_id, "FAILED", "the Ray cluster is gone")
        return []
    problems = []
    for job in unfinished:
        try:
            info = client.get_job_info(job.id)
        except Exception as error:  # the cluster does not know it: a new head
            if "does not exist" in str(error) or "not found" in str(error).lower():
                finish_job(connection, job.id, "failed", "the Ray cluster no longer knows this job (its head was restarted)")
                _end_run(settings, job.mlflow_run_id, "FAILED", "job lost by the Ray cluster")
            else:
                problems.append(f"{job.id}: {first_line(error)}")
            continue
        state = _RAY_STATES.get(str(getattr(info.status, "value", info.status)), job.state)
        if state == "running" and job.state == "cancelling":
            continue
        if state in FINAL_STATES:
            if state == "succeeded":  # before the job is final: a final job is never refreshed again
                _set_version(settings, connection, job)
            finish_job(connection, job.id, state, _outcome(settings, job, state, info.message))
            if state != "succeeded":
                _end_run(settings, job.mlflow_run_id, "KILLED" if state == "cancelled" else "FAILED", info.message or state)
        elif state != job.state:
            with transaction(connection):
                connection.execute("UPDATE training_jobs SET state = ?, updated_at = ? WHERE id = ?", (state, utc_now(), job.id))
    return problems


def cancel_job(settings, connection, job_id: str) -> TrainingJob:
    """Ask Ray to stop the job (its driver ends the MLflow run as KILLED); the state shows 'cancelling' until then."""
    require_admin("cancelling a training job")
    job = get_job(connection, job_id)
    if job.finished:
        raise JobError(f"job {job_id} has already {job.state}")
    try:
        jobs_client(settings, start_local=False).stop_job(job_id)
    except Exception as error:
        raise JobError(f"cannot cancel {job_id}: {first_line(error)}") from None
    with transaction(connection):
        connection.execute("UPDATE training_jobs SET state = 'cancelling', updated_at = ? WHERE id = ?", (utc_now(), job_id))
    return get_job(connection, job_id)


def job_logs(settings, job_id: str, tail_lines: int = 200) -> str:
    try:
        text = jobs_client(settings, start_local=False).get_job_logs(job_id)
    except Exception as error:
        raise JobError(f"cannot read the logs of {job_id}: {first_line(error)}") from None
    return "\n".join(text.splitlines()[-tail_lines:])


def job_progress(settings, job: TrainingJob) -> JobProgress:
    """Step, total, ETA and curves from the job's MLflow run."""
    client = registry_client(settings)
    run = client.get_run(job.mlflow_run_id)
    history = {key: _last_per_step(client.get_metric_history(job.mlflow_run_id, key))
               for key in ("loss", "learning_rate", "total_steps", "resumed_from_step")}
    perplexity = {key.removeprefix("eval_").removesuffix("_perplexity"):
                  _last_per_step(client.get_metric_history(job.mlflow_run_id, key))
                  for key in sorted(run.data.metrics) if key.startswith("eval_") and key.endswith("_perplexity")}
    losses = history["loss"]
    step = losses[-1][0] if losses else 0
    total = int(history["total_steps"][-1][1]) if history["total_steps"] else None
    return JobProgress(
        step=step, total_steps=total, eta_s=_eta(client, job.mlflow_run_id, step, total) if not job.finished else None,
        loss=[(s, v) for s, v in losses], learning_rate=history["learning_rate"],
        eval_perplexity={kind: points for kind, points in perplexity.items() if points},
        tokens_per_s=run.data.metrics.get("train_tokens_per_s"),
        resumed_from_step=int(history["resumed_from_step"][-1][1]) if history["resumed_from_step"] else None,
    )


def _last_per_step(metrics) -> list[tuple[int, float]]:
    """A metric's values by step; a step logged again after a resume keeps its latest value."""
    latest: dict[int, tuple[int, float]] = {}
    for metric in metrics:
        if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
            latest[metric.step] = (metric.timestamp, metric.value)
    return [(step, value) for step, (_, value) in sorted(latest.items())]


def _eta(client, run_id: str, step: int, total: int | None) -> float | None:
    """Seconds left at the pace of the recent steps."""
    if not total or step <= 0 or step >= total:
        return None
    points = sorted((m.step, m.timestamp) for m in client.get_metric_history(run_id, "loss"))[-20:]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    per_step_ms = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
    return max(0.0, per_step_ms * (total - step) / 1000) if math.isfinite(per_step_ms) else None


def _outcome(settings, job: TrainingJob, state: str, ray_message: str | None) -> str:
    if state != "failed":
        return {"succeeded": "finished", "cancelled": "cancelled by an admin"}[state]
    try:
        failure = registry_client(settings).get_run(job.mlflow_run_id).data.tags.get(FAILURE_TAG)
    except Exception:  # the run's reason is a nicety; Ray's message is still there
        failure = None
    return failure or first_line(ray_message or "failed")


def _set_version(settings, connection, job: TrainingJob) -> None:
    version = registry_client(settings).get_run(job.mlflow_run_id).data.tags.get(LLM_VERSION_TAG)
    with transaction(connection):
        connection.execute("UPDATE training_jobs SET llm_version = ? WHERE id = ?", (version, job.id))


def _end_run(settings, run_id: str, status: str, reason: str) -> None:
    """End a run its driver could not end (it was killed with its cluster); a finished run is left as it is."""
    client = registry_client(settings)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, FAILURE_TAG, reason)
        client.set_terminated(run_id, status)


def finish_job(connection, job_id: str, state: str, message: str) -> None:
    now = utc_now()
    with transaction(connection):
        connection.execute(
            "UPDATE training_jobs SET state = ?, message = ?, updated_at = ?, finished_at = ? WHERE id = ?",
            (state, message, now, now, job_id),
        )
