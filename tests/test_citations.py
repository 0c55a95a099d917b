"""Citation markers: finding, resolving through the real registry, safe markdown for untrusted model output.

Rendered markdown is checked as a reader sees it (tests/rendered_markdown.py).
"""

from __future__ import annotations

import time

import pytest
from markdown_it import MarkdownIt

from engine.answering.citations import (
    MAX_SOURCE_ID_CHARS,
    Citation,
    cited_chunks,
    find_markers,
    render_answer_markdown,
    resolve_citations,
    sources_list,
    strip_markers,
)
from engine.core.database import connect
from engine.knowledge.search import SearchHit
from engine.knowledge.sources import Source, unknown_sources, upsert_sources
from tests.rendered_markdown import parse

GUIDE_URL = "https://wiki.example.com/ml-platform/acceptance-criteria/tumor-screening"


@pytest.fixture
def connection(tmp_path):
    connection = connect(tmp_path / "k.sqlite")
    upsert_sources(connection, [
        Source("criteria:tumor-screening", "Acceptance criteria — tumour screening", GUIDE_URL, "guideline"),
        Source("registry:ts-boosting", "ts-boosting in the model registry", None, "model"),
        Source("doc:allocations-guide.pdf:page-15", "Allocations guide, page 15", "https://docs.example.com/guide.pdf#page=15"),
    ])
    yield connection
    connection.close()


def test_find_markers_in_order_of_first_appearance_with_every_entity_character():
    text = ("A <<SRC:registry:tumor-screening-linear>> B <<SRC:doc:allocations-guide.pdf:page-15>> "
            "C <<SRC:registry:tumor-screening-linear>> D <<SRC:uc:main.gold_roses/notes:row_7>>")
    assert find_markers(text) == ["registry:tumor-screening-linear", "doc:allocations-guide.pdf:page-15",
                                  "uc:main.gold_roses/notes:row_7"]


@pytest.mark.parametrize("text", [
    "<<SRC:Doc:x>>",  # uppercase domain
    "<<SRC:doc>>", "<<SRC:doc:>>", "<<SRC::x>>", "<<SRC:>>",
    "<<SRC:doc:a b>>",  # space inside the id
    "<<SRC:doc:x\n>>", "<<SRC:\ndoc:x>>",  # a marker is on one line
    "<<SRC:doc:x](javascript:alert(1))>>",
    "<<src:doc:x>>", "<SRC:doc:x>", "<<SRC:doc:x>",
    "<<SRC:doc:" + "a" * MAX_SOURCE_ID_CHARS + ">>",
])
def test_malformed_markers_are_not_markers(text):
    assert find_markers(text) == []
    assert strip_markers(text) == text


def test_spaces_inside_the_brackets_are_accepted_and_long_ids_within_the_limit_too():
    long_id = "doc:" + "a" * 296
    assert find_markers(f"<< SRC: criteria:tumor-screening >> <<\tSRC :doc:x>> <<<<SRC:{long_id}>>>>") == [
        "criteria:tumor-screening", "doc:x", long_id]


def test_strip_markers_removes_markers_and_the_space_before_them():
    text = "ts-boosting passes <<SRC:criteria:tumor-screening>>. Ranked first <<SRC:registry:ts-boosting>><<SRC:doc:x>>\n- ok"
    assert strip_markers(text) == "ts-boosting passes. Ranked first\n- ok"


def test_citations_are_numbered_and_resolved_through_the_registry(connection):
    text = ("Use ts-boosting <<SRC:registry:ts-boosting>> within budget <<SRC:criteria:tumor-screening>>, "
            "as decided <<SRC:registry:ts-boosting>> <<SRC:decision:made-up>>")
    citations = resolve_citations(connection, text, context="which model for tumour screening?")
    assert citations == [
        Citation(1, "registry:ts-boosting", "ts-boosting in the model registry", None, True),
        Citation(2, "criteria:tumor-screening", "Acceptance criteria — tumour screening", GUIDE_URL, True),
        Citation(3, "decision:made-up", "decision:made-up", None, False),
    ]
    logged = unknown_sources(connection)
    assert [(row["source_id"], row["context"]) for row in logged] == [("decision:made-up", "which model for tumour screening?")]


def test_showing_a_stored_answer_again_logs_nothing(connection):
    citations = resolve_citations(connection, "x <<SRC:decision:made-up>>", log=False)
    assert [c.known for c in citations] == [False]
    assert unknown_sources(connection) == []


def test_a_registry_row_with_a_javascript_url_never_becomes_a_link(connection):
    connection.execute("INSERT INTO sources(source_id, display_name, url, kind, updated_at) "
                       "VALUES ('doc:evil', 'Evil', 'javascript:alert(1)', 'document', '2024-01-01')")
    text = "a <<SRC:doc:evil>> b <<SRC:criteria:tumor-screening>>"
    citations = resolve_citations(connection, text)
    assert [(c.source_id, c.url, c.known) for c in citations] == [
        ("doc:evil", None, False), ("criteria:tumor-screening", GUIDE_URL, True)]
    page = parse(render_answer_markdown(text, citations))
    assert page.hrefs == [GUIDE_URL]
    assert "unknown source: doc:evil" in page.visible


def test_render_keeps_lines_bullets_and_bold_and_links_registry_urls_else_the_source_page(connection):
    text = ("Recommendation: **ts-boosting** <<SRC:registry:ts-boosting>>\n\nWhy:\n"
            "- ROC AUC 0.997 >= 0.98 <<SRC:criteria:tumor-screening>>\n* p95 latency 4.2 ms <<SRC:doc:allocations-guide.pdf:page-15>>\n"
            "Read <<SRC:doc:nowhere>> too")
    citations = resolve_citations(connection, text)
    assert MarkdownIt("commonmark").render(render_answer_markdown(text, citations)) == (
        '<p>Recommendation: <strong>ts-boosting</strong> <a href="source?id=registry:ts-boosting">[1]</a></p>\n'
        "<p>Why:</p>\n<ul>\n"
        f'<li>ROC AUC 0.997 &gt;= 0.98 <a href="{GUIDE_URL}">[2]</a></li>\n'
        '<li>p95 latency 4.2 ms <a href="https://docs.example.com/guide.pdf#page=15">[3]</a></li>\n</ul>\n'
        "<p>Read [unknown source: doc:nowhere] too</p>\n"
    )


HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "![](http://evil/pixel.png)",
    "<<SRC:doc:x](javascript:alert(1))>>",
    "<<<<SRC:<<SRC:criteria:tumor-screening>>>>",
    "[click][ref]\n\n[ref]: http://evil/",
    "<http://evil/> and http://evil.example/x and www.evil.example and mail me@evil.example",
    "# Heading\nTitle\n===\n> quote\n---",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "    indented code\n```\nfenced\n```\n`inline`",
    "$x^2$ and $$\\href{javascript:alert(1)}{x}$$ and :red[colour] :material/warning: &lt;b&gt; &#106;avascript",
    "<!-- comment --> <a href='javascript:alert(1)'>x</a> ~~gone~~ _em_ *em* \\*literal\\*",
    "1. one\n2) two\n+ plus",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_model_output_is_shown_as_text(connection, text):
    citations = resolve_citations(connection, text, log=False)
    page = parse(render_answer_markdown(text, citations))
    assert set(page.tags) <= {"p", "br", "ul", "li", "strong", "a"}
    assert set(page.hrefs) <= {GUIDE_URL}
    assert not page.linkable
    without_markers = text.replace("<<SRC:criteria:tumor-screening>>", "[1]")
    assert page.visible.replace("\n", "") == "".join(line.strip() for line in without_markers.splitlines())


def test_a_registry_url_cannot_break_out_of_its_link(connection):
    url = "https://wiki.example.com/a)![](http://evil/pixel.png) <b>x</b>"
    upsert_sources(connection, [Source("doc:tricky", "Tricky", url)])
    citations = resolve_citations(connection, "see <<SRC:doc:tricky>>")
    page = parse(render_answer_markdown("see <<SRC:doc:tricky>>", citations))
    assert page.tags == ["p", "a"]
    assert page.hrefs == ["https://wiki.example.com/a%29!%5B%5D%28http://evil/pixel.png%29%20%3Cb%3Ex%3C/b%3E"]
    assert page.visible == "see [1]"


def test_a_citation_with_a_non_web_url_opens_the_source_page():
    citation = Citation(1, "doc:x", "X", "javascript:alert(1)", True)
    page = parse(render_answer_markdown("a <<SRC:doc:x>>", [citation]))
    assert page.hrefs == ["source?id=doc:x"] and page.visible == "a [1]"


def test_a_100_kb_output_with_300_character_markers_renders_quickly_and_whole(connection):
    long_id = "doc:" + "x" * 296
    unit = f"**bold** <<SRC:{long_id}>> <<SRC:criteria:tumor-screening>> [a](javascript:x) <<SRC: {'y' * 300} {' ' * 200}\n"
    text = unit * (100_000 // len(unit) + 1)
    started = time.perf_counter()
    citations = resolve_citations(connection, text, context="q")
    markdown = render_answer_markdown(text, citations)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"rendering 100 KB took {elapsed:.1f} s"
    assert [c.source_id for c in citations] == [long_id, "criteria:tumor-screening"]
    assert [row["source_id"] for row in unknown_sources(connection)] == [long_id]
    page = parse(markdown)
    assert set(page.hrefs) == {GUIDE_URL} and page.tags.count("strong") == text.count("**bold**")
    assert page.visible.count(f"[unknown source: {long_id}]") == text.count(long_id)


def test_cited_chunks_back_each_source_in_citation_order():
    def hit(chunk_id: int, source_id: str) -> SearchHit:
        return SearchHit(chunk_id, 1, "Guide", f"text {chunk_id}", source_id, 1.0 / chunk_id, chunk_id, None)

    hits = [hit(1, "doc:guide.pdf:page-3"), hit(2, "criteria:tumor-screening"), hit(3, "doc:guide.pdf:page-30"),
            hit(4, "doc:guide.pdf-old:page-1"), hit(5, "doc:other.pdf")]
    citations = [Citation(2, "doc:guide.pdf", "Guide", None, True), Citation(1, "criteria:tumor-screening", "C", None, True),
                 Citation(3, "registry:ts-boosting", "M", None, True)]
    backing = cited_chunks(citations, hits)
    assert list(backing) == ["criteria:tumor-screening", "doc:guide.pdf"]
    assert [h.chunk_id for h in backing["doc:guide.pdf"]] == [1, 3]


def test_sources_list_links_like_the_citations_and_escapes_names():
    citations = [
        Citation(1, "criteria:tumor-screening", "Criteria ![](http://evil/p.png)", "https://wiki.example.com/c?a=1 b", True),
        Citation(2, "doc:x.pdf:page-2", "Handbook", None, True),
        Citation(3, "doc:gone", "doc:gone", None, False),
    ]
    rendered = sources_list(citations)
    assert rendered.count("](") == 2 and "<https://wiki.example.com/c?a=1%20b>" in rendered
    assert "(<source?id=doc:x.pdf:page-2>)" in rendered
    assert "![](" not in rendered and "unknown source" in rendered
