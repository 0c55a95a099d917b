"""The Streamlit app driven through AppTest: the real entry point, real engine and models, a temporary workspace."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.access import roles
from engine.core.settings import load_settings
from engine.knowledge import table_import
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.knowledge.sources import Source, list_sources, log_unknown, upsert_sources
from engine.knowledge.workspace import ingest_paths, open_knowledge_base
from engine.registry.candidate_cache import fetch_candidates
from tests.rendered_markdown import parse
from ui import knowledge_views as views

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
KNOWLEDGE_PAGE = "pages/knowledge.py"

FRAUD_GUIDELINE = """---
title: Fraud model acceptance criteria
source_id: guideline:fraud-acceptance
url: https://wiki.example.com/fraud
kind: guideline
---
# Fraud model acceptance criteria

A fraud detection model may be deployed only when its recall on the holdout set is at least 0.90
and its precision is at least 0.75. Latency at the 99th percentile must stay below 50 milliseconds.
"""

CHURN_DECISION = """# Churn model decision 2024

The team chose the gradient boosted churn model over the neural network because it was easier to explain
to the retention managers and its AUC was within one point of the larger model.
"""


@pytest.fixture
def workspace(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


@pytest.fixture
def documents(workspace, tmp_path) -> None:
    """Two small documents ingested through the engine, as the CLI would."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "fraud.md").write_text(FRAUD_GUIDELINE, encoding="utf-8")
    (folder / "churn.md").write_text(CHURN_DECISION, encoding="utf-8")
    outcomes = ingest_paths(load_settings(), [folder])
    assert [o.status for o in outcomes] == ["added", "added"]


@contextmanager
def knowledge_base() -> Iterator[KnowledgeBase]:
    """The test workspace's knowledge base, opened beside the app (as a second session would)."""
    kb = open_knowledge_base(load_settings())
    try:
        yield kb
    finally:
        kb.connection.close()


@dataclass(frozen=True)
class Upload:
    """What the upload handler needs from Streamlit's UploadedFile."""

    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def open_knowledge_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page(KNOWLEDGE_PAGE).run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def seen(element) -> str:
    """What a reader sees of an element's markdown."""
    return parse(element.value).visible


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def text_input(at: AppTest, label: str):
    return next(t for t in at.text_input if t.label == label)


def button_labels(at: AppTest) -> set[str]:
    return {b.label for b in at.button}


def detect_buttons(at: AppTest) -> list:
    """The 'Detect text columns' submit buttons: Unity Catalog first, then SQL."""
    return [b for b in at.button if b.label == "Detect text columns"]


def test_app_starts_on_chat_and_admins_reach_the_knowledge_page(workspace):
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    assert at.title[0].value == "Which model should I deploy?"
    assert not at.chat_input[0].disabled
    at.switch_page(KNOWLEDGE_PAGE).run()  # raises unless the navigation registered the page
    assert not at.exception
    assert metrics(at) == {"Documents": "0", "Chunks": "0", "Tokens": "0", "Sources": "0"}
    assert [tab.label for tab in at.tabs] == ["Upload", "Import tables", "Browse & edit", "Search", "Sources", "Criteria"]


def test_non_admins_get_no_admin_pages(workspace, monkeypatch):
    monkeypatch.setattr(roles, "current_user_is_admin", lambda: False)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    assert not at.page_link
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(KNOWLEDGE_PAGE)


def test_a_bad_setting_shows_one_error_naming_the_key(workspace, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_CHUNK_TOKENS", "abc")
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    assert len(at.error) == 1
    assert "DEPLOYWISE_CHUNK_TOKENS" in seen(at.error[0])
    assert not at.chat_input


def test_every_tab_renders_with_documents(documents):
    at = open_knowledge_page()
    assert metrics(at)["Documents"] == "2"
    assert metrics(at)["Sources"] == "2"
    browse = at.tabs[2]
    chunk_table = browse.dataframe[0].value
    assert set(chunk_table["document"]) == {"Fraud model acceptance criteria", "Churn model decision 2024"}
    assert {"guideline", "doc"} <= set(browse.selectbox(key="browse_domain").options)
    assert len(at.tabs[4].data_editor) == 1
    assert at.tabs[1].text_input[0].label == "Catalog and schema"


def test_uploading_files_ingests_them_and_reports_each_file(workspace, tmp_path):
    at = open_knowledge_page()
    at.file_uploader[0].set_value(
        [("fraud.md", FRAUD_GUIDELINE.encode(), "text/markdown"), ("empty.txt", b"  ", "text/plain")]
    ).run()
    button(at, "Ingest").click().run()
    assert not at.exception
    results = at.tabs[0].dataframe[0].value
    assert list(results["status"]) == ["added", "failed"]
    assert "empty" in results["error"][1]
    assert metrics(at)["Documents"] == "1"
    assert seen(at.success[0]) == "2 files: 1 added, 1 failed"
    assert not at.file_uploader[0].value  # a fresh uploader after ingestion


def test_upload_handler_respects_the_size_limit(settings, kb, chunker):
    calls = []
    outcomes = views.ingest_uploads(
        kb, chunker, [Upload("big.txt", b"x " * 600), Upload("small.txt", b"fine text")], max_bytes=1000,
        on_progress=lambda done, total, message: calls.append((done, total)),
    )
    assert [o.status for o in outcomes] == ["failed", "added"]
    assert "upload limit" in outcomes[0].error
    assert calls[-1] == (2, 2)


def test_search_shows_ranked_results(documents):
    at = open_knowledge_page()
    at.text_input(key="search_query").input("recall threshold for fraud models").run()
    assert not at.exception
    search = at.tabs[3]
    assert seen(search.markdown[0]).startswith("1. Fraud model acceptance criteria")
    assert seen(search.markdown[0]).endswith(" · guideline:fraud-acceptance")
    assert seen(search.caption[0]).startswith("score ")
    assert "holdout set" in search.text[0].value


def test_editing_a_chunk_in_the_page_changes_the_stored_text(documents):
    with knowledge_base() as kb:
        chunk = kb.chunks(contains="gradient boosted")[0]
    at = open_knowledge_page()
    at.selectbox(key="browse_document").set_value(chunk.document_id).run()
    at.text_area(key=f"chunk_text_{chunk.id}").input("The team chose the logistic churn model.").run()
    button(at, "Save chunk").click().run()
    assert not at.exception
    assert seen(at.success[0]) == f"Chunk #{chunk.id} saved and re-indexed."
    with knowledge_base() as kb:
        stored = kb.chunk(chunk.id)
    assert stored.text == "The team chose the logistic churn model."
    assert stored.edited


def test_an_empty_chunk_is_refused_and_nothing_changes(documents, snapshot):
    with knowledge_base() as kb:
        chunk = kb.chunks(contains="gradient boosted")[0]
        before = snapshot(kb.connection)
    at = open_knowledge_page()
    at.selectbox(key="browse_document").set_value(chunk.document_id).run()
    at.text_area(key=f"chunk_text_{chunk.id}").input("   ").run()
    button(at, "Save chunk").click().run()
    assert not at.exception
    assert "cannot be empty" in seen(at.error[0])
    with knowledge_base() as kb:
        assert snapshot(kb.connection) == before


def test_deleting_a_document_needs_confirmation(documents):
    with knowledge_base() as kb:
        churn = next(d for d in kb.documents() if d.title.startswith("Churn"))
    at = open_knowledge_page()
    at.selectbox(key="browse_document").set_value(churn.id).run()
    assert button(at, "Delete document").disabled
    at.checkbox(key=f"confirm_delete_{churn.id}").check().run()
    button(at, "Delete document").click().run()
    assert not at.exception
    assert metrics(at)["Documents"] == "1"


def test_registry_save_with_a_bad_url_changes_nothing(documents):
    at = open_knowledge_page()
    at.session_state["sources_editor"] = {
        "edited_rows": {0: {"url": "ftp://files.example.com/churn"}},
        "added_rows": [{"source_id": "dataset:churn", "display_name": "Churn table", "kind": "dataset"}],
        "deleted_rows": [1],
    }
    with knowledge_base() as kb:
        before = list_sources(kb.connection)
    button(at, "Save registry").click().run()
    assert not at.exception
    assert "Nothing was saved" in seen(at.error[0])
    assert "row 1" in seen(at.error[0]) and "ftp://files.example.com/churn" in seen(at.error[0])
    with knowledge_base() as kb:
        assert list_sources(kb.connection) == before


def test_registry_save_adds_edits_and_deletes_rows(documents):
    at = open_knowledge_page()
    at.session_state["sources_editor"] = {
        "edited_rows": {0: {"url": "https://wiki.example.com/churn"}},
        "added_rows": [{"source_id": "dataset:churn", "display_name": "Churn table", "kind": "dataset"}],
        "deleted_rows": [1],
    }
    button(at, "Save registry").click().run()
    assert not at.exception
    assert seen(at.success[0]) == "Registry saved: 2 written, 1 deleted."
    with knowledge_base() as kb:
        assert list_sources(kb.connection) == [
            Source("dataset:churn", "Churn table", None, "dataset"),
            Source("doc:churn.md", "Churn model decision 2024", "https://wiki.example.com/churn", "document"),
        ]


def test_a_bad_registry_csv_names_its_lines_and_changes_nothing(documents):
    at = open_knowledge_page()
    bad = b"source_id,display_name,url,kind\nguideline:new,New,https://x.example.com,guideline\nBad Id,Broken,,document\n"
    at.file_uploader(key="sources_csv").set_value(("sources.csv", bad, "text/csv")).run()
    button(at, "Import CSV").click().run()
    assert not at.exception
    assert "line 3" in seen(at.error[0]) and "unchanged" in seen(at.error[0])
    assert metrics(at)["Sources"] == "2"


def test_an_unknown_source_id_can_be_added_from_its_log(documents):
    with knowledge_base() as kb:
        log_unknown(kb.connection, ["incident:2024-03-outage"], context="cited in an answer")
    at = open_knowledge_page()
    registry = at.tabs[4]
    assert registry.dataframe[-1].value["source_id"][0] == "incident:2024-03-outage"
    registry.text_input(key="unknown_display_name").input("March 2024 outage")
    button(at, "Add to registry").click().run()
    assert not at.exception
    assert seen(at.success[0]) == "incident:2024-03-outage added to the registry."
    assert metrics(at)["Sources"] == "3"


def test_unity_catalog_detection_without_a_warehouse_is_refused(workspace):
    at = open_knowledge_page()
    text_input(at, "Catalog and schema").input("main.ml_knowledge")
    detect_buttons(at)[0].click().run()
    assert not at.exception
    assert "DEPLOYWISE_DATABRICKS_WAREHOUSE_ID" in seen(at.error[0])
    assert metrics(at)["Documents"] == "0"


def test_table_import_detects_lets_the_admin_override_and_imports(workspace, databricks):
    """The two-step flow against the local Databricks API server, through the real SDK."""
    at = open_knowledge_page()
    text_input(at, "Catalog and schema").input("main.gold")
    text_input(at, "SQL warehouse id").input("wh-1")
    text_input(at, "Tables (optional)").input("eval_notes")
    detect_buttons(at)[0].click().run()
    assert not at.exception and not at.error
    detection = at.tabs[1].dataframe[0].value
    detected = dict(zip(detection["column"], detection["text"]))
    assert detected["note"] and not detected["note_id"] and not detected["reviewer_email"]
    choice = next(m for m in at.multiselect if parse(m.label).visible == "Text columns of main.gold.eval_notes")
    assert "note" in choice.value
    choice.set_value(["note", "model_name"]).run()
    button(at, "Import").click().run()
    assert not at.exception and not at.error
    assert seen(at.success[0]).startswith("1 table: ")
    assert at.tabs[1].dataframe[-1].value["table"][0] == "main.gold.eval_notes"
    assert not any(m.label.startswith("Text columns of") for m in at.multiselect)  # plans are cleared after the import
    kb = open_knowledge_base(load_settings())
    try:
        chunk = kb.chunks(source_domain="uc")[0]
        assert chunk.source_id.startswith("uc:main.gold.eval_notes:")
        assert "model_name:" in chunk.text and "reviewer_email" not in chunk.text
    finally:
        kb.connection.close()


def test_unconfigured_databricks_is_reported_and_nothing_is_imported(workspace, monkeypatch, tmp_path):
    for variable in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    at = open_knowledge_page()
    text_input(at, "Catalog and schema").input("main.ml")
    text_input(at, "SQL warehouse id").input("wh-1")
    detect_buttons(at)[0].click().run()
    assert not at.exception
    assert "Databricks is not configured" in seen(at.error[0])
    assert seen(at.error[0]).endswith("Nothing was imported.")
    assert "Import" not in button_labels(at)
    assert metrics(at)["Documents"] == "0"


def test_sql_tables_are_detected_overridden_and_imported(workspace, tmp_path):
    database = tmp_path / "decisions.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, title TEXT, rationale TEXT, score REAL)")
        connection.executemany(
            "INSERT INTO decisions VALUES (?, ?, ?, ?)",
            [(i, f"Decision {i}", f"We deployed model {i} because its recall met the fraud criteria.", 0.9) for i in range(5)],
        )
    at = open_knowledge_page()
    text_input(at, "SQLAlchemy URL").input(f"sqlite:///{database}")
    detect_buttons(at)[1].click().run()
    assert not at.exception and not at.error
    choice = next(m for m in at.multiselect if m.label.startswith("Text columns of") and m.label.endswith("decisions"))
    assert "rationale" in choice.value
    choice.set_value(["rationale"]).run()
    button(at, "Import").click().run()
    assert not at.exception
    assert seen(at.success[0]).startswith("1 table: 5 rows read")
    assert metrics(at)["Documents"] != "0"


def test_a_bad_sql_url_shows_an_error_and_imports_nothing(workspace):
    at = open_knowledge_page()
    text_input(at, "SQLAlchemy URL").input("not a url")
    detect_buttons(at)[1].click().run()
    assert not at.exception
    assert "Nothing was imported" in seen(at.error[0])
    assert metrics(at)["Documents"] == "0"


def test_registry_rows_are_validated_before_anything_is_stored():
    rows = [
        {"source_id": "guideline:a", "display_name": "A", "url": float("nan"), "kind": None},
        {"source_id": None, "display_name": None, "url": None, "kind": None},  # a blank added row
        {"source_id": "guideline:a", "display_name": "Again", "url": "", "kind": "guideline"},
        {"source_id": "doc:b", "display_name": " ", "url": "", "kind": "document"},
    ]
    sources, problems = views.registry_rows_to_sources(rows)
    assert sources[0] == Source("guideline:a", "A", None, "document")
    assert problems == ["row 3: source id guideline:a appears twice", "row 4: source doc:b: display name is empty"]


def test_saving_the_registry_writes_only_changes(kb):
    upsert_sources(kb.connection, [Source("doc:a", "A"), Source("doc:b", "B"), Source("doc:c", "C")])
    previous = list_sources(kb.connection)
    change = views.save_registry(kb.connection, previous, [Source("doc:a", "A"), Source("doc:b", "B2"), Source("doc:d", "D")])
    assert change == views.RegistryChange(written=2, deleted=1)
    assert [s.display_name for s in list_sources(kb.connection)] == ["A", "B2", "D"]


def test_chunk_pages_say_whether_more_follow(settings, kb, chunker):
    text = "\n\n".join(f"Paragraph {i} about model deployment and recall. " * 40 for i in range(6))
    views.ingest_uploads(kb, chunker, [Upload("long.txt", text.encode())], 10**6)
    total = len(kb.chunks())
    assert total > 2
    first, more = views.chunk_page(kb, document_id=None, source_domain=None, contains="", page=1, page_size=total - 1)
    last, after = views.chunk_page(kb, document_id=None, source_domain=None, contains="", page=2, page_size=total - 1)
    assert (len(first), more, len(last), after) == (total - 1, True, 1, False)


def test_a_unity_catalog_form_needs_catalog_and_schema():
    with pytest.raises(ValueError, match="is not catalog.schema"):
        table_import.table_source("unity_catalog", "just_a_catalog", "", "wh-1")
    source = table_import.table_source("unity_catalog", " main.docs ", "a, b\nc", "wh-1")
    assert source == table_import.TableSource("unity_catalog", "main.docs", ("a", "b", "c"), "wh-1")


def table_with(at: AppTest, column: str) -> list[dict]:
    """The rows of the one dataframe on the page that has this column."""
    [table] = [d.value for d in at.dataframe if column in d.value.columns]
    return table.to_dict("records")


def open_criteria_tab(use_case: str) -> AppTest:
    at = open_knowledge_page()
    next(s for s in at.selectbox if s.label == "Use case").select(use_case).run()
    assert not at.exception
    return at


def test_an_admin_reviews_the_ranking_policy_and_the_chat_decides_with_it(demo_copy, monkeypatch):
    from engine.answering.pipeline import prepare_answer
    from engine.rules.criteria import reviewed_rules

    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_copy()))
    at = open_criteria_tab("tumor-screening")
    captions = " ".join(seen(c) for c in at.caption)
    assert "not reviewed yet" in captions and "Acceptance criteria — breast tumour screening (front matter)" in captions
    sentences = {row["sentence"] for row in table_with(at, "rule")}
    assert any("written justification" in sentence for sentence in sentences)  # each rule beside its sentence
    assert text_input(at, "Priority metric").value == "roc_auc"
    assert text_input(at, "Near-best margin").value == "0.005"
    text_input(at, "Priority metric").set_value("f1")
    button(at, "Save as reviewed").click().run()
    assert not at.exception and not at.error
    with knowledge_base() as kb:
        _, policy, reviewer = reviewed_rules(kb.connection, "tumor-screening")
        assert (policy.priority_metric, policy.tie_breaker, policy.near_best_margin, reviewer) == (
        "f1", "latency_p95_ms", 0.005, "test-admin")
        assert policy.family_order == ("linear", "gradient-boosting", "random-forest", "mlp")
        decision = prepare_answer(load_settings(), kb, "Which model should I deploy for tumour screening?").decision
    assert decision.priority_metric == "f1"
    assert "Reviewed by test-admin" in " ".join(seen(c) for c in at.caption)
    button(at, "Give back to the documents").click().run()
    with knowledge_base() as kb:
        assert reviewed_rules(kb.connection, "tumor-screening")[2] is None
        decision = prepare_answer(load_settings(), kb, "Which model should I deploy for tumour screening?").decision
    assert decision.priority_metric == "roc_auc"


def test_the_criteria_tab_says_which_documents_govern_nothing_and_an_admin_assigns_one(demo_copy, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_copy()))
    with knowledge_base() as kb:
        from engine.knowledge.ingest import ingest_files
        from engine.knowledge.workspace import make_chunker

        [outcome] = ingest_files(kb, make_chunker(load_settings()),
                                 [("notes.md", b"# Team notes\n\nLatency must stay below 2 ms. Pick the highest F1.\n")])
        assert outcome.ok
    at = open_criteria_tab("tumor-screening")
    governance = {row["document"]: row for row in table_with(at, "governs")}
    assert governance["Team notes"]["governs"] == "no use case: contributes no rule"
    documents = next(s for s in at.selectbox if s.label == "Document")
    documents.select(next(option for option in documents.options if "Team notes" in option))
    next(s for s in at.selectbox if s.label == "Governs").select("tumor-screening")
    button(at, "Save assignment").click().run()
    assert not at.exception
    governance = {row["document"]: row for row in table_with(at, "governs")}
    assert governance["Team notes"]["governs"] == "tumor-screening" and governance["Team notes"]["because"] == "chosen by an admin"
    assert any("disagree" in seen(w) for w in at.warning)  # its 2 ms latency rule contradicts the criteria document


def test_the_criteria_tab_shows_a_requirement_it_could_not_read(demo_copy, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_copy()))
    with knowledge_base() as kb:
        from engine.knowledge.ingest import ingest_files
        from engine.knowledge.workspace import make_chunker

        [outcome] = ingest_files(kb, make_chunker(load_settings()), [(
            "screening-ops.md", b"# Tumour screening: operations\n\nThe screening service must keep the queue at most 3 deep.\n")])
        assert outcome.ok
    at = open_criteria_tab("tumor-screening")
    assert any("queue at most 3 deep" in seen(w) and "could be read" in seen(w) for w in at.warning)
    states = {row["sentence"]: row["state"] for row in table_with(at, "rule")}
    assert states["The screening service must keep the queue at most 3 deep."].startswith("not read")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"threshold": "fast"}, "row 2: threshold 'fast' is not a number"),
        ({"comparison": "=="}, "row 2: criterion tumor-screening/f1: comparison '==' is not one of"),
        ({"metric": ""}, "row 2: criterion tumor-screening/?: use case and metric are required"),
        ({"source_id": "no-domain"}, "row 2: criterion tumor-screening/f1: source id 'no-domain' is not 'domain:entity'"),
    ],
)
def test_a_malformed_editor_row_is_named_and_nothing_is_saved(demo_copy, monkeypatch, row, message):
    from engine.rules.criteria import CriteriaError, reviewed_rules
    from engine.rules.rulebook import rulebook

    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_copy()))
    with knowledge_base() as kb:
        candidates = fetch_candidates(load_settings()).for_use_case("tumor-screening")
        rules = rulebook(kb.connection, "tumor-screening", candidates)
        rows = views.criteria_table(rules.criteria).to_dict("records")
        rows[1] = {**rows[1], "metric": "f1", **row}
        with pytest.raises(CriteriaError) as raised:
            views.rules_from_editor("tumor-screening", rows, views.PolicyFields.of(rules.policy))
        assert str(raised.value).startswith(message)
        assert reviewed_rules(kb.connection, "tumor-screening") == ([], None, None)
