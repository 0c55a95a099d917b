"""A document cut into the statements a rule can stand in: sentences, list items and table rows.

A list item keeps its mark ("- ") because lists state requirements without modal verbs; a table row is read with
its header (a yes/no cell under a "hard?" column becomes the word hard or soft); each statement knows the heading
it stands under, so a section titled for one use case speaks of that one only.
"""

from __future__ import annotations

import re

_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)]|\(?[a-z][.)]|\[[ xX✓]?\])\s+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(`*A-Z0-9])|(?<=;)\s+")
_HARD_COLUMN = re.compile(r"type|kind|hard|mandatory|blocking|required|level|strength|must|binding|severity", re.I)
_YES, _NO = {"yes", "y", "true", "x", "✓", "✔"}, {"no", "n", "false", "-", "—"}


def rule_units(text: str) -> list[str]:
    """The text cut into sentences, list items and table rows (each row prefixed by its header's words)."""
    return [unit for _heading, unit in headed_rule_units(text)]


def headed_rule_units(text: str) -> list[tuple[str, str]]:
    """(the heading the unit stands under, the unit): a section titled for one use case speaks of that one."""
    units, paragraph, header, heading = [], [], None, ""
    lines = text.splitlines()

    def flush() -> None:
        if paragraph:
            units.extend((heading, part.strip()) for part in _SENTENCE_END.split(" ".join(paragraph)) if part.strip())
            paragraph.clear()

    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("|"):
            flush()
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            if _TABLE_RULE.match(following):
                header = cells
            elif not _TABLE_RULE.match(stripped):
                units.append((heading, _table_row(cells, header)))
            continue
        header = None
        if not stripped or stripped.startswith("#"):
            flush()
            if stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
            continue
        if _BULLET.match(line):
            flush()
            paragraph.append("- " + _BULLET.sub("", line).strip())  # a list item keeps its mark: lists state rules
            continue
        paragraph.append(stripped)
    flush()
    return [(heading, unit) for heading, unit in units if unit]


def _table_row(cells: list[str], header: list[str] | None) -> str:
    """A row as one readable unit: a yes/no cell under a 'hard?' column becomes the word hard or soft."""
    words = []
    for position, cell in enumerate(cells):
        name = header[position] if header and position < len(header) else ""
        first = (cell.lower().split() or [""])[0].strip(",.;:")
        if name and _HARD_COLUMN.search(name) and first in _YES | _NO:
            cell = "hard" if first in _YES else "soft"
        words.append(cell)
    return " | ".join(words)
