"""Issue 14, findings 3 and 8: text from documents, MLflow, URLs and errors renders as text, never as Markdown; and the
knowledge that is not public (imported table rows, sources an admin marks internal) is not readable by visitors."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.access import roles
from engine.answering.records import AnswerRecord, save_answer
from engine.core.database import utc_now
from engine.core.markdown import escape_markdown
from engine.core.settings import load_settings
from engine.knowledge import sources
from engine.knowledge.ingest import ingest_files
from engine.knowledge.search import hybrid_search
from engine.knowledge.sources import Source
from engine.knowledge.sql_import import plan_sql_import, run_sql_import
from engine.knowledge.workspace import make_chunker, open_knowledge_base
from tests.rendered_markdown import parse
from ui import knowledge_views, login

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
EVIL_LINK = "[Session expired – log in](https://evil.example)"
ADMIN = roles.Identity("admin", "local", True)
HOSTILE = [
    EVIL_LINK,
    "![pixel](https://evil.example/p.png) <img src=x onerror=alert(1)> <b>bold</b>",
    "# Heading\n\n    indented code\n\n> quote\n- item\n1. item\n| a | b |\n|---|---|",
    "*emphasis* **strong** _under_ ~~struck~~ `code` ```fence```",
    ":material/lock: :red[red text] :blue-background[x] :smile: $E=mc^2$ $$x$$",
    "see https://evil.example, www.evil.example or mail bob@evil.example",
    "[ref]: https://evil.example\n[ref] <https://evil.example> &amp; &#x41;",
    "line one\r\nline two\rline three\n\n\n   \n  line four",
]
SALARY = "Alice Martin salary review: a confidential raise of twelve percent was agreed with her manager."
PLAN = "The reorganisation plan moves the fraud team under risk management next quarter, with two roles cut."


def visible_lines(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


def test_escaped_text_renders_exactly_as_written_and_nothing_else():
    for text in HOSTILE:
        escaped = escape_markdown(text)
        rendered = parse(escaped)
        assert set(rendered.tags) <= {"p", "br"} and not rendered.hrefs and not rendered.linkable, (escaped, rendered.tags)
        assert visible_lines(rendered.visible) == visible_lines(text)
        assert not re.search(r"(?<!\\):", escaped), f"an unescaped colon starts a Streamlit directive or icon: {escaped}"
        assert not re.search(r":[\w+-][\w+-]*:", "".join(rendered.text)), f"an emoji shortcode survives parsing: {escaped}"
        assert not re.search(r"(?<!\\)\$", escaped), f"an unescaped dollar starts math: {escaped}"


# --- the Source page, as a visitor and as an administrator ------------------------------------------------------------

@pytest.fixture
def workspace(demo_copy, monkeypatch, tmp_path) -> Path:
    """The demo workspace plus a table imported from SQL, a `uc:` row, an internal document and a hostile title."""
    workspace = demo_copy()
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    settings = load_settings()
    database = tmp_path / "hr.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE review_notes (note_id INTEGER PRIMARY KEY, note TEXT)")
        connection.executemany("INSERT INTO review_notes VALUES (?, ?)", [(1, SALARY), (2, SALARY.replace("Alice", "Bob"))])
    kb = open_knowledge_base(settings)
    try:
        url = f"sqlite:///{database}"
        assert run_sql_import(kb, make_chunker(settings), url, plan_sql_import(url), 100)[0].added == 2
        files = [("uc-row.md", f"---\nsource_id: uc:main.hr.salaries:alice\n---\n{SALARY}\n".encode()),
                 ("plan.md", f"---\nsource_id: doc:reorg-plan\ntitle: Reorganisation plan\n---\n{PLAN}\n".encode()),
                 ("evil.md", f"---\ntitle: \"{EVIL_LINK}\"\n---\nA document whose title is a link.\n".encode())]
        assert all(outcome.ok for outcome in ingest_files(kb, make_chunker(settings), files))
        sources.upsert_sources(kb.connection, [Source("doc:reorg-plan", "Reorganisation plan", None, "document", True)])
    finally:
        kb.connection.close()
    return workspace


def open_page(page: str, query: dict | None = None, session: dict | None = None) -> AppTest:
    """The app run once through its entry point, then `page` (with `query` in the URL), as a browser opens a link."""
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def open_source(source_id: str) -> AppTest:
    return open_page("pages/source.py", {"id": source_id})


def shown(at: AppTest) -> list[str]:
    """Every string the page shows, whatever the element."""
    kinds = ("title", "subheader", "header", "markdown", "caption", "error", "warning", "info", "success", "text")
    return [element.value for kind in kinds for element in getattr(at, kind)]


def assert_rendered_as_text(at: AppTest) -> None:
    for value in shown(at):
        rendered = parse(value)
        assert "a" not in rendered.tags and "img" not in rendered.tags and not rendered.hrefs, value


def test_a_markdown_laden_id_renders_as_text(workspace, real_access):
    at = open_source(EVIL_LINK)
    assert "does not name a source" in at.error[0].value
    assert_rendered_as_text(at)
    assert EVIL_LINK in parse(at.error[0].value).visible


def test_a_display_name_with_markdown_renders_as_text_on_the_source_page(workspace, real_access):
    at = open_source("doc:evil.md")
    assert parse(at.title[0].value).visible == EVIL_LINK
    assert_rendered_as_text(at)


def as_user(monkeypatch, identity: roles.Identity) -> None:
    """The sessions of the rest of the test belong to `identity`."""
    monkeypatch.setattr(login, "session_identity", lambda: identity)


LOGGED_IN = {"an OIDC user": roles.Identity("bob@example.com", "oidc", False), "the local administrator": ADMIN}


@pytest.mark.parametrize(("source_id", "text"), [("sql:hr.review_notes:1", SALARY), ("uc:main.hr.salaries:alice", SALARY),
                                                 ("doc:reorg-plan", PLAN)])
def test_a_table_row_or_an_internal_document_is_for_logged_in_users_only(workspace, real_access, monkeypatch, source_id, text):
    refused = open_source(source_id)  # a visitor
    assert [parse(title.value).visible for title in refused.title] == ["Source"]
    assert "not public" in refused.info[0].value
    assert not any(word in value for value in shown(refused) for word in ("salary", "reorganisation", "Reorganisation"))
    # the same page as for an id that does not exist: a refusal tells nothing about what is stored
    unknown = open_source(source_id.rsplit(":", 1)[0] + ":never-stored")
    assert shown(unknown) == shown(refused)
    for who, identity in LOGGED_IN.items():
        as_user(monkeypatch, identity)
        at = open_source(source_id)
        assert any(text in element.value for element in at.text) and not at.info, who


def test_only_logged_in_users_list_by_prefix(workspace, real_access, monkeypatch):
    prefixes = {"sql:hr.review_notes": 2, "uc:main.hr.salaries": 1, "sql:hr.review_notes:1": 1}
    for prefix in prefixes:
        at = open_source(prefix)  # a visitor
        assert not at.text and "not public" in at.info[0].value
    as_user(monkeypatch, ADMIN)
    for prefix, count in prefixes.items():
        assert len(open_source(prefix).text) == count, prefix


def test_the_chat_search_keeps_what_is_not_public_from_visitors(workspace, monkeypatch):
    kb = open_knowledge_base(load_settings())
    try:
        question = "confidential salary raise of Alice Martin and the reorganisation plan of the fraud team"
        as_operator = {hit.source_id for hit in hybrid_search(kb, question, k=20)}
        assert {"sql:hr.review_notes:1", "uc:main.hr.salaries:alice", "doc:reorg-plan"} <= as_operator
        monkeypatch.setattr(roles, "_caller_identity", lambda: roles.ANONYMOUS)
        as_visitor = {hit.source_id for hit in hybrid_search(kb, question, k=20)}
        assert as_visitor and not as_visitor & {"sql:hr.review_notes:1", "sql:hr.review_notes:2", "uc:main.hr.salaries:alice",
                                                "doc:reorg-plan"}
        assert not [c for c in kb.chunks(limit=10_000) if c.source_id.startswith(("sql:", "uc:", "doc:reorg-plan"))]
    finally:
        kb.connection.close()


# --- the internal mark: the Sources tab and the CSV --------------------------------------------------------------------

def test_the_internal_mark_is_edited_in_the_registry_table_and_travels_in_the_csv(kb):
    sources.upsert_sources(kb.connection, [Source("doc:guide.pdf", "Guide"), Source("doc:notes", "Notes")])
    previous = sources.list_sources(kb.connection)
    rows = knowledge_views.registry_table(previous).to_dict("records")
    assert [row["internal"] for row in rows] == [False, False]
    rows[0]["internal"] = True
    edited, problems = knowledge_views.registry_rows_to_sources(rows)
    assert not problems
    assert knowledge_views.save_registry(kb.connection, previous, edited).written == 1
    assert sources.resolve(kb.connection, ["doc:guide.pdf"])["doc:guide.pdf"].internal
    assert not sources.is_public(kb.connection, "doc:guide.pdf:page-3")  # everything under an internal source
    assert sources.is_public(kb.connection, "doc:guide")

    exported = sources.export_csv(kb.connection)
    assert "doc:guide.pdf,Guide,,document,true" in exported.splitlines()
    assert sources.parse_csv(exported) == sources.list_sources(kb.connection)
    sources.import_csv(kb.connection, "source_id,display_name\ndoc:guide.pdf,Guide renamed\n")  # a CSV from before the mark
    assert sources.resolve(kb.connection, ["doc:guide.pdf"])["doc:guide.pdf"] == Source("doc:guide.pdf", "Guide renamed", internal=True)
    with pytest.raises(sources.SourceError, match="line 2: internal 'maybe' is not true or false"):
        sources.parse_csv("source_id,display_name,internal\ndoc:notes,Notes,maybe\n")


# --- document titles, model names and MLflow tags on the pages that show them -------------------------------------------

def test_a_document_title_with_markdown_renders_as_text_on_the_knowledge_page(workspace):
    kb = open_knowledge_base(load_settings())
    try:
        document = next(d for d in kb.documents() if d.origin.endswith("evil.md"))
    finally:
        kb.connection.close()
    at = open_page("pages/knowledge.py")
    at.selectbox(key="browse_document").set_value(document.id).run()
    at.text_input(key="search_query").set_value("document whose title is a link").run()
    assert not at.exception, at.exception
    titled = [value for value in shown(at) if "Session expired" in value]
    assert len(titled) >= 2  # the document's delete box and its search hit
    assert_rendered_as_text(at)


def test_mlflow_tags_model_names_and_errors_in_chat_notices_render_as_text(workspace):
    notices = [f"No rules are recorded for {EVIL_LINK}, so nothing is recommended.", ":red[Registry] :material/warning: down"]
    record = AnswerRecord(None, utc_now(), "Which model for tumour screening?", EVIL_LINK, "Nothing is recommended.",
                          "llm", "[adapter v2](https://evil.example)", None, notices=notices)  # use case and version: MLflow's
    kb = open_knowledge_base(load_settings())
    try:
        answer_id = save_answer(kb.connection, record)
    finally:
        kb.connection.close()
    at = open_page("pages/chat.py", session={"chat_answers": [answer_id]})
    captions = [caption.value for caption in at.caption]
    assert any("Session expired" in value for value in captions) and any("adapter v2" in value for value in captions)
    assert_rendered_as_text(at)
    registry = next(value for value in captions if "Registry" in value).replace("\u2060", "")
    assert registry.startswith(":material/info: ")  # the page's own icon; the notice's are text
    assert parse(registry.removeprefix(":material/info: ")).visible == ":red[Registry] :material/warning: down"
    assert "\\:red\\[" in registry and "\\:material\\/warning\\:" in registry
