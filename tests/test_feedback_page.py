"""The Feedback review page through AppTest on a real knowledge database: review a flagged answer, accept, reject,
reopen, see the counts; bad input refused; non-admins refused. Then the Retraining page's suggestion, and the whole
loop on the demo workspace: a thumbs-down in the chat, its correction accepted here, the next snapshot holds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.answering.feedback_review import accept, get_flagged
from engine.answering.records import AnswerRecord, save_answer, save_feedback
from engine.core import database
from engine.core.database import transaction
from engine.core.settings import load_settings
from engine.knowledge.workspace import ingest_paths
from tests.openai_server import OpenAIServer, faithful_answer
from tests.rendered_markdown import parse
from training.dataset_snapshot import read_split, snapshot_workspace

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "pages" / "feedback.py"
APP = ROOT / "streamlit_app.py"
RIGHT = "Deploy ts-boosting: ts-forest breaks the 10 ms latency budget <<SRC:criteria:tumor-screening>>."


def answer(question: str, llm_version: str = "deploywise-llm/3") -> AnswerRecord:
    return AnswerRecord(
        id=None, asked_at="2025-03-01T09:30:00+00:00", question=question, use_case="tumor-screening",
        answer="Recommendation: **ts-forest** <<SRC:registry:ts-forest>>.", answer_origin="llm", llm_version=llm_version,
        recommended_model="ts-boosting",
        candidates=[{"name": name, "version": "2", "alias": None, "family": family, "metrics": {"roc_auc": auc, "latency_p95_ms": p95},
                     "source_id": f"registry:{name}"}
                    for name, family, auc, p95 in (("ts-boosting", "gradient-boosting", 0.9972, 4.2),
                                                   ("ts-forest", "random-forest", 0.9981, 14.2))],
        decision={"recommended": "ts-boosting", "criteria": [{"metric": "latency_p95_ms", "source_id": "criteria:tumor-screening"}],
                  "candidates": [{"name": "ts-boosting", "passes_hard": True, "standing": "recommended", "checks": []},
                                 {"name": "ts-forest", "passes_hard": False, "standing": "fails p95 latency", "checks": []}]},
    )


@pytest.fixture
def settings(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    settings = load_settings()
    settings.ensure_workspace()
    return settings


def connect(settings):
    return database.connect(settings.knowledge_db)


@pytest.fixture
def flagged(settings) -> list[int]:
    """Two flagged answers by two LLM versions (newest first) and one liked answer."""
    connection = connect(settings)
    try:
        first = save_answer(connection, answer("Which model should I deploy for tumour screening?"))
        save_feedback(connection, first, 0, "It picked the model that breaks the latency budget", RIGHT)
        second = save_answer(connection, answer("Which digit model fits the mobile app?", "base"))
        save_feedback(connection, second, 0, "Wrong use case", None)
        liked = save_answer(connection, answer("Which model for diabetes?"))
        save_feedback(connection, liked, 1)
    finally:
        connection.close()
    return [second, first]


def open_page(settings) -> AppTest:
    """The page file itself, with the settings the entry point would have put in the session."""
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.session_state["settings"] = settings
    at.run()
    assert not at.exception, at.exception
    return at


def counts(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def reviewed(settings, answer_id: int):
    connection = connect(settings)
    try:
        return get_flagged(connection, answer_id)
    finally:
        connection.close()


def review_rows(settings) -> list[tuple]:
    connection = connect(settings)
    try:
        return [tuple(row) for row in connection.execute("SELECT * FROM feedback_reviews")]
    finally:
        connection.close()


def test_an_admin_reviews_a_flagged_answer_accepts_it_and_sees_it_counted(settings, flagged):
    second, first = flagged
    at = open_page(settings)
    assert at.title[0].value == "Feedback review"
    assert counts(at) == {"Pending": "2", "Accepted": "0", "Rejected": "0"}
    texts = [element.value for element in at.text]
    assert "Which model should I deploy for tumour screening?" in texts and "Which digit model fits the mobile app?" in texts
    assert "It picked the model that breaks the latency budget" in texts and RIGHT in texts
    assert "Which model for diabetes?" not in texts  # a thumbs-up is not reviewed
    assert any("Answer #%d · pending · version deploywise-llm/3" % first in parse(m.value).visible for m in at.markdown)
    candidates = next(frame.value for frame in at.dataframe if "model" in frame.value.columns and "standing" in frame.value.columns)
    assert list(candidates["model"]) == ["ts-boosting", "ts-forest"]
    assert at.text_area(key=f"correction-{first}").value == RIGHT  # prefilled with the user's right answer
    assert at.text_area(key=f"correction-{second}").value == ""

    at.text_area(key=f"correction-{first}").input(RIGHT + " Re-check after the next retraining.")
    at.text_input(key=f"note-{first}").input("confirmed with the decision log")
    at.button(key=f"accept-{first}").click().run()
    assert not at.exception and not at.error
    assert parse(at.success[0].value).visible == f"Correction of answer #{first} accepted: it joins the next snapshot."
    assert counts(at) == {"Pending": "1", "Accepted": "1", "Rejected": "0"}
    stored = reviewed(settings, first)
    assert (stored.state, stored.correction, stored.note, stored.reviewer) == (
        "accepted", RIGHT + " Re-check after the next retraining.", "confirmed with the decision log", "test-admin")

    at.selectbox(key="review_state").select("accepted").run()
    assert [b.label for b in at.button] == ["Reopen"]
    assert any("· accepted · " in m.value and "last reviewed by test\\-admin" in m.value for m in at.markdown)
    assert RIGHT + " Re-check after the next retraining." in [element.value for element in at.text]
    at.button(key=f"reopen-{first}").click().run()
    assert parse(at.success[0].value).visible == f"Answer #{first} is pending again."
    assert counts(at) == {"Pending": "2", "Accepted": "0", "Rejected": "0"} and reviewed(settings, first).state == "pending"


def test_filters_by_version_and_state(settings, flagged):
    second, first = flagged
    at = open_page(settings)
    assert at.selectbox(key="review_version").options == ["all", "base", "deploywise-llm/3"]
    at.selectbox(key="review_version").select("base").run()
    assert counts(at) == {"Pending": "1", "Accepted": "0", "Rejected": "0"}
    assert [t.key for t in at.text_area] == [f"correction-{second}"]
    at.selectbox(key="review_state").select("rejected").run()
    assert "No rejected flagged answer." in [info.value for info in at.info]


def test_bad_input_is_refused_with_a_reason_and_nothing_changes(settings, flagged):
    second, first = flagged
    at = open_page(settings)
    at.button(key=f"accept-{second}").click().run()  # the user gave no right answer and the editor is empty
    assert not at.exception
    assert [parse(e.value).visible for e in at.error] == ["The correction is empty: write the right answer first"]
    at.text_area(key=f"correction-{first}").input("   ")
    at.button(key=f"save-{first}").click().run()
    assert [parse(e.value).visible for e in at.error] == ["The correction is empty: write the right answer first"]
    assert review_rows(settings) == []

    at.text_area(key=f"correction-{first}").input("Deploy ts-boosting <<SRC:wiki:made-up>>.")
    at.button(key=f"save-{first}").click().run()  # a draft may cite what is not registered yet...
    assert parse(at.success[0].value).visible == f"Correction of answer #{first} saved (pending)."
    assert parse(at.warning[0].value).visible.startswith(
        "This correction cannot be accepted yet: it cites source the registry does not know: wiki:made-up")
    before = review_rows(settings)
    at.button(key=f"accept-{first}").click().run()  # ...but is not accepted
    assert [parse(e.value).visible for e in at.error] == [
        "Not accepted: it cites source the registry does not know: wiki:made-up (register it on the Knowledge page, "
        "or remove the marker)"]
    assert review_rows(settings) == before and reviewed(settings, first).state == "pending"

    at.text_input(key=f"note-{second}").input("asked about another use case")
    at.button(key=f"reject-{second}").click().run()
    assert parse(at.success[0].value).visible == f"Answer #{second} rejected."
    assert counts(at) == {"Pending": "1", "Accepted": "0", "Rejected": "1"}
    assert reviewed(settings, second).note == "asked about another use case"


def test_a_non_admin_neither_finds_the_page_nor_sees_a_flagged_answer(settings, flagged, real_access):
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/feedback.py")
    at = open_page(settings)  # the page file run directly, as a deep link would
    assert [e.value for e in at.error] == ["The Feedback review page is for administrators."]
    assert not at.text and not at.text_area and not at.button and not at.metric
    assert review_rows(settings) == []


def test_admins_find_the_page_in_the_navigation(settings, flagged):
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.switch_page("pages/feedback.py").run()
    assert not at.exception and at.title[0].value == "Feedback review"
    assert counts(at) == {"Pending": "2", "Accepted": "0", "Rejected": "0"}


def test_an_empty_queue_says_so(settings):
    at = open_page(settings)
    assert counts(at) == {"Pending": "0", "Accepted": "0", "Rejected": "0"}
    assert [info.value for info in at.info] == ["No pending flagged answer."]


# --- the retraining suggestion on the Retraining page ---------------------------------------------------------------


def record_job(settings, snapshot_id: str) -> None:
    connection = connect(settings)
    try:
        with transaction(connection):
            connection.execute(
                "INSERT INTO training_jobs (id, kind, state, config, config_hash, snapshot_id, start_from, mlflow_run_id,"
                " ray_address, log_location, created_at, updated_at, finished_at) VALUES ('cpt-done', 'cpt', 'succeeded',"
                " '{}', 'h', ?, 'base', 'no-run', 'http://127.0.0.1:9', 'logs', '2025-01-30T09:00:00+00:00',"
                " '2025-01-30T09:00:00+00:00', '2025-01-30T09:00:00+00:00')", (snapshot_id,))
    finally:
        connection.close()


def retraining_infos() -> list[str]:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/retraining.py").run()
    assert not at.exception, at.exception
    return [info.value for info in at.info]


def test_the_retraining_page_suggests_retraining_once_enough_corrections_are_accepted(settings, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.md").write_text(f"# Notes {name}\n\nThe {name} model meets its latency budget.", encoding="utf-8")
    ingest_paths(settings, [folder])
    assert any("3 new/changed documents, and no LLM has been trained yet: consider training." in text for text in retraining_infos())

    snapshot = snapshot_workspace(settings)
    record_job(settings, snapshot.id)
    assert not any("consider" in text for text in retraining_infos())

    connection = connect(settings)
    try:
        for number in range(5):
            answer_id = save_answer(connection, answer(f"Question {number}?"))
            save_feedback(connection, answer_id, 0, "wrong", f"Deploy ts-boosting ({number}).")
            accept(connection, answer_id)
    finally:
        connection.close()
    expected = f"5 accepted corrections and 0 new/changed documents since the last snapshot (`{snapshot.id}`): consider retraining."
    assert expected in retraining_infos()


# --- the whole loop on the demo workspace ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_flagged_chat_answer_reviewed_here_is_in_the_next_snapshot(demo_copy, monkeypatch):
    workspace = demo_copy()
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    before = snapshot_workspace(load_settings(), write=False)
    with OpenAIServer(reply=faithful_answer) as server:
        for key, value in {"LLM_BACKEND": "openai", "LLM_ENDPOINT": server.url, "LLM_MODEL": server.model,
                           "LLM_MAX_RETRIES": "0", "LLM_TIMEOUT_S": "5"}.items():
            monkeypatch.setenv(f"DEPLOYWISE_{key}", value)
        chat = AppTest.from_file(str(APP), default_timeout=120).run()
        chat.chat_input[0].set_value("Which model should I deploy for tumour screening?").run()
        chat.feedback[0].set_value(0).run()
        next(t for t in chat.text_area if t.label == "What was wrong?").set_value("It did not mention the calibration check")
        next(t for t in chat.text_area if t.label == "The right answer (optional)").set_value(
            "Deploy it after the calibration check <<SRC:incidents:2026-calibration-drift>>.")
        next(b for b in chat.button if b.label == "Send").click().run()
        assert not chat.exception

    settings = load_settings()
    at = open_page(settings)
    [editor] = at.text_area
    answer_id = int(editor.key.removeprefix("correction-"))
    assert editor.value == "Deploy it after the calibration check <<SRC:incidents:2026-calibration-drift>>."
    assert not at.warning  # the marker names a registered source
    at.button(key=f"accept-{answer_id}").click().run()
    assert counts(at)["Accepted"] == "1"

    after = snapshot_workspace(settings)
    assert after.id != before.id and after.manifest["corrections"] == 1
    [record] = [r for r in read_split(after, "train") if r["kind"] == "correction"]
    assert record["document"] == f"correction:answer-{answer_id}"
    assert record["text"].startswith("Question: Which model should I deploy for tumour screening?")
    assert "Candidates for tumor-screening on" in record["text"] and "<<SRC:registry:" in record["text"]
    assert record["text"].endswith("Deploy it after the calibration check <<SRC:incidents:2026-calibration-drift>>.")
