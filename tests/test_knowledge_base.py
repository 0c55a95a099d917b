"""The store's promises: one transaction per write, content-addressed dedupe, re-indexing on edit."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.core import database
from engine.knowledge.chunking import Chunk
from engine.knowledge.documents import parse_file
from engine.knowledge.search import hybrid_search


def keyword_hits(kb, word: str) -> list[int]:
    return [r[0] for r in kb.connection.execute("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{word}"',))]


def test_schema_is_versioned_and_wal(kb):
    assert database.schema_version(kb.connection) == len(database.MIGRATIONS)
    assert kb.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert database.migrate(kb.connection) == len(database.MIGRATIONS)  # idempotent


def test_database_from_a_newer_version_is_refused(settings, kb):
    kb.connection.execute(f"PRAGMA user_version = {len(database.MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this deploywise"):
        database.connect(settings.knowledge_db)


def test_same_content_twice_changes_nothing(kb, chunker, snapshot):
    document = parse_file("guide.md", b"# Guide\nPrefer gradient boosting for tabular data.")
    first = kb.store_document(document, chunker.split(document.sections))
    before = snapshot(kb.connection)
    again = kb.store_document(parse_file("copy.md", b"# Guide\nPrefer gradient boosting for tabular data."), [])
    assert (first.status, again.status, again.document_id) == ("added", "unchanged", first.document_id)
    assert snapshot(kb.connection) == before


def test_new_content_from_the_same_origin_replaces_the_old(kb, chunker):
    old = parse_file("guide.md", b"# Guide\nThe latency budget is twelve milliseconds.")
    kb.store_document(old, chunker.split(old.sections))
    new = parse_file("guide.md", b"# Guide\nThe latency budget is ten milliseconds.")
    outcome = kb.store_document(new, chunker.split(new.sections))
    assert outcome.status == "updated"
    assert len(kb.documents()) == 1
    assert keyword_hits(kb, "twelve") == []
    assert kb.connection.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0] == kb.stats()["chunks"]


def test_a_write_that_fails_midway_leaves_everything_as_it_was(kb, chunker, snapshot):
    old = parse_file("guide.md", b"# Guide\nKeep the random forest.")
    kb.store_document(old, chunker.split(old.sections))
    before = snapshot(kb.connection)
    new = parse_file("guide.md", b"# Guide\nReplace the random forest.\n\nSecond paragraph.")
    broken = [Chunk("Replace the random forest.", 5, "doc:guide.md"), Chunk("Second paragraph.", None, "doc:guide.md")]
    with pytest.raises(Exception, match="NOT NULL"):
        kb.store_document(new, broken)
    assert snapshot(kb.connection) == before


def test_editing_a_chunk_reindexes_it(kb, chunker):
    document = parse_file("notes.md", b"# Notes\nThe neural network was too slow for the scanner app.")
    kb.store_document(document, chunker.split(document.sections))
    chunk = kb.chunks()[0]
    edited = kb.edit_chunk(chunk.id, "Histogram gradient boosting met the 5 ms latency budget on phones.")
    assert edited.edited and edited.token_count > 5
    assert keyword_hits(kb, "scanner") == []
    assert keyword_hits(kb, "histogram") == [chunk.id]
    hit = hybrid_search(kb, "which model is fast enough on mobile phones", k=1)[0]
    assert hit.chunk_id == chunk.id and hit.vector_rank == 1


def test_an_empty_edit_is_refused_and_changes_nothing(kb, chunker, snapshot):
    document = parse_file("notes.md", b"# Notes\nSome text.")
    kb.store_document(document, chunker.split(document.sections))
    before = snapshot(kb.connection)
    with pytest.raises(ValueError, match="cannot be empty"):
        kb.edit_chunk(kb.chunks()[0].id, "   ")
    assert snapshot(kb.connection) == before


def test_deleting_the_last_chunk_deletes_the_document_and_its_index_entries(kb, chunker):
    document = parse_file("one.md", b"# One\nOnly one chunk here.")
    kb.store_document(document, chunker.split(document.sections))
    kb.delete_chunk(kb.chunks()[0].id)
    assert kb.documents() == []
    assert kb.connection.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0] == 0
    assert keyword_hits(kb, "only") == []


def test_ingest_registers_document_sources_without_overwriting_admin_edits(kb, chunker):
    from engine.knowledge.sources import Source, list_sources

    kb.register_sources([Source("doc:guide.md", "Edited by admin", "https://wiki.example.com/guide", "guideline")])
    document = parse_file("guide.md", b"# Guide\nText.")
    kb.store_document(document, chunker.split(document.sections))
    assert list_sources(kb.connection) == [Source("doc:guide.md", "Edited by admin", "https://wiki.example.com/guide", "guideline")]


def test_query_vectors_are_remembered_and_equal_to_a_fresh_embedding(kb):
    from engine.knowledge import knowledge_base as module

    question = f"which model for tumour screening, asked at {time.monotonic_ns()}?"
    first, repeated = kb.embed_queries([question, question])
    assert (id(kb.embedder), question) in module._query_vectors
    assert np.array_equal(first, repeated) and np.array_equal(kb.embed_queries([question])[0], first)
    assert np.allclose(first, kb.embed([question])[0], atol=1e-5)
