"""One real browser against the real server: what AppTest cannot see (deep links, the websocket app, rendering).

Needs Debian's chromium (`.ci/run` installs it); skipped with a reason on a machine without it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.openai_server import OpenAIServer, decided_model, faithful_answer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ADMIN_PASSWORD = "browser test password"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_app(workspace: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """The real app (`streamlit run streamlit_app.py`) on `workspace`, until the block ends; yields its URL.

    The server's output goes to `streamlit.log` next to the workspace (a pipe nobody reads would block it)."""
    port, log_path = free_port(), workspace.parent / "streamlit.log"
    env = {**os.environ, "DEPLOYWISE_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-5000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def server(tmp_path):
    """The app on a one-document workspace (no models, no LLM): enough for navigation and search."""
    from engine.core.settings import load_settings
    from engine.knowledge.workspace import ingest_paths

    workspace = tmp_path / "workspace"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/criteria.md").write_text(
        "---\nsource_id: criteria:tumor-screening\nurl: https://wiki.example.com/c\nkind: guideline\n---\n"
        "# Tumour screening\nThe p95 latency budget is 10 ms; <script>alert('x')</script> stays text.\n"
    )
    assert all(o.ok for o in ingest_paths(load_settings(workspace=workspace), [tmp_path / "docs"]))
    subprocess.run([str(Path(sys.executable).with_name("deploywise")), "admin", "set-password"], input=ADMIN_PASSWORD + "\n",
                   env={**os.environ, "DEPLOYWISE_WORKSPACE": str(workspace)}, text=True, check=True, capture_output=True)
    with running_app(workspace) as url:
        yield url


@dataclass(frozen=True)
class DemoApp:
    url: str
    workspace: Path
    llm: OpenAIServer


@pytest.fixture
def demo_app(demo_copy):
    """The app on a fresh copy of the demo workspace (demo corpus, 12 trained models in a sqlite MLflow registry),
    its LLM a local OpenAI-compatible server that answers faithfully to the decision in the prompt."""
    workspace = demo_copy()
    with OpenAIServer(reply=faithful_answer) as llm:
        llm_env = {"DEPLOYWISE_LLM_BACKEND": "openai", "DEPLOYWISE_LLM_ENDPOINT": llm.url,
                   "DEPLOYWISE_LLM_MODEL": llm.model, "DEPLOYWISE_LLM_MAX_RETRIES": "0"}
        with running_app(workspace, llm_env) as url:
            yield DemoApp(url, workspace, llm)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def test_deep_link_to_the_knowledge_page_and_search(server, page):
    page.goto(f"{server}/knowledge")  # an admin page: the Log in page first, then the page itself
    page.get_by_text("The Knowledge page is for administrators. Log in as an administrator to open it.").wait_for(timeout=90_000)
    assert page.get_by_role("heading", name="Knowledge").count() == 0
    page.get_by_role("textbox", name="Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Knowledge").wait_for(timeout=90_000)
    assert page.get_by_text("KeyError").count() == 0
    nav = page.get_by_test_id("stSidebarNav")
    assert nav.get_by_text("Chat", exact=True).count() == 1 and nav.get_by_text("Knowledge", exact=True).count() == 1
    assert nav.get_by_text("streamlit app").count() == 0  # not Streamlit's pages/ fallback navigation
    page.get_by_role("tab", name="Search").click()
    page.get_by_label("Question or keywords").fill("how fast must tumour screening answer")
    page.keyboard.press("Enter")
    page.get_by_text("criteria:tumor-screening").filter(visible=True).first.wait_for(timeout=60_000)
    # The chunk's text arrives in the delta after its heading: wait for it rather than count at once.
    page.get_by_text("<script>alert('x')</script> stays text").filter(visible=True).first.wait_for(timeout=30_000)
    assert page.locator("script", has_text="alert('x')").count() == 0
    page.get_by_role("link", name="Chat").click()
    page.get_by_role("heading", name="Which model should I deploy?").wait_for(timeout=30_000)


def full_page_screenshot(page, path: Path) -> None:
    """Streamlit scrolls inside its main section, not the document, so `full_page=True` alone would show one
    viewport: grow the viewport to the section's full height for the shot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    height = page.locator(".stMain").evaluate("main => main.scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], height)})
    try:
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(viewport)


def assert_links_to(link, url: str) -> None:
    """The link is there and leads to `url` (its href resolved against the page; the query compared decoded)."""
    from playwright.sync_api import expect

    expect(link).to_have_count(1)
    href = urlsplit(link.evaluate("a => a.href"))
    expected = urlsplit(url)
    assert (href.scheme, href.netloc, href.path, parse_qs(href.query), href.fragment) == (
        expected.scheme, expected.netloc, expected.path, parse_qs(expected.query), expected.fragment), href.geturl()


@contextmanager
def knowledge_base(workspace: Path):
    """The workspace's knowledge base, as the app writes it (answers, feedback), opened for the length of a block."""
    from engine.core.settings import load_settings
    from engine.knowledge.workspace import open_knowledge_base

    kb = open_knowledge_base(load_settings(workspace=workspace))
    try:
        yield kb
    finally:
        kb.connection.close()


def stored_feedback(workspace: Path, answer_id: int):
    from engine.answering.records import feedback_for

    with knowledge_base(workspace) as kb:
        feedback = feedback_for(kb.connection, answer_id)
    assert feedback is not None, f"no feedback stored for answer {answer_id}"
    return feedback


TUMOR_QUESTION = "Which model should I deploy for tumour screening?"
LLM_DELAY_S = 45  # how long the LLM waits before it answers the first question of the chat test (cold start)
WARM_LLM_DELAY_S = 15  # and the second one
SCREENSHOT = ROOT / "build/screenshots/chat-answer.png"


def test_a_question_gets_a_verified_answer_with_source_links_evidence_and_feedback(demo_app, page):
    from playwright.sync_api import expect

    from engine.answering.citations import resolve_citations
    from engine.answering.records import recent_answers

    page.goto(demo_app.url)
    page.get_by_role("heading", name="Which model should I deploy?").wait_for(timeout=90_000)
    page.get_by_test_id("stChatInputTextArea").fill(TUMOR_QUESTION)
    demo_app.llm.slow_s, demo_app.llm.failure = LLM_DELAY_S, "slow"  # the LLM takes its time: the decision must not wait
    pressed = time.perf_counter()
    page.keyboard.press("Enter")
    answer = page.get_by_test_id("stChatMessage").filter(has=page.get_by_test_id("stChatMessageAvatarAssistant"))
    answer.get_by_text(re.compile(r"^Recommendation: tumor-screening-")).wait_for(timeout=LLM_DELAY_S * 1000)
    to_recommendation = time.perf_counter() - pressed
    print(f"\nEnter -> recommendation on screen: {to_recommendation:.1f} s (first question, embedder loaded cold)")
    assert to_recommendation < LLM_DELAY_S and len(demo_app.llm.requests) == 1  # shown while the LLM was still asked
    # Then the explanation streams in below it, and the page reruns to show the stored answer, captioned.
    page.get_by_text(re.compile(r" · answer #\d+$")).wait_for(timeout=180_000)
    demo_app.llm.failure = None

    with knowledge_base(demo_app.workspace) as kb:
        [record] = recent_answers(kb.connection)
        citations = resolve_citations(kb.connection, record.answer + "\n\n" + record.explanation, log=False)
    assert (record.question, record.use_case, record.answer_origin, record.explanation_state) == (
        TUMOR_QUESTION, "tumor-screening", "deterministic", "kept"), record.verification
    assert record.recommended_model == decided_model(demo_app.llm.requests[0].body["messages"])

    expect(answer).to_have_count(1, timeout=30_000)
    expect(answer.get_by_text(re.compile(rf"^Decided by the team's rules · Explained by the LLM, every sentence verified "
                                         rf"\(openai:.*\) · .* · answer #{record.id}$"))).to_be_visible()
    expect(answer.get_by_text(f"Recommendation: {record.recommended_model}")).to_be_visible()
    expect(answer.get_by_text(re.compile(rf"^{record.recommended_model} \[1\] is the one to deploy because"))).to_be_visible()

    # Citations: numbered links, listed under Sources with their display names. A citation opens the source
    # registry's http(s) URL when it has one, else the app's own Source page (a model of a sqlite MLflow
    # registry has no web page; the demo documents carry no URL).
    assert {c.source_id for c in citations} >= {f"registry:{record.recommended_model}", "criteria:tumor-screening"}
    assert all(c.known for c in citations)
    body, explanation, heading, sources = (answer.get_by_test_id("stMarkdownContainer").nth(n) for n in range(4))
    expect(heading).to_have_text("Sources")
    targets = {citation.url or f"{demo_app.url}/source?id={citation.source_id}" for citation in citations}
    for citation in citations:
        target = citation.url or f"{demo_app.url}/source?id={citation.source_id}"
        assert_links_to(body.get_by_role("link", name=f"[{citation.number}]", exact=True).first, target)
        assert_links_to(sources.get_by_role("link", name=citation.display_name, exact=True), target)
        expect(sources).to_contain_text(f"{citation.number}. {citation.display_name} ({citation.source_id})")
    assert_links_to(explanation.get_by_role("link", name="[1]", exact=True),
                    f"{demo_app.url}/source?id=registry:{record.recommended_model}")
    hrefs = answer.get_by_role("link").evaluate_all("links => links.map(link => link.href)")
    assert hrefs and {unquote(href) for href in hrefs} <= {unquote(target) for target in targets}  # no other link
    expect(page.locator("body")).not_to_contain_text("<<")
    expect(page.locator("body")).not_to_contain_text("SRC:")
    model = next(c for c in citations if c.source_id.startswith("registry:"))
    with page.context.expect_page() as opened:  # the model's Source page, in a new tab
        body.get_by_role("link", name=f"[{model.number}]", exact=True).click()
    expect(opened.value.get_by_role("heading", name=model.display_name, exact=True)).to_be_visible(timeout=60_000)
    opened.value.close()

    # The evidence: every candidate with its standing, then each criterion checked.
    evidence = answer.get_by_test_id("stExpander").filter(has_text="Candidates and criteria check")
    evidence.get_by_text("Candidates and criteria check").click()
    expect(evidence.locator("details")).to_have_attribute("open", "")
    tables = evidence.get_by_test_id("stDataFrame")
    expect(tables).to_have_count(2)
    candidates_table = tables.first
    # Glide draws the table on a canvas; its accessible copy inside the canvas holds the cell texts.
    expect(candidates_table.locator("th").first).to_have_text("model", timeout=30_000)
    expect(candidates_table.locator("th")).to_contain_text(["model", "version", "family", "passes hard criteria", "standing"])
    ranked = [row["name"] for row in record.decision["candidates"]]
    assert ranked[0] == record.recommended_model and len(ranked) == len(record.candidates) > 1
    expect(candidates_table.locator("td[aria-colindex='1']")).to_have_text(ranked)
    expect(candidates_table.locator("tr[aria-rowindex='2'] td")).to_contain_text([record.recommended_model, "yes", "recommended"])
    expect(tables.nth(1).locator("th")).to_have_text(["model", "criterion", "value", "result"], timeout=30_000)

    # Thumbs-down asks what was wrong; sending the form stores it with the answer.
    thumbs_down = answer.get_by_role("radio", name="Thumbs down")
    thumbs_down.click()
    expect(thumbs_down).to_have_attribute("aria-checked", "true")
    what_was_wrong = answer.get_by_label("What was wrong?")
    expect(what_was_wrong).to_be_visible(timeout=30_000)  # the form shows in the rerun that stored the thumb
    assert stored_feedback(demo_app.workspace, record.id).rating == 0
    what_was_wrong.fill("The latency budget was measured on the wrong hardware.")
    answer.get_by_label("The right answer (optional)").fill("tumor-screening-mlp")
    answer.get_by_role("button", name="Send").click()
    expect(answer.get_by_text("Thanks: an admin will review this answer.")).to_be_visible(timeout=30_000)
    feedback = stored_feedback(demo_app.workspace, record.id)
    assert (feedback.rating, feedback.what_was_wrong, feedback.correct_answer) == (
        0, "The latency budget was measured on the wrong hardware.", "tumor-screening-mlp")

    expect(page.get_by_test_id("stException")).to_have_count(0)
    full_page_screenshot(page, SCREENSHOT)

    # A second question, caches warm: the recommendation again comes while the LLM still has not answered.
    demo_app.llm.slow_s, demo_app.llm.failure = WARM_LLM_DELAY_S, "slow"
    page.get_by_test_id("stChatInputTextArea").fill("Which model should ship for digit recognition in the mobile app?")
    pressed = time.perf_counter()
    page.keyboard.press("Enter")
    answer.get_by_text(re.compile(r"^Recommendation: digit-recognition-")).wait_for(timeout=WARM_LLM_DELAY_S * 1000)
    to_recommendation = time.perf_counter() - pressed
    print(f"Enter -> recommendation on screen: {to_recommendation:.1f} s (second question, warm)")
    assert to_recommendation < WARM_LLM_DELAY_S and len(demo_app.llm.requests) == 2
    page.get_by_text(re.compile(r" · answer #2$")).wait_for(timeout=180_000)
    demo_app.llm.failure = None
