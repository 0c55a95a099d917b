"""The knowledge base: documents, their chunks, both search indexes and the source registry, in one file.

Each write is one transaction. Embeddings are computed before the transaction opens, so a failure anywhere
(a bad file, a full disk, an interrupted process) leaves the database exactly as it was.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine.access.roles import may_read_internal, require_admin
from engine.core import database
from engine.knowledge.chunking import Chunk
from engine.knowledge.documents import ParsedDocument
from engine.knowledge.sources import Source, public_chunks_sql, upsert_sources, write_sources
from engine.llm.bundled import load_embedder, load_tokenizer

StoreStatus = Literal["added", "updated", "unchanged"]
QUERY_VECTOR_CACHE = 4096  # questions and use-case descriptions, ~1.5 KB each
EMBED_BATCH = 256  # chunks embedded between two progress reports of a large import

_query_vectors: OrderedDict[tuple[int, str], tuple[object, np.ndarray]] = OrderedDict()
_query_vectors_lock = threading.Lock()


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    document_id: int
    chunk_count: int


@dataclass(frozen=True)
class StoredChunk:
    id: int
    document_id: int
    document_title: str
    chunk_index: int
    text: str
    token_count: int
    source_id: str
    edited: bool


@dataclass(frozen=True)
class StoredDocument:
    id: int
    title: str
    origin: str
    sha256: str
    metadata: dict
    ingested_at: str
    chunk_count: int
    token_count: int


class KnowledgeBase:
    def __init__(self, connection, embedder, token_counter=None):
        self.connection = connection
        self.embedder = embedder
        self.token_counter = token_counter

    @classmethod
    def open(cls, settings) -> KnowledgeBase:
        """The workspace's knowledge base with the configured embedding model and tokenizer."""

        tokenizer = load_tokenizer(settings.base_model)
        return cls(
            database.connect(settings.knowledge_db),
            load_embedder(settings.embedding_model),
            lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.embedder.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """`embed` with a process-wide memory of recent texts: a question is embedded once for the use-case
        match and the search, and use-case descriptions once per process, not once per question."""
        keys = [(id(self.embedder), text) for text in texts]
        with _query_vectors_lock:
            known = {key: _query_vectors[key][1] for key in keys if key in _query_vectors}
        missing = list(dict.fromkeys(key for key in keys if key not in known))
        if missing:
            known.update(zip(missing, self.embed([text for _, text in missing]), strict=True))
        with _query_vectors_lock:
            for key in keys:  # the entry holds its embedder, so that no other model can reuse its id
                _query_vectors[key] = (self.embedder, known[key])
                _query_vectors.move_to_end(key)
            while len(_query_vectors) > QUERY_VECTOR_CACHE:
                _query_vectors.popitem(last=False)
        return np.stack([known[key] for key in keys])

    def document_by_sha(self, sha256: str) -> int | None:
        row = self.connection.execute("SELECT id FROM documents WHERE sha256 = ?", (sha256,)).fetchone()
        return row[0] if row else None

    def store_document(self, document: ParsedDocument, chunks: list[Chunk]) -> StoreOutcome:
        """Add a document, replace the older version from the same origin, or do nothing for known content."""
        return self.store_documents([(document, chunks)])[0][0]

    def store_documents(
        self,
        items: list[tuple[ParsedDocument, list[Chunk]]],
        *,
        prefix: str | None = None,
        present: Collection[str] = (),
        on_embedded: Callable[[int, int], None] | None = None,
    ) -> tuple[list[StoreOutcome], int]:
        """Store documents all or nothing, in one transaction; returns their outcomes and how many were removed.

        Known content is checked again under the write lock, so two processes storing the same content store it
        once. With `prefix` (a table's `<domain>:<table>`), the documents under it whose origin is neither stored
        here nor in `present` are removed: a re-import drops the rows deleted at the source. `on_embedded(done, total)`
        follows the embedding of the new chunks, the long part."""
        require_admin("ingesting documents")
        new = [(document, chunks) for document, chunks in items if self.document_by_sha(document.sha256) is None]
        for document, chunks in new:
            if not chunks:
                raise ValueError(f"{document.origin}: no chunks to store")
        texts = [chunk.text for _, chunks in new for chunk in chunks]
        batches = []
        for start in range(0, len(texts), EMBED_BATCH):
            batches.append(self.embed(texts[start:start + EMBED_BATCH]))
            if on_embedded:
                on_embedded(start + len(batches[-1]), len(texts))
        vectors = (vector for batch in batches for vector in batch)
        embedded = {document.sha256: [next(vectors) for _ in chunks] for document, chunks in new}
        outcomes = []
        with database.transaction(self.connection):
            for document, chunks in items:
                existing = self.document_by_sha(document.sha256)
                if existing is not None:  # stored before, or by another process while this one was embedding
                    self._adopt_path_origin(existing, document.origin)
                    count = self.connection.execute("SELECT count(*) FROM chunks WHERE document_id = ?", (existing,)).fetchone()[0]
                    outcomes.append(StoreOutcome("unchanged", existing, count))
                    continue
                if document.sha256 not in embedded:
                    raise ValueError(f"{document.origin} was deleted while it was being stored; import it again")
                replaced = self._remove_documents(
                    [row[0] for row in self.connection.execute("SELECT id FROM documents WHERE origin = ?", (document.origin,))]
                )
                document_id = self.connection.execute(
                    "INSERT INTO documents(title, origin, sha256, metadata, ingested_at) VALUES (?, ?, ?, ?, ?)",
                    (document.title, document.origin, document.sha256, json.dumps(document.metadata), database.utc_now()),
                ).lastrowid
                self._insert_chunks(document_id, chunks, embedded[document.sha256])
                write_sources(self.connection, list({s.source.source_id: s.source for s in document.sections}.values()), overwrite=False)
                outcomes.append(StoreOutcome("updated" if replaced else "added", document_id, len(chunks)))
            removed = 0
            if prefix is not None:
                keep = {*present, *(document.origin for document, _ in items)}
                rows = self.connection.execute(
                    "SELECT id, origin FROM documents WHERE substr(origin, 1, ?) = ?", (len(prefix) + 1, prefix + ":")
                ).fetchall()
                removed = self._remove_documents([row[0] for row in rows if row[1] not in keep])
        return outcomes, removed

    def _remove_documents(self, document_ids: list[int]) -> int:
        """Delete documents (their chunks and index entries go by cascade and trigger) and the registry entries
        that only they cited, unless an admin wrote them; returns how many documents went."""
        cited = {
            row[0]
            for document_id in document_ids
            for row in self.connection.execute("SELECT DISTINCT source_id FROM chunks WHERE document_id = ?", (document_id,))
        }
        removed = sum(
            self.connection.execute("DELETE FROM documents WHERE id = ?", (document_id,)).rowcount for document_id in document_ids
        )
        self.connection.executemany(
            "DELETE FROM sources WHERE source_id = ? AND edited_by IS NULL AND NOT EXISTS (SELECT 1 FROM chunks WHERE source_id = ?)",
            [(source_id, source_id) for source_id in cited],
        )
        return removed

    def _adopt_path_origin(self, document_id: int, origin: str) -> None:
        """Before origins held a file's path inside its ingested folder, 'team/guide.md' was stored as 'file:guide.md':
        ingested again unchanged, that document takes its path as origin (and keeps its use case), so that its next
        version replaces it and another folder's guide.md does not. Runs inside the caller's write transaction."""
        folder, _, name = origin.removeprefix("file:").rpartition("/")
        if not origin.startswith("file:") or not folder:
            return
        if self.connection.execute("SELECT 1 FROM documents WHERE origin = ?", (origin,)).fetchone():
            return
        if self.connection.execute("UPDATE documents SET origin = ? WHERE id = ? AND origin = ?",
                                   (origin, document_id, f"file:{name}")).rowcount:
            self.connection.execute("UPDATE OR REPLACE document_use_cases SET origin = ? WHERE origin = ?", (origin, f"file:{name}"))

    def _insert_chunks(self, document_id: int, chunks: list[Chunk], vectors) -> None:
        for index, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
            chunk_id = self.connection.execute(
                "INSERT INTO chunks(document_id, chunk_index, text, token_count, source_id) VALUES (?, ?, ?, ?, ?)",
                (document_id, index, chunk.text, chunk.token_count, chunk.source_id),
            ).lastrowid
            self.connection.execute(
                "INSERT INTO chunk_vectors(chunk_id, embedding, source_domain, document_id) VALUES (?, ?, ?, ?)",
                (chunk_id, vector.tobytes(), chunk.source_id.split(":", 1)[0], document_id),
            )

    def edit_chunk(self, chunk_id: int, text: str) -> StoredChunk:
        """Replace a chunk's text and re-index it (full text by trigger, vector here), marking it edited."""
        require_admin("editing a chunk")
        text = text.strip()
        if not text:
            raise ValueError("a chunk cannot be empty; delete it instead")
        current = self.chunk(chunk_id)
        vector = self.embed([text])[0]
        tokens = self.token_counter(text) if self.token_counter else current.token_count
        with database.transaction(self.connection):
            self.connection.execute(
                "UPDATE chunks SET text = ?, token_count = ?, edited = 1 WHERE id = ?", (text, tokens, chunk_id)
            )
            self.connection.execute("DELETE FROM chunk_vectors WHERE chunk_id = ?", (chunk_id,))
            self.connection.execute(
                "INSERT INTO chunk_vectors(chunk_id, embedding, source_domain, document_id) VALUES (?, ?, ?, ?)",
                (chunk_id, vector.tobytes(), current.source_id.split(":", 1)[0], current.document_id),
            )
        return self.chunk(chunk_id)

    def delete_chunk(self, chunk_id: int) -> None:
        """Delete one chunk (its index entries go by trigger); a document left without chunks goes too."""
        require_admin("deleting a chunk")
        current = self.chunk(chunk_id)
        with database.transaction(self.connection):
            self.connection.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))
            self.connection.execute(
                "DELETE FROM documents WHERE id = ? AND NOT EXISTS (SELECT 1 FROM chunks WHERE document_id = ?)",
                (current.document_id, current.document_id),
            )

    def delete_document(self, document_id: int) -> bool:
        require_admin("deleting a document")
        with database.transaction(self.connection):
            return self._remove_documents([document_id]) > 0

    def chunk(self, chunk_id: int) -> StoredChunk:
        rows = self.chunks(chunk_ids=[chunk_id])
        if not rows:
            raise KeyError(f"no chunk with id {chunk_id}")
        return rows[0]

    def chunks(
        self,
        *,
        document_id: int | None = None,
        source_domain: str | None = None,
        source_id: str | None = None,
        under: bool = True,
        chunk_ids: list[int] | None = None,
        contains: str | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> list[StoredChunk]:
        """Browse chunks in document order with optional filters (Knowledge and Source pages, CLI); a caller who may
        not read internal knowledge gets the public chunks only (engine.knowledge.sources.public_chunks_sql).

        `source_id` keeps the chunks of that id and, with `under`, of the ids under it (`doc:guide.pdf` ->
        `doc:guide.pdf:page-3`)."""
        where, params = [], []
        if document_id is not None:
            where.append("c.document_id = ?")
            params.append(document_id)
        if source_domain:
            where.append("c.source_domain = ?")
            params.append(source_domain)
        if source_id and under:
            where.append("(c.source_id = ? OR substr(c.source_id, 1, ?) = ?)")
            params.extend([source_id, len(source_id) + 1, source_id + ":"])
        elif source_id:
            where.append("c.source_id = ?")
            params.append(source_id)
        if chunk_ids is not None:
            where.append(f"c.id IN ({','.join('?' * len(chunk_ids))})")
            params.extend(chunk_ids)
        if contains:
            where.append("instr(lower(c.text), lower(?)) > 0")
            params.append(contains)
        if not may_read_internal():
            where.append(public_chunks_sql())
        sql = f"""SELECT c.id, c.document_id, d.title, c.chunk_index, c.text, c.token_count, c.source_id, c.edited
                  FROM chunks c JOIN documents d ON d.id = c.document_id
                  {'WHERE ' + ' AND '.join(where) if where else ''}
                  ORDER BY c.document_id, c.chunk_index LIMIT ? OFFSET ?"""
        rows = self.connection.execute(sql, [*params, limit, offset]).fetchall()
        return [StoredChunk(*row[:7], bool(row[7])) for row in rows]

    def documents(self) -> list[StoredDocument]:
        rows = self.connection.execute(
            """SELECT d.id, d.title, d.origin, d.sha256, d.metadata, d.ingested_at,
                      count(c.id), coalesce(sum(c.token_count), 0)
               FROM documents d LEFT JOIN chunks c ON c.document_id = d.id
               GROUP BY d.id ORDER BY d.ingested_at DESC, d.id DESC"""
        ).fetchall()
        return [StoredDocument(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    def source_domains(self) -> list[str]:
        return [r[0] for r in self.connection.execute("SELECT DISTINCT source_domain FROM chunks ORDER BY 1").fetchall()]

    def stats(self) -> dict:
        return knowledge_stats(self.connection)

    def register_sources(self, sources: list[Source], *, overwrite: bool = True) -> int:
        require_admin("editing the source registry")
        return upsert_sources(self.connection, sources, overwrite=overwrite)


def knowledge_stats(connection) -> dict:
    """Counts of documents, chunks, tokens and sources; needs only a connection, no model."""
    documents, chunks, tokens = connection.execute(
        "SELECT (SELECT count(*) FROM documents), count(*), coalesce(sum(token_count), 0) FROM chunks"
    ).fetchone()
    sources = connection.execute("SELECT count(*) FROM sources").fetchone()[0]
    return {"documents": documents, "chunks": chunks, "tokens": tokens, "sources": sources}
