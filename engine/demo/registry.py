"""The demo model registry: twelve real scikit-learn models, measured the way the team's documents require.

Three use cases on scikit-learn's bundled data sets, four families each (guideline:model-selection), registered
as `<use case>-<family>` with the `use_case`, `task` and `family` tags. Every metric is measured in this
process as guideline:latency-measurement prescribes: quality on a stratified held-out split, size of the
uncompressed pickle of the fitted pipeline, p50/p95 of single-row `predict` calls on the unpickled artefact.
Everything runs on one thread per model, as a serving worker does, which also keeps the build from fighting
other processes for a small machine's cores.

The hyperparameters are ordinary ones, sized so that the documents' story holds with a clear margin: a
500-tree forest is far over tumour screening's 10 ms p95 budget, a 300-tree forest far over diabetes' 5 MB,
a 768x768 MLP over digits' 10 MB, and both a 150-tree forest and 2,000 boosting trees (200 rounds x 10
classes) over digits' 5 ms, which leaves the small logistic regression as the digits champion.
The split seed is one under which the forest also ranks first on tumour screening's `roc_auc`, as in the
decision log of 2025-02-18; on most other splits logistic regression or the MLP ranks first there.

Only the workspace's own MLflow store is filled: a configured MLflow (a server, Databricks) is never written.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import pickle
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from mlflow.entities import LoggedModelStatus, Metric, Param
from mlflow.exceptions import MlflowException

from engine.core.mlflow_client import ensure_experiment, registry_client
from engine.core.paths import DEMO_DIR
from engine.core.workers import Progress
from engine.knowledge.documents import parse_file
from engine.registry.candidates import Candidate
from engine.registry.metric_keys import metric_spec
from engine.registry.mlflow_candidates import CHAMPION, all_pages, read_candidates
from engine.rules.decision import decide
from engine.rules.governance import governed_by, loosely_named_use_cases, named_use_cases, use_case_terms
from engine.rules.rulebook import Rulebook, RuleText, rules_from_texts

EXPERIMENT = "deploywise-demo-candidates"
RECIPE_TAG = "deploywise_demo"
RECIPE = "1"  # bump when a recipe below changes: the use cases built from an older one are built again
SPLIT_SEED = 2
MODEL_SEED = 0
TEST_SIZE = 0.25
WARMUP_CALLS = 10
TIMED_CALLS = 200


def _sklearn(name: str):
    """A scikit-learn class or function by its dotted name: scikit-learn is imported only to build the registry."""
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(f"sklearn.{module}"), attribute)


@dataclass(frozen=True)
class Recipe:
    family: str
    estimator: str  # "linear_model.LogisticRegression": a class of scikit-learn
    hyperparameters: dict = field(default_factory=dict)
    scaled: bool = False  # a StandardScaler in front, deployed (and timed, and sized) with the estimator

    def build(self):
        estimator = _sklearn(self.estimator)(**self.hyperparameters)
        return _sklearn("pipeline.make_pipeline")(_sklearn("preprocessing.StandardScaler")(), estimator) if self.scaled else estimator

    def summary(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters.items())
        return ("StandardScaler + " if self.scaled else "") + f"{self.estimator.rpartition('.')[2]}({arguments})"


@dataclass(frozen=True)
class UseCase:
    name: str
    task: str  # the registry tag, as the criteria document names it
    dataset: str  # "datasets.load_digits": scikit-learn's loader of the use case's data
    purpose: str  # the registered models' description, from the use case's criteria document
    recipes: tuple[Recipe, ...]

    def model_name(self, recipe: Recipe) -> str:
        return f"{self.name}-{recipe.family}"


USE_CASES = (
    UseCase(
        "tumor-screening", "binary-classification", "datasets.load_breast_cancer",
        "Classifies a breast mass as malignant or benign from the 30 nuclear features of a fine needle aspirate "
        "image, as the second reader of the pathology workstation plug-in (one region at a time, synchronously).",
        (
            Recipe("linear", "linear_model.LogisticRegression", {"max_iter": 1000}, scaled=True),
            Recipe("gradient-boosting", "ensemble.HistGradientBoostingClassifier", {"random_state": MODEL_SEED}),
            Recipe("random-forest", "ensemble.RandomForestClassifier", {"n_estimators": 500, "random_state": MODEL_SEED}),
            Recipe("mlp", "neural_network.MLPClassifier", {"hidden_layer_sizes": (64,), "max_iter": 1000, "random_state": MODEL_SEED},
                   scaled=True),
        ),
    ),
    UseCase(
        "diabetes-progression", "regression", "datasets.load_diabetes",
        "Forecasts a patient's disease progression one year after baseline from ten baseline variables, so the "
        "clinic's embedded scheduling device can propose how soon to book the follow-up.",
        (
            Recipe("linear", "linear_model.LinearRegression", scaled=True),
            Recipe("gradient-boosting", "ensemble.HistGradientBoostingRegressor",
                   {"max_iter": 100, "learning_rate": 0.05, "max_depth": 3, "random_state": MODEL_SEED}),
            Recipe("random-forest", "ensemble.RandomForestRegressor", {"n_estimators": 300, "random_state": MODEL_SEED}),
            Recipe("mlp", "neural_network.MLPRegressor", {"hidden_layer_sizes": (64,), "learning_rate_init": 0.01, "max_iter": 3000,
                                         "random_state": MODEL_SEED}, scaled=True),
        ),
    ),
    UseCase(
        "digit-recognition", "multiclass-classification", "datasets.load_digits",
        "Reads handwritten digits (8x8 grids of pixel counts) from photographed paper forms in the offline mobile "
        "form-scanner app, one digit box at a time on the phone's CPU.",
        (
            Recipe("linear", "linear_model.LogisticRegression", {"C": 0.1, "max_iter": 2000}, scaled=True),
            Recipe("gradient-boosting", "ensemble.HistGradientBoostingClassifier", {"max_iter": 200, "random_state": MODEL_SEED}),
            Recipe("random-forest", "ensemble.RandomForestClassifier", {"n_estimators": 150, "random_state": MODEL_SEED}),
            Recipe("mlp", "neural_network.MLPClassifier", {"hidden_layer_sizes": (768, 768), "early_stopping": True,
                                          "random_state": MODEL_SEED}, scaled=True),
        ),
    ),
)
DEMO_MODEL_NAMES = tuple(use_case.model_name(recipe) for use_case in USE_CASES for recipe in use_case.recipes)
# decisions:log names the current champion of two use cases (2026-01-21 rollback; 2025-06-10); for digits it
# says "the best-ranked candidate that passed all hard criteria", which is computed from the measurements.
CHAMPION_FAMILY = {"tumor-screening": "linear", "diabetes-progression": "linear"}
QUALITY_METRICS = {
    "binary-classification": ("accuracy", "f1", "roc_auc"),
    "multiclass-classification": ("accuracy", "f1", "roc_auc"),
    "regression": ("rmse", "mae", "r2"),
}
SERVING_METRICS = ("latency_p50_ms", "latency_p95_ms", "model_size_mb", "training_time_s")


def prepare_demo_registry(settings, on_progress: Progress | None = None) -> list[Candidate]:
    """Train, measure, log and register the demo models of every use case not yet in the registry.

    Returns the models registered by this call, as MLflow now reports them ([] when all were there)."""
    if not uses_workspace_store(settings):
        return []
    client = registry_client(settings)
    current = demo_models_in_registry(client)
    pending = [u for u in USE_CASES if not {u.model_name(r) for r in u.recipes} <= current]
    if not pending:
        return []
    experiment_id = ensure_experiment(client, settings, EXPERIMENT)
    total, done = sum(len(u.recipes) for u in pending), 0
    for use_case in pending:
        X_train, X_test, y_train, y_test = split(use_case)
        for recipe in use_case.recipes:
            name = use_case.model_name(recipe)
            if on_progress:
                on_progress(done, total, f"Training and measuring {name}")
            pipeline = recipe.build()
            metrics = measure(use_case.task, pipeline, X_train, y_train, X_test, y_test)
            params = {"estimator": recipe.summary(), **recipe.hyperparameters, "split_seed": SPLIT_SEED,
                      "test_size": TEST_SIZE, "train_rows": len(X_train), "test_rows": len(X_test), "threads": 1}
            log_model(client, experiment_id, name, pipeline, X_test, params=params, metrics=metrics,
                      tags={"use_case": use_case.name, "task": use_case.task, "family": recipe.family},
                      description=use_case.purpose, version_description=recipe.summary())
            done += 1
        _crown_champion(client, settings, use_case)
    if on_progress:
        on_progress(total, total, "Demo registry ready")
    registered = [c for c in read_candidates(settings) if c.name in DEMO_MODEL_NAMES]
    report_path(settings).write_text(registry_report(registered), encoding="utf-8")
    built = {u.name for u in pending}
    return [c for c in registered if c.use_case in built]


def demo_registry_is_current(settings) -> bool:
    """True when every demo model of the current recipe is registered (or the store is not the workspace's own)."""
    if not uses_workspace_store(settings):
        return True
    if not Path(settings.tracking_uri.removeprefix("sqlite:///")).is_file():
        return False  # checked first: opening a missing store would create it
    return set(DEMO_MODEL_NAMES) <= demo_models_in_registry(registry_client(settings))


def uses_workspace_store(settings) -> bool:
    return settings.mlflow_tracking_uri is None and settings.mlflow_registry_uri is None


def demo_models_in_registry(client) -> set[str]:
    """Names of the demo models complete under the current recipe: the recipe tag is set last."""
    models = all_pages(client.search_registered_models, filter_string=f"tags.{RECIPE_TAG} = '{RECIPE}'")
    return {model.name for model in models}


def split(use_case: UseCase):
    """A held-out quarter, stratified by class (by target quartile for regression) so the small sets stay balanced."""
    X, y = _sklearn(use_case.dataset)(return_X_y=True)
    strata = np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75])) if use_case.task == "regression" else y
    return _sklearn("model_selection.train_test_split")(X, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=strata)


def measure(task: str, pipeline, X_train, y_train, X_test, y_test) -> dict[str, float]:
    """Fit, then measure the artefact as deployed: unpickled from its uncompressed dump (guideline:latency-measurement)."""
    from threadpoolctl import threadpool_limits  # comes with scikit-learn, imported only to build the registry

    with threadpool_limits(limits=1):
        started = time.perf_counter()
        pipeline.fit(X_train, y_train)
        training_time_s = time.perf_counter() - started
        artefact = pickle.dumps(pipeline, protocol=pickle.DEFAULT_PROTOCOL)  # the protocol mlflow.sklearn writes
        deployed = pickle.loads(artefact)
        metrics = quality(task, deployed, X_test, y_test)
        p50, p95 = single_row_latency_ms(deployed, X_test)
    return {**metrics, "latency_p50_ms": p50, "latency_p95_ms": p95,
            "model_size_mb": len(artefact) / 1_048_576, "training_time_s": training_time_s}


def quality(task: str, model, X_test, y_test) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score, root_mean_squared_error

    predicted = model.predict(X_test)
    if task == "regression":
        return {"rmse": float(root_mean_squared_error(y_test, predicted)),
                "mae": float(mean_absolute_error(y_test, predicted)), "r2": float(r2_score(y_test, predicted))}
    probabilities = model.predict_proba(X_test)
    if task == "binary-classification":  # default F1: class 1 (benign, in scikit-learn's encoding) is positive
        f1, roc_auc = f1_score(y_test, predicted), roc_auc_score(y_test, probabilities[:, 1])
    else:
        f1 = f1_score(y_test, predicted, average="macro")
        roc_auc = roc_auc_score(y_test, probabilities, multi_class="ovr", average="macro")
    return {"accuracy": float(accuracy_score(y_test, predicted)), "f1": float(f1), "roc_auc": float(roc_auc)}


def single_row_latency_ms(model, X_test) -> tuple[float, float]:
    """p50 and p95 of timed single-row predicts after warm-up calls, cycling through the held-out rows."""
    rows = [X_test[i:i + 1] for i in range(len(X_test))]
    for i in range(WARMUP_CALLS):
        model.predict(rows[i % len(rows)])
    durations = []
    for i in range(TIMED_CALLS):
        row = rows[i % len(rows)]
        started = time.perf_counter()
        model.predict(row)
        durations.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(durations, 50)), float(np.percentile(durations, 95))


def log_model(client, experiment_id: str, name: str, pipeline, X_example, *, params: dict, metrics: dict,
              tags: dict, description: str, version_description: str = ""):
    """One run with its params and metrics, the fitted pipeline as an MLflow model, and a new registered version.

    The model is stored as a pickle, the format whose size the standard counts, rather than MLflow's default skops.

    Only client calls, no fluent API: the process-wide tracking URI and active run stay untouched."""
    import mlflow.sklearn  # with scikit-learn: imported only to build the registry
    import sklearn
    from mlflow.models import infer_signature

    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
                     params=[Param(key, str(value)) for key, value in params.items()])
    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, model_type="sklearn")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model"
        signature = infer_signature(X_example[:5], pipeline.predict(X_example[:5]))
        with _quiet_logger("mlflow.sklearn"):  # its pickle warning is about files from strangers; these are ours
            mlflow.sklearn.save_model(pipeline, path, serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_PICKLE,
                                      signature=signature, pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
        client.log_model_artifacts(logged.model_id, str(path))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.set_terminated(run_id)
    try:
        client.create_registered_model(name, tags=tags, description=description)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        for key, value in tags.items():
            client.set_registered_model_tag(name, key, value)
        client.update_registered_model(name, description=description)
    # The artifact location, not `models:/<id>`: MLflow's sqlite registry resolves that URI with the process-wide
    # tracking URI instead of this client's (a TODO in its SqlAlchemyStore.create_model_version).
    return client.create_model_version(name, logged.artifact_location, run_id=run_id,
                                       description=version_description or None, model_id=logged.model_id)


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _crown_champion(client, settings, use_case: UseCase) -> None:
    """Move `champion` to the use case's production model among the versions just registered, then mark them done."""
    names = [use_case.model_name(recipe) for recipe in use_case.recipes]
    for name in names:  # an alias left from an older recipe would hide the new versions
        if CHAMPION in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, CHAMPION)
    candidates = [c for c in read_candidates(settings) if c.name in names]
    if family := CHAMPION_FAMILY.get(use_case.name):
        champion = next(c for c in candidates if c.family == family)
    else:
        rules = demo_rulebook(use_case.name, candidates)
        champion = decide(use_case.name, candidates, list(rules.criteria), rules.policy, rules.blockers()).recommended
    if champion is not None:
        client.set_registered_model_alias(champion.name, CHAMPION, champion.version)
    for name in names:
        client.set_registered_model_tag(name, RECIPE_TAG, RECIPE)


def demo_rulebook(use_case: str, candidates) -> Rulebook:
    """The rules of one demo use case, read from the demo corpus the way the product reads any team's documents."""
    terms = use_case_terms(candidates, [u.name for u in USE_CASES])
    texts = []
    for path in sorted((DEMO_DIR / "knowledge").glob("*.md")):
        parsed = parse_file(path.name, path.read_bytes())
        body = " ".join(section.text for section in parsed.sections)
        metadata = {**parsed.metadata, "source_ids": [section.source.source_id for section in parsed.sections]}
        named = named_use_cases(f"{parsed.title} {body}", terms) | loosely_named_use_cases(f"{parsed.title}\n{body[:2000]}", terms)
        if use_case in governed_by(metadata, named)[0]:
            texts += [RuleText(section.source.source_id, parsed.title, section.text) for section in parsed.sections]
    return rules_from_texts(use_case, texts, [c for c in candidates if c.use_case == use_case], terms)


def report_path(settings) -> Path:
    return settings.workspace / "REGISTRY.md"


def registry_report(candidates: list[Candidate]) -> str:
    """demo/REGISTRY.md: every logged metric of the demo models, and which hard criteria of the docs each fails."""
    lines = [
        "# Demo model registry",
        "",
        "Generated by `engine.demo.registry.registry_report` from the metrics logged in MLflow; every number was",
        "measured by `deploywise demo prepare` (guideline:latency-measurement). To regenerate: run",
        "`deploywise demo prepare` on a workspace without the demo models, then copy `<workspace>/REGISTRY.md` here.",
        "",
        f"Measured on: {machine_note()}.",
        f"Split: stratified held-out {TEST_SIZE:.0%} (regression: by target quartile), split seed {SPLIT_SEED}, "
        f"model seed {MODEL_SEED}; latency from {WARMUP_CALLS} warm-up and {TIMED_CALLS} timed single-row calls.",
        "The split seed is one under which the random forest ranks first on tumour screening's `roc_auc`, as in",
        "decisions:log (2025-02-18); on most other splits logistic regression or the MLP ranks first there.",
    ]
    for use_case in USE_CASES:
        rows = [c for c in candidates if c.use_case == use_case.name]
        criteria = list(demo_rulebook(use_case.name, candidates).criteria)
        metrics = [*QUALITY_METRICS[use_case.task], *SERVING_METRICS]
        hard = ", ".join(c.label for c in criteria if c.hard)
        lines += ["", f"## `{use_case.name}` ({use_case.task})", "", f"Hard criteria (criteria:{use_case.name}): {hard}.", "",
                  "| model | version | " + " | ".join(f"`{m}`" for m in metrics) + " | fails (hard) |",
                  "|---|---|" + "---:|" * len(metrics) + "---|"]
        for candidate in rows:
            failed = [c.label.removesuffix(" (hard)") for c in criteria
                      if c.hard and not c.holds_for(candidate.metrics.get(c.metric))]
            alias = " (champion)" if candidate.alias == CHAMPION else ""
            values = [_cell(m, candidate.metrics.get(m)) for m in metrics]
            lines.append(f"| `{candidate.name}` | {candidate.version}{alias} | " + " | ".join(values)
                         + f" | {', '.join(failed) or '—'} |")
    return "\n".join(lines) + "\n"


def _cell(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "missing"
    return f"{value:.{4 if metric_spec(metric).bounded else 3}f}"


def machine_note() -> str:
    import sklearn

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"scikit-learn {sklearn.__version__}, one thread per model, {datetime.now(UTC):%Y-%m-%d} UTC")
