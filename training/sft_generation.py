"""Generating an SFT dataset (seed 002, phase 3): one run over the knowledge base and the product's own task.

Three kinds of pairs, each kept with the chunk and source ids it came from: knowledge styles
(training.sft_knowledge_pairs), recommendations and refusals (training.sft_task_pairs), plus accepted feedback
corrections; what to make and with which LLM is a training.sft_generation_request.GenerationRequest.
Every pair goes through training.sft_data.add_pairs (validation, duplicates, the golden set kept out).

Separate from the pair makers because the run is what the page's worker and the CLI start: it owns the dataset's
state and progress, so an interrupted or failed run keeps what it made and says why it stopped.
"""

from __future__ import annotations

import os
from collections import Counter

from engine.access.roles import require_admin
from engine.answering.golden_set import GoldenError, load_golden
from engine.core.workers import Progress
from engine.llm.backend_contract import LlmError
from engine.registry.candidate_cache import CandidatesUnavailable, fetch_candidates
from training.sft_data import SftDataError, SftDataset, add_pairs, create_dataset, get_dataset, update_dataset
from training.sft_generation_request import KNOWLEDGE_STYLES, GenerationRequest, check_request, make_backend
from training.sft_knowledge_pairs import knowledge_messages, knowledge_pair, sample_chunks, source_groups
from training.sft_pair_checks import PairCandidate
from training.sft_task_pairs import correction_pairs, paraphrase, recommendation_pair, refusal_pairs, template_questions


def reserved_questions() -> list[str]:
    """The golden set's questions: training on them would leak the evaluation."""
    try:
        return [item.question for item in load_golden().items]
    except GoldenError:
        return []


def plan_size(kb, request: GenerationRequest, use_cases: int) -> int:
    """The number of steps a run reports progress in."""
    knowledge = [style for style in request.styles if style in KNOWLEDGE_STYLES]
    chunks = sum(min(request.per_source, len(ids)) for ids in source_groups(kb.connection).values())
    steps = chunks * len(knowledge)
    steps += use_cases * request.questions_per_use_case if "recommendation" in request.styles else 0
    steps += 1 if "refusal" in request.styles else 0
    return steps + (1 if request.include_corrections else 0)


def generate_dataset(settings, kb, request: GenerationRequest, *, on_progress: Progress | None = None,
                     backend=None, existing: bool = False) -> SftDataset:
    """Generate the dataset `request.name` (created here unless `existing`, as for a worker whose dataset the app
    made), adding pairs as they come, so an interrupted run keeps what it made. A failure marks the dataset failed
    (with its one-line reason) and is raised again. Returns the finished dataset."""
    require_admin("generating SFT data")
    check_request(settings, request)
    if existing:
        get_dataset(kb.connection, request.name)
    else:
        create_dataset(kb.connection, request.name, request.to_config(), state="generating")
    update_dataset(kb.connection, request.name, state="generating", error=None, pid=os.getpid())
    try:
        _generate(settings, kb, request, on_progress, backend or make_backend(settings, request))
    except Exception as error:
        update_dataset(kb.connection, request.name, state="failed", pid=None,
                       error=(str(error).strip().splitlines() or [type(error).__name__])[0][:300])
        raise
    return get_dataset(kb.connection, request.name)


def _generate(settings, kb, request: GenerationRequest, on_progress: Progress | None, backend) -> None:
    generator = backend.version if backend is not None else "composer"
    reserved = reserved_questions()
    use_cases: list[tuple[str, str]] = []
    if "recommendation" in request.styles:
        try:
            snapshot = fetch_candidates(settings)
        except CandidatesUnavailable as error:
            raise SftDataError(f"recommendation pairs need the model registry, which cannot be read: {error}") from None
        use_cases = [(use_case, snapshot.for_use_case(use_case)[0].task) for use_case in snapshot.use_cases()]
    total, done = plan_size(kb, request, len(use_cases)), 0

    def step(message: str, candidates: list[PairCandidate], drops: Counter | None = None) -> None:
        nonlocal done
        add_pairs(kb.connection, request.name, candidates, drops=dict(drops or {}), reserved_questions=reserved)
        done += 1
        update_dataset(kb.connection, request.name, progress={"done": done, "total": total, "message": message})
        if on_progress:
            on_progress(done, total, message)

    knowledge = [style for style in request.styles if style in KNOWLEDGE_STYLES]
    if knowledge:
        for chunk in sample_chunks(kb, request.per_source, request.seed):
            for style in knowledge:
                drops, candidates = Counter(), []
                try:
                    reply = "".join(backend.stream(knowledge_messages(request, style, chunk),
                                                   max_new_tokens=request.max_new_tokens, temperature=request.temperature))
                except LlmError:
                    drops["generation_failed"] += 1
                else:
                    pair = knowledge_pair(style, chunk, reply, generator)
                    if isinstance(pair, str):
                        drops[pair] += 1
                    else:
                        candidates.append(pair)
                step(f"{style} pair from chunk {chunk.id} ({chunk.source_id})", candidates, drops)
    for use_case, task in use_cases:
        for template in template_questions(use_case, task, request.questions_per_use_case, request.seed):
            drops, candidates = Counter(), []
            reworded = paraphrase(backend, template, request) if request.paraphrase and backend is not None else None
            for question in [reworded] * bool(reworded) + [template]:  # the template when the rewording is unusable
                pair = recommendation_pair(settings, kb, question, use_case, backend, request)
                if not isinstance(pair, str):
                    candidates.append(pair)
                    break
                drops[pair] += 1
            step(f"recommendation for {use_case}: {question}", candidates, drops)
    if "refusal" in request.styles:
        pairs, answered = refusal_pairs(settings, kb)
        step("refusals", pairs, Counter({"use_case_mismatch": answered}))
    if request.include_corrections:
        step("accepted feedback corrections", correction_pairs(kb.connection))
    update_dataset(kb.connection, request.name, state="ready", pid=None,
                   progress={"done": total, "total": total, "message": "finished"})
