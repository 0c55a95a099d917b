"""The last good read of the candidates, kept in the workspace so that, with MLflow down, even a restarted app
can still answer from it and say how old it is.

Kept apart from the cache in memory (engine.registry.candidate_cache): this is a file that outlives the process,
written after every good read and read only when MLflow cannot be.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from engine.registry.candidates import Candidate, CandidateSnapshot, finite_metrics

log = logging.getLogger(__name__)


def saved_snapshot_path(settings) -> Path:
    return settings.workspace / "cache" / "candidates.json"


def save_snapshot(settings, snapshot: CandidateSnapshot) -> None:
    """Written atomically (a temporary file, then a rename) so a crash never leaves half a file to restart from."""
    path = saved_snapshot_path(settings)
    payload = {
        "tracking_uri": settings.tracking_uri,
        "registry_uri": settings.mlflow_registry_uri,
        "fetched_at": snapshot.fetched_at.isoformat(),
        "candidates": [asdict(candidate) for candidate in snapshot.candidates],
    }
    staging = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        os.replace(staging, path)
    except OSError:
        log.warning("could not save the candidates read from MLflow to %s", path, exc_info=True)
        staging.unlink(missing_ok=True)


def load_saved_snapshot(settings) -> CandidateSnapshot | None:
    """The last good read saved for this MLflow, or None when there is none (or it is unreadable, or for another MLflow)."""
    path = saved_snapshot_path(settings)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if (payload["tracking_uri"], payload["registry_uri"]) != (settings.tracking_uri, settings.mlflow_registry_uri):
            return None
        candidates = tuple(Candidate(**{**row, "metrics": finite_metrics(row["metrics"])}) for row in payload["candidates"])
        fetched_at = datetime.fromisoformat(payload["fetched_at"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring the unreadable saved candidates in %s", path, exc_info=True)
        return None
    if fetched_at.tzinfo is None:
        return None
    return CandidateSnapshot(candidates, fetched_at)
