"""Errors as users and status files show them: one line, never a traceback, and no URL's credentials in a notice."""

from __future__ import annotations

import re

MAX_CHARS = 300


def first_line(error: object) -> str:
    """The first line of an error's text (at most MAX_CHARS characters), else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:MAX_CHARS] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """An unexpected error for a status or a tag: its type and the first line of its text."""
    text = str(error).strip()
    return f"{type(error).__name__}: {first_line(error)}" if text else type(error).__name__


_USERINFO = re.compile(r"(?<=://)[^/\s@'\"<>]*@")
_SECRET_QUERY = re.compile(r"([?&][^=&#\s]*(?:token|key|secret|passw|pwd|auth|sig|credential)[^=&#\s]*=)[^&#\s'\"<>]*", re.I)


def without_credentials(text: str) -> str:
    """`text` with every URL's `user:password@` removed and the values of its secret-looking query parameters
    (token, key, secret, password, signature...) replaced by ***: what a notice shown to visitors may say about a
    configured endpoint or registry, whose URI may carry them."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub("", text))


def innermost_cause(error: BaseException, stop_at: tuple[type[BaseException], ...] = ()) -> str:
    """One line an admin can act on: the innermost cause ("Connection refused") of a library's screen-long wrapper, or
    the first error of type `stop_at` met on the way; without a URL's credentials (notices reach visitors)."""
    root = error
    while (inner := root.__cause__ or root.__context__) is not None and not isinstance(root, stop_at):
        root = inner
    text = without_credentials(" ".join(str(root).split()))
    text = f"{type(root).__name__}: {text}" if root is not error or not text else text
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 3] + "..."
