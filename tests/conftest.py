"""Shared fixtures: a fresh workspace per test, the real bundled tokenizer and embedding model (loaded once)."""

from __future__ import annotations

import os
import shutil
import tempfile

from ui import login

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from databricks_server import FakeDatabricks

from engine.core.settings import load_settings
from engine.demo.workspace import prepare_demo
from engine.knowledge.chunking import Chunker
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.knowledge.workspace import open_knowledge_base


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path):
    """No developer .env, secrets file or DEPLOYWISE_* variable leaks into a test."""
    for key in list(os.environ):
        if key.startswith("DEPLOYWISE_") and key != "DEPLOYWISE_CACHE_DIR":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _admin_sessions(request, monkeypatch):
    """Streamlit sessions in tests (AppTest) are a logged-in administrator, as the app's pages expect; tests of
    access control itself ask for `real_access` and get real sessions (anonymous until they log in). Test-only:
    the app has no setting that makes everyone an administrator."""
    from engine.access import roles

    if "real_access" not in request.fixturenames:
        monkeypatch.setattr(login, "session_identity", lambda: roles.Identity("test-admin", "local", True))


@pytest.fixture
def real_access():
    """Real access control in this test's Streamlit sessions (see `_admin_sessions`)."""


@pytest.fixture
def settings(tmp_path):
    settings = load_settings(workspace=tmp_path / "workspace")
    settings.ensure_workspace()
    return settings


@pytest.fixture
def kb(settings):
    knowledge_base = KnowledgeBase.open(settings)
    yield knowledge_base
    knowledge_base.connection.close()


@pytest.fixture
def chunker(kb, settings):
    from engine.llm.bundled import load_tokenizer

    return Chunker(load_tokenizer(settings.base_model), settings.chunk_tokens, settings.chunk_overlap)


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory):
    """The demo workspace exactly as `make run` prepares it (corpus and 12 trained models), built once per session."""
    workspace = tmp_path_factory.mktemp("demo-template") / "workspace"
    prepare_demo(load_settings(workspace=workspace))
    return workspace


@pytest.fixture(scope="session")
def demo_copy(demo_template, tmp_path_factory):
    """`demo_copy()` returns a fresh copy of the demo workspace, for tests that add answers, feedback or documents.

    The copy's MLflow runs still point at the template's artifact folders: fine for reading metrics."""
    return lambda: shutil.copytree(demo_template, tmp_path_factory.mktemp("demo") / "workspace")


@pytest.fixture(scope="module")
def demo_workspace(demo_copy):
    """The using module's own copy of the demo workspace: its tests may add answers, feedback or documents."""
    return demo_copy()


@pytest.fixture
def demo_kb(demo_workspace):
    """The knowledge base of the module's demo workspace, closed after the test."""
    knowledge_base = open_knowledge_base(load_settings(workspace=demo_workspace))
    yield knowledge_base
    knowledge_base.connection.close()


@pytest.fixture
def databricks(monkeypatch, tmp_path):
    """A running fake workspace, with the SDK's environment pointing at it and nothing else configured."""
    for key in list(os.environ):
        if key.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg of the developer
    with FakeDatabricks() as fake:
        monkeypatch.setenv("DATABRICKS_HOST", fake.host)
        monkeypatch.setenv("DATABRICKS_TOKEN", fake.token)
        yield fake


@pytest.fixture
def snapshot():
    """`snapshot(connection)` returns every row of every knowledge table, to prove a failed operation changed nothing."""
    return table_snapshot


def table_snapshot(connection) -> dict:
    """Every row of every knowledge table, to prove a failed operation changed nothing."""
    tables = ["documents", "chunks", "sources", "unknown_sources"]
    snapshot = {table: connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in tables}
    snapshot["chunk_vectors"] = connection.execute("SELECT chunk_id FROM chunk_vectors ORDER BY 1").fetchall()
    snapshot["chunks_fts"] = connection.execute("SELECT rowid FROM chunks_fts ORDER BY 1").fetchall()
    return {table: [tuple(row) for row in rows] for table, rows in snapshot.items()}


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real local Ray head with its Jobs API, started the way the app starts it, for the whole session; yields
    the dashboard port to put in the settings. Any Ray left on this machine is stopped first (a stale session
    makes `ray start` fail) and at the end; a lock file keeps two test sessions on one machine from doing that to
    each other."""
    import fcntl
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from training.ray_cluster import start_local_head

    lock = open(os.path.join(tempfile.gettempdir(), "deploywise-ray-tests.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.environ.pop("RAY_ADDRESS", None)
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "stop", "--force"], capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start_local_head(load_settings(workspace=tmp_path_factory.mktemp("ray") / "workspace", ray_dashboard_port=port, ray_num_cpus=2))
    yield port
    subprocess.run([ray, "stop", "--force"], capture_output=True)
    lock.close()


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory):
    """The tiny random Llama of tests/tiny_models.py, saved once per session."""
    from tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")
