"""Unity Catalog import through the real databricks-sdk against a local fake of the REST endpoints it calls."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.knowledge.search import hybrid_search
from engine.knowledge.sources import SOURCE_ID_PATTERN
from engine.knowledge.table_rows import TableImportError
from engine.knowledge.unity_catalog import plan_uc_import, query_rows, quote, run_uc_import, workspace_client

WAREHOUSE = "wh-1"


@pytest.fixture
def client(databricks):
    return workspace_client()


def plans_by_name(plans) -> dict:
    return {plan.table.rsplit(".", 1)[1]: plan for plan in plans}


def test_plan_detects_text_columns_and_keys(databricks, client):
    plans = plans_by_name(plan_uc_import(client, "main.gold", None, WAREHOUSE))
    assert sorted(plans) == ["deployment_reviews", "error_codes", "eval_notes"]
    notes = plans["eval_notes"]
    assert notes.table == "main.gold.eval_notes"
    assert notes.text_columns == ["note"]
    assert notes.key_column == "note_id"  # the primary key from tables.get
    assert notes.sample[0]["note_id"] == 1 and notes.sample[0]["accuracy"] == 0.942  # cast from the manifest types
    reasons = {choice.name: choice.reason for choice in notes.detection}
    assert reasons["reviewer_email"] == "name looks like an identifier (email)"
    assert reasons["note"].endswith("natural language")
    assert plans["deployment_reviews"].text_columns == ["rationale"]
    assert plans["deployment_reviews"].key_column == "review_id"
    assert plans["error_codes"].text_columns == []
    assert all(statement.startswith("SELECT * FROM `main`.`gold`.`") for statement in databricks.statements)


def test_import_creates_one_searchable_document_per_row_and_reimport_changes_nothing(databricks, client, kb, chunker, snapshot):
    plans = plan_uc_import(client, "main.gold", None, WAREHOUSE)
    progress = []
    outcomes = run_uc_import(kb, chunker, client, plans, WAREHOUSE, 100, lambda *args: progress.append(args))
    summary = {o.table: (o.rows_read, o.added, o.failed, o.errors) for o in outcomes}
    assert summary == {
        "main.gold.deployment_reviews": (3, 3, 0, []),
        "main.gold.error_codes": (0, 0, 0, []),
        "main.gold.eval_notes": (3, 3, 0, []),
    }
    origins = sorted(d.origin for d in kb.documents())
    assert origins == [
        "uc:main.gold.deployment_reviews:rev-2024-001",
        "uc:main.gold.deployment_reviews:rev-2024-002",
        "uc:main.gold.deployment_reviews:rev-2024-003",
        "uc:main.gold.eval_notes:1",
        "uc:main.gold.eval_notes:2",
        "uc:main.gold.eval_notes:3",
    ]
    assert all(SOURCE_ID_PATTERN.match(origin) for origin in origins)
    assert any("no text columns chosen" in message for *_, message in progress)
    assert progress[-1] == (3, 3, "Done")
    read = [s for s in databricks.statements if "ORDER BY" in s]
    assert "SELECT `review_id`, `rationale` FROM `main`.`gold`.`deployment_reviews` ORDER BY `review_id` LIMIT 100" in read

    hit = hybrid_search(kb, "inference latency too slow for real-time field analysis", k=1)[0]
    assert hit.source_id == "uc:main.gold.eval_notes:2"
    assert hit.document_title == "main.gold.eval_notes · 2"
    assert hit.text.startswith("note: The neural network")

    before = snapshot(kb.connection)
    again = run_uc_import(kb, chunker, client, plan_uc_import(client, "main.gold", None, WAREHOUSE), WAREHOUSE, 100)
    assert [(o.added, o.updated) for o in again] == [(0, 0)] * 3
    assert sum(o.unchanged for o in again) == 6
    assert snapshot(kb.connection) == before


def test_user_override_of_text_columns(databricks, client, kb, chunker):
    plan, = plan_uc_import(client, "main.gold", ["deployment_reviews"], WAREHOUSE)
    chosen = replace(plan, text_columns=["decision", "rationale"])
    outcome, = run_uc_import(kb, chunker, client, [chosen], WAREHOUSE, 2)
    assert (outcome.rows_read, outcome.added) == (2, 2)  # the row limit holds
    texts = [c.text for c in kb.chunks(source_domain="uc")]
    assert texts[0].startswith("decision: approved\n\nrationale: Approved for production")
    with pytest.raises(TableImportError, match="has no column 'verdict'"):
        replace(plan, text_columns=["verdict"])


def test_multi_chunk_results_and_pending_statements_are_followed(databricks, client, kb, chunker):
    databricks.chunk_rows = 1
    databricks.pending_polls = 1
    plan, = plan_uc_import(client, "main.gold", ["eval_notes"], WAREHOUSE)
    assert [row["note_id"] for row in plan.sample] == [1, 2, 3]
    outcome, = run_uc_import(kb, chunker, client, [plan], WAREHOUSE, 100)
    assert (outcome.rows_read, outcome.added) == (3, 3)
    assert databricks.executed("chunk") == 4  # chunks 1 and 2 of each of the two statements
    assert databricks.executed("poll") == 4  # RUNNING, then SUCCEEDED, for each statement


def test_a_statement_that_never_finishes_is_cancelled(databricks, client):
    databricks.pending_polls = 1000
    with pytest.raises(TableImportError, match="did not finish within 0 s"):
        query_rows(client, WAREHOUSE, "SELECT * FROM `main`.`gold`.`eval_notes`", "eval_notes", timeout_s=0.05)
    assert databricks.requests[-1] == ("POST", "/api/2.0/sql/statements/stmt-1/cancel")


def test_empty_result_gives_no_rows(databricks, client):
    assert query_rows(client, WAREHOUSE, "SELECT * FROM `main`.`gold`.`eval_notes` WHERE note_id < 0", "eval_notes") == []


def test_failed_statement_is_a_clear_error_and_stores_nothing(databricks, client, kb, chunker, snapshot):
    plans = plan_uc_import(client, "main.gold", ["eval_notes", "deployment_reviews"], WAREHOUSE)
    denied = "[INSUFFICIENT_PERMISSIONS] User does not have SELECT on Table 'main.gold.deployment_reviews'."
    databricks.failures["deployment_reviews"] = denied
    databricks.failures["eval_notes"] = "[TABLE_OR_VIEW_NOT_FOUND] The table cannot be found."
    before = snapshot(kb.connection)
    outcomes = run_uc_import(kb, chunker, client, plans, WAREHOUSE, 100)
    assert [o.errors for o in outcomes] == [
        ["reading main.gold.eval_notes: the statement FAILED: [TABLE_OR_VIEW_NOT_FOUND] The table cannot be found."],
        [f"reading main.gold.deployment_reviews: the statement FAILED: {denied}"],
    ]
    assert snapshot(kb.connection) == before
    with pytest.raises(TableImportError, match="INSUFFICIENT_PERMISSIONS"):
        plan_uc_import(client, "main.gold", ["deployment_reviews"], WAREHOUSE)


@pytest.mark.parametrize("tables", [["eval_notes", "model_cards"], ["x`; DROP TABLE eval_notes; --"]])
def test_unknown_or_malicious_table_names_are_refused_before_any_statement(databricks, client, tables):
    with pytest.raises(TableImportError, match=r"main\.gold has no table .*\(tables: deployment_reviews, error_codes, eval_notes\)"):
        plan_uc_import(client, "main.gold", tables, WAREHOUSE)
    assert databricks.statements == []


def test_identifiers_are_backtick_quoted():
    assert quote("eval_notes") == "`eval_notes`"
    assert quote("x`; DROP TABLE y; --") == "`x``; DROP TABLE y; --`"


@pytest.mark.parametrize("schema_ref", ["main", "main.gold.eval_notes", "main.gold; DROP TABLE x", "", "main.`gold`"])
def test_schema_reference_must_be_catalog_dot_schema(databricks, client, schema_ref):
    with pytest.raises(TableImportError, match="is not CATALOG.SCHEMA"):
        plan_uc_import(client, schema_ref, None, WAREHOUSE)
    assert databricks.executed("list") == 0


def test_unknown_schema_and_warehouse_are_clear_errors(databricks, client):
    with pytest.raises(TableImportError, match="Schema 'main.silver' does not exist"):
        plan_uc_import(client, "main.silver", None, WAREHOUSE)
    with pytest.raises(TableImportError, match="SQL warehouse wh-404 does not exist"):
        plan_uc_import(client, "main.gold", None, "wh-404")
    with pytest.raises(TableImportError, match="DEPLOYWISE_DATABRICKS_WAREHOUSE_ID"):
        plan_uc_import(client, "main.gold", None, "")


def test_wrong_token_is_a_clear_auth_error(databricks, monkeypatch, kb, chunker, snapshot):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-wrong")
    before = snapshot(kb.connection)
    refused = r"Databricks refused access \(Invalid access token\..*check DATABRICKS_HOST and DATABRICKS_TOKEN"
    with pytest.raises(TableImportError, match=refused) as error:
        plan_uc_import(workspace_client(), "main.gold", None, WAREHOUSE)
    assert "dapi-wrong" not in str(error.value)
    assert snapshot(kb.connection) == before


def test_missing_configuration_names_the_variables(databricks, monkeypatch):
    monkeypatch.delenv("DATABRICKS_HOST")
    monkeypatch.delenv("DATABRICKS_TOKEN")
    with pytest.raises(TableImportError, match="Databricks is not configured .*DATABRICKS_HOST and DATABRICKS_TOKEN"):
        workspace_client()

