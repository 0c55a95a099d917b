"""Candidates from MLflow: real sqlite stores, and a real `mlflow server` whose HTTP requests are counted."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from engine.core.settings import load_settings
from engine.demo.registry import log_model
from engine.registry import candidate_cache, mlflow_candidates
from engine.registry.candidate_cache import CandidatesUnavailable, fetch_candidates
from engine.registry.candidates import candidate_sources
from engine.registry.mlflow_candidates import read_candidates, version_link
from engine.registry.saved_candidates import saved_snapshot_path

ROWS = np.random.default_rng(0).normal(size=(40, 3))
LABELS = (ROWS[:, 0] > 0).astype(int)
TAGS = {"use_case": "tumor-screening", "task": "binary-classification", "family": "linear"}
METRICS = {"roc_auc": 0.99, "f1": 0.97, "latency_p95_ms": 0.4, "model_size_mb": 0.002}


class Registry:
    """A real MLflow store, written the way a model team writes it: a run, a logged model, a registered version."""

    def __init__(self, tracking_uri: str, artifacts: Path):
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self.client.create_experiment(f"candidates-{time.monotonic_ns()}", artifact_location=artifacts.as_uri())

    def register(self, name: str, metrics: dict = METRICS, tags: dict = TAGS, description: str = ""):
        model = LogisticRegression().fit(ROWS, LABELS)
        return log_model(self.client, self.experiment_id, name, model, ROWS, params={"C": 1.0}, metrics=metrics,
                         tags=tags, description=description)


@pytest.fixture
def registry(settings) -> Registry:
    return Registry(settings.tracking_uri, settings.workspace / "mlartifacts")


# --- what a candidate is ---------------------------------------------------------------------------------------


def test_champion_version_is_used_else_the_latest(settings, registry):
    registry.register("tumor-screening-linear", {**METRICS, "roc_auc": 0.991}, description=" Second reader. ")
    registry.register("tumor-screening-linear", {**METRICS, "roc_auc": 0.995}, description=" Second reader. ")
    registry.client.set_registered_model_alias("tumor-screening-linear", "champion", "1")
    registry.register("tumor-screening-mlp", {**METRICS, "roc_auc": 0.981}, tags={**TAGS, "family": "mlp"})
    second = registry.register("tumor-screening-mlp", {**METRICS, "roc_auc": 0.982}, tags={**TAGS, "family": "mlp"})

    linear, mlp = read_candidates(settings)

    assert (linear.name, linear.version, linear.alias, linear.metrics["roc_auc"]) == ("tumor-screening-linear", "1", "champion", 0.991)
    assert linear.description == "Second reader."
    assert (mlp.version, mlp.alias, mlp.family, mlp.run_id) == ("2", None, "mlp", second.run_id)
    assert mlp.metrics == {**METRICS, "roc_auc": 0.982}
    assert (mlp.use_case, mlp.task, mlp.source_id, mlp.url) == (
        "tumor-screening", "binary-classification", "registry:tumor-screening-mlp", None)


def test_a_model_without_both_tags_is_not_a_candidate(settings, registry):
    registry.register("tagged", tags=TAGS)
    registry.register("untagged", tags={})
    registry.register("only-use-case", tags={"use_case": "tumor-screening"})
    registry.register("only-task", tags={"task": "regression"})
    registry.register("blank-use-case", tags={"use_case": "   ", "task": "regression"})

    assert [c.name for c in read_candidates(settings)] == ["tagged"]


def test_metrics_are_each_keys_latest_value_and_non_finite_ones_are_left_out(settings, registry):
    version = registry.register("tumor-screening-linear")
    registry.client.log_metric(version.run_id, "roc_auc", 0.975, step=1)
    registry.client.log_metric(version.run_id, "f1", float("nan"), step=1)

    [candidate] = read_candidates(settings)

    assert candidate.metrics == {"roc_auc": 0.975, "latency_p95_ms": 0.4, "model_size_mb": 0.002}


def test_odd_names_tags_and_versions_do_not_break_the_read(settings, registry):
    registry.register("tumor's screener", tags={"use_case": " tumor-screening ", "task": "binary-classification"})
    registry.register("""both'quote"kinds""")
    registry.register("no-run")
    artifact = registry.client.get_model_version("no-run", "1").source
    registry.client.create_model_version("no-run", artifact)  # registered from a file, without a run
    registry.client.set_registered_model_alias("no-run", "champion", "2")

    no_run, odd = read_candidates(settings)

    assert (odd.name, odd.use_case, odd.family, odd.source_id) == ("tumor's screener", "tumor-screening", "", "registry:tumor-s-screener")
    assert (no_run.version, no_run.alias, no_run.run_id, no_run.metrics) == ("2", "champion", "", {})
    sources = candidate_sources(fetch_candidates(settings))
    assert [(s.display_name, s.kind) for s in sources] == [("no-run v2", "model"), ("tumor's screener v1", "model")]


def test_the_databricks_path_chooses_the_same_versions(settings, registry):
    """Databricks cannot run here; its one-model-at-a-time path is checked against the batched one on sqlite."""
    registry.register("a-linear")
    registry.register("a-linear")
    registry.register("b-mlp")
    registry.client.set_registered_model_alias("b-mlp", "champion", "1")
    registry.register("b-mlp")
    registry.register("untagged", tags={})

    def chosen(read):
        return [(model.name, str(version.version)) for model, version in read(registry.client)]

    assert chosen(mlflow_candidates._chosen_one_model_at_a_time) == chosen(mlflow_candidates._chosen_batched)
    assert sorted(chosen(mlflow_candidates._chosen_batched)) == [("a-linear", "2"), ("b-mlp", "1")]


# --- cache --------------------------------------------------------------------------------------------------------


def test_reads_are_reused_for_the_ttl_then_refreshed(settings, registry):
    registry.register("first")
    snapshot = fetch_candidates(settings)
    registry.register("second")

    assert fetch_candidates(settings) is snapshot
    assert [c.name for c in fetch_candidates(settings, max_age_s=0).candidates] == ["first", "second"]
    no_ttl = load_settings(workspace=settings.workspace, candidates_ttl_s=0)
    registry.register("third")
    assert len(fetch_candidates(no_ttl).candidates) == 3


def test_past_the_ttl_the_last_read_answers_at_once_while_mlflow_is_read_again(settings, registry):
    short_ttl = load_settings(workspace=settings.workspace, candidates_ttl_s=0.2)
    registry.register("first")
    first = fetch_candidates(short_ttl)
    registry.register("second")
    time.sleep(0.3)

    assert fetch_candidates(short_ttl) is first  # stale, returned without waiting for MLflow
    deadline = time.monotonic() + 30
    while [c.name for c in fetch_candidates(short_ttl).candidates] != ["first", "second"]:
        assert time.monotonic() < deadline, "the background read never landed"
        time.sleep(0.05)
    assert not candidate_cache.refreshing()
    assert not any(key in os.environ for key in mlflow_candidates.QUICK_HTTP)  # its settings were put back


def test_the_last_good_read_is_saved_atomically(settings, registry):
    registry.register("tumor-screening-linear")
    snapshot = fetch_candidates(settings)

    path = saved_snapshot_path(settings)
    saved = json.loads(path.read_text())
    assert saved["tracking_uri"] == settings.tracking_uri
    assert saved["fetched_at"] == snapshot.fetched_at.isoformat()
    assert saved["candidates"][0]["metrics"] == METRICS
    assert [p.name for p in path.parent.iterdir()] == ["candidates.json"]  # no staging file left behind


def test_snapshot_helpers(settings, registry):
    registry.register("d-linear", tags={"use_case": "diabetes-progression", "task": "regression"})
    registry.register("t-linear")
    snapshot = fetch_candidates(settings)

    assert snapshot.use_cases() == ["diabetes-progression", "tumor-screening"]
    assert [c.name for c in snapshot.for_use_case("tumor-screening")] == ["t-linear"]
    assert snapshot.for_use_case("unknown") == ()
    assert 0 <= snapshot.age_seconds() < 60
    assert snapshot.error is None


# --- links --------------------------------------------------------------------------------------------------------


def test_links_to_model_version_pages(settings, databricks):
    def link(**uris):
        return version_link(load_settings(workspace=settings.workspace, **uris))

    assert link()("m", "1") is None  # a local sqlite store has no page
    assert link(mlflow_tracking_uri="http://mlflow.example:5000/")("tumor screening", "3") == \
        "http://mlflow.example:5000/#/models/tumor%20screening/versions/3"
    assert link(mlflow_tracking_uri="databricks", mlflow_registry_uri="databricks-uc")("main.ml.tumor", "3") == \
        f"{databricks.host}/explore/data/models/main/ml/tumor/version/3"
    assert link(mlflow_tracking_uri="databricks")("tumor screening", "3") == \
        f"{databricks.host}#mlflow/models/tumor%20screening/versions/3"


# --- a real MLflow server -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a sqlite store, started once for this module; yields (server URL, store URI, artifacts)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    store_uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=store_uri).search_experiments()  # create the schema before the server opens the file
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store_uri,
         "--default-artifact-root", str(root / "artifacts"), "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield url, store_uri, root / "artifacts"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


class CountingProxy:
    """A reverse proxy in a thread that forwards every request to MLflow and records its method and path."""

    def __init__(self, upstream: str):
        self.requests: list[str] = []
        target = urlparse(upstream)
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append(f"{self.command} {urlparse(self.path).path}")
                upstream_connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {key: value for key, value in self.headers.items() if key.lower() not in ("host", "connection")}
                upstream_connection.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream_connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream_connection.close()

            do_GET = do_POST = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(mlflow_server):
    counting = CountingProxy(mlflow_server[0])
    yield counting
    counting.close()


@pytest.fixture
def server_registry(mlflow_server) -> Registry:
    """Writes go straight to the server's sqlite store; the reads under test go through the server."""
    _, store_uri, artifacts = mlflow_server
    return Registry(store_uri, artifacts)


def test_a_fixed_number_of_requests_for_3_or_12_models(tmp_path, proxy, server_registry):
    settings = load_settings(workspace=tmp_path / "ws", mlflow_tracking_uri=proxy.url)
    run = time.monotonic_ns()
    for index in range(3):
        server_registry.register(f"count-{run}-{index}", {**METRICS, "roc_auc": 0.9 + index / 100})
    before = len(fetch_candidates(settings, max_age_s=0).candidates)
    proxy.requests.clear()
    three = fetch_candidates(settings, max_age_s=0)
    requests_for_three = list(proxy.requests)
    for index in range(3, 12):
        server_registry.register(f"count-{run}-{index}", {**METRICS, "roc_auc": 0.9 + index / 100})
    proxy.requests.clear()
    twelve = fetch_candidates(settings, max_age_s=0)

    assert len(twelve.candidates) == len(three.candidates) + 9 == before + 9
    assert sorted(proxy.requests) == sorted(requests_for_three) == [
        "GET /api/2.0/mlflow/model-versions/search",
        "GET /api/2.0/mlflow/registered-models/search",
        "POST /api/2.0/mlflow/experiments/search",
        "POST /api/2.0/mlflow/runs/search",
    ]
    mine = {c.name: c for c in twelve.candidates if c.name.startswith(f"count-{run}-")}
    assert [round(mine[f"count-{run}-{i}"].metrics["roc_auc"], 2) for i in range(12)] == [round(0.9 + i / 100, 2) for i in range(12)]
    assert mine[f"count-{run}-0"].url == f"{proxy.url}/#/models/count-{run}-0/versions/1"


def test_unreachable_mlflow_falls_back_to_the_last_read_even_after_a_restart(tmp_path, proxy, server_registry):
    settings = load_settings(workspace=tmp_path / "ws", mlflow_tracking_uri=proxy.url)
    server_registry.register(f"fallback-{time.monotonic_ns()}")
    good = fetch_candidates(settings, max_age_s=0)
    proxy.close()  # MLflow is now unreachable at this URI

    started = time.monotonic()
    stale = fetch_candidates(settings, max_age_s=0)
    assert time.monotonic() - started < 5
    assert stale.error == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert (stale.candidates, stale.fetched_at) == (good.candidates, good.fetched_at)
    assert fetch_candidates(settings) is stale  # the failure is remembered for the TTL: no second timeout

    restarted = subprocess.run(
        [sys.executable, "-c", "import json; from engine.registry.candidate_cache import fetch_candidates; "
         "from engine.core.settings import load_settings; "
         "s = fetch_candidates(load_settings()); "
         "print(json.dumps({'error': s.error, 'fetched_at': s.fetched_at.isoformat(), 'names': [c.name for c in s.candidates]}))"],
        env={**os.environ, "DEPLOYWISE_WORKSPACE": str(settings.workspace), "DEPLOYWISE_MLFLOW_TRACKING_URI": proxy.url},
        capture_output=True, text=True, timeout=120, check=True,
    )
    after_restart = json.loads(restarted.stdout.strip().splitlines()[-1])
    assert after_restart["error"] and after_restart["fetched_at"] == good.fetched_at.isoformat()
    assert after_restart["names"] == [c.name for c in good.candidates]


def test_a_background_read_that_fails_keeps_the_last_metrics_and_says_why(tmp_path, proxy, server_registry):
    settings = load_settings(workspace=tmp_path / "ws", mlflow_tracking_uri=proxy.url, candidates_ttl_s=0.2)
    server_registry.register(f"background-{time.monotonic_ns()}")
    good = fetch_candidates(settings)
    proxy.close()
    time.sleep(0.3)

    assert fetch_candidates(settings) is good  # past the TTL: answered at once, MLflow asked in the background
    deadline = time.monotonic() + 60
    while (latest := fetch_candidates(settings)).error is None:
        assert time.monotonic() < deadline, "the background read never reported the failure"
        time.sleep(0.05)
    assert "Connection refused" in latest.error
    assert (latest.candidates, latest.fetched_at) == (good.candidates, good.fetched_at)


def test_unreachable_with_nothing_saved_raises_quickly_and_keeps_files(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    settings = load_settings(workspace=tmp_path / "ws", mlflow_tracking_uri=uri)
    saved = saved_snapshot_path(settings)
    saved.parent.mkdir(parents=True)
    saved.write_text("{not json")

    started = time.monotonic()
    with pytest.raises(CandidatesUnavailable) as raised:
        fetch_candidates(settings)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert uri in message and "no earlier read is saved" in message and "Traceback" not in message
    assert saved.read_text() == "{not json"
