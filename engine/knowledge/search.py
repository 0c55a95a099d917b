"""Hybrid search: FTS5 BM25 and exact vector search, fused by reciprocal rank.

Keyword search finds exact terms (metric names, model names, thresholds); vector search finds paraphrases.
Reciprocal rank fusion needs no score calibration between the two: each list contributes 1 / (k + rank).

Vectors live durably in the sqlite-vec table, but queries run on an in-memory copy: one matrix product
over every normalized vector is exact (recall 1.0) and, measured by bench/knowledge.py, several times
faster than vec0's own scan at 100k chunks. The copy is shared by every session of the process and is
reloaded when the database's chunk generation counter moves.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

import numpy as np

from engine.access.roles import may_read_internal
from engine.core.database import EMBEDDING_DIM
from engine.knowledge.sources import public_chunks_sql

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


@dataclass
class VectorIndex:
    """A consistent in-memory snapshot of chunk_vectors, plus the keyword document frequencies seen so far."""

    generation: int
    chunk_ids: np.ndarray
    document_ids: np.ndarray
    domains: np.ndarray
    matrix: np.ndarray
    document_frequency: dict[str, int] = field(default_factory=dict)

    def nearest(self, vector: np.ndarray, pool: int, source_domains=None, document_ids=None) -> list[int]:
        """Chunk ids by cosine similarity to a normalized vector, best first, within the filters."""
        rows = np.arange(len(self.chunk_ids))
        if source_domains:
            rows = rows[np.isin(self.domains[rows], source_domains)]
        if document_ids:
            rows = rows[np.isin(self.document_ids[rows], document_ids)]
        if not len(rows):
            return []
        scores = (self.matrix @ vector) if len(rows) == len(self.chunk_ids) else self.matrix[rows] @ vector
        count = min(pool, len(rows))
        best = np.argpartition(-scores, count - 1)[:count]
        best = best[np.lexsort((self.chunk_ids[rows[best]], -scores[best]))]
        return self.chunk_ids[rows[best]].tolist()


_indexes: dict[str, VectorIndex] = {}
_index_lock = threading.Lock()


def vector_index(connection) -> VectorIndex:
    """The process's in-memory index of this database, reloaded only when a chunk was written since."""
    path = connection.execute("PRAGMA database_list").fetchone()[2] or f"memory:{id(connection)}"
    generation = _generation(connection)
    index = _indexes.get(path)
    if index is not None and index.generation == generation:
        return index
    with _index_lock:
        index = _indexes.get(path)
        if index is None or index.generation != _generation(connection):
            index = _indexes[path] = _load_index(connection)
    return index


def _generation(connection) -> int:
    return connection.execute("SELECT generation FROM index_state").fetchone()[0]


def _load_index(connection) -> VectorIndex:
    """Read the counter and every vector in one read transaction, so the snapshot matches its generation."""
    own_transaction = not connection.in_transaction
    if own_transaction:
        connection.execute("BEGIN")
    try:
        generation = _generation(connection)
        rows = connection.execute("SELECT chunk_id, document_id, source_domain, embedding FROM chunk_vectors").fetchall()
    finally:
        if own_transaction:
            connection.execute("COMMIT")
    matrix = np.frombuffer(b"".join(row[3] for row in rows), dtype=np.float32).reshape(len(rows), EMBEDDING_DIM)
    return VectorIndex(
        generation,
        np.array([row[0] for row in rows], dtype=np.int64),
        np.array([row[1] for row in rows], dtype=np.int64),
        np.array([row[2] for row in rows], dtype=object),
        matrix,
    )


def query_words(text: str) -> list[str]:
    """Distinct lower-case words of a free-text question, as the keyword search sees them."""
    words = [word for word in re.findall(r"\w+", text.lower()) if len(word) > 1]
    return list(dict.fromkeys(words))[:32]


def fts_query(text: str) -> str | None:
    """Words of a free-text question as an FTS5 OR-query; quoting each word defuses FTS syntax in user input."""
    return " OR ".join(f'"{word}"' for word in query_words(text)) or None


def hybrid_search(
    kb,
    query: str,
    *,
    k: int = 8,
    source_domains: list[str] | None = None,
    document_ids: list[int] | None = None,
    candidates: int = 50,
) -> list[SearchHit]:
    """The k best chunks for a question, optionally only from some source domains or documents; public chunks only
    for a caller who may not read internal knowledge (the chat's visitors)."""
    query = (query or "").strip()
    if not query:
        return []
    pool = max(candidates, k)
    index = vector_index(kb.connection)
    keyword = _keyword_ranks(kb.connection, index, query, pool, source_domains, document_ids)
    vector = _vector_ranks(kb, index, query, pool, source_domains, document_ids)
    scores: dict[int, float] = {}
    for ranks in (keyword, vector):
        for chunk_id, rank in ranks.items():
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    ranked = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))
    if not ranked:
        return []
    rows = kb.connection.execute(
        f"""SELECT c.id, c.document_id, d.title, c.text, c.source_id FROM chunks c
            JOIN documents d ON d.id = c.document_id WHERE c.id IN ({','.join('?' * len(ranked))})
            {'' if may_read_internal() else 'AND ' + public_chunks_sql()}""",
        ranked,
    ).fetchall()
    by_id = {row[0]: row for row in rows}
    return [
        SearchHit(*by_id[chunk_id], score=scores[chunk_id], keyword_rank=keyword.get(chunk_id), vector_rank=vector.get(chunk_id))
        for chunk_id in ranked
        if chunk_id in by_id
    ][:k]


def _filters(alias: str, source_domains, document_ids) -> tuple[str, list]:
    clauses, params = [], []
    if source_domains:
        clauses.append(f"{alias}.source_domain IN ({','.join('?' * len(source_domains))})")
        params.extend(source_domains)
    if document_ids:
        clauses.append(f"{alias}.document_id IN ({','.join('?' * len(document_ids))})")
        params.extend(document_ids)
    return "".join(f" AND {clause}" for clause in clauses), params


def informative_words(connection, index: VectorIndex, words: list[str]) -> list[str]:
    """The words worth a keyword search: FTS5's BM25 gives a word found in more than half of all chunks an
    IDF of ~0 (it clamps to 1e-6), so such words cannot change the ranking, yet each costs a scan of its
    posting list. If every word is that common, all are kept."""
    chunk_count = len(index.chunk_ids)
    for word in words:
        if word not in index.document_frequency:
            index.document_frequency[word] = connection.execute(
                "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{word}"',)
            ).fetchone()[0]
    kept = [word for word in words if index.document_frequency[word] * 2 <= chunk_count]
    return kept or words


def _keyword_ranks(connection, index: VectorIndex, query: str, pool: int, source_domains, document_ids) -> dict[int, int]:
    words = informative_words(connection, index, query_words(query))
    if not words:
        return {}
    match = " OR ".join(f'"{word}"' for word in words)
    extra, params = _filters("c", source_domains, document_ids)
    rows = connection.execute(
        f"""SELECT f.rowid FROM chunks_fts f JOIN chunks c ON c.id = f.rowid
            WHERE chunks_fts MATCH ?{extra} ORDER BY bm25(chunks_fts) LIMIT ?""",
        [match, *params, pool],
    ).fetchall()
    return {row[0]: rank for rank, row in enumerate(rows, start=1)}


def _vector_ranks(kb, index: VectorIndex, query: str, pool: int, source_domains, document_ids) -> dict[int, int]:
    if not len(index.chunk_ids):
        return {}
    nearest = index.nearest(kb.embed_queries([query])[0], pool, source_domains, document_ids)
    return {chunk_id: rank for rank, chunk_id in enumerate(nearest, start=1)}
