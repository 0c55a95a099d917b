"""Hybrid search over real embeddings: keyword and semantic hits fused, filters applied, odd input harmless."""

from __future__ import annotations

import pytest

from engine.knowledge.ingest import ingest_files
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.knowledge.search import fts_query, hybrid_search, informative_words, vector_index

CORPUS = [
    ("criteria.md", b"---\nsource_id: criteria:tumor-screening\n---\n# Tumour screening\n"
                    b"The latency_p95_ms of a candidate must be at most 10 ms; f1 at least 0.95."),
    ("phones.md", b"---\nsource_id: guideline:mobile\n---\n# Mobile\n"
                  b"Models shipped inside the offline phone scanner app must be small and quick on old handsets."),
    ("decisions.md", b"---\nsource_id: decisions:log\n---\n# Decisions\n"
                     b"In March we rolled back the MLP after its probability calibration drifted."),
    ("datasets.txt", b"The diabetes dataset has ten baseline variables: age, sex, body mass index, "
                     b"blood pressure and six serum measurements."),
]


@pytest.fixture
def corpus_kb(kb, chunker):
    assert all(o.ok for o in ingest_files(kb, chunker, CORPUS))
    return kb


def test_exact_term_is_found_by_keyword(corpus_kb):
    top = hybrid_search(corpus_kb, "latency_p95_ms", k=2)[0]
    assert top.source_id == "criteria:tumor-screening" and top.keyword_rank == 1


def test_paraphrase_is_found_by_meaning(corpus_kb):
    top = hybrid_search(corpus_kb, "which models fit on a mobile device without network", k=1)[0]
    assert top.source_id == "guideline:mobile"
    assert top.vector_rank == 1


def test_scores_are_reciprocal_rank_fusion(corpus_kb):
    hits = hybrid_search(corpus_kb, "calibration drift rollback", k=4)
    assert hits[0].source_id == "decisions:log"
    for hit in hits:
        expected = sum(1 / (60 + rank) for rank in (hit.keyword_rank, hit.vector_rank) if rank)
        assert hit.score == pytest.approx(expected)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_filters_by_source_domain_and_document(corpus_kb):
    hits = hybrid_search(corpus_kb, "model", k=10, source_domains=["criteria", "decisions"])
    assert {h.source_id.split(":")[0] for h in hits} <= {"criteria", "decisions"} and hits
    document_id = next(d.id for d in corpus_kb.documents() if d.title == "datasets")
    hits = hybrid_search(corpus_kb, "latency budget", k=10, document_ids=[document_id])
    assert {h.document_id for h in hits} == {document_id}


@pytest.mark.parametrize("query", ['"unbalanced', "NEAR(a b)", "f1 AND OR NOT", "*", "col:value", "-- DROP TABLE chunks;", "ü" * 5000])
def test_query_syntax_in_user_input_is_harmless(corpus_kb, query):
    hybrid_search(corpus_kb, query, k=3)
    assert corpus_kb.stats()["chunks"] == len(CORPUS)


def test_empty_query_returns_nothing(corpus_kb):
    assert hybrid_search(corpus_kb, "   ") == []
    assert fts_query("?!") is None


def test_in_memory_vectors_rank_exactly_like_sqlite_vec(corpus_kb):
    """The in-memory index must agree with vec0's own exact KNN, filters included."""
    vector = corpus_kb.embed(["probability calibration of the scanner"])[0]
    index = vector_index(corpus_kb.connection)
    for domains in (None, ["criteria", "decisions"]):
        extra = " AND source_domain IN ('criteria', 'decisions')" if domains else ""
        expected = [
            row[0]
            for row in corpus_kb.connection.execute(
                f"SELECT chunk_id FROM chunk_vectors WHERE embedding MATCH ? AND k = 10{extra} ORDER BY distance", (vector.tobytes(),)
            )
        ]
        assert index.nearest(vector, 10, domains) == expected


def test_writes_from_another_connection_reach_the_shared_index(corpus_kb, settings, chunker):
    """Each page run opens its own connection; a chunk written through one is searchable through the other."""
    other = KnowledgeBase.open(settings)
    try:
        assert hybrid_search(other, "greenhouse tomato yield", k=1)[0].source_id != "guideline:greenhouse"
        ingest_files(corpus_kb, chunker, [("tomatoes.md", b"---\nsource_id: guideline:greenhouse\n---\n"
                                                          b"Greenhouse tomato yield forecasts use the gradient boosting model.")])
        assert hybrid_search(other, "greenhouse tomato yield", k=1)[0].source_id == "guideline:greenhouse"
        chunk = next(c for c in other.chunks() if c.source_id == "guideline:greenhouse")
        corpus_kb.edit_chunk(chunk.id, "Orchard apple harvest dates come from the linear model.")
        assert hybrid_search(other, "apple harvest in the orchard", k=1)[0].chunk_id == chunk.id
        corpus_kb.delete_chunk(chunk.id)
        assert chunk.id not in {hit.chunk_id for hit in hybrid_search(other, "apple harvest in the orchard", k=10)}
    finally:
        other.connection.close()


def test_words_in_most_chunks_are_left_out_of_the_keyword_search(corpus_kb):
    """'the' is in more than half of the chunks, so BM25 gives it no weight; a word that is all there is stays."""
    index = vector_index(corpus_kb.connection)
    assert informative_words(corpus_kb.connection, index, ["the", "calibration"]) == ["calibration"]
    assert informative_words(corpus_kb.connection, index, ["the"]) == ["the"]
