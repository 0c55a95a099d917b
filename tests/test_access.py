"""Access control: Chat for everyone; admin pages and admin actions for administrators only.

Real sessions here (`real_access`): the other tests' sessions are a logged-in administrator (tests/conftest.py).
A visitor sees only the Chat, is refused on every admin page URL and cannot trigger an admin action through the
pages' shared engine functions (no database row changes); the local administrator logs in with the password set by
`deploywise admin set-password` (stored as a bcrypt hash, never in plain text), is slowed down after repeated
failures, and logs out; with an OIDC provider configured, administrators are the listed emails.
"""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import pytest
from streamlit.testing.v1 import AppTest

from cli.main import main
from engine.access import local_account, roles
from engine.core.markdown import escape_markdown
from engine.core.settings import SettingsError, load_settings
from ui import admin_page, login
from ui.deep_links import REQUEST_KEY

pytestmark = pytest.mark.usefixtures("real_access")

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "streamlit_app.py")
PUBLIC_PAGES = {"pages/chat.py", "pages/source.py", login.LOGIN_PAGE}
PASSWORD = "correct horse battery"
OIDC_SECRETS = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                "client_id": "deploywise", "client_secret": "s3cret",
                "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration"}


@pytest.fixture
def workspace(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    load_settings().ensure_workspace()
    return tmp_path / "workspace"


@pytest.fixture
def fast_hashes(monkeypatch):
    """bcrypt at its lowest cost, so the many logins below take milliseconds (the cost itself is tested once)."""
    monkeypatch.setattr(local_account, "ROUNDS", 4)
    monkeypatch.setattr(local_account, "_DUMMY_HASH", [])


@pytest.fixture
def throttle(monkeypatch):
    """A fresh failed-login counter on a clock the test moves."""
    clock = [1000.0]
    fresh = local_account.LoginThrottle(clock=lambda: clock[0])
    monkeypatch.setattr(local_account, "THROTTLE", fresh)
    return clock


@pytest.fixture
def admin_password(workspace, fast_hashes, throttle) -> str:
    local_account.set_password(load_settings().admin_file, "admin", PASSWORD)
    return PASSWORD


def app(**session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in session.items():
        at.session_state[key] = value
    return at.run()


def through_the_entry_point(at: AppTest) -> AppTest:
    """A run of streamlit_app.py, as every run of a real session is. (AppTest runs a page picked with switch_page by
    itself, like Streamlit's pages/ fallback for a fresh server's first deep link: the admin pages' own check then
    decides.)"""
    try:
        at.switch_page("streamlit_app.py")
    except ValueError:  # the last run was the entry point's: its navigation does not list the entry point itself
        at.switch_page(login.LOGIN_PAGE).run()
        at.switch_page("streamlit_app.py")
    return at.run()


def assert_not_an_admin(at: AppTest) -> None:
    """The navigation holds no admin page, and each admin page opened anyway refuses and shows nothing else."""
    through_the_entry_point(at)
    assert not at.exception, at.exception
    for page in admin_page.ADMIN_PAGES:
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page.path)
    admin_paths = {Path(page.path).stem for page in admin_page.ADMIN_PAGES}
    assert not [link for link in at.get("page_link") if link.proto.page in admin_paths]
    at.switch_page(login.LOGIN_PAGE).run()  # a run of a page alone registers every file of pages/, as by URL
    for page in admin_page.ADMIN_PAGES:
        at.switch_page(page.path).run()
        assert not at.exception, at.exception
        assert texts(at, "error") == [f"The {page.title} page is for administrators."]
        assert not at.title and not at.button and not at.tabs and not at.metric and not at.dataframe


def assert_admin(at: AppTest) -> None:
    through_the_entry_point(at)
    at.switch_page("pages/knowledge.py").run()  # raises unless the navigation holds it
    assert not at.exception, at.exception
    assert [metric.label for metric in at.metric] == ["Documents", "Chunks", "Tokens", "Sources"]


def log_in(at: AppTest, password: str, user: str = "admin") -> AppTest:
    at.switch_page(login.LOGIN_PAGE).run()
    at.text_input[0].set_value(user)
    at.text_input[1].set_value(password)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [element.value for element in getattr(at, kind)]


# --- who sees what ---------------------------------------------------------------------------------------------------

def test_every_page_file_is_public_or_a_listed_admin_page_that_exists():
    files = {f"pages/{path.name}" for path in (ROOT / "pages").glob("*.py")}
    assert files - PUBLIC_PAGES <= {page.path for page in admin_page.ADMIN_PAGES}, "add new admin pages to admin_page.ADMIN_PAGES"
    missing = [page.path for page in admin_page.ADMIN_PAGES if not (ROOT / page.path).is_file()]
    assert not missing, f"listed in admin_page.ADMIN_PAGES but not written yet: {missing}"


def test_a_visitor_gets_the_chat_and_no_admin_page(workspace):
    at = app()
    assert not at.exception
    assert at.title[0].value == "Which model should I deploy?"
    assert not at.chat_input[0].disabled
    assert [(link.label, link.proto.page) for link in at.sidebar.get("page_link")] == [("Log in", "login")]
    assert_not_an_admin(at)


@pytest.mark.parametrize("page", admin_page.ADMIN_PAGES, ids=lambda page: page.title)
def test_an_admin_page_url_opened_by_a_visitor_shows_the_login_instead(workspace, page):
    at = app(**{REQUEST_KEY: (page.path, {})})  # what through_entry_point leaves for a deep link to the page
    assert not at.exception
    assert texts(at, "title") == ["Log in"]
    assert texts(at, "warning") == [f"The {page.title} page is for administrators. Log in as an administrator to open it."]
    assert not at.metric and not at.tabs and not at.chat_input
    assert_not_an_admin(at)


@pytest.mark.parametrize("page", admin_page.ADMIN_PAGES, ids=lambda page: page.title)
def test_an_admin_page_run_for_a_visitor_refuses_and_shows_nothing_else(workspace, page):
    at = AppTest.from_file(str(ROOT / page.path), default_timeout=120)
    at.session_state["settings"] = load_settings()  # as if the entry point had let the page run
    at.run()
    assert not at.exception
    assert texts(at, "error") == [f"The {page.title} page is for administrators."]
    assert not at.title and not at.button and not at.tabs and not at.metric and not at.dataframe


# --- admin actions through the shared engine functions ---------------------------------------------------------------

@contextmanager
def knowledge_base() -> Iterator:
    """The test workspace's knowledge base, opened beside the app (as a second session would)."""
    from engine.knowledge.workspace import open_knowledge_base

    kb = open_knowledge_base(load_settings())
    try:
        yield kb
    finally:
        kb.connection.close()


def every_row(connection) -> dict:
    """Every row of every table of the knowledge database (index tables by their keys)."""
    names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    rows = {name: connection.execute(f'SELECT * FROM "{name}" ORDER BY 1').fetchall()
            for name in names if not name.startswith(("chunks_fts", "chunk_vectors", "sqlite_"))}
    rows["chunk_vectors"] = connection.execute("SELECT chunk_id FROM chunk_vectors ORDER BY 1").fetchall()
    rows["chunks_fts"] = connection.execute("SELECT rowid FROM chunks_fts ORDER BY 1").fetchall()
    return {name: [tuple(row) for row in table] for name, table in rows.items()}


def admin_actions_script(docs: str, sql_url: str, skip: tuple[str, ...] = ()):
    """Runs as a Streamlit session: tries every admin action the pages offer through the engine functions they (and
    the CLI) call, and records which ran (`skip`: actions not to try)."""
    import threading

    import streamlit as st

    from engine.access import roles
    from engine.answering import feedback_review
    from engine.core.settings import load_settings
    from engine.knowledge import table_import
    from engine.knowledge.sources import Source, import_csv, list_sources
    from engine.knowledge.workspace import ingest_paths, make_chunker, open_knowledge_base
    from engine.lifecycle import version_actions
    from engine.rules.criteria import discard_review, save_reviewed_rules
    from eval.harness import run_evaluation
    from eval.worker import cancel_evaluation, start_evaluation
    from training.job_following import cancel_job
    from training.job_launch import submit_cpt
    from ui import knowledge_views as views
    from ui.retraining_form import default_config
    from ui.retraining_jobs import open_database

    settings = st.session_state.setdefault("settings", load_settings())
    kb, jobs_db = open_knowledge_base(settings), open_database(settings)
    chunk = kb.chunks(limit=1)[0]
    registry = list_sources(kb.connection)
    edited = [Source(s.source_id, s.display_name + " (edited)", s.url, s.kind) for s in registry]
    sql_source = table_import.table_source("sql", sql_url, "")

    class Upload:
        name = "upload.md"

        def getvalue(self):
            return b"# Upload\nA file a visitor tries to upload.\n"

    upload = Upload()
    actions = {
        "ingest files (CLI)": lambda: ingest_paths(settings, [docs]),
        "ingest uploads (Knowledge page)": lambda: views.ingest_uploads(kb, make_chunker(settings), [upload], 10**6),
        "edit a chunk": lambda: kb.edit_chunk(chunk.id, "Rewritten by a visitor."),
        "delete a chunk": lambda: kb.delete_chunk(chunk.id),
        "delete a document": lambda: kb.delete_document(chunk.document_id),
        "add a source": lambda: kb.register_sources([Source("doc:visitor", "Visitor", None, "document")]),
        "edit the registry": lambda: views.save_registry(kb.connection, registry, edited),
        "import a registry CSV": lambda: import_csv(kb.connection, "source_id,display_name,url,kind\ndoc:x,X,,doc\n"),
        "save reviewed criteria": lambda: save_reviewed_rules(kb.connection, "fraud", [], None),
        "give criteria back": lambda: discard_review(kb.connection, "fraud"),
        "detect table columns": lambda: table_import.plan_tables(settings, sql_source),
        "import tables": lambda: table_import.run_table_import(settings, kb, None, sql_source, []),
        "launch training": lambda: submit_cpt(settings, jobs_db, default_config()[0]),
        "cancel training": lambda: cancel_job(settings, jobs_db, "cpt-any"),
        "evaluate (Evaluation page)": lambda: start_evaluation(settings, ["base"]),
        "cancel an evaluation": lambda: cancel_evaluation(settings, "eval-any"),
        "evaluate (CLI)": lambda: run_evaluation(None),
        "promote a version": lambda: version_actions.promote(settings, "1", actor="visitor", reason="because"),
        "roll back the champion": lambda: version_actions.rollback(settings, "visitor", "because"),
        "archive a version": lambda: version_actions.archive(settings, "1", "visitor", "because"),
        "save a correction": lambda: feedback_review.save_correction(kb.connection, 1, "The right answer."),
        "accept a correction": lambda: feedback_review.accept(kb.connection, 1),
        "reject a flagged answer": lambda: feedback_review.reject(kb.connection, 1),
        "reopen a reviewed answer": lambda: feedback_review.reopen(kb.connection, 1),
    }
    outcomes = {}
    for name, action in actions.items():
        if name in skip:
            continue
        try:
            action()
            outcomes[name] = "done"
        except roles.AccessDenied:
            outcomes[name] = "refused"
        except Exception as error:  # an administrator's action may still fail on its own terms (no Ray here, say)
            outcomes[name] = f"failed: {type(error).__name__}"
    thread_outcome = []

    def in_a_thread_of_the_server():  # no session: nobody's action
        try:
            kb_of_thread = open_knowledge_base(settings)
            kb_of_thread.register_sources([Source("doc:thread", "Thread", None, "document")])
            thread_outcome.append("done")
        except roles.AccessDenied:
            thread_outcome.append("refused")

    worker = threading.Thread(target=in_a_thread_of_the_server)
    worker.start()
    worker.join()
    outcomes["a server thread outside any session"] = thread_outcome[0]
    kb.connection.close()
    jobs_db.close()
    st.session_state["outcomes"] = outcomes


@pytest.fixture
def documents(workspace, tmp_path) -> Path:
    """Two documents, a registry and acceptance criteria, stored by the operator (this test process, as the CLI)."""
    from engine.knowledge.workspace import ingest_paths

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "fraud.md").write_text("---\nsource_id: criteria:fraud\nkind: guideline\n---\n# Fraud\n"
                                     "A fraud model needs recall of at least 0.90 (hard).\n", encoding="utf-8")
    (folder / "notes.md").write_text("# Notes\nThe churn model was chosen for its explainability.\n", encoding="utf-8")
    assert [o.status for o in ingest_paths(load_settings(), [folder])] == ["added", "added"]
    (tmp_path / "more").mkdir()
    (tmp_path / "more/new.md").write_text("# New\nA document a visitor tries to add.\n", encoding="utf-8")
    return tmp_path / "more"


def sql_database(tmp_path) -> str:
    import sqlite3

    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        connection.execute("INSERT INTO notes(body) VALUES ('A long enough note about a fraud model and its recall.')")
    return f"sqlite:///{path}"


def test_a_visitor_cannot_trigger_any_admin_action_and_nothing_changes(documents, tmp_path, workspace):
    with knowledge_base() as kb:
        before = every_row(kb.connection)
    at = AppTest.from_function(admin_actions_script, args=(str(documents), sql_database(tmp_path)), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    outcomes = at.session_state["outcomes"]
    assert outcomes and set(outcomes.values()) == {"refused"}, outcomes
    with knowledge_base() as kb:
        assert every_row(kb.connection) == before
    assert not (workspace / "snapshots").exists()  # nothing written for a training job either


def test_the_logged_in_local_admin_passes_the_same_guards(documents, admin_password):
    account = local_account.read_account(load_settings().admin_file)
    skip = ("launch training", "evaluate (Evaluation page)", "evaluate (CLI)", "cancel an evaluation", "promote a version",
            "roll back the champion", "archive a version", "save a correction", "accept a correction",
            "reject a flagged answer", "reopen a reviewed answer")  # each really runs for an administrator: their own tests
    at = AppTest.from_function(admin_actions_script, args=(str(documents), "sqlite:///no/such.db", skip), default_timeout=120)
    at.session_state["settings"] = load_settings()
    at.session_state[login.LOGIN_KEY] = login.LocalLogin(account.user, account.password_hash)
    at.run()
    assert not at.exception, at.exception
    outcomes = at.session_state["outcomes"]
    assert outcomes.pop("a server thread outside any session") == "refused"  # still nobody's action
    assert "refused" not in outcomes.values(), outcomes
    assert outcomes["add a source"] == outcomes["edit a chunk"] == outcomes["ingest files (CLI)"] == "done"


def test_outside_streamlit_the_caller_is_the_operator():
    assert roles.current_identity() == roles.OPERATOR
    roles.require_admin("anything")  # the CLI, scripts and Ray jobs run on the server with the workspace in hand


# --- the local administrator ----------------------------------------------------------------------------------------

def test_the_local_admin_logs_in_sees_the_admin_pages_and_logs_out(admin_password):
    at = app()
    at = log_in(at, "wrong password!")
    assert texts(at, "error") == ["Wrong user name or password."]
    at = log_in(at, admin_password, user="root")
    assert texts(at, "error") == ["Wrong user name or password."]
    assert_not_an_admin(at)

    at = log_in(at, admin_password)
    assert texts(at, "success") == ["Signed in as admin, administrator: the admin pages are in the sidebar."]
    assert admin_password not in [str(value) for value in at.session_state.values()]
    through_the_entry_point(at)
    assert at.sidebar.caption[0].value == "Signed in as admin (administrator)"
    assert_admin(at)

    through_the_entry_point(at)
    next(b for b in at.sidebar.button if b.label == "Log out").click().run()
    assert not at.exception
    assert at.title[0].value == "Which model should I deploy?"
    assert_not_an_admin(at)


def test_a_new_password_logs_out_the_sessions_of_the_old_one(admin_password):
    at = log_in(app(), admin_password)
    assert_admin(at)
    local_account.set_password(load_settings().admin_file, "admin", "another long password")
    assert_not_an_admin(at)


def test_a_refused_deep_link_opens_after_the_login(admin_password):
    at = app(**{REQUEST_KEY: ("pages/knowledge.py", {})})
    assert texts(at, "warning") == ["The Knowledge page is for administrators. Log in as an administrator to open it."]
    at.text_input[1].set_value(admin_password)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception
    through_the_entry_point(at)  # what the login's st.rerun() runs in a real session
    assert [tab.label for tab in at.tabs][:2] == ["Upload", "Import tables"]  # the Knowledge page itself


def test_repeated_failures_make_the_next_attempts_wait(admin_password, throttle):
    at = app()
    for _ in range(local_account.FREE_FAILURES):
        at = log_in(at, "not the password")
        assert texts(at, "error") == ["Wrong user name or password."]
    at = log_in(at, admin_password)  # the right password, but too soon: not even checked
    assert texts(at, "error") == ["Too many failed logins: try again in 1 s."]
    assert_not_an_admin(at)
    throttle[0] += 1.0
    at = log_in(at, "still not it")
    throttle[0] += 1.5
    at = log_in(at, admin_password)
    assert texts(at, "error") == ["Too many failed logins: try again in 1 s."]  # the wait doubled to 2 s
    throttle[0] += 1.0
    at = log_in(at, admin_password)
    assert texts(at, "success") == ["Signed in as admin, administrator: the admin pages are in the sidebar."]
    assert local_account.THROTTLE.wait_s(str(load_settings().admin_file), local_account.UNKNOWN_CLIENT) == 0  # a success starts again
    assert_admin(at)


def test_the_throttle_doubles_the_wait_up_to_its_cap():
    clock = [0.0]
    throttle = local_account.LoginThrottle(clock=lambda: clock[0])
    waits = []
    for _ in range(local_account.FREE_FAILURES + 12):
        waits.append(throttle.wait_s("admin.json", "203.0.113.7"))
        throttle.failed("admin.json", "203.0.113.7")
        clock[0] += 0.0
    assert waits[: local_account.FREE_FAILURES + 1] == [0.0] * local_account.FREE_FAILURES + [local_account.BASE_DELAY_S]
    assert waits[local_account.FREE_FAILURES + 3] == 8 * local_account.BASE_DELAY_S
    assert max(waits) == local_account.MAX_DELAY_S


def test_without_a_password_the_login_page_says_how_to_set_one(workspace, capfd):
    at = app()
    at.switch_page(login.LOGIN_PAGE).run()
    assert "run `.venv/bin/deploywise admin set-password`" in texts(at, "info")[0]
    at = log_in(at, "anything at all")
    assert texts(at, "error") == ["No administrator password is set yet: run `deploywise admin set-password` on the server."]
    login._ANNOUNCED.clear()
    login.announce_first_run(load_settings())
    assert "deploywise admin set-password" in capfd.readouterr().err


# --- the password file and the command that sets it -----------------------------------------------------------------

def all_file_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())


def test_the_command_stores_only_a_bcrypt_hash_in_a_private_file(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["admin", "set-password"]) == 0
    assert "stored hashed (bcrypt)" in capsys.readouterr().out
    path = workspace / "admin.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert set(stored) == {"user", "password_hash", "changed_at"} and stored["user"] == "admin"
    assert stored["password_hash"].startswith("$2b$12$")  # the default cost
    assert bcrypt.checkpw(PASSWORD.encode(), stored["password_hash"].encode())
    assert PASSWORD.encode() not in all_file_bytes(tmp_path)
    assert local_account.check_login(path, "admin", PASSWORD, throttle=local_account.LoginThrottle()).account is not None


def test_the_command_never_takes_the_password_from_its_arguments(workspace, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["admin", "set-password", PASSWORD])
    assert exit_.value.code == 2
    assert not (workspace / "admin.json").exists()


def test_the_command_asks_twice_on_a_terminal(workspace, monkeypatch, capsys, fast_hashes):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    answers = iter([PASSWORD, "something else"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["admin", "set-password"]) == 2
    assert "the two passwords differ" in capsys.readouterr().err
    answers = iter([PASSWORD, PASSWORD])
    assert main(["admin", "set-password"]) == 0
    assert (workspace / "admin.json").exists()


@pytest.mark.parametrize(("password", "problem"), [
    ("", "no password on stdin"),
    ("short", "at least 10 characters"),
    ("é" * 40, "fit in 72 bytes"),
    (" padded password ", "must not start or end with spaces"),
])
def test_an_unusable_password_changes_nothing(workspace, monkeypatch, capsys, password, problem):
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert main(["admin", "set-password"]) == 2
    assert problem in capsys.readouterr().err
    assert not (workspace / "admin.json").exists()


# --- OIDC (st.login) -------------------------------------------------------------------------------------------------

def test_oidc_roles_come_from_the_admin_emails():
    admins = ["alice@example.com"]
    assert roles.oidc_identity({"is_logged_in": True, "email": "Alice@Example.com", "email_verified": True}, admins).is_admin
    assert not roles.oidc_identity({"is_logged_in": True, "email": "bob@example.com"}, admins).is_admin
    assert not roles.oidc_identity({"is_logged_in": False, "email": "alice@example.com"}, admins).is_admin
    assert not roles.oidc_identity({"email": "alice@example.com"}, admins).is_admin
    assert not roles.oidc_identity({"is_logged_in": True, "email": "alice@example.com", "email_verified": False}, admins).is_admin
    assert not roles.oidc_identity({"is_logged_in": True, "name": "Alice"}, admins).is_admin
    assert roles.oidc_identity({"is_logged_in": True, "name": "Alice"}, admins) == roles.Identity("Alice", "oidc", False)


def oidc_app(monkeypatch, user: dict) -> AppTest:
    monkeypatch.setenv("DEPLOYWISE_ADMIN_EMAILS", "alice@example.com, carol@example.com")
    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["auth"] = OIDC_SECRETS
    at.user = user
    return at.run()


def test_with_oidc_an_admin_email_gets_the_admin_pages(workspace, monkeypatch):
    at = oidc_app(monkeypatch, {"is_logged_in": True, "email": "Carol@example.com", "email_verified": True, "name": "Carol"})
    assert not at.exception
    assert at.sidebar.caption[0].value == f"Signed in as {escape_markdown('carol@example.com')} (administrator)"
    assert_admin(at)


def test_with_oidc_other_users_get_the_chat_only(workspace, monkeypatch, admin_password):
    at = oidc_app(monkeypatch, {"is_logged_in": True, "email": "bob@example.com"})
    assert at.title[0].value == "Which model should I deploy?"
    assert at.sidebar.caption[0].value == f"Signed in as {escape_markdown('bob@example.com')}"
    assert_not_an_admin(at)
    at.switch_page(login.LOGIN_PAGE).run()
    assert "who is not an administrator" in texts(at, "info")[0]

    at = oidc_app(monkeypatch, {"is_logged_in": False})
    at.switch_page(login.LOGIN_PAGE).run()
    assert [b.label for b in at.button] == ["Log in with single sign-on"]
    assert not at.text_input  # no local password form: the local account is not used with OIDC
    account = local_account.read_account(load_settings().admin_file)
    at.session_state[login.LOGIN_KEY] = login.LocalLogin(account.user, account.password_hash)
    assert_not_an_admin(at)


def test_named_oidc_providers_each_get_a_button(workspace, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_ADMIN_EMAILS", "alice@example.com")
    at = AppTest.from_file(APP, default_timeout=120)
    shared = {key: OIDC_SECRETS[key] for key in ("redirect_uri", "cookie_secret")}
    provider = {key: OIDC_SECRETS[key] for key in ("client_id", "client_secret", "server_metadata_url")}
    at.secrets["auth"] = {**shared, "google": provider, "okta": provider}
    at.user = {"is_logged_in": False}
    at.run()
    at.switch_page(login.LOGIN_PAGE).run()
    assert [b.label for b in at.button] == ["Log in with google", "Log in with okta"]


def test_admin_emails_are_a_comma_separated_setting(monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_ADMIN_EMAILS", " Alice@Example.com,bob@example.com ,")
    assert load_settings().admin_emails == ["alice@example.com", "bob@example.com"]
    assert load_settings(admin_emails=["carol@example.com"]).admin_emails == ["carol@example.com"]  # secrets.toml: a list
    monkeypatch.setenv("DEPLOYWISE_ADMIN_EMAILS", "alice@example.com,alice")
    with pytest.raises(SettingsError, match="DEPLOYWISE_ADMIN_EMAILS: 1 of the 2 items is not an email"):
        load_settings()
