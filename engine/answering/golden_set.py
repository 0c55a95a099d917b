"""The golden set: questions with what a right answer contains, read from JSONL and checked before anything runs.

One JSON object per line (blank lines and lines starting with `#` are skipped):
    {"id": "ts-rec-1", "question": "Which model should I deploy for tumour screening?", "type": "dynamic",
     "category": "recommendation", "use_case": "tumor-screening", "key_facts": ["{recommended}"],
     "expected_sources": ["registry:{recommended}", "criteria:tumor-screening"]}

- `type`: `static` (facts written in the team's documents), `dynamic` (facts computed from the live registry by
  the decision engine, named by placeholders, so no number in the file can rot) or `refusal` (the product must
  recommend nothing: an unknown or retired use case, an off-topic question).
- `key_facts`: every fact must appear in the answer. A fact is a string or a list of alternative strings (any one
  of them will do). Matching ignores case, `<<SRC:...>>` markers, markdown emphasis, `_`/`-` versus spaces,
  trailing zeros (0.40 = 0.4) and thousands separators, and a fact never matches inside a longer word or number.
- `expected_sources`: source ids a right answer cites; citing at least one of them (and nothing unknown) is a
  correct citation.
- `use_case` is required for static and dynamic items and absent for refusals, which have no facts or sources.

Placeholders (dynamic items only), resolved from the decision on the item's use case:
`{recommended}`, `{recommended_family}`, `{recommended_version}`, `{priority_metric}`, `{priority_value}` (the
recommended model's priority metric as the product writes it), `{champion}` (the candidate holding the alias),
and the lists `{passing}`, `{rejected}` (failing any hard criterion), `{rejected:<metric>}`, `{near_best}` (the
others within the near-best margin). A string holding a list placeholder stands for one string per value: as a
key fact, each of them must appear. A dynamic item whose placeholders have no value on this registry (nothing
recommended, no candidate rejected) is skipped with that reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.answering.prompting import MAX_QUESTION_CHARS
from engine.core.paths import DEMO_DIR
from engine.knowledge.sources import SOURCE_ID_PATTERN

DEFAULT_GOLDEN = DEMO_DIR / "golden.jsonl"
TYPES = ("static", "dynamic", "refusal")
FIELDS = ("id", "question", "type", "category", "use_case", "key_facts", "expected_sources", "note")
SINGLE = ("recommended", "recommended_family", "recommended_version", "priority_metric", "priority_value", "champion")
LISTS = ("passing", "rejected", "near_best")
PLACEHOLDER = re.compile(r"\{([a-z_]+)(?::([a-z0-9_]+))?\}")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CATEGORY = re.compile(r"^[a-z][a-z0-9-]{0,39}$")

Fact = tuple[str, ...]  # alternatives: any one of them


class GoldenError(ValueError):
    """The golden file cannot be used; the message names the file, the line and the field."""


@dataclass(frozen=True)
class GoldenItem:
    id: str
    question: str
    type: str
    category: str
    use_case: str | None
    key_facts: tuple[Fact, ...]
    expected_sources: tuple[str, ...]
    note: str = ""

    @property
    def is_refusal(self) -> bool:
        return self.type == "refusal"


@dataclass(frozen=True)
class GoldenSet:
    path: Path
    sha256: str
    items: tuple[GoldenItem, ...]

    def categories(self) -> list[str]:
        return sorted({item.category for item in self.items})

    def use_cases(self) -> list[str]:
        return sorted({item.use_case for item in self.items if item.use_case})

    def select(self, *, per_category: int | None = None, ids: list[str] | None = None) -> tuple[GoldenItem, ...]:
        """The items to run: the given ids, or the first `per_category` of each category (file order), or all."""
        if ids:
            known = {item.id: item for item in self.items}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise GoldenError(f"{self.path}: no golden item {', '.join(unknown)}")
            wanted = set(ids)
            return tuple(item for item in self.items if item.id in wanted)
        if per_category:
            if per_category < 1:
                raise GoldenError("items per category must be at least 1")
            seen: dict[str, int] = {}
            chosen = []
            for item in self.items:
                seen[item.category] = seen.get(item.category, 0) + 1
                if seen[item.category] <= per_category:
                    chosen.append(item)
            return tuple(chosen)
        return self.items


def load_golden(path: Path | str = DEFAULT_GOLDEN) -> GoldenSet:
    """Every item of the file, checked; GoldenError on the first problem (nothing is half-read)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise GoldenError(f"cannot read the golden file {path}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise GoldenError(f"{path}: not UTF-8 text") from None
    items, seen = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise GoldenError(f"{where}: not valid JSON ({error.msg})") from None
        item = parse_item(raw, where)
        if item.id in seen:
            raise GoldenError(f"{where}: id {item.id!r} is also on line {seen[item.id]}")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise GoldenError(f"{path}: no golden items")
    return GoldenSet(path, hashlib.sha256(data).hexdigest(), tuple(items))


def parse_item(raw, where: str) -> GoldenItem:
    if not isinstance(raw, dict):
        raise GoldenError(f"{where}: an item must be a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise GoldenError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")

    def text(name: str, pattern: re.Pattern | None = None, *, required: bool = True) -> str | None:
        value = raw.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise GoldenError(f"{where}: {name} must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise GoldenError(f"{where}: {name} {value!r} must be lowercase letters, digits and hyphens")
        return value.strip()

    item_id = text("id", _ID)
    where = f"{where} ({item_id})"
    question = text("question")
    if len(question) > MAX_QUESTION_CHARS:
        raise GoldenError(f"{where}: question is longer than {MAX_QUESTION_CHARS} characters")
    kind = text("type")
    if kind not in TYPES:
        raise GoldenError(f"{where}: type must be one of {', '.join(TYPES)} (got {kind!r})")
    category = text("category", _CATEGORY)
    use_case = text("use_case", required=False)
    facts = _facts(raw.get("key_facts", []), where)
    sources = raw.get("expected_sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s.strip() for s in sources):
        raise GoldenError(f"{where}: expected_sources must be a list of source ids")
    sources = tuple(s.strip() for s in sources)
    note = raw.get("note") or ""
    if not isinstance(note, str):
        raise GoldenError(f"{where}: note must be a string")

    if kind == "refusal":
        if use_case or facts or sources:
            raise GoldenError(f"{where}: a refusal item has no use_case, key_facts or expected_sources")
    else:
        if not use_case:
            raise GoldenError(f"{where}: use_case must be a non-empty string for a {kind} item")
        if not facts:
            raise GoldenError(f"{where}: key_facts must list at least one fact")
        if not sources:
            raise GoldenError(f"{where}: expected_sources must list at least one source id")
    strings = [alternative for fact in facts for alternative in fact] + list(sources)
    placeholders = [match for s in strings for match in PLACEHOLDER.finditer(s)]
    for match in placeholders:
        _check_placeholder(match, where)
    if kind == "static" and placeholders:
        raise GoldenError(f"{where}: a static item cannot use {placeholders[0].group(0)}; make it dynamic")
    if kind == "dynamic" and not placeholders:
        raise GoldenError(f"{where}: a dynamic item needs a placeholder such as {{recommended}}; make it static")
    for fact in facts:
        for alternative in fact:
            found = [m for m in PLACEHOLDER.finditer(alternative) if m.group(1) in LISTS]
            if len(found) > 1 or (found and len(fact) > 1):
                raise GoldenError(f"{where}: a list placeholder ({found[0].group(0)}) must be a fact of its own, once")
    for source in sources:
        if not SOURCE_ID_PATTERN.match(PLACEHOLDER.sub("x", source)):
            raise GoldenError(f"{where}: expected source {source!r} is not a 'domain:entity' source id")
    return GoldenItem(item_id, question, kind, category, use_case, facts, sources, note.strip())


def _facts(value, where: str) -> tuple[Fact, ...]:
    if not isinstance(value, list):
        raise GoldenError(f"{where}: key_facts must be a list")
    facts = []
    for fact in value:
        alternatives = [fact] if isinstance(fact, str) else fact
        if not isinstance(alternatives, list) or not alternatives or not all(isinstance(a, str) and a.strip() for a in alternatives):
            raise GoldenError(f"{where}: each key fact must be a non-empty string or a list of them (got {fact!r})")
        facts.append(tuple(a.strip() for a in alternatives))
    return tuple(facts)


def _check_placeholder(match: re.Match, where: str) -> None:
    name, argument = match.groups()
    if name in SINGLE and argument is None or name in LISTS and (argument is None or name == "rejected"):
        return
    raise GoldenError(f"{where}: unknown placeholder {match.group(0)} (known: "
                      + ", ".join([*(f"{{{n}}}" for n in SINGLE + LISTS), "{rejected:<metric>}"]) + ")")
