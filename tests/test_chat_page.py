"""The Chat page through AppTest: the real entry point on a copy of the demo workspace (real MLflow registry,
knowledge base and embedder), an LLM behind a local OpenAI-compatible server, and every answer read back from
the knowledge base the page wrote it to."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.answering.records import feedback_for, recent_answers
from engine.core.settings import load_settings
from engine.knowledge.workspace import open_knowledge_base
from tests.openai_server import OpenAIServer, faithful_answer
from tests.rendered_markdown import parse

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
QUESTION = "Which model should I deploy for tumour screening?"


@pytest.fixture
def workspace(demo_copy, monkeypatch) -> Path:
    workspace = demo_copy()
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    return workspace


@pytest.fixture
def llm(workspace, monkeypatch):
    with OpenAIServer(reply=faithful_answer) as server:
        for key, value in {"LLM_BACKEND": "openai", "LLM_ENDPOINT": server.url, "LLM_MODEL": server.model,
                           "LLM_MAX_RETRIES": "0", "LLM_TIMEOUT_S": "5"}.items():
            monkeypatch.setenv(f"DEPLOYWISE_{key}", value)
        yield server


def ask(*questions: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, at.exception
    for question in questions:
        at.chat_input[0].set_value(question).run()
        assert not at.exception, at.exception
    return at


def stored_answers() -> list:
    kb = open_knowledge_base(load_settings())
    try:
        return recent_answers(kb.connection)
    finally:
        kb.connection.close()


def assistant_markdown(at: AppTest) -> str:
    return "\n\n".join(m.value for message in at.chat_message if message.name == "assistant" for m in message.markdown)


def captions(at: AppTest) -> str:
    return "\n".join(parse(c.value).visible for c in at.caption)


def test_a_question_gets_the_decision_then_a_verified_explanation_with_links_and_evidence(llm):
    at = ask(QUESTION)
    [record] = stored_answers()
    assert (record.answer_origin, record.explanation_state, record.use_case) == ("deterministic", "kept", "tumor-screening")
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    shown = parse(assistant_markdown(at))
    assert shown.visible.startswith(f"Recommendation: {record.recommended_model}")
    explained = shown.visible.index(f"{record.recommended_model} [1] is the one to deploy because it passes every hard criterion")
    assert shown.visible.index("Why:") < explained  # the decision, then the LLM's explanation below it
    assert "<<SRC:" not in shown.visible and "Sources" in shown.visible
    assert "Acceptance criteria — breast tumour screening" in shown.visible  # the registry's display name
    assert "source?id=criteria:tumor-screening" in shown.hrefs  # the team's document opens in the app
    assert all(href.startswith(("https://", "source?id=")) for href in shown.hrefs)
    assert all(not m.proto.allow_html for m in at.markdown)
    assert f"answer #{record.id}" in captions(at)
    assert "Decided by the team's rules · Explained by the LLM, every sentence verified (openai:" in captions(at)
    recommendation, whole = record.timings["recommendation_ms"] / 1000, record.timings["total_ms"] / 1000
    assert f"recommendation {recommendation:.1f} s, whole answer {whole:.1f} s" in captions(at)  # both times shown
    evidence = next(e for e in at.expander if e.label == "Candidates and criteria check")
    candidates, checks = (frame.value for frame in evidence.dataframe)
    assert set(candidates["model"]) == {c["name"] for c in record.candidates} and len(candidates) == 4
    assert candidates.iloc[0]["model"] == record.recommended_model
    assert "FAIL" in set(checks["result"])  # the random forest breaks the latency budget
    latencies = checks[checks["criterion"] == "latency_p95_ms <= 10 (hard)"]["value"]
    assert len(latencies) == 4 and all(value.endswith(" ms") for value in latencies)  # written as the catalog writes them
    assert len(at.feedback) == 1


def test_earlier_answers_stay_on_the_page(llm):
    at = ask(QUESTION, "Which model should ship for digit recognition in the mobile app?")
    assert [m.name for m in at.chat_message] == ["user", "assistant"] * 2
    assert {record.use_case for record in stored_answers()} == {"tumor-screening", "digit-recognition"}


def test_thumbs_down_asks_what_was_wrong_and_stores_it(llm):
    at = ask(QUESTION)
    [record] = stored_answers()
    at.feedback[0].set_value(0).run()
    assert not at.exception
    wrong = next(t for t in at.text_area if t.label == "What was wrong?")
    right = next(t for t in at.text_area if t.label == "The right answer (optional)")
    wrong.set_value("It ignored the calibration check")
    right.set_value("Deploy it only after the calibration check")
    next(b for b in at.button if b.label == "Send").click().run()
    assert not at.exception
    assert "an admin will review" in at.success[0].value
    kb = open_knowledge_base(load_settings())
    try:
        kept = feedback_for(kb.connection, record.id)
    finally:
        kb.connection.close()
    assert (kept.rating, kept.what_was_wrong, kept.correct_answer) == (
        0, "It ignored the calibration check", "Deploy it only after the calibration check")


def test_thumbs_up_is_stored_at_once(llm):
    at = ask(QUESTION)
    [record] = stored_answers()
    at.feedback[0].set_value(1).run()
    assert not at.exception and not at.text_area
    kb = open_knowledge_base(load_settings())
    try:
        assert feedback_for(kb.connection, record.id).rating == 1
    finally:
        kb.connection.close()


def test_an_empty_question_is_refused_and_nothing_is_stored(llm):
    at = ask("   ")
    assert "Nothing to answer" in at.warning[0].value
    assert stored_answers() == [] and llm.requests == []


def test_a_failing_llm_leaves_the_decision_with_one_line(llm):
    llm.failure = "http_500"
    at = ask(QUESTION)
    [record] = stored_answers()
    assert (record.answer_origin, record.explanation_state) == ("deterministic", "failed")
    assert parse(assistant_markdown(at)).visible.startswith(f"Recommendation: {record.recommended_model}")
    assert "The LLM could not explain the decision (LLM endpoint" in captions(at)


def test_a_wrong_llm_recommendation_never_reaches_the_page_and_admins_can_read_it(llm):
    llm.reply = (" we recommend tumor-screening-random-forest <<SRC:registry:tumor-screening-random-forest>> as the "
                 "most accurate.")
    at = ask(QUESTION)
    [record] = stored_answers()
    assert record.explanation_state == "dropped" and record.recommended_model != "tumor-screening-random-forest"
    shown = parse(assistant_markdown(at)).visible
    assert shown.startswith(f"Recommendation: {record.recommended_model}") and "we recommend" not in shown
    assert "The LLM's explanation was dropped: it did not pass verification (it presents tumor-screening-random-forest" in captions(at)
    draft = next(e for e in at.expander if e.label == "What the LLM wrote (admins)")
    assert "we recommend tumor-screening-random-forest" in draft.text[0].value


def test_html_in_the_llms_explanation_is_shown_as_text(llm):
    llm.reply = (" it passes every hard criterion <<SRC:criteria:tumor-screening>>. The model ranks first on the "
                 "priority metric and latency among the candidates that passes every hard criterion of the use case "
                 "<script>alert('x')</script> [x](javascript:alert(1)) "
                 "<<SRC:criteria:tumor-screening>>.")
    at = ask(QUESTION)
    [record] = stored_answers()
    assert record.explanation_state == "kept" and "<script>" in record.explanation
    shown = parse(assistant_markdown(at))
    assert "<script>alert('x')</script>" in shown.visible and "script" not in shown.tags
    assert not any(href.startswith("javascript:") for href in shown.hrefs)
    assert all(not m.proto.allow_html for m in at.markdown)


def test_a_question_about_no_known_use_case_recommends_nothing(llm):
    at = ask("What will the weather be in Lyon tomorrow?")
    assert "recommend nothing" in parse(assistant_markdown(at)).visible
    assert not any(e.label == "Candidates and criteria check" for e in at.expander)
    assert llm.requests == []
