"""What a citation opens: the Source page and the view behind it, on a copy of the demo workspace."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.answering.citations import source_page_link
from engine.core.settings import load_settings
from engine.knowledge.ingest import ingest_files
from engine.knowledge.sources import SourceError
from engine.knowledge.workspace import make_chunker, open_knowledge_base
from engine.registry.candidate_cache import fetch_candidates
from tests.rendered_markdown import parse
from ui.source_view import parse_source_id, source_view

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"


@pytest.fixture
def demo(demo_copy, monkeypatch):
    workspace = demo_copy()
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    settings = load_settings()
    kb = open_knowledge_base(settings)
    yield settings, kb
    kb.connection.close()


def open_source(link: str) -> AppTest:
    """The app opened on a citation's link, as a browser following it would."""
    page, _, query = link.partition("?")
    at = AppTest.from_file(str(APP), default_timeout=120)
    key, _, value = query.partition("=")
    at.query_params[key] = value
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def test_a_cited_document_shows_its_text(demo):
    _, kb = demo
    view = source_view(kb, "criteria:tumor-screening")
    assert view.entry.display_name == "Acceptance criteria — breast tumour screening" and view.entry.url is None
    assert view.chunks and {c.source_id for c in view.chunks} == {"criteria:tumor-screening"}
    assert "latency_p95_ms" in " ".join(c.text for c in view.chunks)


def test_a_cited_document_includes_its_pages(demo, tmp_path):
    from fpdf import FPDF

    settings, kb = demo
    pdf = FPDF()
    for text in ("First page on calibration checks.", "Second page on latency budgets."):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(text=text)
    assert ingest_files(kb, make_chunker(settings), [("handbook.pdf", bytes(pdf.output()))])[0].ok
    whole = source_view(kb, "doc:handbook.pdf")
    assert [c.source_id for c in whole.chunks] == ["doc:handbook.pdf:page-1", "doc:handbook.pdf:page-2"]
    assert [c.source_id for c in source_view(kb, "doc:handbook.pdf:page-2").chunks] == ["doc:handbook.pdf:page-2"]
    assert source_view(kb, "doc:handbook").chunks == []  # a prefix of the file name is another source


def test_a_cited_model_shows_its_metrics(demo):
    settings, kb = demo
    candidates = fetch_candidates(settings).candidates
    view = source_view(kb, "registry:tumor-screening-random-forest", candidates)
    assert view.candidate.name == "tumor-screening-random-forest"
    rows = {row["metric"]: row for row in view.metric_rows()}
    assert rows["p95 latency"]["value"].endswith(" ms") and rows["p95 latency"]["better"] == "lower"
    assert rows["ROC AUC"]["better"] == "higher"


@pytest.mark.parametrize("text", [None, "", "no-domain", "doc:<script>", "DOC:x", "doc:a b"])
def test_a_malformed_id_is_refused_with_what_an_id_looks_like(text):
    with pytest.raises(SourceError, match="domain:entity"):
        parse_source_id(text)


def test_the_page_shows_a_cited_document_with_its_original_link(demo):
    at = open_source(source_page_link("dataset:breast-cancer"))
    assert parse(at.title[0].value).visible == "Breast cancer Wisconsin (diagnostic) dataset (scikit-learn)"
    assert at.get("link_button")[0].proto.url.startswith("https://scikit-learn.org/")
    assert any("569" in text.value for text in at.text)


def test_the_page_shows_a_cited_model(demo):
    at = open_source(source_page_link("registry:tumor-screening-linear"))
    assert parse(at.title[0].value).visible.startswith("tumor-screening-linear")
    assert "ROC AUC" in set(at.dataframe[0].value["metric"])


def test_the_page_explains_unknown_and_malformed_ids(demo):
    assert "knows nothing about this source" in open_source(source_page_link("doc:never-ingested.pdf")).warning[0].value
    assert "does not name a source" in open_source("source?id=javascript:alert(1)").error[0].value
