"""The candidates every session of the process shares: one read of MLflow, reused for `candidates_ttl_s`.

Kept apart from the read itself (engine.registry.mlflow_candidates) because this is where a question's wait and a
down MLflow are handled: past the TTL the cached read is served while a helper process reads MLflow again, and a
failed read falls back to the previous one, else to the last one saved in the workspace
(engine.registry.saved_candidates).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from engine.core.errors import innermost_cause, without_credentials
from engine.registry.candidates import Candidate, CandidateSnapshot
from engine.registry.mlflow_candidates import read_candidates, registry_uri
from engine.registry.saved_candidates import load_saved_snapshot, save_snapshot

log = logging.getLogger(__name__)


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
        raise HelperReadFailed(innermost_cause(error, stop_at=(HelperReadFailed,))) from None


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
        reason = innermost_cause(error, stop_at=(HelperReadFailed,))
        log.warning("reading candidates from MLflow at %s failed: %s", registry_uri(settings), reason)
        log.debug("candidates read failure", exc_info=True)
        last = previous.snapshot if previous else load_saved_snapshot(settings)
        if last is None:
            raise CandidatesUnavailable(without_credentials(
                f"MLflow at {registry_uri(settings)} cannot be read ({reason}) and no earlier read is saved")) from None
        snapshot = replace(last, error=reason)
    else:
        save_snapshot(settings, snapshot)
    return _Cached(snapshot)

