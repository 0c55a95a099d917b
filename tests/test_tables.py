"""Text-column detection, keys and row documents shared by both table importers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.knowledge.sources import SOURCE_ID_PATTERN
from engine.knowledge.table_rows import (
    TableColumn,
    TableImportError,
    choose_key_column,
    detect_text_columns,
    import_tables,
    make_plan,
    row_document,
)

GUIDELINE_COLUMNS = [TableColumn("topic", "STRING"), TableColumn("guidance", "STRING"), TableColumn("owner_url", "STRING")]
GUIDELINES = [
    {"topic": "latency", "guidance": "Interactive scoring must answer within 100 ms at the 95th percentile under peak load.",
     "owner_url": "https://wiki.example.org/latency"},
    {"topic": "drift", "guidance": "Retrain when population stability index exceeds 0.2 for two consecutive weekly checks.",
     "owner_url": "https://wiki.example.org/drift"},
]


def choices(columns, sample) -> dict:
    return {choice.name: choice for choice in detect_text_columns(columns, sample)}


def test_detection_picks_prose_and_explains_every_column():
    columns = [
        TableColumn("run_uuid", "STRING"),
        TableColumn("summary", "STRING"),
        TableColumn("status", "STRING"),
        TableColumn("sku", "VARCHAR"),
        TableColumn("latency_ms", "INT"),
        TableColumn("artifact", "STRING"),
        TableColumn("metrics", "TEXT"),
        TableColumn("comment", "STRING"),
    ]
    sample = [
        {"run_uuid": "0b9f in use", "summary": "The tuned model passed the golden set and kept the latency budget of the pipeline.",
         "status": "FINISHED", "sku": "A 1", "latency_ms": 12, "artifact": "s3://models/run-1/model.pkl",
         "metrics": "f1 0.91, p95 12.4 ms, auc 0.973, rmse 0.021, r2 0.95", "comment": None},
        {"run_uuid": "77aa in use", "summary": "Recall on the minority class dropped after retraining, so the candidate stays in staging.",
         "status": "FAILED", "sku": "B 2", "latency_ms": 15, "artifact": "s3://models/run-2/model.pkl",
         "metrics": "f1 0.88, p95 14.9 ms, auc 0.951, rmse 0.034, r2 0.91", "comment": ""},
    ]
    found = choices(columns, sample)
    assert [name for name, choice in found.items() if choice.is_text] == ["summary"]
    assert found["summary"].reason.startswith("string, avg ") and found["summary"].reason.endswith("natural language")
    assert found["run_uuid"].reason == "name looks like an identifier (uuid)"
    assert found["sku"].reason == "name looks like an identifier (sku)"
    assert "single words or codes" in found["status"].reason
    assert "single words or codes" in found["artifact"].reason
    assert found["latency_ms"].reason == "INT column, not text"
    assert "digits and symbols" in found["metrics"].reason
    assert found["comment"].reason == "string, no values in the sample"


def test_short_labels_are_not_prose():
    found = choices([TableColumn("label", "STRING")], [{"label": "Scoring timeout"}, {"label": "Stale input features"}])
    assert not found["label"].is_text
    assert "too short" in found["label"].reason


def test_camel_case_and_mixed_names_are_read_as_words():
    found = choices(
        [TableColumn("modelURI", "STRING"), TableColumn("ReviewerEmail", "STRING"), TableColumn("keywords", "STRING")],
        [{"modelURI": "a b c d e f g h i j k l m n o p q r s t u v w x y z", "ReviewerEmail": "same words here and there and more",
          "keywords": "latency drift recall calibration thresholds for the review"}],
    )
    assert found["modelURI"].reason == "name looks like an identifier (uri)"
    assert found["ReviewerEmail"].reason == "name looks like an identifier (email)"
    assert found["keywords"].is_text  # 'key' inside a word is not an identifier


def test_plan_override_is_checked_against_the_columns():
    plan = make_plan("guidelines", GUIDELINE_COLUMNS, [], GUIDELINES)
    assert plan.text_columns == ["guidance"]
    assert replace(plan, text_columns=["topic", "guidance"]).text_columns == ["topic", "guidance"]
    with pytest.raises(TableImportError, match=r"guidelines has no column 'body' \(columns: topic, guidance, owner_url\)"):
        replace(plan, text_columns=["guidance", "body"])


def test_key_is_primary_key_then_unique_id_column_then_row_hash():
    columns = [TableColumn("model_id", "STRING"), TableColumn("note_id", "LONG"), TableColumn("note", "STRING")]
    sample = [{"model_id": "m1", "note_id": 1}, {"model_id": "m1", "note_id": 2}]
    assert choose_key_column(columns, ["note"], sample) == "note"
    assert choose_key_column(columns, ["model_id", "note_id"], sample) == "note_id"  # composite key: model_id repeats
    assert choose_key_column([TableColumn("ID", "INT"), *columns], [], [{"ID": 5, **row} for row in sample[:1]]) == "ID"
    assert choose_key_column(GUIDELINE_COLUMNS, [], GUIDELINES) is None


def test_row_document_cites_the_row_and_holds_only_the_chosen_text():
    plan = replace(make_plan("main.gold.Eval Notes", GUIDELINE_COLUMNS, ["topic"], GUIDELINES), text_columns=["topic", "guidance"])
    document = row_document(plan, {"topic": "Latency / P95", "guidance": "  Answer within 100 ms.  "}, "uc:main.gold.eval-notes")
    assert document.origin == "uc:main.gold.eval-notes:latency-p95"
    assert SOURCE_ID_PATTERN.match(document.origin)
    assert document.title == "main.gold.Eval Notes · Latency / P95"
    assert document.sections[0].text == "topic: Latency / P95\n\nguidance: Answer within 100 ms."
    assert document.sections[0].source.kind == "table-row"
    assert row_document(plan, {"topic": "drift", "guidance": "  "}, "uc:x") is not None  # topic still has text
    assert row_document(replace(plan, text_columns=["guidance"]), {"topic": "drift", "guidance": None}, "uc:x") is None
    with pytest.raises(TableImportError, match="topic is empty"):
        row_document(plan, {"topic": None, "guidance": "text"}, "uc:x")


def test_rows_without_key_use_a_stable_hash():
    plan = make_plan("guidelines", GUIDELINE_COLUMNS, [], GUIDELINES)
    first, again = row_document(plan, GUIDELINES[0], "sql:kb.guidelines"), row_document(plan, dict(GUIDELINES[0]), "sql:kb.guidelines")
    assert first.origin == again.origin and first.sha256 == again.sha256
    assert first.origin != row_document(plan, GUIDELINES[1], "sql:kb.guidelines").origin


def test_import_counts_empty_and_clashing_rows_and_is_idempotent(kb, chunker, snapshot):
    columns = [TableColumn("id", "INT"), TableColumn("body", "STRING")]
    plan = replace(make_plan("notes", columns, ["id"], []), text_columns=["body"])
    rows = [
        {"id": 1, "body": "Shadow traffic showed no drift for six weeks, so the model was promoted."},
        {"id": 2, "body": ""},
        {"id": 3, "body": "Rollback is required within one hour when recall drops below 0.8."},
        {"id": 3, "body": "A second row claiming the same key."},
        {"id": None, "body": "A row without a key."},
    ]
    progress = []
    outcome, = import_tables(kb, chunker, [plan], lambda plan, limit: rows[:limit], lambda plan: "sql:kb.notes", 10,
                             lambda *a: progress.append(a))
    assert (outcome.rows_read, outcome.added, outcome.skipped, outcome.failed) == (5, 1, 1, 3)
    assert outcome.errors == ["row 5: id is empty", "sql:kb.notes:3: 2 rows have this key, none was imported (is id unique?)"]
    assert [d.origin for d in kb.documents()] == ["sql:kb.notes:1"]
    assert progress[0] == (0, 1, "Reading notes") and progress[-1] == (1, 1, "Done")
    before = snapshot(kb.connection)
    again, = import_tables(kb, chunker, [plan], lambda plan, limit: rows[:limit], lambda plan: "sql:kb.notes", 10)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 1)
    assert snapshot(kb.connection) == before
    with pytest.raises(TableImportError, match="row limit"):
        import_tables(kb, chunker, [plan], lambda plan, limit: rows, lambda plan: "sql:kb.notes", 0)
