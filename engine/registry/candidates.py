"""Candidate models and their live metrics, read from any MLflow registry.

A candidate is a registered model tagged `use_case` and `task` (guideline:model-selection); its metrics are
those of the run behind the version holding the `champion` alias, else behind the latest version. The read
takes a fixed number of batched calls however many models there are, is reused for `candidates_ttl_s` by
every session of the process, and the last good read is kept in the workspace so that, with MLflow down,
even a restarted app can still answer from it and say how old it is.

Databricks registries search model versions by a single `name =` or `run_id =` condition only, and Unity
Catalog (`databricks-uc`) lists registered models without their tags or aliases, so on Databricks the read is
necessarily one model at a time: two calls per registered model plus one per candidate's run.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.databricks_utils import (
    _construct_databricks_model_version_url,
    _construct_databricks_uc_registered_model_url,
    get_databricks_host_creds,
)

from engine.knowledge.sources import SOURCE_ID_PATTERN, Source, slug

CHAMPION = "champion"
NAMES_PER_FILTER = 50  # names in one `name IN (...)` filter: keeps the GET request of a version search short
RUN_IDS_PER_FILTER = 100
# An unreachable MLflow must fail within seconds, not after MLflow's default 7 retries with backoff (minutes).
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    name: str
    version: str
    alias: str | None  # "champion" when the version used holds it; None when the latest version is used
    use_case: str
    task: str
    family: str
    description: str
    run_id: str
    metrics: dict[str, float]
    source_id: str
    url: str | None


@dataclass(frozen=True)
class CandidateSnapshot:
    candidates: tuple[Candidate, ...]
    fetched_at: datetime  # UTC, when these metrics were read from MLflow
    error: str | None = None  # MLflow could not be read just now: these are the last metrics read

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.fetched_at).total_seconds()

    def use_cases(self) -> list[str]:
        return sorted({candidate.use_case for candidate in self.candidates})

    def for_use_case(self, use_case: str) -> tuple[Candidate, ...]:
        return tuple(candidate for candidate in self.candidates if candidate.use_case == use_case)


class CandidatesUnavailable(RuntimeError):
    """MLflow cannot be read and no earlier read was saved, so there is nothing to answer from."""


@dataclass
class _Cached:
    snapshot: CandidateSnapshot
    checked: float = field(default_factory=time.monotonic)  # when MLflow was last asked, successfully or not


_cache: dict[tuple[str, str | None], _Cached] = {}
_refreshing: set[tuple[str, str | None]] = set()  # keys the helper process is reading again
_cache_lock = threading.Lock()
_reader: ProcessPoolExecutor | None = None  # the helper process for background reads


def fetch_candidates(settings, *, max_age_s: float | None = None) -> CandidateSnapshot:
    """The candidates, from the process cache when MLflow was asked less than `max_age_s` ago (default: the TTL).

    Past the TTL the cached read is still returned at once while a helper process reads MLflow again, so a
    question never waits for the registry once a first read exists (1.2 s of Python for 1,000 models,
    bench/chat.py), and that work does not hold the server's GIL. The first read, an explicit `max_age_s` and a
    TTL of 0 read synchronously. A failed read is remembered for as long as a good one, so a down MLflow costs
    one timeout per TTL, not per question."""
    key = (settings.tracking_uri, settings.mlflow_registry_uri)
    max_age = settings.candidates_ttl_s if max_age_s is None else max_age_s
    with _cache_lock:
        cached = _cache.get(key)
        if cached and time.monotonic() - cached.checked < max_age:
            return cached.snapshot
        if cached and max_age_s is None and max_age > 0:
            if key not in _refreshing:
                _refreshing.add(key)
                _refresh_in_background(settings, key, cached)
            return cached.snapshot
        # One synchronous read at a time: concurrent sessions wait for it and share its result.
        _cache[key] = _read(settings, cached, lambda: read_candidates(settings))
        return _cache[key].snapshot


def refreshing() -> bool:
    """Whether a background read of MLflow is under way (for benchmarks and tests that must not overlap it)."""
    with _cache_lock:
        return bool(_refreshing)


def _refresh_in_background(settings, key, previous: _Cached) -> None:
    """Submit the read to the helper process (started on first use); its result replaces the cached one."""
    global _reader
    if _reader is None:
        _reader = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        future = _reader.submit(_read_in_helper, settings)
    except BrokenProcessPool:  # the helper died (killed, out of memory): the next refresh starts a new one
        _reader = None
        _refreshing.discard(key)
        return
    future.add_done_callback(lambda done: _store_refresh(settings, key, previous, done))


class HelperReadFailed(Exception):
    """A read in the helper process failed; carries its one-line reason (the cause chain stays in the helper)."""


def _read_in_helper(settings) -> tuple[Candidate, ...]:
    try:
        return read_candidates(settings)
    except Exception as error:
        raise HelperReadFailed(_short_reason(error)) from None


def _store_refresh(settings, key, previous: _Cached, done: Future) -> None:
    global _reader
    try:
        if isinstance(done.exception(), BrokenProcessPool):  # not MLflow's failure: ask again with a new helper
            with _cache_lock:
                _reader = None
            return
        fresh = _read(settings, previous, done.result)  # with a previous read to fall back to, this does not raise
        with _cache_lock:
            _cache[key] = fresh
    finally:
        with _cache_lock:
            _refreshing.discard(key)


def _read(settings, previous: _Cached | None, read: Callable[[], tuple[Candidate, ...]]) -> _Cached:
    """`read` MLflow; on failure fall back to the previous read, else to the last one saved in the workspace."""
    try:
        snapshot = CandidateSnapshot(read(), datetime.now(UTC))
    except Exception as error:  # any failure to read MLflow (network, auth, store) falls back to the last read
        reason = _short_reason(error)
        log.warning("reading candidates from MLflow at %s failed: %s", _registry_uri(settings), reason)
        log.debug("candidates read failure", exc_info=True)
        last = previous.snapshot if previous else load_saved_snapshot(settings)
        if last is None:
            raise CandidatesUnavailable(
                f"MLflow at {_registry_uri(settings)} cannot be read ({reason}) and no earlier read is saved"
            ) from None
        snapshot = replace(last, error=reason)
    else:
        save_snapshot(settings, snapshot)
    return _Cached(snapshot)


def candidate_source(candidate: Candidate) -> Source:
    """The registry entry that makes `<<SRC:registry:...>>` resolve to the candidate's model page."""
    return Source(candidate.source_id, f"{candidate.name} v{candidate.version}", candidate.url, "model")


def candidate_sources(snapshot: CandidateSnapshot) -> list[Source]:
    return [candidate_source(c) for c in snapshot.candidates]


def read_candidates(settings) -> tuple[Candidate, ...]:
    """Read MLflow now, without the cache."""
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)
    with _quick_http():
        if _registry_uri(settings).startswith("databricks"):
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
            metrics[run.info.run_id] = _finite(run.data.metrics)
    return metrics


def _run_metrics(client, run_id: str) -> dict[str, float]:
    try:
        return _finite(client.get_run(run_id).data.metrics)
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


def _finite(metrics: dict) -> dict[str, float]:
    """A NaN or infinite metric is left out: it could pass no criterion, and a missing metric fails explicitly."""
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float) and math.isfinite(value)}


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
    registry = _registry_uri(settings)
    if registry.startswith(("http://", "https://")):
        base = registry.rstrip("/")
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


def _registry_uri(settings) -> str:
    return settings.mlflow_registry_uri or settings.tracking_uri


def _short_reason(error: BaseException) -> str:
    """One line an admin can act on: the innermost cause ("Connection refused"), not MLflow's screen-long wrapper."""
    root = error
    while (inner := root.__cause__ or root.__context__) is not None and not isinstance(root, HelperReadFailed):
        root = inner
    text = " ".join(str(root).split())
    text = f"{type(root).__name__}: {text}" if root is not error or not text else text
    return text if len(text) <= 300 else text[:297] + "..."


def saved_snapshot_path(settings) -> Path:
    return settings.workspace / "cache" / "candidates.json"


def save_snapshot(settings, snapshot: CandidateSnapshot) -> None:
    """Written atomically (a temporary file, then a rename) so a crash never leaves half a file to restart from."""
    path = saved_snapshot_path(settings)
    payload = {
        "tracking_uri": settings.tracking_uri,
        "registry_uri": settings.mlflow_registry_uri,
        "fetched_at": snapshot.fetched_at.isoformat(),
        "candidates": [asdict(candidate) for candidate in snapshot.candidates],
    }
    staging = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        os.replace(staging, path)
    except OSError:
        log.warning("could not save the candidates read from MLflow to %s", path, exc_info=True)
        staging.unlink(missing_ok=True)


def load_saved_snapshot(settings) -> CandidateSnapshot | None:
    """The last good read saved for this MLflow, or None when there is none (or it is unreadable, or for another MLflow)."""
    path = saved_snapshot_path(settings)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if (payload["tracking_uri"], payload["registry_uri"]) != (settings.tracking_uri, settings.mlflow_registry_uri):
            return None
        candidates = tuple(Candidate(**{**row, "metrics": _finite(row["metrics"])}) for row in payload["candidates"])
        fetched_at = datetime.fromisoformat(payload["fetched_at"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring the unreadable saved candidates in %s", path, exc_info=True)
        return None
    if fetched_at.tzinfo is None:
        return None
    return CandidateSnapshot(candidates, fetched_at)
