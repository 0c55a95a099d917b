"""Hybrid search: FTS5 BM25 and sqlite-vec KNN, fused by reciprocal rank.

Keyword search finds exact terms (metric names, model names, thresholds); vector search finds paraphrases.
Reciprocal rank fusion needs no score calibration between the two: each list contributes 1 / (k + rank).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RRF_K = 60


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    document_id: int
    document_title: str
    text: str
    source_id: str
    score: float
    keyword_rank: int | None
    vector_rank: int | None


def fts_query(text: str) -> str | None:
    """Words of a free-text question as an FTS5 OR-query; quoting each word defuses FTS syntax in user input."""
    words = [word for word in re.findall(r"\w+", text.lower()) if len(word) > 1]
    unique = list(dict.fromkeys(words))[:32]
    return " OR ".join(f'"{word}"' for word in unique) or None


def hybrid_search(
    kb,
    query: str,
    *,
    k: int = 8,
    source_domains: list[str] | None = None,
    document_ids: list[int] | None = None,
    candidates: int = 50,
) -> list[SearchHit]:
    """The k best chunks for a question, optionally only from some source domains or documents."""
    query = (query or "").strip()
    if not query:
        return []
    pool = max(candidates, k)
    keyword = _keyword_ranks(kb.connection, query, pool, source_domains, document_ids)
    vector = _vector_ranks(kb, query, pool, source_domains, document_ids)
    scores: dict[int, float] = {}
    for ranks in (keyword, vector):
        for chunk_id, rank in ranks.items():
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))[:k]
    if not best:
        return []
    rows = kb.connection.execute(
        f"""SELECT c.id, c.document_id, d.title, c.text, c.source_id FROM chunks c
            JOIN documents d ON d.id = c.document_id WHERE c.id IN ({','.join('?' * len(best))})""",
        best,
    ).fetchall()
    by_id = {row[0]: row for row in rows}
    return [
        SearchHit(*by_id[chunk_id], score=scores[chunk_id], keyword_rank=keyword.get(chunk_id), vector_rank=vector.get(chunk_id))
        for chunk_id in best
        if chunk_id in by_id
    ]


def _filters(alias: str, source_domains, document_ids) -> tuple[str, list]:
    clauses, params = [], []
    if source_domains:
        clauses.append(f"{alias}.source_domain IN ({','.join('?' * len(source_domains))})")
        params.extend(source_domains)
    if document_ids:
        clauses.append(f"{alias}.document_id IN ({','.join('?' * len(document_ids))})")
        params.extend(document_ids)
    return "".join(f" AND {clause}" for clause in clauses), params


def _keyword_ranks(connection, query: str, pool: int, source_domains, document_ids) -> dict[int, int]:
    match = fts_query(query)
    if match is None:
        return {}
    extra, params = _filters("c", source_domains, document_ids)
    rows = connection.execute(
        f"""SELECT f.rowid FROM chunks_fts f JOIN chunks c ON c.id = f.rowid
            WHERE chunks_fts MATCH ?{extra} ORDER BY bm25(chunks_fts) LIMIT ?""",
        [match, *params, pool],
    ).fetchall()
    return {row[0]: rank for rank, row in enumerate(rows, start=1)}


def _vector_ranks(kb, query: str, pool: int, source_domains, document_ids) -> dict[int, int]:
    vector = kb.embed([query])[0]
    extra, params = _filters("v", source_domains, document_ids)
    rows = kb.connection.execute(
        f"""SELECT v.chunk_id FROM chunk_vectors v WHERE v.embedding MATCH ? AND k = ?{extra} ORDER BY v.distance""",
        [vector.tobytes(), pool, *params],
    ).fetchall()
    return {row[0]: rank for rank, row in enumerate(rows, start=1)}
