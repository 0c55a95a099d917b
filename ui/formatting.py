"""Durations, times and progress as every page writes them (errors: engine.core.errors.first_line).

Separate from any one page's view-model because the Retraining, Evaluation and LLM versions pages and the CLI all
write them the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_time(value: str | datetime | None) -> str:
    """'2025-01-31T09:15:00+00:00' (or the datetime) -> '2025-01-31 09:15 UTC'; a time without a zone is UTC."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def progress_fraction(done: float | None, total: float | None, finished: bool = False) -> float:
    """What st.progress takes, 0..1: a finished job is full even if its last count was not reported."""
    if finished:
        return 1.0
    return min(1.0, max(0.0, (done or 0) / total)) if total else 0.0
