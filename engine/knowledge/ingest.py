"""Batch ingestion: every file gets its own outcome; one bad file never stops or spoils the others."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.core.workers import Progress
from engine.knowledge.chunking import Chunker
from engine.knowledge.documents import SUPPORTED_SUFFIXES, DocumentError, ParsedDocument, parse_file
from engine.knowledge.knowledge_base import KnowledgeBase


@dataclass(frozen=True)
class FileOutcome:
    name: str
    status: str  # added | updated | unchanged | failed
    document_id: int | None = None
    chunk_count: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def ingest_files(
    kb: KnowledgeBase,
    chunker: Chunker,
    files: Iterable[tuple[str, bytes]],
    *,
    max_bytes: int | None = None,
    on_progress: Progress | None = None,
) -> list[FileOutcome]:
    """Each (name, content): a file's name, or its path inside an ingested folder, is what a later version replaces."""
    files = list(files)
    outcomes, stored = [], {}
    for done, (name, data) in enumerate(files):
        if on_progress:
            on_progress(done, len(files), f"Ingesting {name}")
        outcomes.append(ingest_one(kb, chunker, name, data, max_bytes=max_bytes, batch=stored))
    if on_progress:
        on_progress(len(files), len(files), "Done")
    return outcomes


def ingest_one(
    kb: KnowledgeBase, chunker: Chunker, name: str, data: bytes, *, max_bytes: int | None = None, batch: dict | None = None
) -> FileOutcome:
    """`batch` (origin -> content digest of the files stored so far in one ingestion): two different files under one
    name in the same batch are two documents, not a new version of the first, so the second is refused."""
    try:
        document = parse_file(name, data, max_bytes=max_bytes)
    except DocumentError as error:
        return FileOutcome(name, "failed", error=str(error))
    if batch is not None and batch.get(document.origin, document.sha256) != document.sha256:
        return FileOutcome(name, "failed", error=(
            f"another file of this batch is also called {name}, and a document is known by its file name (its path inside "
            "an ingested folder): rename one of them, or ingest the folder that holds both"))
    outcome = store_parsed(kb, chunker, name, document)
    if batch is not None and outcome.ok:
        batch[document.origin] = document.sha256
    return outcome


def store_parsed(kb: KnowledgeBase, chunker: Chunker, name: str, document: ParsedDocument) -> FileOutcome:
    """Chunk and store an already parsed document; known content is not re-embedded."""
    if kb.document_by_sha(document.sha256) is None:
        chunks = chunker.split(document.sections)
    else:
        chunks = []
    try:
        outcome = kb.store_document(document, chunks)
    except ValueError as error:
        return FileOutcome(name, "failed", error=str(error))
    return FileOutcome(name, outcome.status, outcome.document_id, outcome.chunk_count)


def collect_paths(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, name to ingest it by): files named directly by their name, the supported files inside named folders
    (recursively, sorted) by their path inside the folder, so that two README.md of two subfolders stay two documents."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
            found.extend((file, file.relative_to(path).as_posix()) for file in files)
        else:
            found.append((path, path.name))
    return found
