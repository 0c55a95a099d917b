"""The same table import from a SQLAlchemy URL, run against real SQLite files."""

from __future__ import annotations

import sqlite3

import pytest
from databricks_server import FakeTable, write_sqlite

from engine.knowledge.search import hybrid_search
from engine.knowledge.sql_import import plan_sql_import, run_sql_import
from engine.knowledge.table_rows import TableImportError


@pytest.fixture
def gold_db(tmp_path) -> str:
    """The Unity Catalog test tables in a SQLite file, so both importers see the same data."""
    path = tmp_path / "gold.db"
    write_sqlite(path)
    return f"sqlite:///{path}"


def test_same_detection_as_unity_catalog(gold_db):
    plans = {plan.table: plan for plan in plan_sql_import(gold_db)}
    assert sorted(plans) == ["deployment_reviews", "error_codes", "eval_notes"]
    assert plans["eval_notes"].text_columns == ["note"]
    assert plans["eval_notes"].key_column == "note_id"  # the primary key found by the inspector
    assert plans["deployment_reviews"].text_columns == ["rationale"]
    assert plans["deployment_reviews"].key_column == "review_id"
    assert plans["error_codes"].text_columns == []
    reasons = {choice.name: choice.reason for choice in plans["eval_notes"].detection}
    assert reasons["note_id"] == "BIGINT column, not text"
    assert reasons["reviewer_email"] == "name looks like an identifier (email)"


def test_import_from_sqlite_is_searchable_and_idempotent(gold_db, kb, chunker, snapshot):
    plans = plan_sql_import(gold_db, ["eval_notes", "deployment_reviews"])
    outcomes = run_sql_import(kb, chunker, gold_db, plans, 100)
    assert [(o.table, o.rows_read, o.added, o.errors) for o in outcomes] == [
        ("eval_notes", 3, 3, []),
        ("deployment_reviews", 3, 3, []),
    ]
    assert sorted(d.origin for d in kb.documents())[:3] == [
        "sql:gold.deployment_reviews:rev-2024-001",
        "sql:gold.deployment_reviews:rev-2024-002",
        "sql:gold.deployment_reviews:rev-2024-003",
    ]
    hit = hybrid_search(kb, "recall fell below the acceptance criterion after retraining", k=1)[0]
    assert hit.source_id == "sql:gold.deployment_reviews:rev-2024-002"

    before = snapshot(kb.connection)
    again = run_sql_import(kb, chunker, gold_db, plan_sql_import(gold_db, ["eval_notes", "deployment_reviews"]), 100)
    assert [(o.added, o.updated, o.unchanged) for o in again] == [(0, 0, 3), (0, 0, 3)]
    assert snapshot(kb.connection) == before


def test_awkward_table_names_are_quoted_by_sqlalchemy(tmp_path, kb, chunker):
    path = tmp_path / "team.sqlite"
    body = "Models that touch patient data need a privacy review before any deployment to production."
    write_sqlite(path, [FakeTable('Review "Notes"; --', [("id", "INT"), ("body", "STRING")], [(7, body)])])
    plan, = plan_sql_import(f"sqlite:///{path}")
    assert plan.text_columns == ["body"]
    outcome, = run_sql_import(kb, chunker, f"sqlite:///{path}", [plan], 10)
    assert outcome.added == 1
    assert [d.origin for d in kb.documents()] == ["sql:team.review-notes:7"]


def test_unknown_table_is_refused_and_nothing_is_stored(gold_db, kb, snapshot):
    before = snapshot(kb.connection)
    with pytest.raises(TableImportError, match=r"has no table 'model_cards' \(tables: deployment_reviews, error_codes, eval_notes\)"):
        plan_sql_import(gold_db, ["eval_notes", "model_cards"])
    assert snapshot(kb.connection) == before


def test_table_dropped_after_planning_is_reported_per_table(gold_db, kb, chunker, snapshot):
    plans = plan_sql_import(gold_db, ["eval_notes"])
    connection = sqlite3.connect(gold_db.removeprefix("sqlite:///"))
    connection.execute("DROP TABLE eval_notes")
    connection.close()
    before = snapshot(kb.connection)
    outcome, = run_sql_import(kb, chunker, gold_db, plans, 100)
    assert outcome.errors == [f"reading eval_notes from {gold_db}: no table eval_notes"]
    assert snapshot(kb.connection) == before


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a database URL"),
        ("nosuchdb://user:s3cret@host/db", "SQLAlchemy has no dialect 'nosuchdb'"),
        ("postgresql://user:s3cret@127.0.0.1:1/kb", "postgresql://user:\\*\\*\\*@127.0.0.1:1/kb: the database driver is not installed"),
    ],
)
def test_bad_urls_are_clear_errors_without_the_password(url, message):
    with pytest.raises(TableImportError, match=message) as error:
        plan_sql_import(url)
    assert "s3cret" not in str(error.value)


def test_missing_sqlite_file_is_not_created(tmp_path):
    with pytest.raises(TableImportError, match="no SQLite database file at"):
        plan_sql_import(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()


def test_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "notes.db").write_text("just some text, not SQLite")
    with pytest.raises(TableImportError, match="file is not a database"):
        plan_sql_import(f"sqlite:///{tmp_path / 'notes.db'}")
