"""Candidate models and their live metrics, read now from any MLflow registry.

The read takes a fixed number of batched calls however many models there are. It is kept apart from the cache in
front of it (engine.registry.candidate_cache) because it also runs alone: in that cache's helper process, for the
demo workspace and in the benchmarks.

Databricks registries search model versions by a single `name =` or `run_id =` condition only, and Unity
Catalog (`databricks-uc`) lists registered models without their tags or aliases, so on Databricks the read is
necessarily one model at a time: two calls per registered model plus one per candidate's run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.databricks_utils import (
    _construct_databricks_model_version_url,
    _construct_databricks_uc_registered_model_url,
    get_databricks_host_creds,
)

from engine.core.errors import without_credentials
from engine.core.mlflow_client import registry_client
from engine.knowledge.sources import SOURCE_ID_PATTERN, slug
from engine.registry.candidates import Candidate, finite_metrics

CHAMPION = "champion"
NAMES_PER_FILTER = 50  # names in one `name IN (...)` filter: keeps the GET request of a version search short
RUN_IDS_PER_FILTER = 100
# An unreachable MLflow must fail within seconds, not after MLflow's default 7 retries with backoff (minutes).
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

log = logging.getLogger(__name__)


def read_candidates(settings) -> tuple[Candidate, ...]:
    """Read MLflow now, without the cache."""
    client = registry_client(settings)
    with _quick_http():
        if registry_uri(settings).startswith("databricks"):
            chosen = _chosen_one_model_at_a_time(client)
            metrics = {run_id: _run_metrics(client, run_id) for run_id in _run_ids(chosen)}
        else:
            chosen = _chosen_batched(client)
            metrics = _metrics_batched(client, _run_ids(chosen))
    link = version_link(settings)  # after the reads: resolving a Databricks host needs the network they just used
    return tuple(sorted(
        (_candidate(model, version, metrics.get(version.run_id, {}), link) for model, version in chosen),
        key=lambda candidate: candidate.name,
    ))


def _chosen_batched(client) -> list[tuple]:
    """(registered model, version to use) for every candidate: one model search, one version search per 50 names."""
    models = [m for m in all_pages(client.search_registered_models, max_results=1000) if _is_candidate(m)]
    names = [m.name for m in models if _quotable(m.name)]
    versions: dict[str, list] = {}
    for start in range(0, len(names), NAMES_PER_FILTER):
        in_list = ", ".join(_quoted(name) for name in names[start:start + NAMES_PER_FILTER])
        for version in all_pages(client.search_model_versions, filter_string=f"name IN ({in_list})"):
            versions.setdefault(version.name, []).append(version)
    return [(m, v) for m in models if (v := _version_to_use(m, versions.get(m.name, [])))]


def _chosen_one_model_at_a_time(client) -> list[tuple]:
    """The same choice where the registry cannot batch (Databricks): two calls per registered model."""
    chosen = []
    for listed in all_pages(client.search_registered_models, max_results=1000):
        model = client.get_registered_model(listed.name)  # the listing carries no tags or aliases on UC
        if _is_candidate(model) and _quotable(model.name):
            versions = all_pages(client.search_model_versions, filter_string=f"name = {_quoted(model.name)}")
            if version := _version_to_use(model, versions):
                chosen.append((model, version))
    return chosen


def _metrics_batched(client, run_ids: list[str]) -> dict[str, dict[str, float]]:
    """Metrics of the given runs: one experiment search and one run search per 100 runs, whatever their experiments."""
    if not run_ids:
        return {}
    experiment_ids = [e.experiment_id for e in all_pages(client.search_experiments, view_type=ViewType.ALL)]
    metrics = {}
    for start in range(0, len(run_ids), RUN_IDS_PER_FILTER):
        in_list = ", ".join(_quoted(run_id) for run_id in run_ids[start:start + RUN_IDS_PER_FILTER])
        for run in all_pages(client.search_runs, experiment_ids=experiment_ids,
                              filter_string=f"attributes.run_id IN ({in_list})", run_view_type=ViewType.ALL):
            metrics[run.info.run_id] = finite_metrics(run.data.metrics)
    return metrics


def _run_metrics(client, run_id: str) -> dict[str, float]:
    try:
        return finite_metrics(client.get_run(run_id).data.metrics)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}  # a deleted run: the candidate has no metrics and fails every hard criterion
        raise


def _version_to_use(model, versions: list):
    """The version holding `champion`, else the newest ready version that is not archived."""
    champion = model.aliases.get(CHAMPION)
    held = next((v for v in versions if champion is not None and str(v.version) == str(champion)), None)
    if held is not None:
        return held
    usable = [v for v in versions if v.status == "READY" and v.current_stage != "Archived" and str(v.version).isdigit()]
    return max(usable, key=lambda v: int(v.version), default=None)


def _candidate(model, version, metrics: dict[str, float], link: Callable[[str, str], str | None]) -> Candidate:
    source_id = f"registry:{model.name}"
    if not SOURCE_ID_PATTERN.match(source_id):
        source_id = f"registry:{slug(model.name)}"
    return Candidate(
        name=model.name,
        version=str(version.version),
        alias=CHAMPION if str(model.aliases.get(CHAMPION)) == str(version.version) else None,
        use_case=_tag(model, "use_case"),
        task=_tag(model, "task"),
        family=_tag(model, "family"),
        description=(model.description or "").strip(),
        run_id=version.run_id or "",
        metrics=metrics,
        source_id=source_id,
        url=link(model.name, str(version.version)),
    )


def _is_candidate(model) -> bool:
    """Both tags, non-blank, or the model is not a candidate (guideline:model-selection)."""
    return bool(_tag(model, "use_case") and _tag(model, "task"))


def _tag(model, key: str) -> str:
    return str(model.tags.get(key) or "").strip()




def _run_ids(chosen: list[tuple]) -> list[str]:
    return sorted({version.run_id for _, version in chosen if version.run_id})


def all_pages(search, **kwargs) -> list:
    """Every item of an MLflow search, following its page tokens."""
    items, token = [], None
    while True:
        page = search(**kwargs, page_token=token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def _quotable(name: str) -> bool:
    """MLflow filter strings have no escape for a name holding both quote characters; such a model is skipped."""
    if "'" in name and '"' in name:
        log.warning("registered model %r cannot be named in an MLflow filter and is not a candidate", name)
        return False
    return True


def _quoted(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


@contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow reads its HTTP retry and timeout settings from the environment at each call; values a user set win.

    In-process reads never overlap (they run under the cache lock; background ones in the helper process)."""
    previous = {key: os.environ.get(key) for key in QUICK_HTTP}
    os.environ.update({key: value for key, value in QUICK_HTTP.items() if previous[key] is None})
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)


def version_link(settings) -> Callable[[str, str], str | None]:
    """How a model version's page is linked: the MLflow UI of an http(s) server, a Databricks workspace, else none."""
    registry = registry_uri(settings)
    if registry.startswith(("http://", "https://")):
        base = without_credentials(registry).rstrip("/")  # the link is shown to every visitor: no user:password@
        return lambda name, version: f"{base}/#/models/{quote(name, safe='')}/versions/{version}"
    if registry.startswith("databricks"):
        try:
            host = get_databricks_host_creds(registry).host.rstrip("/")
        except Exception:  # no Databricks configuration: links are a convenience, the metrics are still good
            log.warning("no Databricks host for %s: candidates get no links", registry, exc_info=True)
            return lambda name, version: None
        if registry.startswith("databricks-uc"):
            return lambda name, version: _construct_databricks_uc_registered_model_url(host, name, version)
        return lambda name, version: _construct_databricks_model_version_url(host, quote(name, safe=""), version)
    return lambda name, version: None


def registry_uri(settings) -> str:
    return settings.mlflow_registry_uri or settings.tracking_uri
