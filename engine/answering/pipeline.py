"""One chat answer, end to end: candidates -> knowledge -> decision (shown, stored) -> the LLM's verified explanation.

The page and the CLI share these steps. `prepare_answer` does the fast, deterministic part and `record_answer`
stores its composed answer at once: that is what the user sees first, within a second or so. Then
`explanation_run` streams the LLM's explanation of that decision, one verified sentence at a time, wherever the
caller shows it, and `finish_answer` adds it to the stored record. Nothing shown is taken back.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from engine.answering.citations import Citation, cited_chunks, resolve_citations
from engine.answering.composer import compose_answer
from engine.answering.explanation import Explanation, ExplanationRun
from engine.answering.prompting import MAX_QUESTION_CHARS, build_messages
from engine.answering.question_rate import QUESTION_RATE
from engine.answering.records import AnswerRecord, record_explanation, save_answer
from engine.knowledge.search import hybrid_search
from engine.knowledge.sources import refresh_sources
from engine.registry.candidate_cache import CandidatesUnavailable, fetch_candidates
from engine.registry.candidates import CandidateSnapshot, candidate_source
from engine.registry.use_cases import UseCaseMatch, clarifying_question, match_use_case
from engine.rules.decision import Decision
from engine.rules.rulebook import Rulebook, decision_for


class QuestionError(ValueError):
    """The question cannot be answered as asked (empty, say), or not now (too many from this client); nothing is stored."""


@dataclass
class PreparedAnswer:
    question: str
    match: UseCaseMatch
    snapshot: CandidateSnapshot | None
    candidates: tuple = ()
    decision: Decision | None = None
    hits: list = field(default_factory=list)
    messages: list[dict] | None = None  # the LLM's prompt; None: nothing for it to explain
    notices: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    fallback_text: str = ""
    started: float = field(default_factory=time.perf_counter)
    rules: Rulebook | None = None
    keep_unanswered: int | None = None  # an unanswered question's DEPLOYWISE_MAX_UNANSWERED, applied as it is stored


@dataclass(frozen=True)
class ChatAnswer:
    record_id: int
    text: str  # the composed answer of the decision, with <<SRC:...>> markers (engine.answering.citations.render_answer_markdown)
    explanation: Explanation | None  # None when the LLM was not asked
    llm_version: str
    citations: list[Citation]  # of the answer and its explanation, numbered together
    sources: list[dict]
    notices: list[str]
    timings: dict
    prepared: PreparedAnswer

    def to_dict(self) -> dict:
        """What `deploywise ask --json` prints."""
        decision, explanation = self.prepared.decision, self.explanation
        return {
            "answer_id": self.record_id,
            "question": self.prepared.question,
            "use_case": self.prepared.match.use_case,
            "recommendation": decision.recommended.name if decision and decision.recommended else None,
            "answer": self.text,
            "explanation": explanation.text if explanation else "",
            "explanation_state": explanation.state if explanation else "none",
            "explanation_problems": list(explanation.problems) if explanation else [],
            "llm_version": self.llm_version,
            "decision": decision.to_dict() if decision else None,
            "citations": [asdict(c) for c in self.citations],
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


def prepare_answer(settings, kb, question: str, *, client: str | None = None) -> PreparedAnswer:
    """The decision for `question`. `client` (the chat page's session) is held to DEPLOYWISE_QUESTIONS_PER_MINUTE;
    None (the CLI, the evaluation: the operator) is not. Only the first MAX_QUESTION_CHARS characters are read, kept
    and shown, and a notice says so."""
    started = time.perf_counter()
    question = (question or "").strip()
    if not question:
        raise QuestionError("the question is empty")
    if client is not None and (wait := QUESTION_RATE.wait_s(client, settings.questions_per_minute)):
        raise QuestionError(f"too many questions from this chat, at most {settings.questions_per_minute} a minute; "
                            f"ask again in {math.ceil(wait)} s")
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
                              timings={"candidates_ms": _ms(step)}, fallback_text=message, started=started,
                              keep_unanswered=settings.max_unanswered)
    timings = {"candidates_ms": _ms(step)}
    if snapshot.error:
        notices.append(age_text(snapshot))

    step = time.perf_counter()
    match = match_use_case(question, snapshot.candidates, kb.embed_queries)
    hits = hybrid_search(kb, question, k=settings.search_top_k)
    timings["search_ms"] = _ms(step)
    if match.use_case is None:  # rather ask than answer about the wrong use case
        return PreparedAnswer(question, match, snapshot, hits=hits, notices=notices, timings=timings,
                              fallback_text=clarifying_question(match), started=started,
                              keep_unanswered=settings.max_unanswered)

    step = time.perf_counter()
    candidates = snapshot.for_use_case(match.use_case)
    refresh_sources(kb.connection, [candidate_source(c) for c in candidates])  # a new champion version renames its entry
    rules, decision = decision_for(kb.connection, match.use_case, candidates, snapshot.candidates)
    notices += rule_notices(rules)
    timings["decision_ms"] = _ms(step)
    age_note = age_text(snapshot) if snapshot.error else None
    prepared = PreparedAnswer(
        question, match, snapshot, candidates, decision, hits,
        build_messages(question, decision, hits, candidates[0].task if candidates else "")
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


def record_answer(kb, prepared: PreparedAnswer, llm_version: str) -> int:
    """Store the composed answer as it is shown, before the LLM is asked anything; returns the answer's id."""
    decision = prepared.decision
    record = AnswerRecord(
        id=None, asked_at=datetime.now(UTC).isoformat(timespec="seconds"), question=prepared.question,
        use_case=prepared.match.use_case, answer=prepared.fallback_text, answer_origin="deterministic",
        llm_version=llm_version, recommended_model=decision.recommended.name if decision and decision.recommended else None,
        candidates=[_candidate_row(c) for c in prepared.candidates], decision=decision.to_dict() if decision else {},
        sources=_cited_sources(prepared, resolve_citations(kb.connection, prepared.fallback_text, log=False)),
        timings=prepared.timings | ({} if prepared.messages is not None else {"total_ms": _ms(prepared.started)}),
        notices=list(prepared.notices), explanation_state="pending" if prepared.messages is not None else "none",
    )
    return save_answer(kb.connection, record, keep_unanswered=prepared.keep_unanswered)


def explanation_run(kb, prepared: PreparedAnswer, backend, max_new_tokens: int) -> ExplanationRun | None:
    """The LLM's explanation of the decision, to iterate where its verified sentences should appear; None when there
    is no decision to explain."""
    if prepared.messages is None:
        return None
    return ExplanationRun(kb.connection, prepared.decision, prepared.candidates, offered_source_ids(prepared),
                          prepared.messages, backend, max_new_tokens)


def finish_answer(kb, prepared: PreparedAnswer, answer_id: int, backend, run: ExplanationRun | None) -> ChatAnswer:
    """Add the explanation (its outcome once the run ended or was stopped) to the stored answer."""
    timings = dict(prepared.timings)
    explanation = run.result if run else None
    if explanation is not None:
        if explanation.state == "pending":  # the reader stopped before the LLM was done: keep what was shown
            explanation.state = "partial" if explanation.sentences_kept else "dropped"
            explanation.problems = ("the explanation was stopped before it was finished",)
        if explanation.generation_ms is not None:
            timings["generation_ms"] = explanation.generation_ms
    timings["total_ms"] = _ms(prepared.started)
    if explanation is not None:
        record_explanation(kb.connection, answer_id, explanation, backend.version, timings)
    text = prepared.fallback_text
    shown = text + ("\n\n" + explanation.text if explanation and explanation.text else "")
    citations = resolve_citations(kb.connection, shown, context=prepared.question)
    return ChatAnswer(answer_id, text, explanation, backend.version if explanation else "", citations,
                      _cited_sources(prepared, citations), list(prepared.notices), timings, prepared)


def _cited_sources(prepared: PreparedAnswer, citations: list[Citation]) -> list[dict]:
    """The retrieved chunks behind each cited source, as the record keeps them."""
    return [{"source_id": source_id, "chunks": [{"chunk_id": hit.chunk_id, "title": hit.document_title, "text": hit.text[:600]}
                                                for hit in hits]}
            for source_id, hits in cited_chunks(citations, prepared.hits).items()]


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


def ask(settings, kb, backend, question: str, on_decision=None, on_sentence=None) -> ChatAnswer:
    """The whole answer without a page (CLI, evaluation): the decision to `on_decision` as soon as it is stored, then
    each verified sentence of the explanation to `on_sentence`."""
    prepared = prepare_answer(settings, kb, question)
    answer_id = record_answer(kb, prepared, backend.version)
    if on_decision:
        on_decision(prepared, answer_id)
    run = explanation_run(kb, prepared, backend, settings.llm_max_new_tokens)
    for sentence in run or ():
        if on_sentence:
            on_sentence(sentence)
    return finish_answer(kb, prepared, answer_id, backend, run)
