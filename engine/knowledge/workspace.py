"""The workspace's services as the app and the CLI use them (the embedded demo workspace: engine.demo.workspace).

Models load once per process (engine.llm.bundled caches them); a knowledge base connection is cheap and is
opened per use, because SQLite connections must not be shared by concurrent Streamlit sessions.
"""

from __future__ import annotations

from engine.core.settings import Settings
from engine.core.workers import Progress
from engine.knowledge.chunking import Chunker
from engine.knowledge.ingest import FileOutcome, collect_paths, ingest_files
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.llm.bundled import load_tokenizer


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
        for path, name in collect_paths(paths):
            try:
                files.append((name, path.read_bytes()))
            except OSError as error:
                outcomes.append(FileOutcome(str(path), "failed", error=f"cannot read file: {error.strerror or error}"))
        outcomes += ingest_files(
            kb, make_chunker(settings), files, max_bytes=settings.max_upload_bytes, on_progress=on_progress
        )
        return outcomes
    finally:
        kb.connection.close()
