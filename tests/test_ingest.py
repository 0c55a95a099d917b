"""Batch ingestion with the real tokenizer and embedder: bad files fail alone, good ones land."""

from __future__ import annotations

from tests_support import make_pdf

from engine.knowledge.chunking import Chunker
from engine.knowledge.documents import Section
from engine.knowledge.ingest import ingest_files
from engine.knowledge.sources import Source
from engine.llm.bundled import load_tokenizer


def test_a_batch_with_bad_files_ingests_the_good_ones(kb, chunker, snapshot):
    good_pdf = make_pdf(["Tumour screening needs F1 of at least 0.95.", "Latency p95 must stay under 10 ms."])
    before = snapshot(kb.connection)
    outcomes = ingest_files(
        kb,
        chunker,
        [
            ("empty.txt", b""),
            ("criteria.pdf", good_pdf),
            ("photo.md", b"\x89PNG\r\n\x1a\n" + bytes(64)),
            ("notes.txt", b"Gradient boosting is the default for tabular use cases."),
            ("huge.txt", b"x" * 2048),
        ],
        max_bytes=1024,
    )
    by_name = {o.name: o for o in outcomes}
    assert [o.status for o in outcomes] == ["failed", "failed", "failed", "added", "failed"]
    assert "over the" in by_name["criteria.pdf"].error  # the PDF is bigger than this test's 1 KB limit
    assert by_name["notes.txt"].chunk_count == 1
    assert before != snapshot(kb.connection)
    assert [d.title for d in kb.documents()] == ["notes"]


def test_progress_reports_every_file(kb, chunker):
    seen = []
    ingest_files(kb, chunker, [("a.txt", b"alpha text"), ("b.txt", b"beta text")], on_progress=lambda *a: seen.append(a))
    assert [(done, total) for done, total, _ in seen] == [(0, 2), (1, 2), (2, 2)]


def test_pdf_chunks_cite_their_page(kb, chunker):
    outcomes = ingest_files(kb, chunker, [("Guide.pdf", make_pdf(["First page about latency.", "Second page about size."]))])
    assert outcomes[0].status == "added"
    assert [c.source_id for c in kb.chunks()] == ["doc:guide.pdf:page-1", "doc:guide.pdf:page-2"]


def test_chunks_respect_the_token_budget_with_overlap():
    tokenizer = load_tokenizer()
    chunker = Chunker(tokenizer, chunk_tokens=40, chunk_overlap=15)
    sentences = " ".join(f"Sentence number {i} explains why the model passed review." for i in range(40))
    chunks = chunker.split([Section(sentences, Source("doc:x", "x"))])
    assert len(chunks) > 5
    assert all(c.token_count <= 40 for c in chunks)
    assert all(c.token_count == len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks)
    first_words = chunks[1].text.split()[:3]
    assert " ".join(first_words) in chunks[0].text  # consecutive chunks overlap
