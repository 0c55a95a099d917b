"""Answer records and their feedback: what was asked, what was answered from what, and what users thought of it.

An answer is stored as soon as its decision is shown (`answer`: the composed answer, `explanation_state`
'pending' when the LLM is to explain it); the LLM's explanation is added once, when it is done
(`record_explanation`): the verified sentences shown, the whole draft for admins, and the outcome. Answers
stored before explanations existed hold the LLM's whole answer in `answer` (origin 'llm' or 'llm-retry').

Every answer (but the oldest unanswered ones beyond DEPLOYWISE_MAX_UNANSWERED: `save_answer`) is kept with the
LLM version that wrote it and the evidence it was built from, so an admin can
review flagged answers and compare versions. The evidence columns hold plain JSON (strict: no NaN or
infinity, which other JSON readers reject); anything else is refused before a row is written.

Feedback is one row per answer, replaced by each call: a thumbs-down may carry what was wrong and the right
answer; a thumbs-up carries neither (switching to thumbs-up clears them, since they explained a
thumbs-down).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from engine.answering.explanation import EXPLANATION_STATES, STATE_LABELS, Explanation
from engine.core.database import transaction, utc_now

ANSWER_ORIGINS = ("llm", "llm-retry", "deterministic")
ORIGIN_LABELS = {  # answers stored before the decision was shown first: the LLM wrote the whole answer
    "llm": "Written by the LLM and verified",
    "llm-retry": "Written by the LLM on its second attempt and verified",
    "deterministic": "Decided by the team's rules",
}
MAX_FEEDBACK_CHARS = 10_000
_JSON_FIELDS = {"candidates": list, "decision": dict, "sources": list, "verification": dict, "timings": dict, "notices": list}


@dataclass(frozen=True)
class AnswerRecord:
    id: int | None
    asked_at: str  # ISO-8601 UTC
    question: str
    use_case: str | None
    answer: str  # with its <<SRC:...>> markers
    answer_origin: str  # 'llm' | 'llm-retry' | 'deterministic'
    llm_version: str
    recommended_model: str | None
    candidates: list[dict] = field(default_factory=list)
    decision: dict = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    verification: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    explanation: str = ""  # the LLM's verified sentences, as shown below the decision
    explanation_state: str = "none"  # engine.answering.explanation.EXPLANATION_STATES
    explanation_draft: str = ""  # everything the LLM wrote, for admins


@dataclass(frozen=True)
class Feedback:
    answer_id: int
    rating: int  # 1 thumbs up, 0 thumbs down
    what_was_wrong: str | None
    correct_answer: str | None
    created_at: str
    updated_at: str


def _json_column(name: str, value) -> str:
    expected = _JSON_FIELDS[name]
    if not isinstance(value, (expected, tuple) if expected is list else expected):
        raise ValueError(f"answer field {name!r} must be a {expected.__name__}, not {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"answer field {name!r} is not plain JSON data: {error}") from None


def _answer_row(record: AnswerRecord) -> dict:
    """The record as column values, checked before anything is written."""
    if record.id is not None:
        raise ValueError(f"answer {record.id} is already stored; records are written once")
    for name in ("question", "answer", "llm_version"):
        if not isinstance(getattr(record, name), str) or not getattr(record, name).strip():
            raise ValueError(f"answer field {name!r} must be non-empty text")
    for name in ("use_case", "recommended_model"):
        if getattr(record, name) is not None and not isinstance(getattr(record, name), str):
            raise ValueError(f"answer field {name!r} must be text or None")
    if record.answer_origin not in ANSWER_ORIGINS:
        raise ValueError(f"answer field 'answer_origin' is {record.answer_origin!r}, not one of {', '.join(ANSWER_ORIGINS)}")
    try:
        datetime.fromisoformat(record.asked_at)
    except (TypeError, ValueError):
        raise ValueError(f"answer field 'asked_at' is {record.asked_at!r}, not an ISO-8601 time") from None
    if not all(isinstance(notice, str) for notice in record.notices):
        raise ValueError("answer field 'notices' must hold only text")
    if record.explanation_state not in EXPLANATION_STATES:
        raise ValueError(f"answer field 'explanation_state' is {record.explanation_state!r}, not one of {', '.join(EXPLANATION_STATES)}")
    row = {name: getattr(record, name) for name in ("asked_at", "question", "use_case", "answer", "answer_origin",
                                                    "llm_version", "recommended_model", "explanation",
                                                    "explanation_state", "explanation_draft")}
    return row | {name: _json_column(name, getattr(record, name)) for name in _JSON_FIELDS}


def save_answer(connection, record: AnswerRecord, *, keep_unanswered: int | None = None) -> int:
    """Store a new answer record in one transaction; returns its id. An unanswered one (no use case) with
    `keep_unanswered` (DEPLOYWISE_MAX_UNANSWERED) deletes, in the same transaction, the oldest unanswered records
    beyond that many that carry no feedback, so questions nobody can answer (a flood of them, say) do not pile up
    forever, while those a user flagged stay for the admin's review."""
    row = _answer_row(record)
    with transaction(connection):
        cursor = connection.execute(
            f"INSERT INTO answers({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )
        if record.use_case is None and keep_unanswered is not None:
            connection.execute(
                """DELETE FROM answers WHERE id IN (
                       SELECT id FROM answers a WHERE use_case IS NULL
                       AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.answer_id = a.id)
                       ORDER BY id DESC LIMIT -1 OFFSET ?)""", (keep_unanswered,))
    return cursor.lastrowid


def record_explanation(connection, answer_id: int, explanation: Explanation, llm_version: str, timings: dict) -> None:
    """Add the LLM's explanation to an answer stored while it was pending (once: a second call is refused)."""
    if explanation.state not in EXPLANATION_STATES or explanation.state in ("none", "pending"):
        raise ValueError(f"an explanation that is {explanation.state!r} is not finished")
    values = [explanation.text, explanation.state, explanation.draft, _json_column("verification", explanation.verification()),
              _json_column("timings", timings), llm_version, answer_id]
    with transaction(connection):
        updated = connection.execute(
            """UPDATE answers SET explanation = ?, explanation_state = ?, explanation_draft = ?, verification = ?,
               timings = ?, llm_version = ? WHERE id = ? AND explanation_state = 'pending'""", values).rowcount
    if not updated:
        raise KeyError(f"no answer {answer_id} is waiting for its explanation")


def _record(row) -> AnswerRecord:
    values = dict(row)
    return AnswerRecord(**(values | {name: json.loads(values[name]) for name in _JSON_FIELDS}))


def load_answer(connection, answer_id: int) -> AnswerRecord:
    row = connection.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
    if row is None:
        raise KeyError(f"no answer {answer_id}")
    return _record(row)


def recent_answers(connection, limit: int = 50, *, llm_version: str | None = None) -> list[AnswerRecord]:
    """Newest first, optionally only those one LLM version wrote."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive whole number, not {limit!r}")
    where, params = ("WHERE llm_version = ?", [llm_version]) if llm_version is not None else ("", [])
    rows = connection.execute(f"SELECT * FROM answers {where} ORDER BY id DESC LIMIT ?", [*params, limit]).fetchall()
    return [_record(row) for row in rows]


def _feedback_text(name: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, not {type(value).__name__}")
    value = value.strip()
    if len(value) > MAX_FEEDBACK_CHARS:
        raise ValueError(f"{name} is {len(value):,} characters long; the limit is {MAX_FEEDBACK_CHARS:,}")
    return value or None


def save_feedback(connection, answer_id: int, rating: int, what_was_wrong: str | None = None,
                  correct_answer: str | None = None) -> Feedback:
    """Set the feedback on an answer (each call replaces the previous one); KeyError if the answer is absent."""
    if isinstance(rating, bool) or not isinstance(rating, int) or rating not in (0, 1):
        raise ValueError(f"rating must be 1 (thumbs up) or 0 (thumbs down), not {rating!r}")
    what_was_wrong = _feedback_text("what_was_wrong", what_was_wrong)
    correct_answer = _feedback_text("correct_answer", correct_answer)
    if rating == 1 and (what_was_wrong or correct_answer):
        raise ValueError("what was wrong and the right answer go with a thumbs-down, not a thumbs-up")
    now = utc_now()
    with transaction(connection):
        if connection.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
            raise KeyError(f"no answer {answer_id}")
        connection.execute(
            """INSERT INTO feedback(answer_id, rating, what_was_wrong, correct_answer, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT(answer_id) DO UPDATE SET rating = excluded.rating, what_was_wrong = excluded.what_was_wrong,
               correct_answer = excluded.correct_answer, updated_at = excluded.updated_at""",
            (answer_id, rating, what_was_wrong, correct_answer, now, now),
        )
    return feedback_for(connection, answer_id)


def feedback_for(connection, answer_id: int) -> Feedback | None:
    row = connection.execute(
        "SELECT answer_id, rating, what_was_wrong, correct_answer, created_at, updated_at FROM feedback WHERE answer_id = ?",
        (answer_id,),
    ).fetchone()
    return Feedback(*row) if row else None


def answer_counts_by_version(connection) -> dict[str, dict]:
    """Per LLM version: answers written, thumbs up and thumbs down received."""
    rows = connection.execute(
        """SELECT a.llm_version, count(*), count(CASE WHEN f.rating = 1 THEN 1 END), count(CASE WHEN f.rating = 0 THEN 1 END)
           FROM answers a LEFT JOIN feedback f ON f.answer_id = a.id GROUP BY a.llm_version ORDER BY a.llm_version"""
    ).fetchall()
    return {version: {"answers": answers, "thumbs_up": up, "thumbs_down": down} for version, answers, up, down in rows}


def answer_times(timings: dict) -> str:
    """"recommendation 0.8 s, whole answer 37.2 s"; an answer stored before the first was timed shows the second."""
    whole = f"{timings.get('total_ms', 0) / 1000:.1f} s"
    if "recommendation_ms" not in timings:
        return whole
    return f"recommendation {timings['recommendation_ms'] / 1000:.1f} s, whole answer {whole}"


def answer_label(answer_origin: str, explanation_state: str, llm_version: str) -> str:
    """Who wrote what: "Decided by the team's rules · Explained by the LLM, every sentence verified (base:...)"."""
    label = ORIGIN_LABELS.get(answer_origin, answer_origin)
    if answer_origin != "deterministic":
        return f"{label} · {llm_version}"
    return label if explanation_state == "none" else f"{label} · {STATE_LABELS[explanation_state]} ({llm_version})"
