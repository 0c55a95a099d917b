"""The committed demo corpus: every document cites a registered source, and `make run` ingests it once."""

from __future__ import annotations

import pytest

from engine.core.settings import load_settings
from engine.demo.workspace import DEMO_CORPUS, demo_corpus_is_current, demo_is_current, prepare_demo
from engine.knowledge import sources
from engine.knowledge.documents import parse_file
from engine.knowledge.search import hybrid_search
from engine.knowledge.workspace import ingest_paths, open_knowledge_base

DEMO_FILES = sorted(DEMO_CORPUS.glob("*.md"))


def test_corpus_is_committed():
    names = {path.name for path in DEMO_FILES}
    assert {"model-selection-guidelines.md", "deployment-decision-log.md", "dataset-breast-cancer.md"} <= names
    assert len([n for n in names if n.startswith("acceptance-criteria-")]) >= 3


@pytest.mark.parametrize("path", DEMO_FILES, ids=lambda p: p.name)
def test_every_demo_document_has_a_curated_source_whose_link_opens(path):
    """The team's documents have no web page of their own, so their citations open the app's Source page;
    the data set descriptions link to the real scikit-learn documentation they were copied from."""
    document = parse_file(path.name, path.read_bytes())
    [section] = document.sections
    assert not section.source.source_id.startswith("doc:"), "demo documents cite a curated id from front matter"
    if section.source.source_id.startswith("dataset:"):
        assert sources.is_web_url(section.source.url) and section.source.url.startswith("https://scikit-learn.org/")
    else:
        assert section.source.url is None


def test_prepare_ingests_once_and_is_searchable(settings):
    outcomes = prepare_demo(settings)
    assert outcomes and all(o.status == "added" for o in outcomes), [o for o in outcomes if not o.ok]
    assert len(outcomes) == len(DEMO_FILES)
    assert demo_is_current(settings)
    assert prepare_demo(settings) == []

    kb = open_knowledge_base(settings)
    try:
        registry = {s.source_id for s in sources.list_sources(kb.connection)}
        assert {"criteria:tumor-screening", "guideline:model-selection", "decisions:log", "dataset:diabetes"} <= registry
        hits = hybrid_search(kb, "what latency budget applies to breast tumour screening models", k=3)
        assert "criteria:tumor-screening" in [h.source_id for h in hits]
    finally:
        kb.connection.close()


def test_the_demo_is_current_only_with_its_registry(settings):
    ingest_paths(settings, [DEMO_CORPUS])
    assert demo_corpus_is_current(settings)
    assert not demo_is_current(settings)  # the demo models are not registered yet


def test_a_configured_mlflow_needs_only_the_corpus(tmp_path):
    settings = load_settings(workspace=tmp_path / "ws", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'team.db'}")
    ingest_paths(settings, [DEMO_CORPUS])
    assert demo_is_current(settings)
    assert prepare_demo(settings) == []
    assert not (tmp_path / "team.db").exists()
