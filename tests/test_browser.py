"""One real browser against the real server: what AppTest cannot see (deep links, the websocket app, rendering).

Needs Debian's chromium (`.ci/run` installs it); skipped with a reason on a machine without it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    from engine.settings import load_settings
    from engine.workspace import ingest_paths

    workspace = tmp_path / "workspace"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/criteria.md").write_text(
        "---\nsource_id: criteria:tumor-screening\nurl: https://wiki.example.com/c\nkind: guideline\n---\n"
        "# Tumour screening\nThe p95 latency budget is 10 ms; <script>alert('x')</script> stays text.\n"
    )
    assert all(o.ok for o in ingest_paths(load_settings(workspace=workspace), [tmp_path / "docs"]))
    port = free_port()
    env = {**os.environ, "DEPLOYWISE_WORKSPACE": str(workspace), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not start: {process.stderr.read()}")
    yield url
    process.terminate()
    process.wait(timeout=20)


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
    page.goto(f"{server}/knowledge")
    page.get_by_role("heading", name="Knowledge").wait_for(timeout=90_000)
    assert page.get_by_text("KeyError").count() == 0
    nav = page.get_by_test_id("stSidebarNav")
    assert nav.get_by_text("Chat", exact=True).count() == 1 and nav.get_by_text("Knowledge", exact=True).count() == 1
    assert nav.get_by_text("streamlit app").count() == 0  # not Streamlit's pages/ fallback navigation
    page.get_by_role("tab", name="Search").click()
    page.get_by_label("Question or keywords").fill("how fast must tumour screening answer")
    page.keyboard.press("Enter")
    page.get_by_text("criteria:tumor-screening").filter(visible=True).first.wait_for(timeout=60_000)
    assert page.get_by_text("<script>alert('x')</script> stays text").filter(visible=True).count() >= 1
    page.get_by_role("link", name="Chat").click()
    page.get_by_role("heading", name="Which model should I deploy?").wait_for(timeout=30_000)
