"""Answer records and feedback on a real knowledge database: round trips, refusals that change nothing, restarts."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime

import pytest

from engine.answering.records import (
    MAX_FEEDBACK_CHARS,
    AnswerRecord,
    answer_counts_by_version,
    feedback_for,
    load_answer,
    recent_answers,
    save_answer,
    save_feedback,
)
from engine.core.database import connect


@pytest.fixture
def database(tmp_path):
    return tmp_path / "k.sqlite"


@pytest.fixture
def connection(database):
    connection = connect(database)
    yield connection
    connection.close()


def record(**changes) -> AnswerRecord:
    base = AnswerRecord(
        id=None, asked_at="2025-03-01T09:30:00+00:00", question="Which model should I deploy for tumour screening?",
        use_case="tumor-screening", answer="Recommendation: ts-boosting <<SRC:registry:ts-boosting>>",
        answer_origin="llm", llm_version="deploywise-llm/3", recommended_model="ts-boosting",
        candidates=[{"name": "ts-boosting", "version": "2", "metrics": {"roc_auc": 0.997, "latency_p95_ms": 4.2}}],
        decision={"recommended": "ts-boosting", "candidates": [{"name": "ts-boosting", "passes_hard": True}]},
        sources=[{"source_id": "criteria:tumor-screening", "chunks": [{"chunk_id": 7, "title": "Criteria", "text": "p95 ≤ 10 ms"}]}],
        verification={"ok": True, "problems": (), "markers": ("registry:ts-boosting",)},
        timings={"total_ms": 812.5}, notices=["MLflow metrics are 3 minutes old"],
    )
    return dataclasses.replace(base, **changes)


def rows(connection) -> tuple[int, int]:
    return tuple(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("answers", "feedback"))


def test_an_answer_round_trips_with_its_evidence(connection):
    answer_id = save_answer(connection, record())
    loaded = load_answer(connection, answer_id)
    # tuples are stored as JSON arrays, so they come back as lists
    expected = record(id=answer_id, verification={"ok": True, "problems": [], "markers": ["registry:ts-boosting"]})
    assert loaded == expected


def test_a_missing_answer_is_a_key_error(connection):
    with pytest.raises(KeyError, match="no answer 41"):
        load_answer(connection, 41)


def test_recent_answers_newest_first_per_version(connection):
    ids = [save_answer(connection, record(llm_version=version, question=f"q{n}"))
           for n, version in enumerate(["base", "deploywise-llm/3", "base"])]
    assert [a.id for a in recent_answers(connection)] == ids[::-1]
    assert [a.id for a in recent_answers(connection, 1)] == [ids[2]]
    assert [a.question for a in recent_answers(connection, llm_version="base")] == ["q2", "q0"]
    assert recent_answers(connection, llm_version="nope") == []
    with pytest.raises(ValueError, match="limit must be a positive whole number"):
        recent_answers(connection, 0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"answer_origin": "guess"}, "'answer_origin' is 'guess'"),
    ({"question": "  "}, "'question' must be non-empty text"),
    ({"llm_version": ""}, "'llm_version' must be non-empty text"),
    ({"use_case": 3}, "'use_case' must be text or None"),
    ({"asked_at": "yesterday"}, "'asked_at' is 'yesterday'"),
    ({"id": 5}, "answer 5 is already stored"),
    ({"candidates": [{"trained": datetime(2025, 1, 1)}]}, "'candidates' is not plain JSON data.*datetime"),
    ({"timings": {"total_ms": math.nan}}, "'timings' is not plain JSON data"),
    ({"decision": {"tags": {"a", "b"}}}, "'decision' is not plain JSON data.*set"),
    ({"decision": ["not", "a", "dict"]}, "'decision' must be a dict, not list"),
    ({"sources": {"source_id": "x"}}, "'sources' must be a list, not dict"),
    ({"notices": ["fine", 3]}, "'notices' must hold only text"),
])
def test_a_malformed_record_is_refused_and_nothing_is_written(connection, changes, message):
    save_answer(connection, record())
    before = rows(connection)
    with pytest.raises(ValueError, match=message):
        save_answer(connection, record(**changes))
    assert rows(connection) == before


def test_feedback_is_upserted_thumb_first_explanation_later(connection):
    answer_id = save_answer(connection, record())
    assert feedback_for(connection, answer_id) is None
    up = save_feedback(connection, answer_id, 1)
    assert (up.rating, up.what_was_wrong, up.correct_answer) == (1, None, None)
    connection.execute("UPDATE feedback SET created_at = '2025-01-01T00:00:00+00:00', updated_at = created_at")
    down = save_feedback(connection, answer_id, 0, "  ts-forest is faster here \n", "")
    assert (down.rating, down.what_was_wrong, down.correct_answer) == (0, "ts-forest is faster here", None)
    assert down.created_at == "2025-01-01T00:00:00+00:00" and down.updated_at > down.created_at
    assert feedback_for(connection, answer_id) == down
    assert rows(connection) == (1, 1)


def test_a_thumbs_up_clears_the_explanation_of_an_earlier_thumbs_down(connection):
    answer_id = save_answer(connection, record())
    save_feedback(connection, answer_id, 0, "wrong model", "ts-linear")
    up = save_feedback(connection, answer_id, 1)
    assert (up.rating, up.what_was_wrong, up.correct_answer) == (1, None, None)


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ((2,), ValueError, "rating must be 1 .thumbs up. or 0 .thumbs down., not 2"),
    ((True,), ValueError, "not True"),
    ((None,), ValueError, "not None"),
    ((1, "it was wrong"), ValueError, "go with a thumbs-down"),
    ((0, "x" * (MAX_FEEDBACK_CHARS + 1)), ValueError, "what_was_wrong is 10,001 characters long; the limit is 10,000"),
    ((0, "wrong", "y" * (MAX_FEEDBACK_CHARS + 1)), ValueError, "correct_answer is 10,001 characters"),
    ((0, 42), ValueError, "what_was_wrong must be text, not int"),
])
def test_bad_feedback_is_refused_and_the_earlier_feedback_stays(connection, arguments, error, message):
    answer_id = save_answer(connection, record())
    kept = save_feedback(connection, answer_id, 0, "wrong model")
    with pytest.raises(error, match=message):
        save_feedback(connection, answer_id, *arguments)
    assert feedback_for(connection, answer_id) == kept
    assert rows(connection) == (1, 1)


def test_feedback_on_a_missing_answer_is_refused(connection):
    with pytest.raises(KeyError, match="no answer 99"):
        save_feedback(connection, 99, 0, "wrong")
    assert rows(connection) == (0, 0)


def test_feedback_at_the_length_limit_is_kept_whole(connection):
    answer_id = save_answer(connection, record())
    text = "z" * MAX_FEEDBACK_CHARS
    assert save_feedback(connection, answer_id, 0, f"  {text}  ").what_was_wrong == text


def test_answers_and_feedback_survive_a_restart(database):
    connection = connect(database)
    answer_id = save_answer(connection, record())
    given = save_feedback(connection, answer_id, 0, "latency budget ignored", "ts-linear")
    connection.close()
    reopened = connect(database)
    try:
        assert feedback_for(reopened, answer_id) == given
        assert load_answer(reopened, answer_id) == dataclasses.replace(
            record(id=answer_id), verification={"ok": True, "problems": [], "markers": ["registry:ts-boosting"]})
    finally:
        reopened.close()


def test_answer_counts_by_version(connection):
    first, second, third = (save_answer(connection, record(llm_version=v)) for v in ("base", "base", "deploywise-llm/3"))
    save_answer(connection, record(llm_version="deploywise-llm/3"))
    save_feedback(connection, first, 1)
    save_feedback(connection, second, 0, "wrong")
    save_feedback(connection, third, 0)
    assert answer_counts_by_version(connection) == {
        "base": {"answers": 2, "thumbs_up": 1, "thumbs_down": 1},
        "deploywise-llm/3": {"answers": 2, "thumbs_up": 0, "thumbs_down": 1},
    }
