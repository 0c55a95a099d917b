"""Candidate models and their live metrics, as the answer, the evaluation and the pages handle them.

A candidate is a registered model tagged `use_case` and `task` (guideline:model-selection); its metrics are
those of the run behind the version holding the `champion` alias, else behind the latest version. How candidates
are read from MLflow (engine.registry.mlflow_candidates), shared by every session (engine.registry.candidate_cache)
and kept in the workspace (engine.registry.saved_candidates) lives apart, so that code which only handles
candidates (the decision, the views) depends on none of that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.knowledge.sources import Source


@dataclass(frozen=True)
class Candidate:
    name: str
    version: str
    alias: str | None  # "champion" when the version used holds it; None when the latest version is used
    use_case: str
    task: str
    family: str
    description: str
    run_id: str
    metrics: dict[str, float]
    source_id: str
    url: str | None


@dataclass(frozen=True)
class CandidateSnapshot:
    candidates: tuple[Candidate, ...]
    fetched_at: datetime  # UTC, when these metrics were read from MLflow
    error: str | None = None  # MLflow could not be read just now: these are the last metrics read

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.fetched_at).total_seconds()

    def use_cases(self) -> list[str]:
        return sorted({candidate.use_case for candidate in self.candidates})

    def for_use_case(self, use_case: str) -> tuple[Candidate, ...]:
        return tuple(candidate for candidate in self.candidates if candidate.use_case == use_case)


def candidate_source(candidate: Candidate) -> Source:
    """The registry entry that makes `<<SRC:registry:...>>` resolve to the candidate's model page."""
    return Source(candidate.source_id, f"{candidate.name} v{candidate.version}", candidate.url, "model")


def candidate_sources(snapshot: CandidateSnapshot) -> list[Source]:
    return [candidate_source(c) for c in snapshot.candidates]


def finite_metrics(metrics: dict) -> dict[str, float]:
    """A NaN or infinite metric is left out: it could pass no criterion, and a missing metric fails explicitly."""
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float) and math.isfinite(value)}
