"""Planning an evaluation: everything that can be wrong with the request is found here, before anything is loaded
or written.

A version the registry lacks, a malformed golden file or gate configuration, no held-out text, a registry without
the golden set's use cases, a version the configured runtime cannot serve (such as one without a checked GGUF export
on llama.cpp): `plan_evaluation` says so in one `EvaluationError` line. With an OpenAI-compatible endpoint
configured, the versions are served in process by transformers: the endpoint serves a model of its own, not the
version asked for. Separate from running it (`eval.harness`) because the Evaluation page, the CLI and the worker
check a request with this alone, before a worker starts or a model loads.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException

from engine.answering.golden_set import DEFAULT_GOLDEN, GoldenError, GoldenItem, GoldenSet, load_golden
from engine.core.mlflow_client import registry_client
from engine.llm.backend_contract import LlmError
from engine.llm.backends import runtime_problem
from engine.llm.versions import BASE, CHAMPION, LlmVersion, resolve_llm_version
from engine.registry.candidate_cache import CandidatesUnavailable, fetch_candidates
from eval.gate import DEFAULT_GATE, GateConfig, GateError, load_gate_config
from training.cpt import SNAPSHOT_ARTIFACT
from training.dataset_snapshot import SnapshotError, list_snapshots, load_snapshot, read_split, snapshot_workspace


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; one line saying why. Nothing was loaded or written."""


@dataclass(frozen=True)
class PlannedVersion:
    wanted: str  # "base" or the registry version number: the runs' `llm_version` tag
    version: LlmVersion

    @property
    def label(self) -> str:
        return BASE if self.wanted == BASE else f"v{self.wanted}"


@dataclass(frozen=True)
class EvaluationPlan:
    evaluation_id: str
    settings: object  # the workspace's settings, with the candidates cached for the whole run
    versions: tuple[PlannedVersion, ...]
    golden: GoldenSet
    items: tuple[GoldenItem, ...]
    gate: GateConfig
    snapshot_id: str
    held_out: list[dict]  # the snapshot's validation records
    max_new_tokens: int
    created_by: str | None = None

    @property
    def subset(self) -> bool:
        return len(self.items) < len(self.golden.items)

    def units(self) -> int:
        """Progress steps: a perplexity step per version and per reference-only base model, one per item."""
        return sum(1 + len(self.items) for _ in self.versions) + len(reference_bases(self))


def new_evaluation_id() -> str:
    return f"eval-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def parse_versions(text: str) -> list[str]:
    """'base,3, 4' -> ['base', '3', '4']; EvaluationError for an empty list or a malformed entry."""
    versions = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not versions:
        raise EvaluationError("no LLM version to evaluate: give e.g. --versions base,3")
    for version in versions:
        if version not in (BASE, CHAMPION) and not version.isdigit():
            raise EvaluationError(f"unknown LLM version {version!r}: use base, champion or a version number")
    return versions


# --- planning: everything checked, nothing loaded or written ------------------------------------------------------


def plan_evaluation(settings, versions: list[str], golden_path: Path | str = DEFAULT_GOLDEN, *,
                    gate: Path | str | dict | None = DEFAULT_GATE, snapshot_id: str | None = None,
                    per_category: int | None = None, item_ids: list[str] | None = None,
                    max_new_tokens: int | None = None, evaluation_id: str | None = None,
                    created_by: str | None = None) -> EvaluationPlan:
    if max_new_tokens is not None and not 0 < max_new_tokens <= 8192:
        raise EvaluationError(f"max new tokens must be between 1 and 8192 (got {max_new_tokens})")
    planned = _plan_versions(settings, versions)
    _check_runtime(settings, planned)
    try:
        golden = load_golden(golden_path)
        items = golden.select(per_category=per_category, ids=item_ids)
        gate_config = load_gate_config(gate)
    except (GoldenError, GateError) as error:
        raise EvaluationError(str(error)) from None
    if not settings.knowledge_db.is_file():
        raise EvaluationError(f"no knowledge base in {settings.workspace}: run `deploywise demo prepare` or ingest documents first")
    run_settings = settings.model_copy(update={"candidates_ttl_s": 86_400.0,  # one registry read for the whole run
                                               "llm_max_new_tokens": max_new_tokens or settings.llm_max_new_tokens})
    wanted_cases = {item.use_case for item in items if item.use_case}
    if wanted_cases:
        try:
            known = set(fetch_candidates(run_settings).use_cases())
        except CandidatesUnavailable as error:
            raise EvaluationError(str(error)) from None
        if not wanted_cases & known:
            raise EvaluationError(f"none of the golden set's use cases ({', '.join(sorted(wanted_cases))}) has candidates "
                                  f"in the registry at {settings.tracking_uri}: choose a golden set written for it")
    snapshot, held_out = _held_out_text(settings, planned, snapshot_id)
    return EvaluationPlan(evaluation_id or new_evaluation_id(), run_settings, tuple(planned), golden, items,
                          gate_config, snapshot, held_out, run_settings.llm_max_new_tokens, created_by)


def _plan_versions(settings, versions: list[str]) -> list[PlannedVersion]:
    if isinstance(versions, str):
        versions = parse_versions(versions)
    if not versions:
        raise EvaluationError("no LLM version to evaluate")
    planned: list[PlannedVersion] = []
    for wanted in versions:
        wanted = str(wanted).strip()
        if wanted not in (BASE, CHAMPION) and not wanted.isdigit():
            raise EvaluationError(f"unknown LLM version {wanted!r}: use base, champion or a version number")
        try:
            version = resolve_llm_version(settings, wanted)
        except LlmError as error:
            raise EvaluationError(f"LLM version {wanted}: {error}") from None
        tag = version.number or BASE
        if any(p.wanted == tag for p in planned):
            raise EvaluationError(f"LLM version {tag} is listed twice" + (" (champion is that version)" if wanted == CHAMPION else ""))
        planned.append(PlannedVersion(tag, version))
    return sorted(planned, key=lambda p: (p.wanted != BASE, int(p.wanted) if p.wanted.isdigit() else 0))


def _check_runtime(settings, planned: list[PlannedVersion]) -> None:
    for p in planned:
        if problem := runtime_problem(settings, p.version):
            raise EvaluationError(f"LLM version {p.wanted}: {problem}")


def _held_out_text(settings, planned: list[PlannedVersion], snapshot_id: str | None) -> tuple[str, list[dict]]:
    """The snapshot whose validation split is measured: the one given, else the newest evaluated version's
    training snapshot (from the workspace or its training run), else the newest written, else one made now."""

    trained = sorted((p for p in planned if p.version.number), key=lambda p: -int(p.wanted))
    try:
        if snapshot_id:
            try:
                return snapshot_id, read_split(load_snapshot(settings.workspace, snapshot_id), "validation")
            except SnapshotError:  # not in this workspace: perhaps in an evaluated version's training run
                found = next((f for p in trained if (f := _version_snapshot(settings, p.version)) and f[0] == snapshot_id), None)
                if found is None:
                    raise
                return found
        for candidate in trained:
            found = _version_snapshot(settings, candidate.version)
            if found:
                return found
        written = list_snapshots(settings.workspace)
        snapshot = written[0] if written else snapshot_workspace(settings)
        return snapshot.id, read_split(snapshot, "validation")
    except SnapshotError as error:
        raise EvaluationError(f"no held-out text for perplexity: {error}") from None


def _version_snapshot(settings, version: LlmVersion) -> tuple[str, list[dict]] | None:
    """The validation split a version's training job held out, from the workspace or the job's MLflow run."""
    client = registry_client(settings)
    try:
        snapshot_id = client.get_model_version(version.registry_name, version.number).tags.get("snapshot_id")
    except MlflowException:
        return None
    if not snapshot_id:
        return None
    try:
        return snapshot_id, read_split(load_snapshot(settings.workspace, snapshot_id), "validation")
    except SnapshotError:
        pass
    with tempfile.TemporaryDirectory(prefix="deploywise-snapshot-") as folder:
        try:
            path = client.download_artifacts(version.run_id, f"{SNAPSHOT_ARTIFACT}/validation.jsonl", folder)
            text = Path(path).read_text(encoding="utf-8")
        except (MlflowException, OSError):
            return None
    return snapshot_id, [json.loads(line) for line in text.splitlines() if line.strip()]


def reference_bases(plan: EvaluationPlan) -> list[str]:
    """Base models the versions' perplexities are compared with (the retention check) that are not evaluated themselves."""
    evaluated = {p.version.base_model for p in plan.versions if p.wanted == BASE}
    return sorted({p.version.base_model for p in plan.versions} - evaluated)
