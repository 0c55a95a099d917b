"""Review of flagged answers on a real knowledge database: states, refusals that change nothing, what a correction
teaches, and the retraining suggestion."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from engine.access import roles
from engine.access.roles import AccessDenied
from engine.answering.feedback_review import (
    MAX_CORRECTION_CHARS,
    MAX_NOTE_CHARS,
    ReviewError,
    accept,
    accepted_training_texts,
    correction_problems,
    flagged_versions,
    get_flagged,
    list_flagged,
    reject,
    reopen,
    retraining_suggestion,
    review_counts,
    save_correction,
    text_digest,
    trained_snapshot,
    training_text,
)
from engine.answering.records import AnswerRecord, save_answer, save_feedback
from engine.core.database import connect, transaction
from engine.knowledge.sources import Source, upsert_sources

WRONG_ANSWER = "Recommendation: ts-forest <<SRC:registry:ts-forest>> because it has the best ROC AUC."


def candidate(name: str, version: str, family: str, alias: str | None = None, **metrics) -> dict:
    """A candidate as the chat stores it (dataclasses.asdict of engine.registry.candidates.Candidate)."""
    return {"name": name, "version": version, "alias": alias, "use_case": "tumor-screening", "task": "classification",
            "family": family, "description": "", "run_id": f"run-{name}", "metrics": metrics,
            "source_id": f"registry:{name}", "url": None}


def answer(**changes) -> AnswerRecord:
    """An answer as the chat stores it: candidates, the rules' decision, cited knowledge."""
    base = AnswerRecord(
        id=None, asked_at="2025-03-01T09:30:00+00:00", question="Which model should I deploy for tumour screening?",
        use_case="tumor-screening", answer=WRONG_ANSWER, answer_origin="llm", llm_version="deploywise-llm/3",
        recommended_model="ts-boosting",
        candidates=[candidate("ts-forest", "4", "random-forest", roc_auc=0.9981, latency_p95_ms=14.2),
                    candidate("ts-boosting", "2", "gradient-boosting", "champion", roc_auc=0.9972, latency_p95_ms=4.2)],
        decision={"recommended": "ts-boosting", "priority_metric": "roc_auc", "policy_source_id": "guideline:model-selection",
                  "criteria": [{"metric": "latency_p95_ms", "comparison": "<=", "threshold": 10.0, "hard": True,
                                "source_id": "criteria:tumor-screening"}],
                  "candidates": [{"name": "ts-boosting", "passes_hard": True, "standing": "recommended"},
                                 {"name": "ts-forest", "passes_hard": False, "standing": "fails p95 latency <= 10 ms"}]},
        sources=[{"source_id": "criteria:tumor-screening", "chunks": []}],
    )
    return dataclasses.replace(base, **changes)


RIGHT = "Deploy ts-boosting <<SRC:registry:ts-boosting>>: ts-forest breaks the 10 ms latency budget <<SRC:criteria:tumor-screening>>."


@pytest.fixture
def connection(tmp_path):
    connection = connect(tmp_path / "knowledge.sqlite")
    yield connection
    connection.close()


@pytest.fixture
def flagged(connection) -> int:
    """An answer with a thumbs-down, what was wrong and the user's right answer."""
    answer_id = save_answer(connection, answer())
    save_feedback(connection, answer_id, 0, "It recommended the model that fails the latency budget", RIGHT)
    return answer_id


def reviews(connection) -> list[tuple]:
    return [tuple(row) for row in connection.execute("SELECT * FROM feedback_reviews ORDER BY answer_id")]


def test_a_flagged_answer_waits_as_pending_with_the_users_right_answer_as_draft(connection, flagged):
    liked = save_answer(connection, answer(question="Which digit model?"))
    save_feedback(connection, liked, 1)
    save_answer(connection, answer(question="No feedback at all"))

    [item] = list_flagged(connection)
    assert item.answer.id == flagged and item.answer.answer == WRONG_ANSWER
    assert (item.state, item.correction, item.reviewer, item.reviewed_at) == ("pending", None, None, None)
    assert item.draft == RIGHT and not item.withdrawn
    assert item.feedback.what_was_wrong == "It recommended the model that fails the latency budget"
    assert review_counts(connection) == {"pending": 1, "accepted": 0, "rejected": 0}
    assert reviews(connection) == []  # nothing is written until an admin acts
    with pytest.raises(KeyError, match="not flagged"):
        get_flagged(connection, liked)
    with pytest.raises(KeyError, match="no answer 999"):
        get_flagged(connection, 999)


def test_save_then_accept_records_the_correction_the_reviewer_and_the_time(connection, flagged):
    saved = save_correction(connection, flagged, "  Deploy ts-boosting.  ", note="checked the budget")
    assert (saved.state, saved.correction, saved.note, saved.reviewer) == ("pending", "Deploy ts-boosting.", "checked the budget",
                                                                           "operator")  # outside Streamlit: the CLI's operator
    assert saved.draft == "Deploy ts-boosting." and saved.reviewed_at
    assert accepted_training_texts(connection) == []  # a draft teaches nothing

    accepted = accept(connection, flagged)  # no text given: the saved draft is accepted
    assert (accepted.state, accepted.correction, accepted.note) == ("accepted", "Deploy ts-boosting.", "checked the budget")
    assert accepted.reviewed_at >= saved.reviewed_at
    assert review_counts(connection) == {"pending": 0, "accepted": 1, "rejected": 0}
    assert [item.answer.id for item in list_flagged(connection, state="accepted")] == [flagged]
    assert list_flagged(connection, state="pending") == []
    [(answer_id, text)] = accepted_training_texts(connection)
    assert answer_id == flagged and text.endswith("Deploy ts-boosting.")


def test_accepting_without_a_draft_takes_the_users_right_answer_and_edited_text_wins(connection, flagged):
    assert accept(connection, flagged).correction == RIGHT
    other = save_answer(connection, answer())
    save_feedback(connection, other, 0, "wrong model", "Deploy ts-forest.")
    assert accept(connection, other, "Deploy ts-boosting; ts-forest is too slow.", note="").correction == (
        "Deploy ts-boosting; ts-forest is too slow.")


@pytest.mark.parametrize("text, message", [
    ("", "the correction is empty"),
    ("   \n\t", "the correction is empty"),
    ("x" * (MAX_CORRECTION_CHARS + 1),
     f"the correction is {MAX_CORRECTION_CHARS + 1:,} characters long; the limit is {MAX_CORRECTION_CHARS:,}"),
    (42, "the correction must be text, not int"),
])
def test_an_empty_or_oversized_correction_is_refused_and_nothing_changes(connection, flagged, text, message):
    save_correction(connection, flagged, "A first draft.")
    before = reviews(connection)
    for action in (lambda: save_correction(connection, flagged, text), lambda: accept(connection, flagged, text)):
        with pytest.raises(ReviewError, match=message):
            action()
        assert reviews(connection) == before


def test_an_oversized_note_is_refused(connection, flagged):
    with pytest.raises(ReviewError, match=f"the note is {MAX_NOTE_CHARS + 1:,} characters long"):
        reject(connection, flagged, note="n" * (MAX_NOTE_CHARS + 1))
    assert reviews(connection) == []


def test_only_administrators_review(connection, flagged, monkeypatch):
    accept(connection, flagged, "Deploy ts-boosting.")
    before = reviews(connection)
    monkeypatch.setattr(roles, "current_user_is_admin", lambda: False)
    for action in (lambda: save_correction(connection, flagged, "Other."), lambda: accept(connection, flagged),
                   lambda: reject(connection, flagged), lambda: reopen(connection, flagged)):
        with pytest.raises(AccessDenied, match="reviewing feedback is for administrators"):
            action()
    assert reviews(connection) == before


def test_accepting_an_empty_draft_is_refused(connection):
    answer_id = save_answer(connection, answer())
    save_feedback(connection, answer_id, 0, "Wrong model", None)  # no right answer given
    with pytest.raises(ReviewError, match="the correction is empty: write the right answer first"):
        accept(connection, answer_id)
    assert reviews(connection) == []


def test_markers_must_name_known_sources_to_be_accepted(connection, flagged):
    upsert_sources(connection, [Source("decisions:log", "Deployment decision log", None, "decision")])
    record = get_flagged(connection, flagged).answer
    # the answer's own evidence (candidates, criteria, policy) and the registry are known
    assert correction_problems(connection, record, RIGHT + " <<SRC:decisions:log>> <<SRC:guideline:model-selection>>") == []
    [problem] = correction_problems(connection, record, "Deploy ts-boosting <<SRC:wiki:made-up>> <<SRC:wiki:other>>.")
    assert problem.startswith("it cites sources the registry does not know: wiki:made-up, wiki:other")
    [problem] = correction_problems(connection, record, "Deploy ts-boosting <<SRC:criteria tumor>> and <<SRC:a:b\n>>.")
    assert problem.startswith("it has 2 malformed citation markers")

    save_correction(connection, flagged, "Deploy ts-boosting <<SRC:wiki:made-up>>.")  # a draft may still be wrong
    before = reviews(connection)
    with pytest.raises(ReviewError, match="not accepted: it cites source the registry does not know: wiki:made-up"):
        accept(connection, flagged)
    with pytest.raises(ReviewError, match="malformed"):
        accept(connection, flagged, "Deploy ts-boosting <<SRC: bad id>>.")
    assert reviews(connection) == before and get_flagged(connection, flagged).state == "pending"
    assert accept(connection, flagged, "Deploy ts-boosting << SRC: decisions:log >>.").state == "accepted"


def test_decided_answers_are_reopened_before_they_change(connection, flagged):
    accept(connection, flagged, "Deploy ts-boosting.")
    before = reviews(connection)
    for action, message in ((lambda: accept(connection, flagged), "already accepted: reopen it to accept it again"),
                            (lambda: reject(connection, flagged), "already accepted: reopen it to reject it again"),
                            (lambda: save_correction(connection, flagged, "Other."), "already accepted: reopen it to edit")):
        with pytest.raises(ReviewError, match=message):
            action()
    assert reviews(connection) == before

    reopened = reopen(connection, flagged, note="the budget changed")
    assert (reopened.state, reopened.correction, reopened.draft, reopened.note) == (
        "pending", "Deploy ts-boosting.", "Deploy ts-boosting.", "the budget changed")
    assert accepted_training_texts(connection) == []
    with pytest.raises(ReviewError, match="pending already"):
        reopen(connection, flagged)

    rejected = reject(connection, flagged, note="the user asked about another use case")
    assert (rejected.state, rejected.correction, rejected.note) == (
        "rejected", "Deploy ts-boosting.", "the user asked about another use case")
    assert accepted_training_texts(connection) == [] and review_counts(connection)["rejected"] == 1
    assert reopen(connection, flagged).state == "pending"


def test_an_accepted_correction_outlives_the_users_change_of_mind(connection, flagged):
    accept(connection, flagged, "Deploy ts-boosting.")
    save_feedback(connection, flagged, 0, "changed my complaint", "Deploy ts-forest after all")
    assert get_flagged(connection, flagged).correction == "Deploy ts-boosting."
    save_feedback(connection, flagged, 1)  # the thumbs-down becomes a thumbs-up
    [item] = list_flagged(connection)
    assert item.withdrawn and item.state == "accepted" and len(accepted_training_texts(connection)) == 1

    unreviewed = save_answer(connection, answer())
    save_feedback(connection, unreviewed, 0, "wrong")
    save_feedback(connection, unreviewed, 1)
    assert [item.answer.id for item in list_flagged(connection)] == [flagged]  # a withdrawn, never-reviewed flag leaves


def test_a_deleted_answer_takes_its_review_with_it(connection, flagged):
    accept(connection, flagged, "Deploy ts-boosting.")
    with transaction(connection):
        connection.execute("DELETE FROM answers WHERE id = ?", (flagged,))
    assert reviews(connection) == [] and accepted_training_texts(connection) == []


def test_filters_by_state_and_version_and_counts(connection, flagged):
    older = save_answer(connection, answer(llm_version="base"))
    save_feedback(connection, older, 0, "wrong")
    newest = save_answer(connection, answer(llm_version="base"))
    save_feedback(connection, newest, 0, "wrong too", "Deploy ts-boosting.")
    reject(connection, older)

    assert [item.answer.id for item in list_flagged(connection)] == [newest, older, flagged]
    assert [item.answer.id for item in list_flagged(connection, llm_version="base")] == [newest, older]
    assert [item.answer.id for item in list_flagged(connection, llm_version="base", state="pending")] == [newest]
    assert [item.answer.id for item in list_flagged(connection, limit=1)] == [newest]
    assert review_counts(connection, llm_version="base") == {"pending": 1, "accepted": 0, "rejected": 1}
    assert review_counts(connection, llm_version="nope") == {"pending": 0, "accepted": 0, "rejected": 0}
    assert flagged_versions(connection) == ["base", "deploywise-llm/3"]
    with pytest.raises(ValueError, match="state must be one of pending, accepted, rejected"):
        list_flagged(connection, state="done")
    with pytest.raises(ValueError, match="limit"):
        list_flagged(connection, limit=0)


def test_the_training_text_holds_the_question_candidates_decision_and_correction_never_the_mistake(connection, flagged):
    record = get_flagged(connection, flagged).answer
    text = training_text(record, RIGHT)
    assert text == (
        "Question: Which model should I deploy for tumour screening?\n\n"
        "Candidates for tumor-screening on 2025-03-01, from the MLflow model registry:\n"
        "- ts-boosting version 2 (champion) <<SRC:registry:ts-boosting>>, gradient-boosting: ROC AUC 0.997, "
        "p95 latency 4.20 ms; recommended\n"
        "- ts-forest version 4 <<SRC:registry:ts-forest>>, random-forest: ROC AUC 0.998, p95 latency 14.20 ms; "
        "fails p95 latency <= 10 ms\n\n"
        "Decision by the acceptance criteria: recommend ts-boosting.\n\n"
        f"Answer (reviewed by the ML platform team, 2025-03-01):\n{RIGHT}"
    )
    assert WRONG_ANSWER not in text and "latency budget" not in text.split("Answer (")[0]

    many = answer(candidates=[candidate(f"m{i}", "1", "linear", roc_auc=0.9) for i in range(11)], decision={})
    text = training_text(many, "Deploy m0.")
    assert "m7 version 1" in text and "m8 version" not in text and "(3 more candidates rank lower.)" in text
    assert "Decision by" not in text
    bare = answer(candidates=[], decision={}, use_case=None)
    assert training_text(bare, " Deploy m0. ") == (
        "Question: Which model should I deploy for tumour screening?\n\n"
        "Answer (reviewed by the ML platform team, 2025-03-01):\nDeploy m0.")


# --- retraining suggestion ------------------------------------------------------------------------------------------


def add_document(connection, origin: str) -> None:
    with transaction(connection):
        document_id = connection.execute(
            "INSERT INTO documents(title, origin, sha256, ingested_at) VALUES (?, ?, ?, '2025-01-01')",
            (origin, origin, text_digest(origin))).lastrowid
        connection.execute("INSERT INTO chunks(document_id, chunk_index, text, token_count, source_id) VALUES (?, 0, ?, 1, ?)",
                           (document_id, origin, f"doc:{origin}"))


def test_retraining_is_suggested_from_enough_corrections_or_new_documents(connection):
    for number in range(20):
        add_document(connection, f"doc-{number}.md")
    ids = []
    for number in range(6):
        ids.append(save_answer(connection, answer(question=f"Question {number}?")))
        save_feedback(connection, ids[-1], 0, "wrong", f"Right answer {number}.")
    for answer_id in ids[:4]:
        accept(connection, answer_id)

    reference = SimpleNamespace(id="abc", manifest={"correction_documents": []})
    nothing_new = SimpleNamespace(added=[], changed=[], removed=["gone.md"])
    suggestion = retraining_suggestion(connection, reference, nothing_new)
    assert (suggestion.corrections, suggestion.documents, suggestion.min_corrections, suggestion.min_documents) == (4, 0, 5, 2)
    assert not suggestion.due  # 4 < 5 corrections, 0 < 10% of 20 documents

    accept(connection, ids[4])
    suggestion = retraining_suggestion(connection, reference, nothing_new)
    assert suggestion.due and suggestion.message == (
        "5 accepted corrections and 0 new/changed documents since the last snapshot (`abc`): consider retraining.")

    # corrections the snapshot already holds do not count; an edited one does (its text is new)
    texts = dict(accepted_training_texts(connection))
    learned = SimpleNamespace(id="def", manifest={"correction_documents": [{"text_sha256": text_digest(texts[i])} for i in ids[:5]]})
    assert retraining_suggestion(connection, learned, nothing_new).corrections == 0
    reopen(connection, ids[0])
    accept(connection, ids[0], "Right answer 0, edited.")
    assert retraining_suggestion(connection, learned, nothing_new).corrections == 1

    two_new = SimpleNamespace(added=["a.md"], changed=["b.md"], removed=[])
    suggestion = retraining_suggestion(connection, learned, two_new)
    assert suggestion.due and suggestion.message.startswith("1 accepted correction and 2 new/changed documents since")
    assert not retraining_suggestion(connection, learned, two_new, document_share=0.5).due
    assert retraining_suggestion(connection, learned, None).documents == 0  # changes unknown: only corrections count
    assert retraining_suggestion(connection, learned, RuntimeError("unreadable")).documents == 0
    assert retraining_suggestion(connection, learned, nothing_new, min_corrections=1).due

    never = retraining_suggestion(connection, None, None)  # nothing trained yet: everything is new
    assert (never.corrections, never.documents, never.due) == (5, 20, True)
    assert never.message == "5 accepted corrections and 20 new/changed documents, and no LLM has been trained yet: consider training."


def test_an_empty_workspace_suggests_nothing(connection):
    suggestion = retraining_suggestion(connection, None, None)
    assert (suggestion.corrections, suggestion.documents, suggestion.min_documents, suggestion.due) == (0, 0, 1, False)


def test_the_last_snapshot_is_the_newest_jobs_that_did_not_fail():
    def job(state: str, snapshot_id: str):
        return SimpleNamespace(state=state, snapshot_id=snapshot_id)

    snapshots = [SimpleNamespace(id=name) for name in ("s3", "s2", "s1")]
    jobs = [job("failed", "s3"), job("cancelled", "s3"), job("running", "gone"), job("succeeded", "s2"), job("succeeded", "s1")]
    assert trained_snapshot(jobs, snapshots).id == "s2"
    assert trained_snapshot([job("queued", "s3"), *jobs], snapshots).id == "s3"
    assert trained_snapshot(jobs[:2], snapshots) is None and trained_snapshot([], snapshots) is None
