"""Issue 14, findings 5 and 7: what a visitor can learn of the server's secrets, and how much of it they can use.

Secrets: the SFT page sends only allow-listed variables as an API key, the local Ray head does not inherit the app's
secrets, notices shown to visitors carry no URL credentials, a bad setting's error does not echo its value, and
Streamlit shows visitors no traceback. Bounded use: a busy in-process model skips the explanation after a wait and
keeps the decision, a chat session's questions per minute are limited, unanswered questions are capped, and an
over-long question is cut at the input and in the pipeline, with a notice, and shown only as far as it was read.
"""

from __future__ import annotations

import math
import threading
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import training.ray_cluster as ray_cluster
from cli.main import main as cli_main
from engine.answering.pipeline import QuestionError, ask, prepare_answer, record_answer
from engine.answering.prompting import MAX_QUESTION_CHARS
from engine.answering.records import load_answer, recent_answers, save_feedback
from engine.core.settings import Settings, SettingsError, load_settings
from engine.knowledge.workspace import open_knowledge_base
from engine.llm.backends import llm_backend
from engine.llm.loading import load_llm
from engine.llm.versions import resolve_llm_version
from engine.registry.mlflow_candidates import version_link
from tests.rendered_markdown import parse

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "streamlit_app.py"
TUMOR_QUESTION = "Which model should I deploy for tumour screening?"
UNANSWERABLE = "What will the weather be in Lyon tomorrow?"


def answer_count(demo_kb) -> int:
    return demo_kb.connection.execute("SELECT count(*) FROM answers").fetchone()[0]


# --- 5. Secrets ---------------------------------------------------------------------------------------------------

def test_an_api_key_variable_outside_the_allow_list_is_refused_alike_whether_it_exists_or_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("APP_DATABASE_PASSWORD", "hunter2-planted")
    monkeypatch.delenv("NO_SUCH_VARIABLE_HERE", raising=False)
    errors = []
    for name in ("APP_DATABASE_PASSWORD", "NO_SUCH_VARIABLE_HERE"):
        code = cli_main(["sft", "generate", "--name", "leak", "--styles", "factual", "--endpoint", "http://127.0.0.1:9/v1",
                         "--model", "m", "--api-key-env", name])
        errors.append((code, capsys.readouterr().err.strip()))
    assert errors[0] == errors[1]  # same refusal: whether the variable exists is not told
    code, error = errors[0]
    assert code == 2 and "DEPLOYWISE_ENDPOINT_KEY_VARS" in error and "hunter2" not in error
    assert "APP_DATABASE_PASSWORD" not in error and "NO_SUCH_VARIABLE_HERE" not in error
    monkeypatch.setenv("DEPLOYWISE_ENDPOINT_KEY_VARS", "APP_DATABASE_PASSWORD")  # the operator allows it: now it is used
    assert cli_main(["sft", "generate", "--name", "leak", "--styles", "factual", "--endpoint", "http://127.0.0.1:9/v1",
                     "--model", "m", "--api-key-env", "APP_DATABASE_PASSWORD"]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_the_local_ray_head_gets_no_planted_secret(tmp_path):
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/home/app", "PYTHONPATH": "/srv/app", "HF_HUB_OFFLINE": "1",
               "DEPLOYWISE_WORKSPACE": "/srv/workspace", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
               "MLFLOW_TRACKING_PASSWORD": "mlflow-pass", "RAY_AUTH_TOKEN": "ray-token",
               "OPENAI_API_KEY": "sk-planted-1", "DEPLOYWISE_LLM_API_KEY": "sk-planted-2", "HF_TOKEN": "hf-planted-3",
               "AWS_SECRET_ACCESS_KEY": "planted-4", "GITHUB_TOKEN": "planted-5", "APP_DB_PASSWORD": "planted-6",
               "DATABRICKS_TOKEN": "dapi-planted-7", "SOME_OTHER_SERVICE_URL": "https://u:planted-8@example.com"}
    head = ray_cluster.head_environment(load_settings(workspace=tmp_path / "w"), environ)
    assert not [value for value in head.values() if "planted" in value]
    for name in ("PATH", "HOME", "PYTHONPATH", "HF_HUB_OFFLINE", "DEPLOYWISE_WORKSPACE", "MLFLOW_TRACKING_URI",
                 "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN"):  # what Ray, the runtimes and a job's MLflow logging need
        assert head[name] == environ[name]
    on_databricks = ray_cluster.head_environment(load_settings(workspace=tmp_path / "w", mlflow_tracking_uri="databricks"),
                                                 environ)
    assert on_databricks["DATABRICKS_TOKEN"] == "dapi-planted-7"  # MLflow on Databricks: the job logs there


def test_notices_from_an_endpoint_and_a_registry_with_credentials_in_their_urls_show_none(demo_workspace, demo_kb):
    settings = load_settings(workspace=demo_workspace, llm_backend="openai", llm_endpoint="http://bob:s3cret-pw@127.0.0.1:9/v1",
                             llm_model="m", llm_max_retries=0, llm_timeout_s=5)
    answer = ask(settings, demo_kb, llm_backend(settings), TUMOR_QUESTION)
    stored = load_answer(demo_kb.connection, answer.record_id)
    assert answer.prepared.decision.recommended is not None and stored.explanation_state == "failed"
    assert "cannot be reached" in " ".join(answer.explanation.problems) and "127.0.0.1:9" in " ".join(answer.explanation.problems)
    assert "s3cret-pw" not in str(stored) and "bob:" not in " ".join(answer.explanation.problems)

    unreachable = load_settings(workspace=demo_workspace, mlflow_tracking_uri="http://alice:reg-pw@127.0.0.1:9/")
    prepared = prepare_answer(unreachable, demo_kb, TUMOR_QUESTION)
    assert "cannot be reached" in prepared.fallback_text and "127.0.0.1:9" in prepared.fallback_text
    assert "reg-pw" not in prepared.fallback_text + " ".join(prepared.notices)
    link = version_link(unreachable)("tumor-rf", "3")
    assert link.startswith("http://127.0.0.1:9/#/models/") and "reg-pw" not in link


def test_a_bad_settings_error_names_the_variable_and_the_rule_not_the_value(monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_LLM_ENDPOINT", "ftp://bob:hunter2@models.example.com")
    monkeypatch.setenv("DEPLOYWISE_LLM_TIMEOUT_S", "sk-live-pasted-here")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "DEPLOYWISE_LLM_ENDPOINT: must be an http(s) URL" in message and "DEPLOYWISE_LLM_TIMEOUT_S" in message
    assert "hunter2" not in message and "sk-live" not in message
    at = AppTest.from_file(str(APP), default_timeout=60).run()  # the public page says it the same way
    shown = " ".join(parse(e.value).visible for e in at.error)
    assert "DEPLOYWISE_LLM_TIMEOUT_S" in shown and "hunter2" not in shown and "sk-live" not in shown


def test_streamlit_shows_visitors_no_error_details_and_bounds_uploads_to_the_products_limit():
    config = tomllib.loads((ROOT / ".streamlit/config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["server"]["maxUploadSize"] == math.ceil(Settings.model_fields["max_upload_mb"].default)


# --- 7. Bounded use -----------------------------------------------------------------------------------------------

def test_a_busy_model_skips_the_explanation_after_the_wait_and_the_decision_is_still_answered(demo_workspace, demo_kb,
                                                                                              tiny_llama_folder):
    settings = load_settings(workspace=demo_workspace, llm_backend="transformers", base_model=str(tiny_llama_folder),
                             llm_version="base", llm_wait_s=0.5)
    backend = llm_backend(settings)
    busy = load_llm(resolve_llm_version(settings, "base"))  # the very model the backend serves, held by "another answer"
    busy.lock.acquire()
    done = []
    asking = threading.Thread(target=lambda: done.append(ask(settings, demo_kb, backend, TUMOR_QUESTION)), daemon=True)
    try:
        asking.start()
        asking.join(timeout=60)  # the unbounded wait never returns while the lock is held
        finished = not asking.is_alive()
    finally:
        busy.lock.release()
        asking.join(timeout=120)
    assert finished, "the question waited for the busy model without a bound"
    [answer] = done
    assert answer.prepared.decision.recommended is not None and answer.text.startswith("Recommendation:")
    stored = load_answer(demo_kb.connection, answer.record_id)
    assert stored.explanation_state == "failed" and stored.answer == answer.text
    assert "busy" in " ".join(answer.explanation.problems) and "skipped" in " ".join(answer.explanation.problems)


def test_the_rate_limit_refuses_the_next_question_within_a_minute_and_stores_nothing(demo_workspace, demo_kb):
    settings = load_settings(workspace=demo_workspace, questions_per_minute=2)
    for _ in range(2):
        record_answer(demo_kb, prepare_answer(settings, demo_kb, UNANSWERABLE, client="visitor-1"), "none")
    before = answer_count(demo_kb)
    with pytest.raises(QuestionError, match=r"^too many questions from this chat, at most 2 a minute; ask again in \d+ s$"):
        prepare_answer(settings, demo_kb, UNANSWERABLE, client="visitor-1")
    assert answer_count(demo_kb) == before
    assert prepare_answer(settings, demo_kb, UNANSWERABLE, client="visitor-2").match.use_case is None  # another session may
    assert prepare_answer(settings, demo_kb, UNANSWERABLE).match.use_case is None  # the operator's CLI is not limited


def test_the_chat_page_refuses_a_question_over_the_rate_and_stores_nothing(demo_copy, monkeypatch):
    workspace = demo_copy()
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    monkeypatch.setenv("DEPLOYWISE_QUESTIONS_PER_MINUTE", "1")
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.chat_input[0].set_value(UNANSWERABLE).run()
    at.chat_input[0].set_value("And in Paris?").run()
    assert not at.exception, at.exception
    assert "too many questions from this chat, at most 1 a minute; ask again in" in parse(at.warning[0].value).visible
    stored = open_knowledge_base(load_settings())
    try:
        assert [record.question for record in recent_answers(stored.connection)] == [UNANSWERABLE]
    finally:
        stored.connection.close()


def test_unanswered_questions_are_capped_but_flagged_ones_stay(demo_workspace, demo_kb):
    settings = load_settings(workspace=demo_workspace, max_unanswered=3)
    ids = [record_answer(demo_kb, prepare_answer(settings, demo_kb, f"{UNANSWERABLE} Day 0."), "none")]
    save_feedback(demo_kb.connection, ids[0], 0, "It should say it cannot know the weather")
    ids += [record_answer(demo_kb, prepare_answer(settings, demo_kb, f"{UNANSWERABLE} Day {n}."), "none") for n in range(1, 6)]
    answered = record_answer(demo_kb, prepare_answer(settings, demo_kb, TUMOR_QUESTION), "none")
    ids.append(record_answer(demo_kb, prepare_answer(settings, demo_kb, f"{UNANSWERABLE} Day 6."), "none"))
    kept = {row[0] for row in demo_kb.connection.execute("SELECT id FROM answers WHERE id >= ?", (ids[0],))}
    assert kept == {ids[0], answered, *ids[-3:]}  # the flagged one, the answered one, the 3 newest unanswered


def test_an_over_long_question_is_cut_at_the_input_and_in_the_pipeline_and_shown_as_read(demo_workspace, demo_kb, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_workspace))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert at.chat_input[0].proto.max_chars == MAX_QUESTION_CHARS  # the browser sends no more than is read
    long = UNANSWERABLE + " Tell me more." * 2000
    at.chat_input[0].set_value(long).run()
    assert not at.exception, at.exception
    [user] = [message for message in at.chat_message if message.name == "user"]
    assert user.text[0].value == long[:MAX_QUESTION_CHARS]
    prepared = prepare_answer(load_settings(workspace=demo_workspace), demo_kb, long)  # a client that ignores the input's limit
    assert prepared.question == long[:MAX_QUESTION_CHARS]
    assert f"Only the first {MAX_QUESTION_CHARS:,} of the question's {len(long):,} characters were used." in prepared.notices
    stored = load_answer(demo_kb.connection, record_answer(demo_kb, prepared, "none"))
    assert stored.question == long[:MAX_QUESTION_CHARS] and stored.notices == prepared.notices
