"""The workspace's services as the app and the CLI use them, and the embedded demo workspace.

Models load once per process (engine.models caches them); a knowledge base connection is cheap and is
opened per use, because SQLite connections must not be shared by concurrent Streamlit sessions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine import store
from engine.chunking import Chunker
from engine.demo_registry import DEMO_DIR, demo_registry_is_current, prepare_demo_registry
from engine.ingest import FileOutcome, Progress, collect_paths, ingest_files
from engine.knowledge_base import KnowledgeBase
from engine.models import load_tokenizer
from engine.settings import Settings

DEMO_CORPUS = DEMO_DIR / "knowledge"


def open_knowledge_base(settings: Settings) -> KnowledgeBase:
    settings.ensure_workspace()
    return KnowledgeBase.open(settings)


def make_chunker(settings: Settings) -> Chunker:
    return Chunker(load_tokenizer(settings.base_model), settings.chunk_tokens, settings.chunk_overlap)


def ingest_paths(settings: Settings, paths, on_progress: Progress | None = None) -> list[FileOutcome]:
    """Ingest files and folders from disk; unreadable paths become failed outcomes like any bad file."""
    kb = open_knowledge_base(settings)
    try:
        files, outcomes = [], []
        for path in collect_paths(paths):
            try:
                files.append((path.name, path.read_bytes()))
            except OSError as error:
                outcomes.append(FileOutcome(str(path), "failed", error=f"cannot read file: {error.strerror or error}"))
        outcomes += ingest_files(
            kb, make_chunker(settings), files, max_bytes=settings.max_upload_bytes, on_progress=on_progress
        )
        return outcomes
    finally:
        kb.connection.close()


def demo_is_current(settings: Settings, corpus: Path = DEMO_CORPUS) -> bool:
    """True when the demo corpus is in the knowledge base and the demo models are in the registry."""
    return demo_corpus_is_current(settings, corpus) and demo_registry_is_current(settings)


def demo_corpus_is_current(settings: Settings, corpus: Path = DEMO_CORPUS) -> bool:
    """True when every demo file's exact content is already in the knowledge base (no model loading needed)."""
    if not settings.knowledge_db.is_file():
        return False
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in collect_paths([corpus])]
    connection = store.connect(settings.knowledge_db)
    try:
        known = {row[0] for row in connection.execute("SELECT sha256 FROM documents")}
    finally:
        connection.close()
    return all(digest in known for digest in digests)


def prepare_demo(settings: Settings, on_progress: Progress | None = None, corpus: Path = DEMO_CORPUS) -> list[FileOutcome]:
    """Ingest the committed demo corpus and build the demo registry once; later calls return at once while
    nothing changed. Returns the corpus outcomes (the registry's models are reported through `on_progress`)."""
    outcomes = [] if demo_corpus_is_current(settings, corpus) else ingest_paths(settings, [corpus], on_progress=on_progress)
    prepare_demo_registry(settings, on_progress=on_progress)
    return outcomes
