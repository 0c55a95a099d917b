"""Errors as users and status files show them: one line, never a traceback."""

from __future__ import annotations

MAX_CHARS = 300


def first_line(error: object) -> str:
    """The first line of an error's text (at most MAX_CHARS characters), else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:MAX_CHARS] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """An unexpected error for a status or a tag: its type and the first line of its text."""
    text = str(error).strip()
    return f"{type(error).__name__}: {first_line(error)}" if text else type(error).__name__
