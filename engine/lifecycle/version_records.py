"""What the LLM versions catalog is made of: a version's record, its gate verdict, evaluation and usage, the history of
actions, the statuses and names they share, and the one-line `VersionError` every refusal is.

Apart from reading and acting because the catalog, the actions, the page tables and the CLI all speak these types,
and none of them needs the others' MLflow calls to do so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mlflow.exceptions import MlflowException

from engine.core.errors import first_line
from engine.llm.versions import BASE, CANDIDATE

DEPLOYED, ARCHIVED, FAILED = "deployed", "archived", "failed"
STATUSES = (CANDIDATE, DEPLOYED, ARCHIVED, FAILED)
GO = "GO"  # the evaluation's verdicts: GO | NO-GO
EVALUATION_EXPERIMENT = "deploywise-evaluation"
HISTORY_EXPERIMENT = "deploywise-llm-versions"
MAX_REASON_CHARS = 5_000  # MLflow run tags hold 8,000


class VersionError(RuntimeError):
    """A refused or failed version action, as one line saying why; nothing was changed."""


@dataclass(frozen=True)
class Gate:
    """The latest evaluation's verdict on a version, as the evaluation tagged it."""
    verdict: str | None = None  # GO | NO-GO | None: never evaluated
    evaluation_id: str | None = None
    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict == GO


@dataclass(frozen=True)
class Evaluation:
    """One evaluation run of a version: its metrics (accuracy, perplexities, latency...)."""
    evaluation_id: str | None
    run_id: str
    verdict: str | None
    at: str | None  # ISO-8601 UTC
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """Chat answers a version wrote and what users thought of them."""
    answers: int = 0
    thumbs_up: int = 0
    flags: int = 0  # thumbs down


@dataclass(frozen=True)
class VersionRecord:
    number: str
    label: str  # "deploywise-llm/3", as answers record it
    status: str  # one of STATUSES
    recorded_status: str | None  # the `status` tag
    base_model: str | None
    parent_version: str | None
    snapshot_id: str | None
    config_hash: str | None
    job_id: str | None
    job_state: str | None  # from the jobs table, when this workspace launched the job
    training: str | None  # cpt, sft...
    run_id: str | None
    run_status: str | None
    created_at: str | None
    created_by: str | None
    description: str | None
    gate: Gate
    evaluation: Evaluation | None  # the gate's evaluation, else the latest one
    usage: Usage
    promoted_by: str | None = None
    promoted_at: str | None = None
    promotion_reason: str | None = None
    promotion_gate: str | None = None
    previous_champion: str | None = None
    archived_by: str | None = None
    archived_at: str | None = None
    sft_dataset: str | None = None  # what an SFT version learnt from (a CPT version's is its snapshot_id)

    @property
    def data(self) -> str:
        """What the version was trained on, for tables: the CPT snapshot or the SFT dataset."""
        return self.snapshot_id or (f"SFT dataset {self.sft_dataset}" if self.sft_dataset else "")


@dataclass(frozen=True)
class VersionEvent:
    """One promotion, rollback or archive, from the history experiment."""
    at: str
    action: str  # promote | rollback | archive
    version: str  # the version acted on: the new champion (BASE after a rollback to the base model), the archived one
    previous: str | None  # the champion before
    actor: str
    reason: str | None
    gate: str | None


@dataclass(frozen=True)
class VersionsOverview:
    registry_name: str
    champion: str | None  # None: the base model answers
    versions: list[VersionRecord]  # newest first
    rollback_target: str | None  # what `rollback` would serve: a number, BASE, or None (nothing to roll back to)
    base_label: str
    base_usage: Usage
    base_evaluation: Evaluation | None
    other_usage: dict[str, Usage]  # answers by LLMs outside this registry (endpoints, other registries)
    history: list[VersionEvent]
    notices: list[str]  # what the admin should know: the chat ignores the alias, unreadable jobs table...

    @property
    def serving(self) -> str:
        return f"{self.registry_name}/{self.champion}" if self.champion else self.base_label

    def version(self, number: str) -> VersionRecord:
        for record in self.versions:
            if record.number == str(number):
                return record
        raise VersionError(f"the MLflow registry has no LLM version {self.registry_name}/{number}")

    def to_dict(self) -> dict:
        return asdict(self) | {"serving": self.serving}


def target_text(registry_name: str, target: str, base_label: str | None = None) -> str:
    """What a rollback target or a champion means to a reader: 'deploywise-llm/3' or 'the base model'."""
    if target == BASE:
        return f"the base model ({base_label})" if base_label else "the base model"
    return f"{registry_name}/{target}"


def mlflow_problem(error: Exception) -> str:
    """An MLflow failure in one line: MLflow's own message, else the error's type and first line."""
    if isinstance(error, MlflowException):
        return first_line(error.message)
    return f"{type(error).__name__}: {first_line(error)}"
