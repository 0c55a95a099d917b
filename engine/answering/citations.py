"""Citations: `<<SRC:domain:entity>>` markers in an answer, resolved through the source registry and rendered safely.

A marker is `<<SRC:` + a valid source id (engine.knowledge.sources.SOURCE_ID_PATTERN, at most MAX_SOURCE_ID_CHARS) + `>>`,
on one line. Spaces or tabs after `<<`, around `SRC:` and before `>>` are accepted (`<< SRC: a:b >>`): small
models drift in spacing, and the id itself must still be exact, so nothing ambiguous becomes a citation.
Anything else that looks like a marker (malformed id, line break inside) is plain text.

Model output is untrusted. `render_answer_markdown` keeps only three pieces of structure from it: line
breaks, `- ` bullets at the start of a line (`* ` and `• ` become `- `) and `**bold**` within a line.
Everything else goes through engine.core.markdown.escape_markdown, so it shows literally: no links,
images, HTML, headings, tables, code, math or Streamlit directives. The only links in the result are citations: to the
registry's http(s) URL when there is one, else to the app's own Source page, which shows the cited text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from engine.core.markdown import escape_markdown
from engine.knowledge.sources import SOURCE_ID_PATTERN, is_web_url, log_unknown, resolve

MAX_SOURCE_ID_CHARS = 512  # longer than any id the product makes (a file name is at most 255 bytes)

_MARKER = re.compile(rf"<<[ \t]*SRC[ \t]*:[ \t]*([^\s<>]{{1,{MAX_SOURCE_ID_CHARS}}})[ \t]*>>")
_BOLD = re.compile(r"\*\*(?=[^\s*])([^*\n]*?[^\s*])\*\*")
_BULLET = re.compile(r"^(?:[-*•])[ \t]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_URL_SAFE = ":/?#@!$&'*+,;=%~-._"  # reserved characters a link keeps; ( ) [ ] < > \ " and spaces are encoded
SOURCE_PAGE = "source"  # url path of pages/source.py, relative so that it works under any server base path


def source_page_link(source_id: str) -> str:
    """The app's own page for a source, relative to the current page's URL."""
    return f"{SOURCE_PAGE}?id={quote(source_id, safe=':/')}"


@dataclass(frozen=True)
class Citation:
    number: int
    source_id: str
    display_name: str
    url: str | None  # an http(s) URL from the registry, else None
    known: bool

    @property
    def link(self) -> str | None:
        """Where the citation opens: the registry's URL, else the Source page; nothing for an unknown id."""
        if not self.known:
            return None
        return self.url if self.url and is_web_url(self.url) else source_page_link(self.source_id)


def _valid_markers(text: str):
    """Marker matches whose id is a valid source id, in order."""
    return (match for match in _MARKER.finditer(text) if SOURCE_ID_PATTERN.match(match.group(1)))


def _split(text: str) -> list[tuple[str, str | None]]:
    """The text as (text before a marker, its source id) pairs; the last pair holds the tail and None."""
    pieces, position = [], 0
    for match in _valid_markers(text):
        pieces.append((text[position:match.start()], match.group(1)))
        position = match.end()
    pieces.append((text[position:], None))
    return pieces


def find_markers(text: str) -> list[str]:
    """Cited source ids in order of first appearance."""
    return list(dict.fromkeys(match.group(1) for match in _valid_markers(text or "")))


def resolve_citations(connection, text: str, *, context: str = "", log: bool = True) -> list[Citation]:
    """Number the cited sources in order of first appearance; ids the registry lacks are logged (with the
    question as context) unless `log` is False, as when a stored answer is shown again."""
    source_ids = find_markers(text)
    entries = resolve(connection, source_ids)
    citations = []
    for number, source_id in enumerate(source_ids, start=1):
        entry = entries.get(source_id)
        if entry is None:
            citations.append(Citation(number, source_id, source_id, None, False))
        else:
            url = entry.url if entry.url and is_web_url(entry.url) else None
            citations.append(Citation(number, source_id, entry.display_name, url, True))
    unknown = [c.source_id for c in citations if not c.known]
    if unknown and log:
        log_unknown(connection, unknown, context)
    return citations


def strip_markers(text: str) -> str:
    """The answer as plain text (CLI): markers and the spaces before them removed."""
    return "".join(before.rstrip(" \t") if source_id else before for before, source_id in _split(text or ""))


def render_answer_markdown(text: str, citations: list[Citation]) -> str:
    """Model output as safe markdown (see the module docstring for what survives), markers as numbered citations."""
    by_id = {citation.source_id: citation for citation in citations}
    text = _CONTROL.sub("", (text or "").replace("\r\n", "\n").replace("\r", "\n"))
    lines, in_list = [], False
    for line in text.split("\n"):
        line = line.strip()
        bullet = _BULLET.match(line)
        if bullet:
            line = line[bullet.end():]
        elif in_list and line:
            lines.append("")  # a line that is not a bullet ends the list instead of continuing its last item
        in_list = bool(bullet)
        lines.append(("- " if bullet else "") + _render_line(line, by_id))
    return "  \n".join(lines)  # two trailing spaces: a hard line break, so the model's lines stay lines


def _render_line(line: str, by_id: dict[str, Citation]) -> str:
    return "".join(_render_text(before) + (_render_citation(source_id, by_id.get(source_id)) if source_id else "")
                   for before, source_id in _split(line))


def _render_text(text: str) -> str:
    parts, position = [], 0
    for match in _BOLD.finditer(text):
        parts.append(escape_markdown(text[position:match.start()]))
        parts.append(f"**{escape_markdown(match.group(1))}**")
        position = match.end()
    parts.append(escape_markdown(text[position:]))
    return "".join(parts)


def _render_citation(source_id: str, citation: Citation | None) -> str:
    if citation is None or not citation.known:
        return escape_markdown(f"[unknown source: {source_id}]")
    return _linked(escape_markdown(f"[{citation.number}]"), citation)


def _linked(label: str, citation: Citation) -> str:
    """Markdown link from an already escaped label to where a known citation opens."""
    return f"[{label}](<{quote(citation.link, safe=_URL_SAFE)}>)"


def sources_list(citations: list[Citation]) -> str:
    """The numbered list under an answer: display names linked like the citations, ids shown as code-free text."""
    lines = []
    for citation in citations:
        if not citation.known:
            lines.append(f"{citation.number}\\. " + escape_markdown(f"unknown source: {citation.source_id}"))
            continue
        lines.append(f"{citation.number}\\. {_linked(escape_markdown(citation.display_name), citation)} "
                     + escape_markdown(f"({citation.source_id})"))
    return "  \n".join(lines)


def cited_chunks(citations: list[Citation], chunks) -> dict[str, list]:
    """The retrieved chunks (engine.knowledge.search.SearchHit-like) backing each cited source, in citation order, best
    chunk first. A chunk backs a citation of its own id or of an enclosing one (`doc:guide.pdf` is backed by
    `doc:guide.pdf:page-3`). Sources no retrieved chunk backs (a registry model, say) are left out."""
    backing = {}
    for citation in sorted(citations, key=lambda c: c.number):
        hits = [chunk for chunk in chunks
                if chunk.source_id == citation.source_id or chunk.source_id.startswith(citation.source_id + ":")]
        if hits:
            backing[citation.source_id] = hits
    return backing
