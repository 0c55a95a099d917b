"""The embedded demo workspace: the committed corpus ingested and the demo registry's models trained, once.

Apart from engine.knowledge.workspace so that opening a knowledge base (every chat page) does not import scikit-learn.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.core import database
from engine.core.paths import DEMO_DIR
from engine.core.settings import Settings
from engine.core.workers import Progress
from engine.demo.registry import demo_registry_is_current, prepare_demo_registry
from engine.knowledge.ingest import FileOutcome, collect_paths
from engine.knowledge.workspace import ingest_paths

DEMO_CORPUS = DEMO_DIR / "knowledge"


def demo_is_current(settings: Settings, corpus: Path = DEMO_CORPUS) -> bool:
    """True when the demo corpus is in the knowledge base and the demo models are in the registry."""
    return demo_corpus_is_current(settings, corpus) and demo_registry_is_current(settings)


def demo_corpus_is_current(settings: Settings, corpus: Path = DEMO_CORPUS) -> bool:
    """True when every demo file's exact content is already in the knowledge base (no model loading needed)."""
    if not settings.knowledge_db.is_file():
        return False
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in collect_paths([corpus])]
    connection = database.connect(settings.knowledge_db)
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
