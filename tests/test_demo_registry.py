"""The demo registry, built once for this module from really trained models: the documents' story on logged metrics."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import mlflow.sklearn
import pytest
from mlflow import MlflowClient

from engine.core.settings import load_settings
from engine.demo.registry import (
    DEMO_DIR,
    DEMO_MODEL_NAMES,
    EXPERIMENT,
    QUALITY_METRICS,
    RECIPE_TAG,
    SERVING_METRICS,
    USE_CASES,
    demo_registry_is_current,
    demo_rulebook,
    prepare_demo_registry,
    quality,
    registry_report,
    report_path,
    split,
)
from engine.registry.mlflow_candidates import read_candidates
from engine.rules.decision import decide


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(settings, models returned, progress calls, seconds taken) of one build into a fresh workspace."""
    settings = load_settings(workspace=tmp_path_factory.mktemp("demo") / "workspace", mlflow_tracking_uri=None,
                             mlflow_registry_uri=None)
    settings.ensure_workspace()
    progress = []
    started = time.perf_counter()
    built = prepare_demo_registry(settings, on_progress=lambda *call: progress.append(call))
    return settings, built, progress, time.perf_counter() - started


@pytest.fixture(scope="module")
def logged(demo):
    return {c.name: c for c in read_candidates(demo[0])}


@pytest.fixture(scope="module")
def rules(logged):
    """Every demo use case's rules, read from the demo corpus as the chat reads them."""
    books = [demo_rulebook(use_case.name, list(logged.values())) for use_case in USE_CASES]
    return SimpleNamespace(criteria=[c for book in books for c in book.criteria], policies=[b.policy for b in books if b.policy])


def hard_failures(candidate, rules) -> list[str]:
    return [c.metric for c in rules.criteria if c.use_case == candidate.use_case and c.hard
            and not c.holds_for(candidate.metrics.get(c.metric))]


def budget(rules, use_case: str, metric: str) -> float:
    [criterion] = [c for c in rules.criteria if c.use_case == use_case and c.metric == metric and c.hard]
    return criterion.threshold


def test_twelve_models_are_built_quickly_with_progress(demo, logged):
    settings, built, progress, seconds = demo
    assert sorted(c.name for c in built) == sorted(DEMO_MODEL_NAMES) == sorted(logged)
    assert len(DEMO_MODEL_NAMES) == 12
    assert seconds < 90, f"building the demo registry took {seconds:.0f} s"
    assert [(done, total) for done, total, _ in progress] == [(i, 12) for i in range(13)]
    assert progress[0][2] == "Training and measuring tumor-screening-linear"


def test_every_model_logs_every_metric_the_guideline_names(logged):
    for candidate in logged.values():
        expected = {*QUALITY_METRICS[candidate.task], *SERVING_METRICS}
        assert set(candidate.metrics) == expected, candidate.name
        assert candidate.metrics["latency_p95_ms"] >= candidate.metrics["latency_p50_ms"] > 0
        assert candidate.metrics["model_size_mb"] > 0 and candidate.metrics["training_time_s"] > 0


def test_tags_descriptions_and_one_champion_per_use_case(logged, rules):
    for use_case in USE_CASES:
        models = [c for c in logged.values() if c.use_case == use_case.name]
        assert {c.family for c in models} == {"linear", "gradient-boosting", "random-forest", "mlp"}
        assert {(c.task, c.description) for c in models} == {(use_case.task, use_case.purpose)}
        assert all(c.name == f"{use_case.name}-{c.family}" for c in models)
        [champion] = [c for c in models if c.alias == "champion"]
        assert not hard_failures(champion, rules), f"{champion.name} holds champion but fails a hard criterion"
        if use_case.name in ("tumor-screening", "diabetes-progression"):  # decisions:log names these champions
            assert champion.family == "linear"
        else:  # "the best-ranked candidate that passed all hard criteria", which "also met the soft f1 criterion"
            criteria = [c for c in rules.criteria if c.use_case == use_case.name]
            [policy] = [p for p in rules.policies if p.use_case == use_case.name]
            assert decide(use_case.name, models, criteria, policy).recommended == champion
            assert all(c.holds_for(champion.metrics.get(c.metric)) for c in criteria if not c.hard)


def test_the_documents_story_holds_on_the_logged_metrics(logged, rules):
    tumor = [c for c in logged.values() if c.use_case == "tumor-screening"]
    most_discriminating = max(tumor, key=lambda c: c.metrics["roc_auc"])
    assert most_discriminating.family == "random-forest"
    assert hard_failures(most_discriminating, rules) == ["latency_p95_ms"]
    assert most_discriminating.metrics["latency_p95_ms"] > 1.5 * budget(rules, "tumor-screening", "latency_p95_ms")

    forest = logged["diabetes-progression-random-forest"]
    assert "model_size_mb" in hard_failures(forest, rules)
    assert forest.metrics["model_size_mb"] > 1.5 * budget(rules, "diabetes-progression", "model_size_mb")

    mlp = logged["digit-recognition-mlp"]
    assert hard_failures(mlp, rules) == ["model_size_mb"]
    assert mlp.metrics["model_size_mb"] > 1.4 * budget(rules, "digit-recognition", "model_size_mb")
    assert mlp.metrics["accuracy"] >= logged["digit-recognition-linear"].metrics["accuracy"]  # "competitive on accuracy"

    for use_case in USE_CASES:
        assert any(not hard_failures(c, rules) for c in logged.values() if c.use_case == use_case.name), use_case.name


def test_logged_metrics_are_what_the_registered_model_really_does(demo, logged):
    """No invented numbers: the registered artefact, loaded back, reproduces its logged quality and size."""
    client = MlflowClient(tracking_uri=demo[0].tracking_uri)
    for use_case in USE_CASES:
        candidate = logged[f"{use_case.name}-linear"]
        model = mlflow.sklearn.load_model(client.get_model_version(candidate.name, candidate.version).source)
        _, X_test, _, y_test = split(use_case)
        assert quality(use_case.task, model, X_test, y_test) == pytest.approx(
            {k: candidate.metrics[k] for k in QUALITY_METRICS[use_case.task]}, rel=1e-12)
    for candidate in logged.values():  # model_size_mb is the registered artefact's size on disk, to the byte
        artefact = Path(urlparse(client.get_model_version(candidate.name, candidate.version).source).path) / "model.pkl"
        assert artefact.stat().st_size / 1_048_576 == candidate.metrics["model_size_mb"], candidate.name


def test_runs_record_the_recipe_and_split(demo, logged):
    client = MlflowClient(tracking_uri=demo[0].tracking_uri)
    run = client.get_run(logged["tumor-screening-random-forest"].run_id)
    assert run.data.params["estimator"] == "RandomForestClassifier(n_estimators=500, random_state=0)"
    assert (run.data.params["split_seed"], run.data.params["test_rows"], run.data.params["threads"]) == ("2", "143", "1")
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT


def test_the_report_shows_the_logged_metrics(demo, logged, rules):
    settings = demo[0]
    written = report_path(settings).read_text()
    regenerated = registry_report(list(logged.values()))
    assert _without_dates(written) == _without_dates(regenerated)
    for name, candidate in logged.items():
        row = next(line for line in written.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{candidate.metrics['latency_p95_ms']:.3f}" in row and f"{candidate.metrics['model_size_mb']:.3f}" in row
        assert row.rstrip(" |").endswith(", ".join(_failed_labels(candidate, rules)) or "—")


def test_the_committed_report_has_the_same_structure(demo):
    """demo/REGISTRY.md is a copy of a generated report: same sections, columns and models (numbers differ by machine)."""
    committed = (DEMO_DIR / "REGISTRY.md").read_text()
    generated = report_path(demo[0]).read_text()
    assert _structure(committed) == _structure(generated)
    assert "deploywise demo prepare" in committed and "Measured on:" in committed


def test_a_second_call_does_nothing(demo):
    settings = demo[0]
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    started = time.perf_counter()
    assert demo_registry_is_current(settings)
    assert prepare_demo_registry(settings) == []
    assert time.perf_counter() - started < 5
    assert all(len(client.search_model_versions(f"name = '{name}'")) == 1 for name in DEMO_MODEL_NAMES)


def test_a_configured_mlflow_is_never_written(tmp_path):
    store = tmp_path / "team-mlflow.db"
    settings = load_settings(workspace=tmp_path / "ws", mlflow_tracking_uri=f"sqlite:///{store}")
    assert demo_registry_is_current(settings)
    assert prepare_demo_registry(settings) == []
    assert not store.exists()


def test_a_missing_workspace_store_is_not_created_by_the_check(tmp_path):
    settings = load_settings(workspace=tmp_path / "ws")
    assert not demo_registry_is_current(settings)
    assert not (tmp_path / "ws" / "mlflow.db").exists()


def test_a_use_case_from_an_older_recipe_is_built_again(demo):
    """Last in this module: it adds versions. Only the outdated use case is rebuilt, and the champion moves along."""
    settings = demo[0]
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    client.set_registered_model_tag("diabetes-progression-mlp", RECIPE_TAG, "0")
    assert not demo_registry_is_current(settings)

    rebuilt = prepare_demo_registry(settings)

    assert sorted(c.name for c in rebuilt) == sorted(n for n in DEMO_MODEL_NAMES if n.startswith("diabetes-progression-"))
    assert {c.version for c in rebuilt} == {"2"}
    assert str(client.get_registered_model("diabetes-progression-linear").aliases["champion"]) == "2"
    assert len(client.search_model_versions("name = 'tumor-screening-linear'")) == 1
    assert demo_registry_is_current(settings)


def _failed_labels(candidate, rules) -> list[str]:
    return [c.label.removesuffix(" (hard)") for c in rules.criteria if c.use_case == candidate.use_case and c.hard
            and not c.holds_for(candidate.metrics.get(c.metric))]


def _without_dates(report: str) -> str:
    return re.sub(r"\d{4}-\d{2}-\d{2} UTC", "<date>", report)


def _structure(report: str) -> list[str]:
    """Headings, table headers and model names (with the champion marker), without any measured value."""
    lines = []
    for line in report.splitlines():
        if line.startswith(("#", "| model |")):
            lines.append(line)
        elif match := re.match(r"\| `([^`]+)` \| \d+( \(champion\))? \|", line):
            lines.append(match.group(1) + (match.group(2) or ""))
    return lines
