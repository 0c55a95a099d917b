"""The Retraining page's jobs, as plain functions: the table of both recipes' training jobs, how often it refreshes
while one is unfinished, and one job's progress text and curves.

Separate from the form (`ui.retraining_form`) and the data choices (`ui.retraining_inputs`): this follows jobs after
their launch, from the database and what `training.job_following` reads of their MLflow runs. Everything here runs (and
is tested) without a browser or Streamlit.
"""

from __future__ import annotations

import pandas as pd

from engine.core import database
from engine.core.errors import first_line
from engine.lifecycle.training_jobs import FINAL_STATES, TrainingJob
from training.job_following import JobProgress
from ui.formatting import format_eta, format_time

POLL_SECONDS = 3.0  # how often the jobs table refreshes while a job is unfinished
LOG_TAIL_LINES = 200


def open_database(settings):
    """The knowledge database (it holds `training_jobs`), without loading any model; the caller closes it."""
    settings.ensure_workspace()
    return database.connect(settings.knowledge_db)


# --- jobs -------------------------------------------------------------------------------------------------------


def polling_interval(jobs: list[TrainingJob]) -> float | None:
    """Seconds between refreshes while some job is unfinished; None (no polling) when all are finished."""
    return POLL_SECONDS if any(not job.finished for job in jobs) else None


def table_progress(settings, jobs: list[TrainingJob], known: dict[str, JobProgress], read_progress) -> tuple[dict, list[str]]:
    """Each job's progress: read again for unfinished jobs, once for finished ones (kept in `known`, which is
    updated). Returns (progress by job id, None where unreadable; problems, one line each)."""
    progress, problems = {}, []
    for job in jobs:
        if job.finished and job.id in known:
            progress[job.id] = known[job.id]
            continue
        try:
            progress[job.id] = read_progress(settings, job)
        except Exception as error:  # MLflow down, a deleted run: the row shows what the database knows
            progress[job.id] = None
            problems.append(f"{job.id}: cannot read its MLflow run ({first_line(error)})")
            continue
        if job.finished:
            known[job.id] = progress[job.id]
    return progress, problems


def steps_text(progress: JobProgress | None) -> str:
    if progress is None:
        return "?"
    return f"{progress.step}/{progress.total_steps}" if progress.total_steps else (str(progress.step) if progress.step else "")


def version_label(registry_name: str, job: TrainingJob) -> str:
    return f"{registry_name}/{job.llm_version}" if job.llm_version else ""


def model_version_url(settings, number: str) -> str | None:
    """The MLflow UI page of a version when the tracking server has one (http); None for a local store."""
    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")) or settings.mlflow_registry_uri:
        return None
    return f"{uri.rstrip('/')}/#/models/{settings.llm_registry_name}/versions/{number}"


def jobs_frame(jobs: list[TrainingJob], progress: dict[str, JobProgress | None], registry_name: str) -> pd.DataFrame:
    rows = []
    for job in jobs:
        done = progress.get(job.id)
        rows.append({
            "job": job.id,
            "kind": job.kind.upper(),
            "state": job.state,
            "started": format_time(job.created_at),
            "start from": job.start_from,
            "data": job.data,
            "step": steps_text(done),
            "ETA": format_eta(done.eta_s) if done and not job.finished else "",
            "LLM version": version_label(registry_name, job),
            "message": job.message or "",
        })
    return pd.DataFrame(rows, columns=["job", "kind", "state", "started", "start from", "data", "step", "ETA", "LLM version", "message"])


def job_label(job: TrainingJob) -> str:
    return f"{job.id} · {job.state}"


def progress_text(progress: JobProgress, job: TrainingJob) -> str:
    """'step 12/40 · ETA 3 min 20 s · 1,234 tokens/s · resumed from step 10'."""
    if not progress.total_steps and not progress.step:
        return {"queued": "waiting for the cluster", "running": "starting: loading the model and the data"}.get(job.state, job.state)
    parts = [f"step {steps_text(progress)}"]
    if progress.eta_s is not None and not job.finished:
        parts.append(f"ETA {format_eta(progress.eta_s)}")
    if progress.tokens_per_s:
        parts.append(f"{progress.tokens_per_s:,.0f} tokens/s")
    if progress.resumed_from_step:
        parts.append(f"resumed from step {progress.resumed_from_step}")
    return " · ".join(parts)


def curve_frame(series: dict[str, list[tuple[int, float]]]) -> pd.DataFrame:
    """Curves for st.line_chart: one column per series, indexed by step (series may have different steps)."""
    frames = [pd.Series(dict(points), name=name, dtype=float) for name, points in series.items() if points]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, axis=1).sort_index()
    frame.index.name = "step"
    return frame


def unfinished(jobs: list[TrainingJob]) -> list[str]:
    return [job.id for job in jobs if job.state not in FINAL_STATES]
