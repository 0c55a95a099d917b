"""Issue 14, finding 6: no silent data loss when two processes open, migrate or fill the same knowledge base at
once, when a table import fails midway or rows are deleted at the source, and when an admin edits a registry entry.

The races run in real processes started with `spawn`, held at a barrier so that they collide on every round."""

from __future__ import annotations

import multiprocessing
import sqlite3
import traceback
from dataclasses import replace

import pytest

from engine.core import database
from engine.core.settings import load_settings
from engine.knowledge import sources
from engine.knowledge.chunking import Chunker
from engine.knowledge.ingest import ingest_files
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.knowledge.sources import Source
from engine.knowledge.sql_import import plan_sql_import, run_sql_import
from engine.knowledge.table_rows import TableColumn, import_tables, make_plan
from engine.llm.bundled import load_tokenizer

ROUNDS = 25
DOCUMENTS = 6


def _run_workers(target, args_of, count: int = 2, timeout: float = 300) -> list:
    """Run `count` spawned workers sharing a barrier; each puts ("ok", result) or ("error", traceback) on a queue."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(count), context.Queue()
    workers = [context.Process(target=target, args=(barrier, results, *args_of(number))) for number in range(count)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=timeout) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    return outcomes


def _migrate_worker(barrier, results, folder: str) -> None:
    try:
        versions = []
        for number in range(ROUNDS):
            barrier.wait(timeout=120)
            connection = database.connect(f"{folder}/round-{number}.sqlite")
            versions.append(database.schema_version(connection))
            connection.close()
        results.put(("ok", versions))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        barrier.abort()


def test_two_processes_migrate_a_fresh_database_at_once(tmp_path):
    outcomes = _run_workers(_migrate_worker, lambda number: (str(tmp_path),))
    assert [state for state, _ in outcomes] == ["ok", "ok"], "\n".join(str(result) for _, result in outcomes)
    assert all(versions == [len(database.MIGRATIONS)] * ROUNDS for _, versions in outcomes)
    for number in range(ROUNDS):
        connection = database.connect(tmp_path / f"round-{number}.sqlite")
        assert connection.execute("SELECT count(*) FROM index_state").fetchone()[0] == 1  # migration 2 ran once
        connection.close()


def _document(number: int) -> bytes:
    return f"# Guideline {number}\n\nModels for use case {number} need a recall of at least 0.{number + 10}.\n".encode()


def _ingest_worker(barrier, results, workspace: str, prefix: str) -> None:
    try:
        settings = load_settings(workspace=workspace)
        kb = KnowledgeBase.open(settings)
        chunker = Chunker(load_tokenizer(settings.base_model), settings.chunk_tokens, settings.chunk_overlap)
        files = [(f"{prefix}-{number}.md", _document(number)) for number in range(DOCUMENTS)]
        # both processes start every file together: each checks the content is new before the other stores it
        outcomes = ingest_files(kb, chunker, files, on_progress=lambda done, total, message: barrier.wait(timeout=300))
        results.put(("ok", [(outcome.status, outcome.error) for outcome in outcomes]))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        barrier.abort()


def test_two_processes_ingest_the_same_content_at_once(settings, kb):
    outcomes = _run_workers(_ingest_worker, lambda number: (str(settings.workspace), f"copy{number}"))
    assert [state for state, _ in outcomes] == ["ok", "ok"], "\n".join(str(result) for _, result in outcomes)
    statuses = [status for _, result in outcomes for status, _ in result]
    assert sorted(set(statuses)) == ["added", "unchanged"] and statuses.count("added") == DOCUMENTS
    documents = kb.documents()
    assert len(documents) == DOCUMENTS and len({document.sha256 for document in documents}) == DOCUMENTS  # every file, once
    chunks = kb.connection.execute("SELECT count(*), count(DISTINCT text) FROM chunks").fetchone()
    assert tuple(chunks) == (DOCUMENTS, DOCUMENTS)  # one chunk per document, none twice
    assert kb.connection.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0] == DOCUMENTS


NOTES = [TableColumn("id", "INT"), TableColumn("body", "STRING")]


def _notes(*bodies: tuple[int, str]) -> list[dict]:
    return [{"id": key, "body": body} for key, body in bodies]


def test_a_table_import_failing_midway_leaves_the_previous_import(kb, chunker, snapshot):
    plan = replace(make_plan("notes", NOTES, ["id"], []), text_columns=["body"])
    first = _notes((1, "Shadow traffic showed no drift for six weeks."), (2, "Rollback within one hour when recall drops."),
                   (3, "Privacy review before any deployment to production."))
    outcome, = import_tables(kb, chunker, [plan], lambda plan, limit: first, lambda plan: "sql:kb.notes", 10)
    assert outcome.added == 3
    before = snapshot(kb.connection)
    second = _notes((1, "Shadow traffic showed drift after two weeks."), (2, "Rollback within ten minutes now."),
                    (3, "Privacy and security review before deployment."), (4, "A new note about latency budgets."))
    # the third row's write fails, as a full disk would, after two rows of the new import were written
    kb.connection.execute("""CREATE TEMP TRIGGER failing_write BEFORE INSERT ON documents WHEN new.origin = 'sql:kb.notes:3'
                             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END""")
    outcome, = import_tables(kb, chunker, [plan], lambda plan, limit: second, lambda plan: "sql:kb.notes", 10)
    assert (outcome.added, outcome.updated, outcome.failed) == (0, 0, 4)
    assert outcome.errors == ["nothing of notes was changed: database or disk is full"]
    assert snapshot(kb.connection) == before
    kb.connection.execute("DROP TRIGGER failing_write")
    outcome, = import_tables(kb, chunker, [plan], lambda plan, limit: second, lambda plan: "sql:kb.notes", 10)
    assert (outcome.added, outcome.updated, outcome.removed, outcome.errors) == (1, 3, 0, [])


def test_a_re_import_drops_the_rows_deleted_at_the_source(tmp_path, kb, chunker):
    path = tmp_path / "team.db"
    source = sqlite3.connect(path)
    source.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    source.executemany("INSERT INTO notes VALUES (?, ?)", [
        (1, "Shadow traffic showed no drift for six weeks, so the model was promoted to production."),
        (2, "Rollback is required within one hour when recall drops below the acceptance threshold."),
        (3, "Models that touch patient data need a privacy review before any deployment."),
    ])
    source.commit()
    url = f"sqlite:///{path}"
    outcome, = run_sql_import(kb, chunker, url, plan_sql_import(url), 100)
    assert (outcome.added, outcome.removed) == (3, 0)
    kb.register_sources([Source("sql:team.notes:3", "Privacy note (named by an admin)", None, "table-row")])

    source.execute("DELETE FROM notes WHERE id IN (2, 3)")
    source.commit()
    source.close()
    outcome, = run_sql_import(kb, chunker, url, plan_sql_import(url), 100)
    assert (outcome.rows_read, outcome.unchanged, outcome.removed, outcome.errors) == (1, 1, 2, [])
    assert [document.origin for document in kb.documents()] == ["sql:team.notes:1"]
    assert {chunk.source_id for chunk in kb.chunks()} == {"sql:team.notes:1"}
    assert kb.connection.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0] == 1
    # the generated registry entry of a deleted row goes with it; the one an admin wrote stays theirs
    assert [entry.source_id for entry in sources.list_sources(kb.connection)] == ["sql:team.notes:1", "sql:team.notes:3"]


def test_a_read_cut_at_the_row_limit_removes_nothing(kb, chunker):
    plan = replace(make_plan("notes", NOTES, ["id"], []), text_columns=["body"])
    rows = _notes((1, "Shadow traffic showed no drift."), (2, "Rollback within one hour."), (3, "Privacy review first."))
    import_tables(kb, chunker, [plan], lambda plan, limit: rows[:limit], lambda plan: "sql:kb.notes", 10)
    outcome, = import_tables(kb, chunker, [plan], lambda plan, limit: rows[:limit], lambda plan: "sql:kb.notes", 2)
    assert (outcome.rows_read, outcome.unchanged, outcome.removed) == (2, 2, 0)
    assert "rows deleted at the source were kept" in outcome.errors[0]
    assert len(kb.documents()) == 3


def test_an_admins_edit_of_a_registry_entry_survives_the_refresh(kb):
    generated = [Source("registry:fraud-xgb", "fraud-xgb v1", "https://mlflow.example/models/fraud-xgb/1", "model"),
                 Source("registry:fraud-lr", "fraud-lr v3", None, "model")]
    assert sources.refresh_sources(kb.connection, generated) == 2
    edited = Source("registry:fraud-xgb", "Fraud champion (XGBoost)", "https://wiki.example/fraud-champion", "model")
    assert sources.replace_sources(kb.connection, [edited], []) == (1, 0)

    promoted = [Source("registry:fraud-xgb", "fraud-xgb v2", "https://mlflow.example/models/fraud-xgb/2", "model"),
                Source("registry:fraud-lr", "fraud-lr v4", None, "model"),
                Source("registry:fraud-rf", "fraud-rf v1", None, "model")]
    assert sources.refresh_sources(kb.connection, promoted) == 2  # the generated entry is updated, the new one added
    assert sources.resolve(kb.connection, [s.source_id for s in promoted]) == {
        "registry:fraud-xgb": edited, "registry:fraud-lr": promoted[1], "registry:fraud-rf": promoted[2],
    }
    changes = kb.connection.total_changes
    assert sources.refresh_sources(kb.connection, promoted) == 0 and kb.connection.total_changes == changes

    internal = Source("registry:fraud-lr", "fraud-lr (internal)", None, "model", internal=True)
    sources.replace_sources(kb.connection, [internal], [])  # an admin's internal mark is an edit: the refresh keeps it
    assert sources.refresh_sources(kb.connection, promoted) == 0
    assert sources.resolve(kb.connection, ["registry:fraud-lr"])["registry:fraud-lr"] == internal

    sources.replace_sources(kb.connection, [], ["registry:fraud-xgb"])  # deleting the entry hands it back
    assert sources.refresh_sources(kb.connection, promoted) == 1
    assert sources.resolve(kb.connection, ["registry:fraud-xgb"])["registry:fraud-xgb"] == promoted[0]


@pytest.mark.parametrize("edit", ["form", "csv"])
def test_every_admin_path_marks_the_entry_as_edited(kb, edit):
    sources.refresh_sources(kb.connection, [Source("registry:m", "m v1", None, "model")])
    if edit == "form":
        kb.register_sources([Source("registry:m", "Main model", None, "model")])
    else:
        sources.import_csv(kb.connection, "source_id,display_name,url,kind\nregistry:m,Main model,,model\n")
    sources.refresh_sources(kb.connection, [Source("registry:m", "m v2", None, "model")])
    assert sources.resolve(kb.connection, ["registry:m"])["registry:m"].display_name == "Main model"
