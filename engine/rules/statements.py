"""A document cut into the statements a rule can stand in: sentences, list items and table rows.

A list item keeps its mark ("- ") because lists state requirements without modal verbs; a table row is read with
its header (a yes/no cell under a "hard?" column becomes the word hard or soft); each statement knows the heading
it stands under, so a section titled for one use case speaks of that one only.
"""

from __future__ import annotations

import re

_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)]|\(?[a-z][.)]|\[[ xX✓]?\])\s+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}")
_SETEXT_RULE = re.compile(r"^(?:={3,}|-{3,})$")
_BOLD_LINE = re.compile(r"^(?:\*\*[^*]+\*\*|__[^_]+__)$")
_INDENTED = re.compile(r"^(?: {2,}|\t)\S")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(`*A-Z0-9¹²³⁴⁵⁶⁷⁸⁹])|(?<=;)\s+")
_HARD_COLUMN = re.compile(r"type|kind|hard|mandatory|blocking|required|level|strength|must|binding|severity|rating|criticality", re.I)
# a yes/no cell, or a risk register's rating: a High risk's control must hold, a Medium one's is watched
_YES = {"yes", "y", "true", "x", "✓", "✔", "high", "critical", "blocker", "blocking", "mandatory", "required", "must"}
_NO = {"no", "n", "false", "-", "—", "medium", "low", "should", "optional", "nice", "could", "advisory"}


def rule_units(text: str) -> list[str]:
    """The text cut into sentences, list items and table rows (each row prefixed by its header's words)."""
    return [unit for _heading, unit in headed_rule_units(text)]


def headed_rule_units(text: str) -> list[tuple[str, str]]:
    """(the heading the unit stands under, the unit): a section titled for one use case speaks of that one."""
    units, paragraph, header, heading, indented_list = [], [], None, "", False
    lines = text.splitlines()

    def flush() -> None:
        if paragraph:
            units.extend((heading, part.strip()) for sentence in _SENTENCE_END.split(" ".join(paragraph))
                         for part in _in_each_language(sentence) if part.strip())
            paragraph.clear()

    for index, line in enumerate(lines):
        stripped = line.strip()
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if _SETEXT_RULE.match(stripped) and not paragraph:
            continue  # the underline of a heading taken below
        if stripped and _SETEXT_RULE.match(following.strip()) and not _BULLET.match(line) and not paragraph:
            heading = stripped  # "Release gates" over a line of "====="
            continue
        if _BOLD_LINE.match(stripped):
            flush()
            heading = stripped.strip("*_ ")  # "**How fast does it have to be?**" heads its answer
            continue
        if stripped.endswith(":") and _INDENTED.match(following) and not _BULLET.match(line):
            flush()
            heading = stripped.rstrip(":")  # "gates (blocking, every one must hold):" over indented lines
            indented_list = True
            continue
        if indented_list and _INDENTED.match(line):
            flush()
            paragraph.append("- " + stripped)  # an indented line under a "...:" line is an item of that list
            continue
        indented_list = False
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


def _in_each_language(sentence: str) -> list[str]:
    """"Genauigkeit ... ≥ 90 % / accuracy of the estimated number of speakers ≥ 90%": a rule written twice, in two
    languages, is two units; a slash inside a quantity ("req / s") is not such a split."""
    parts = _LANGUAGE_SPLIT.split(sentence)
    if len(parts) == 2 and all(re.search(r"\d", part) for part in parts):
        return [parts[0], ("- " if sentence.startswith("- ") else "") + parts[1]]
    return [sentence]


_LANGUAGE_SPLIT = re.compile(r"\s+/\s+")


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
