"""The LLM versions page through AppTest, on the registry of test_llm_versions (real sqlite MLflow store, tiny
adapters): the table, the promote flow through the gate, rollback, archive, MLflow failures, admins only."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest
from test_llm_versions import NAME, evaluate, registry_state, registry_template, served, settings  # noqa: F401 - fixtures

from engine.access import roles
from engine.core.markdown import escape_markdown
from engine.core.settings import load_settings
from engine.lifecycle.version_catalog import overview
from tests.rendered_markdown import parse
from ui import login

PAGE = Path(__file__).resolve().parents[1] / "pages" / "versions.py"


def open_page(settings) -> AppTest:  # noqa: F811 - the fixture's value
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.session_state["settings"] = settings  # what the entry point puts there
    at.run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if parse(b.label).visible == label)


def test_promote_through_the_gate_then_roll_back_and_archive(settings, monkeypatch):  # noqa: F811
    monkeypatch.setattr(login, "session_identity", lambda: roles.Identity("ana@example.com", "oidc", True))
    evaluate(settings, "1", "GO", [])
    evaluate(settings, "2", "NO-GO", ["accuracy 0.81 < 0.95"], metrics={"accuracy": 0.81, "general_perplexity": 23.0})
    at = open_page(settings)
    assert at.title[0].value == "LLM versions"
    table = at.dataframe[0].value
    assert list(table["version"]) == ["4", "3", "2", "1"]
    assert list(table["status"]) == ["failed", "candidate", "candidate", "candidate"]
    assert list(table["gate"]) == ["not evaluated", "not evaluated", "NO-GO", "GO"]
    assert list(table["answers"]) == [0, 0, 0, 3] and list(table["flags"]) == [0, 0, 0, 1]
    assert any("Base model base:model: 1 answers, 1 flags" in parse(c.value).visible for c in at.caption)
    assert "The chat serves base:model" in parse(at.markdown[0].value).visible
    assert not [b for b in at.button if b.label.startswith("Roll back")]  # nothing to roll back to yet

    at.selectbox(key="versions_chosen").set_value("2").run()
    assert at.error[0].value == escape_markdown("Gate: NO-GO (evaluation eval-2-NO-GO)") + "\n- accuracy 0\\.81 \\< 0\\.95"
    metrics = next(frame.value for frame in at.dataframe if "metric" in frame.value.columns)
    assert metrics.to_dict("records") == [{"metric": "accuracy", f"{NAME}/2": 0.81},
                                          {"metric": "general_perplexity", f"{NAME}/2": 23.0}]
    assert at.text_area(key="reason_2").label == "Reason for promoting (required: no GO verdict)"
    button(at, "Promote to champion").click().run()
    assert not at.exception
    assert parse([e.value for e in at.error][-1]).visible == (
        "deploywise-llm/2 has a NO-GO verdict; promoting it without a GO needs a written reason")
    assert served(settings) is None

    at.text_area(key="reason_2").input("The fraud criteria changed; this version knows them.")
    button(at, "Promote to champion").click().run()
    assert not at.exception
    assert parse(at.success[0].value).visible == "deploywise-llm/2 is the champion; the chat switches to it within a minute."
    assert served(settings) == "2"
    promoted = overview(settings).version("2")
    assert (promoted.promotion_reason, promoted.promoted_by) == ("The fraud criteria changed; this version knows them.", "ana@example.com")
    assert list(at.dataframe[0].value["status"])[2] == "deployed"

    at.selectbox(key="versions_chosen").set_value("1").run()
    button(at, "Promote to champion").click().run()  # GO: no reason needed
    assert served(settings) == "1"
    button(at, "Roll back to deploywise-llm/2").click().run()
    assert parse(at.success[0].value).visible == "Rolled back: the chat serves deploywise-llm/2 within a minute."
    assert served(settings) == "2"

    at.selectbox(key="versions_chosen").set_value("1").run()
    button(at, "Archive").click().run()
    assert parse(at.success[0].value).visible == "deploywise-llm/1 archived."
    assert overview(settings).version("1").status == "archived"
    assert [e.action for e in overview(settings).history] == ["archive", "rollback", "promote", "promote"]


def test_an_mlflow_failure_is_one_line_and_the_page_stays_up(settings, tmp_path):  # noqa: F811
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    at = open_page(load_settings(workspace=settings.workspace, base_model=settings.base_model,
                                 mlflow_tracking_uri=f"sqlite:///{broken}"))
    [error] = at.error
    assert parse(error.value).visible.startswith("cannot read the LLM versions of deploywise-llm from MLflow: DatabaseError: ")
    assert "\n" not in error.value


def test_non_admins_are_refused_on_the_page_and_in_the_engine(settings, monkeypatch):  # noqa: F811
    monkeypatch.setattr(login, "session_identity", lambda: roles.ANONYMOUS)
    at = open_page(settings)
    assert [e.value for e in at.error] == ["The LLM versions page is for administrators."]
    assert not at.dataframe and not at.button
    before = registry_state(settings)

    def script(settings):
        import streamlit as st

        from engine.lifecycle import version_actions

        outcomes = st.session_state.setdefault("outcomes", [])
        for action in (lambda: version_actions.promote(settings, "1", actor="mallory", reason="me"),
                       lambda: version_actions.archive(settings, "2", "mallory"),
                       lambda: version_actions.rollback(settings, "mallory")):
            try:
                action()
                outcomes.append("done")
            except Exception as error:  # noqa: BLE001 - recorded
                outcomes.append(type(error).__name__)

    at = AppTest.from_function(script, args=(settings,), default_timeout=60).run()
    assert at.session_state["outcomes"] == ["AccessDenied"] * 3
    assert registry_state(settings) == before


def test_an_empty_registry_says_how_to_get_a_version(tmp_path, tiny_llama_folder):
    at = open_page(load_settings(workspace=tmp_path / "empty", base_model=str(tiny_llama_folder)))
    assert at.info[0].value == "No LLM version yet: a CPT job on the Retraining page registers one."
    assert NAME not in at.markdown[0].value


def test_admins_reach_the_page_through_the_navigation(settings):  # noqa: F811
    at = AppTest.from_file(str(PAGE.parents[1] / "streamlit_app.py"), default_timeout=60).run()
    at.switch_page("pages/versions.py").run()  # raises unless the admin navigation lists the page
    assert not at.exception, at.exception
    assert at.title[0].value == "LLM versions" and list(at.dataframe[0].value["version"]) == ["4", "3", "2", "1"]
