"""The record of every training job, as the workspace database keeps it (table `training_jobs`): what the versions
catalog shows of the job behind a version, and what training.job_launch launches and training.job_following follows and
updates."""

from __future__ import annotations

import json
from dataclasses import dataclass

FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class TrainingJob:
    id: str
    kind: str
    state: str
    config: dict
    config_hash: str
    snapshot_id: str
    start_from: str
    mlflow_run_id: str
    ray_address: str
    log_location: str
    llm_version: str | None
    message: str | None
    created_by: str | None
    created_at: str
    updated_at: str
    finished_at: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def data(self) -> str:
        """What the job learns from: 'snapshot <id>' (CPT) or 'dataset <name> (<hash>)' (SFT)."""
        return f"dataset {self.config.get('dataset')} ({self.snapshot_id})" if self.kind == "sft" else f"snapshot {self.snapshot_id}"


def list_jobs(connection, limit: int = 50) -> list[TrainingJob]:
    rows = connection.execute("SELECT * FROM training_jobs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
    return [training_job(row) for row in rows]


def training_job(row) -> TrainingJob:
    data = dict(row)
    data["config"] = json.loads(data["config"])
    return TrainingJob(**data)
