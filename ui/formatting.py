"""Errors, durations and times as the pages write them, each in one line.

Separate from any one page's view-model because the Retraining page's form, its inputs and its jobs table all write
them the same way, and the Evaluation page writes its ETAs with `format_eta` too.
"""

from __future__ import annotations


def first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_time(stamp: str | None) -> str:
    """'2025-01-31T09:15:00+00:00' -> '2025-01-31 09:15 UTC'."""
    return f"{stamp[:16].replace('T', ' ')} UTC" if stamp else ""
