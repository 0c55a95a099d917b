"""One chat answer, end to end: candidates -> knowledge -> decision -> LLM draft -> verification -> record.

The page and the CLI share these three steps. `prepare_answer` does the fast, deterministic part; the caller
streams `draft_stream` wherever tokens should appear; `finish_answer` verifies the draft, retries once with
constraints, falls back to the composed answer, resolves citations and stores the answer record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from engine.answers import AnswerRecord, save_answer
from engine.candidates import CandidatesUnavailable, CandidateSnapshot, candidate_source, fetch_candidates
from engine.citations import Citation, cited_chunks, find_markers, resolve_citations
from engine.composer import compose_answer
from engine.decision import Decision
from engine.llm import LlmError
from engine.prompting import MAX_QUESTION_CHARS, build_messages, retry_messages
from engine.rulebook import Rulebook, decision_for
from engine.search import hybrid_search
from engine.sources import refresh_sources, resolve
from engine.use_cases import UseCaseMatch, clarifying_question, match_use_case
from engine.verifier import Verification, verify_answer


class QuestionError(ValueError):
    """The question cannot be answered as asked (empty, say)."""


@dataclass
class PreparedAnswer:
    question: str
    match: UseCaseMatch
    snapshot: CandidateSnapshot | None
    candidates: tuple = ()
    decision: Decision | None = None
    hits: list = field(default_factory=list)
    messages: list[dict] | None = None  # None: nothing for the LLM to explain, the composed answer is final
    notices: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    fallback_text: str = ""
    started: float = field(default_factory=time.perf_counter)
    rules: Rulebook | None = None


@dataclass(frozen=True)
class ChatAnswer:
    record_id: int
    text: str  # with <<SRC:...>> markers; render with engine.citations.render_answer_markdown
    origin: str  # 'llm', 'llm-retry' or 'deterministic'
    llm_version: str
    citations: list[Citation]
    sources: list[dict]
    verification: Verification | None
    notices: list[str]
    timings: dict
    prepared: PreparedAnswer

    def to_dict(self) -> dict:
        """What `deploywise ask --json` prints."""
        decision = self.prepared.decision
        return {
            "answer_id": self.record_id,
            "question": self.prepared.question,
            "use_case": self.prepared.match.use_case,
            "recommendation": decision.recommended.name if decision and decision.recommended else None,
            "answer": self.text,
            "answer_origin": self.origin,
            "llm_version": self.llm_version,
            "decision": decision.to_dict() if decision else None,
            "citations": [asdict(c) for c in self.citations],
            "verification": self.verification.to_dict() if self.verification else None,
            "notices": self.notices,
            "timings_ms": self.timings,
        }


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def age_text(snapshot: CandidateSnapshot) -> str:
    minutes = snapshot.age_seconds() / 60
    age = f"{minutes:.0f} minutes" if minutes < 120 else f"{minutes / 60:.1f} hours"
    return (f"MLflow could not be reached ({snapshot.error}); these metrics are the last ones read, "
            f"at {snapshot.fetched_at:%Y-%m-%d %H:%M} UTC ({age} old)")


def prepare_answer(settings, kb, question: str) -> PreparedAnswer:
    started = time.perf_counter()
    question = (question or "").strip()
    if not question:
        raise QuestionError("the question is empty")
    notices = []
    if len(question) > MAX_QUESTION_CHARS:
        notices.append(f"Only the first {MAX_QUESTION_CHARS:,} of the question's {len(question):,} characters were used.")
        question = question[:MAX_QUESTION_CHARS]

    step = time.perf_counter()
    try:
        snapshot = fetch_candidates(settings)
    except CandidatesUnavailable as error:
        message = f"The model registry cannot be reached and no earlier metrics are cached: {error}"
        return PreparedAnswer(question, UseCaseMatch(None, 0.0, "none"), None, notices=[*notices, message],
                              timings={"candidates_ms": _ms(step)}, fallback_text=message, started=started)
    timings = {"candidates_ms": _ms(step)}
    if snapshot.error:
        notices.append(age_text(snapshot))

    step = time.perf_counter()
    match = match_use_case(question, snapshot.candidates, kb.embed_queries)
    hits = hybrid_search(kb, question, k=settings.search_top_k)
    timings["search_ms"] = _ms(step)
    if match.use_case is None:  # rather ask than answer about the wrong use case
        return PreparedAnswer(question, match, snapshot, hits=hits, notices=notices, timings=timings,
                              fallback_text=clarifying_question(match), started=started)

    step = time.perf_counter()
    candidates = snapshot.for_use_case(match.use_case)
    refresh_sources(kb.connection, [candidate_source(c) for c in candidates])  # a new champion version renames its entry
    rules, decision = decision_for(kb.connection, match.use_case, candidates, snapshot.candidates)
    notices += rule_notices(rules)
    timings["decision_ms"] = _ms(step)
    age_note = age_text(snapshot) if snapshot.error else None
    prepared = PreparedAnswer(
        question, match, snapshot, candidates, decision, hits,
        build_messages(question, decision, candidates, hits, candidates[0].task if candidates else "")
        if decision.recommended or decision.closest else None,
        notices, timings, compose_answer(decision, hits, age_note=age_note), started, rules,
    )
    timings["recommendation_ms"] = _ms(started)  # question -> the decision and its composed answer, ready to show
    return prepared


def rule_notices(rules: Rulebook) -> list[str]:
    """What the user is told about the rules themselves: whose they are, and what is missing or in dispute."""
    notices = []
    if rules.state == "none":
        notices.append(f"No rules are recorded for {rules.use_case}, so nothing is recommended: {rules.missing_text()}.")
    elif not rules.hard_criteria:
        notices.append(f"No hard acceptance criterion is recorded for {rules.use_case}: no candidate was ruled out.")
    if rules.state != "none" and rules.policy is None:
        notices.append(f"No document says how to rank the candidates of {rules.use_case} (a priority metric).")
    notices += [conflict.text for conflict in rules.conflicts]
    return notices


def draft_stream(prepared: PreparedAnswer, backend, max_new_tokens: int) -> Iterator[str]:
    """The LLM's first attempt, piece by piece; raises engine.llm.LlmError when the backend fails."""
    if prepared.messages is None:
        return iter(())
    return backend.stream(prepared.messages, max_new_tokens=max_new_tokens)


def finish_answer(kb, prepared: PreparedAnswer, backend, draft: str | None, *, max_new_tokens: int,
                  draft_error: str | None = None, generation_ms: float | None = None) -> ChatAnswer:
    """Verify the draft; one constrained retry; else the composed answer, labelled. Then cite and store."""
    notices, timings = list(prepared.notices), dict(prepared.timings)
    if generation_ms is not None:
        timings["generation_ms"] = round(generation_ms, 1)
    verification, origin, text = None, "deterministic", prepared.fallback_text
    if prepared.messages is not None and prepared.decision is not None:
        known = offered_source_ids(prepared)
        if draft_error is None and draft is not None:
            verification = verify_draft(kb, prepared, draft, known)
            if verification.ok:
                origin, text = "llm", draft
            else:
                step = time.perf_counter()
                messages = retry_messages(prepared.messages, draft, list(verification.problems), prepared.decision)
                try:
                    retry = "".join(backend.stream(messages, max_new_tokens=max_new_tokens))
                    verification = verify_draft(kb, prepared, retry, known)
                    if verification.ok:
                        origin, text = "llm-retry", retry
                except LlmError as error:
                    draft_error = str(error)
                timings["retry_ms"] = _ms(step)
        if origin == "deterministic":
            reason = (f"the LLM backend failed ({draft_error})" if draft_error
                      else "the LLM's answer did not pass verification: " + "; ".join(verification.problems[:3]))
            notices.append(f"Composed from the decision engine, not written by the LLM, because {reason}.")
    citations = resolve_citations(kb.connection, text, context=prepared.question)
    sources = [{"source_id": source_id, "chunks": [{"chunk_id": hit.chunk_id, "title": hit.document_title, "text": hit.text[:600]}
                                                   for hit in hits]}
               for source_id, hits in cited_chunks(citations, prepared.hits).items()]
    timings["total_ms"] = _ms(prepared.started)
    decision = prepared.decision
    record = AnswerRecord(
        id=None, asked_at=datetime.now(UTC).isoformat(timespec="seconds"), question=prepared.question,
        use_case=prepared.match.use_case, answer=text, answer_origin=origin, llm_version=backend.version,
        recommended_model=decision.recommended.name if decision and decision.recommended else None,
        candidates=[_candidate_row(c) for c in prepared.candidates], decision=decision.to_dict() if decision else {},
        sources=sources, verification=verification.to_dict() if verification else {}, timings=timings, notices=notices,
    )
    record_id = save_answer(kb.connection, record)
    return ChatAnswer(record_id, text, origin, backend.version, citations, sources, verification, notices, timings, prepared)


def _candidate_row(candidate) -> dict:
    row = asdict(candidate)
    row["metrics"] = dict(candidate.metrics)
    return row


def offered_source_ids(prepared: PreparedAnswer) -> set[str]:
    """The sources the prompt put in front of the LLM: what its answer may cite without them being looked up."""
    ids = {c.source_id for c in prepared.candidates} | {hit.source_id for hit in prepared.hits}
    ids |= {c.source_id for c in prepared.decision.criteria}
    if prepared.decision.policy:
        ids.add(prepared.decision.policy.source_id)
    return ids


def verify_draft(kb, prepared: PreparedAnswer, text: str, offered: set[str] | None = None) -> Verification:
    """The chat's check of an answer to `prepared` (SFT data generation holds its pairs to the same bar)."""
    offered = offered_source_ids(prepared) if offered is None else offered
    known = offered | set(resolve(kb.connection, find_markers(text)))
    return verify_answer(text, prepared.decision, prepared.candidates, known)


def ask(settings, kb, backend, question: str, on_piece=None) -> ChatAnswer:
    """The whole answer without a page (CLI, evaluation): stream the draft to `on_piece`, then finish it."""
    prepared = prepare_answer(settings, kb, question)
    started, pieces, error = time.perf_counter(), [], None
    try:
        for piece in draft_stream(prepared, backend, settings.llm_max_new_tokens):
            pieces.append(piece)
            if on_piece:
                on_piece(piece)
    except LlmError as failure:
        error = str(failure)
    draft = "".join(pieces) if prepared.messages is not None else None
    return finish_answer(kb, prepared, backend, draft, max_new_tokens=settings.llm_max_new_tokens, draft_error=error,
                         generation_ms=(time.perf_counter() - started) * 1000 if prepared.messages is not None else None)
