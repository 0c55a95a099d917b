"""Evaluate LLM versions side by side: perplexity on held-out text, the golden set through the real chat, the gate.

`evaluate_versions(settings, ["base", "3", "4"], golden_path)` plans the evaluation (`eval.plan.plan_evaluation`:
every check first, nothing loaded or written), then does, for every version in one run:
1. domain perplexity on a dataset snapshot's held-out documents and general perplexity on its held-out replay
   text (the forgetting check, against the base model's on the same text);
2. every golden item asked through `engine.answering.pipeline.ask`, the chat's own pipeline (candidates, decision and its
   composed answer, then the LLM's explanation, verified sentence by sentence) on the chat's own runtime
   (`engine.llm.backends.llm_backend`: llama.cpp on the version's checked GGUF export, or transformers), and scored
   by `eval.scoring`;
3. the gate's verdict (`eval.gate`), then one MLflow run in the experiment `deploywise-evaluation` and, for a
   registry version, the `gate_*` tags on its model version (`eval.results`).

Answers are asked against a private copy of the knowledge base, so an evaluation adds no answers or
unknown-source entries to the workspace's. The candidates are read once per process, so every version is judged
against the same registry.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlean

from engine.access.roles import require_admin
from engine.answering.citations import find_markers
from engine.answering.golden_set import DEFAULT_GOLDEN
from engine.answering.pipeline import ask
from engine.core import database
from engine.core.workers import Progress
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.knowledge.sources import refresh_sources, resolve
from engine.llm.backend_contract import LlmError
from engine.llm.backends import llm_backend, release_backend, version_settings
from engine.llm.bundled import load_embedder
from engine.llm.loading import load_llm
from engine.llm.versions import BASE, LlmVersion
from engine.registry.candidate_cache import fetch_candidates
from engine.registry.candidates import candidate_sources
from engine.rules.rulebook import decision_for
from eval.gate import GateVerdict, judge
from eval.golden import Expectation, NotApplicable, resolve_item
from eval.perplexity import NAMES, SEQUENCE_LENGTH, Perplexity, held_out_blocks, perplexity
from eval.plan import EvaluationError, EvaluationPlan, PlannedVersion, plan_evaluation, reference_bases
from eval.results import log_version
from eval.scoring import ItemResult, metrics, score


@dataclass
class VersionResult:
    planned: PlannedVersion
    llm_label: str  # as the chat records it: "base:SmolLM2-135M-Instruct", "deploywise-llm/3"
    perplexities: dict[str, Perplexity]
    items: list[ItemResult]
    metrics: dict[str, float]
    verdict: GateVerdict
    run_id: str | None = None

    def to_dict(self) -> dict:
        return {"llm_version": self.planned.wanted, "label": self.planned.label, "llm_label": self.llm_label,
                "verdict": self.verdict.verdict, "reasons": list(self.verdict.reasons), "metrics": self.metrics,
                "mlflow_run_id": self.run_id, "items": [item.to_dict() for item in self.items]}


@dataclass
class EvaluationResult:
    plan: EvaluationPlan
    versions: list[VersionResult] = field(default_factory=list)

    @property
    def all_go(self) -> bool:
        return bool(self.versions) and all(v.verdict.go for v in self.versions)

    def to_dict(self) -> dict:
        plan = self.plan
        return {"evaluation_id": plan.evaluation_id, "golden": str(plan.golden.path), "golden_sha256": plan.golden.sha256,
                "items_evaluated": len(plan.items), "items_total": len(plan.golden.items), "snapshot_id": plan.snapshot_id,
                "gate": plan.gate.to_dict(), "all_go": self.all_go, "versions": [v.to_dict() for v in self.versions]}


# --- running ------------------------------------------------------------------------------------------------------


def evaluate_versions(settings, versions: list[str], golden_path: Path | str = DEFAULT_GOLDEN, *,
                      on_progress: Progress | None = None, **options) -> EvaluationResult:
    """Plan (every check first), then evaluate each version and log it; see the module docstring.
    `options`: gate, snapshot_id, per_category, item_ids, max_new_tokens, evaluation_id, created_by."""
    plan = plan_evaluation(settings, versions, golden_path, **options)
    return run_evaluation(plan, on_progress=on_progress)


def run_evaluation(plan: EvaluationPlan, *, on_progress: Progress | None = None,
                   on_version: Callable[[VersionResult], None] | None = None) -> EvaluationResult:
    """Evaluate the planned versions one after the other; each is logged to MLflow as soon as it is done."""
    require_admin("evaluating LLM versions")
    progress = _Counter(plan.units(), on_progress)
    result = EvaluationResult(plan)
    references: dict[str, dict[str, Perplexity]] = {}  # base model -> its perplexities: what versions are compared to
    for base_model in reference_bases(plan):
        progress.note("base model: perplexity on the held-out text (the retention reference)")
        references[base_model] = _perplexities(load_llm(LlmVersion(base_model)), plan)
        progress.step()
    with tempfile.TemporaryDirectory(prefix="deploywise-eval-") as folder:
        kb = _knowledge_copy(plan.settings, Path(folder))
        try:
            expectations = _expectations(plan, kb)
            for planned in plan.versions:
                progress.note(f"{planned.label}: loading the model and measuring perplexity")
                try:
                    loaded = load_llm(planned.version)
                except LlmError as error:
                    raise EvaluationError(f"{planned.label}: {error}") from None
                found = _perplexities(loaded, plan)
                progress.step()
                if planned.wanted == BASE:
                    references[planned.version.base_model] = found
                items = _golden(plan, planned, kb, expectations, progress)
                del loaded  # perplexity's model, and the chat runtime's backend of this version: done with both
                release_backend(version_settings(plan.settings, planned.wanted))
                version_result = _judge(plan, planned, found, items, references.get(planned.version.base_model, {}))
                version_result.run_id = log_version(plan, version_result)
                result.versions.append(version_result)
                if on_version:
                    on_version(version_result)
        finally:
            kb.connection.close()
    progress.note("done")
    return result


class _Counter:
    def __init__(self, total: int, report: Progress | None):
        self.total, self.done, self.report, self.message = total, 0, report, ""

    def note(self, message: str) -> None:
        self.message = message
        if self.report:
            self.report(self.done, self.total, message)

    def step(self) -> None:
        self.done += 1
        if self.report:
            self.report(self.done, self.total, self.message)


def _perplexities(loaded, plan: EvaluationPlan, kinds=("domain", "replay")) -> dict[str, Perplexity]:
    blocks = held_out_blocks(plan.held_out, loaded.tokenizer, SEQUENCE_LENGTH)
    with loaded.lock:
        return {kind: perplexity(loaded.model, loaded.tokenizer, blocks[kind]) for kind in kinds if blocks.get(kind)}


def _knowledge_copy(settings, folder: Path):
    """A private copy of the knowledge base (SQLite's backup: consistent while others write) with the embedder."""
    source = database.connect(settings.knowledge_db)
    target = sqlean.connect(str(folder / "knowledge.sqlite"))
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return KnowledgeBase(database.connect(folder / "knowledge.sqlite"), load_embedder(settings.embedding_model))


def _expectations(plan: EvaluationPlan, kb) -> dict[str, Expectation]:
    """The decision engine's decision per use case of the golden set, on the registry every version is asked about."""
    snapshot = fetch_candidates(plan.settings)
    refresh_sources(kb.connection, candidate_sources(snapshot))  # registry:<model> citations resolve
    expectations = {}
    for use_case in sorted({item.use_case for item in plan.items if item.use_case} & set(snapshot.use_cases())):
        _, decision = decision_for(kb.connection, use_case, snapshot.for_use_case(use_case), snapshot.candidates)
        expectations[use_case] = Expectation.from_decision(decision)
    return expectations


class _Recording:
    """The version's backend, keeping what it generates after the prefilled opening, for the scoring."""

    def __init__(self, inner):
        self.inner, self.attempts = inner, []

    @property
    def version(self) -> str:
        return self.inner.version

    def stream(self, messages, *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "",
               grammar: str | None = None):
        pieces: list[str] = []
        self.attempts.append(pieces)
        inner = self.inner.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature, prefill=prefill,
                                  grammar=grammar)
        try:
            for piece in inner:
                pieces.append(piece)
                yield piece
        finally:
            inner.close()  # a reader that stops (the first failed sentence) stops the generation


def _golden(plan: EvaluationPlan, planned: PlannedVersion, kb, expectations: dict[str, Expectation],
            progress: _Counter) -> list[ItemResult]:
    backend = _Recording(llm_backend(version_settings(plan.settings, planned.wanted)))
    names = sorted({c.name for c in fetch_candidates(plan.settings).candidates})
    results = []
    for number, item in enumerate(plan.items, start=1):
        progress.note(f"{planned.label}: golden item {number}/{len(plan.items)} ({item.id})")
        result = ItemResult(item.id, item.question, item.type, item.category, item.use_case)
        expectation = expectations.get(item.use_case) if item.use_case else None
        try:
            resolved = resolve_item(item, expectation) if (expectation or not item.use_case) else None
            if resolved is None:
                raise NotApplicable(f"its use case {item.use_case} has no candidates in the registry")
        except NotApplicable as reason:
            result.status, result.skip_reason = "skipped", str(reason)
            results.append(result)
            progress.step()
            continue
        backend.attempts = []
        answer = ask(plan.settings, kb, backend, item.question)
        explanation = answer.explanation
        result.llm_asked = explanation is not None
        result.attempts = ["".join(pieces) for pieces in backend.attempts]
        if explanation is not None:
            result.explanation_state, result.sentences_kept = explanation.state, explanation.sentences_kept
            result.answer = explanation.draft  # the prefilled opening and everything the LLM wrote, verified or not
            result.verification_problems = list(explanation.problems)
        else:
            result.answer = answer.text
        result.shown = answer.text + (f"\n\n{explanation.text}" if explanation is not None and explanation.text else "")
        result.latency_ms = answer.timings.get("total_ms")
        cited_ids = set(find_markers(result.answer)) | set(resolved.sources)
        known = set(resolve(kb.connection, sorted(cited_ids)))
        results.append(score(result, resolved, candidate_names=names, known_sources=known,
                             expected_recommendation=expectation.recommended if expectation else None))
        progress.step()
    return results


def _judge(plan: EvaluationPlan, planned: PlannedVersion, found: dict[str, Perplexity], items: list[ItemResult],
           reference: dict[str, Perplexity]) -> VersionResult:
    values = metrics(items)
    for kind, name in NAMES.items():
        if kind in found:
            values[name] = found[kind].value
            values[name.replace("perplexity", "tokens")] = float(found[kind].tokens)
            if kind in reference:
                values[f"{name}_change_pct"] = (found[kind].value / reference[kind].value - 1) * 100
    scored = sum(1 for item in items if item.status == "scored")
    base_general = reference["replay"].value if "replay" in reference else None
    verdict = judge(values, plan.gate, base_general_perplexity=base_general, items_evaluated=scored,
                    items_total=len(plan.golden.items))
    return VersionResult(planned, planned.version.label, found, items, values, verdict)
