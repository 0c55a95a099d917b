"""Which documents govern which use case, and how that was decided.

The one an admin chose, else the front matter's `use_case` (or a `criteria:<use case>` source id), else the use
cases the document's title or opening names (their registry names, spelled either way, or their candidates' model
names); imported table rows govern nothing unless an admin says so.

Separate from reading the rules: governance is a question about documents (front matter, titles, openings, an
admin's assignment), answered before any sentence is read; the Knowledge page and the demo registry ask it on its
own, and the rule reader asks it again sentence by sentence (a sentence about another use case is not read).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from engine.knowledge.sources import TABLE_DOMAINS  # rows imported from tables are data, not guidelines
from engine.registry.metric_catalog import spelled_both_ways
from engine.registry.use_cases import described_use_case, initials
from engine.rules.criteria import NO_USE_CASE, document_assignments


def use_case_terms(candidates, names=()) -> dict[str, tuple[str, ...]]:
    """The words that name each use case in a document: its registry name (spelled either way) and its model names.

    `names` are use cases to know even without a candidate."""
    terms: dict[str, set[str]] = {name: set(_spelled(name)) for name in names}
    for candidate in candidates:
        words = terms.setdefault(candidate.use_case, set(_spelled(candidate.use_case)))
        if len(candidate.name) >= 4:
            words.add(candidate.name.lower())
    return {use_case: tuple(sorted(words, key=len, reverse=True)) for use_case, words in terms.items()}


def _spelled(name: str) -> tuple[str, ...]:
    return spelled_both_ways(re.sub(r"[-_./]+", " ", name.lower()).strip())


@lru_cache(maxsize=4096)
def _term_pattern(terms: tuple[str, ...]) -> re.Pattern:
    alternatives = [r"[\s\-_]+".join(map(re.escape, re.split(r"[\s\-_]+", term))) + r"s?" for term in terms]
    return re.compile(r"(?<![\w])(?:" + "|".join(alternatives) + r")(?![\w])", re.I)


def named_use_cases(text: str, terms: dict[str, tuple[str, ...]]) -> set[str]:
    return {use_case for use_case, words in terms.items() if words and _term_pattern(tuple(words)).search(text)}


def loosely_named_use_cases(text: str, use_cases) -> set[str]:
    """Use cases whose name's words the text uses, not necessarily together: "Speech recognition for call-centre
    transcription" names call-center-asr's "call" and "centre", "Fraud scoring for cards" names card-fraud. A name of
    two words needs both, a longer one all but one; of several names it uses, only those it uses most fully count."""
    used = _word_user(text)
    scores = {}
    for use_case in use_cases:
        tokens = _name_tokens(use_case)
        present = sum(map(used, tokens))
        if len(tokens) >= 2 and present >= max(2, len(tokens) - 1):
            scores[use_case] = present / len(tokens)
    best = max(scores.values(), default=0)
    return {use_case for use_case, score in scores.items() if score == best}  # the names it uses most fully


_FUNCTION_WORDS = {"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "per", "the", "to", "vs", "with"}


def _name_tokens(use_case: str) -> list[str]:
    """The words of a use case's name that can name it ("to" of ivr-text-to-speech cannot)."""
    return [t for t in re.split(r"[-_./\s]+", use_case.lower()) if t and t not in _FUNCTION_WORDS]


def _word_user(text: str):
    """Whether the text uses a word of a use case's name: "tumor" is used by "tumour", the abbreviation "recs" by
    "recommendations", the initialism "pe" by "pulmonary embolism"."""
    plain = re.findall(r"[a-z0-9]+", text.lower())
    words = set(plain) | {word[:-1] for word in plain if word.endswith("s")} | {word[:-3] + "y" for word in plain if word.endswith("ies")}
    spelled = initials(plain)

    def used(token: str) -> bool:
        if any(variant in words for variant in spelled_both_ways(token)):
            return True
        if 2 <= len(token) <= 4 and token.isalpha() and token in spelled:
            return True
        plural = token.endswith("s") and 3 < len(token) <= 5
        return plural and any(word.startswith(token[:-1]) and word.endswith("s") and len(word) > len(token) for word in plain)

    return used


def section_of_another(heading: str, use_case: str, use_cases) -> bool:
    """A section headed with another use case's name ("2. Pulmonary embolism rule-out"), or with the initialism only
    another use case's name has spelled out ("Suspected pulmonary embolism" for pe-rule-out, beside
    chest-pain-rule-out) and none of this one's own words, speaks of that other use case."""
    if not heading:
        return False
    names = set(use_cases) | {use_case}
    if named := loosely_named_use_cases(heading, names):
        return use_case not in named
    shared = Counter(token for name in names for token in set(_name_tokens(name)))
    used, spelled = _word_user(heading), initials(re.findall(r"[a-z0-9]+", heading.lower()))
    own = [token for token in _name_tokens(use_case) if shared[token] == 1]
    return not any(map(used, own)) and any(shared[token] == 1 and 2 <= len(token) <= 4 and token in spelled
                                           for name in names - {use_case} for token in _name_tokens(name))


def document_governance(connection, terms: dict[str, tuple[str, ...]], only: str | None = None,
                        descriptions: dict[str, str] | None = None) -> dict[int, tuple[tuple[str, ...], str]]:
    """Every document -> (the use cases it governs, how that was decided); () for a document that governs none.

    `only`: the answer needs one use case's documents, so only its name is searched in the full-text index.
    `descriptions` (engine.registry.use_cases.use_case_descriptions): a title that names no use case may describe one. The
    result is kept until a chunk or an admin's assignment changes: every question of the chat asks for it."""
    assigned = document_assignments(connection)
    descriptions = descriptions or {}
    database = connection.execute("PRAGMA database_list").fetchone()[2] or f"memory:{id(connection)}"
    generation = connection.execute("SELECT generation FROM index_state").fetchone()[0]
    key = (database, generation, tuple(sorted(assigned.items())), tuple(sorted(terms.items())), only,
           tuple(sorted(descriptions.items())))
    if key not in _governed:
        if len(_governed) > _GOVERNED_CACHE:
            _governed.clear()
        _governed[key] = _read_governance(connection, terms, only, assigned, descriptions)
    return _governed[key]


_OPENING_CHARS = 600  # a file with no title of its own ("guideline.txt", a Slack export): its first lines may describe
_governed: dict[tuple, dict] = {}
_GOVERNED_CACHE = 64


def _read_governance(connection, terms, only, assigned, descriptions) -> dict[int, tuple[tuple[str, ...], str]]:
    named = _documents_naming(connection, {only: terms[only]} if only else terms)
    openings = dict(connection.execute(
        f"SELECT document_id, text FROM chunks WHERE chunk_index = 0 AND source_domain NOT IN {TABLE_DOMAINS}"))
    governance = {}
    for document_id, title, origin, metadata, domain, source_ids in connection.execute(
            """SELECT d.id, d.title, d.origin, d.metadata, min(c.source_domain), json_group_array(DISTINCT c.source_id)
               FROM documents d LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id"""):
        metadata = {**json.loads(metadata or "{}"), "source_ids": [s for s in json.loads(source_ids) if s]}
        if origin in assigned:
            use_case = assigned[origin]
            governance[document_id] = ((use_case,) if use_case != NO_USE_CASE else (), "chosen by an admin")
        elif domain in TABLE_DOMAINS and not _declared(metadata):
            governance[document_id] = ((), "imported table rows govern no use case unless an admin chooses one")
        else:
            opening = f"{title}\n{openings.get(document_id, '')}"
            loose = loosely_named_use_cases(title, terms) or loosely_named_use_cases(opening, terms)
            if len(loose) > 1 and (told := described_use_case(_beginning(connection, document_id),
                                                              {u: descriptions[u] for u in loose if u in descriptions}, 1)):
                loose = {told}  # "overdraft ... approval" and "credit ... risk" both used: the one its lines describe
            untitled = title == Path(origin.partition(":")[2] or origin).stem  # "guideline.txt": no title of its own
            governance[document_id] = governed_by(
                metadata, named.get(document_id, set()) | named_use_cases(title, terms) | loose,
                described_use_case(title, descriptions)
                or (described_use_case(_beginning(connection, document_id), descriptions) if untitled else None))
    return governance


def _beginning(connection, document_id: int) -> str:
    """A document's first lines: its first chunk may be a header line only ("Slack export: #helpdesk-bot-eval")."""
    texts = connection.execute("SELECT text FROM chunks WHERE document_id = ? AND chunk_index < 4 ORDER BY chunk_index",
                               (document_id,))
    return "\n".join(text for (text,) in texts)[:_OPENING_CHARS]


def governed_by(metadata: dict, named: set[str], described: str | None = None) -> tuple[tuple[str, ...], str]:
    """The use cases a document governs and how that was decided: its front matter, else the use cases it names,
    else the one its title describes in the words of the registry's descriptions."""
    if declared := _declared(metadata):
        return tuple(declared), "front matter"
    if named:
        return tuple(sorted(named)), "named in its text"
    if described:
        return (described,), "its opening describes it"
    return (), "it names no use case of the registry"


def _declared(metadata: dict) -> list[str]:
    """Use cases a document's front matter names: `use_case: a, b`, or a `criteria:<use case>` source id (the demo's).

    `metadata["source_ids"]` are the source ids the document's chunks are cited by."""
    if metadata.get("use_case"):
        return [part.strip() for part in str(metadata["use_case"]).split(",") if part.strip()]
    return sorted({s.partition(":")[2] for s in metadata.get("source_ids", ()) if s.startswith("criteria:") and s.partition(":")[2]})


def _documents_naming(connection, terms) -> dict[int, set[str]]:
    """Document id -> use cases named in its opening (its first chunk), through the full-text index (one query per
    use case). A guideline names what it governs up front; a use case mentioned in passing further down ("unlike the
    churn model, ...") is not governed by it."""
    found: dict[int, set[str]] = {}
    for use_case, words in terms.items():
        query = " OR ".join('"' + word.replace('"', " ") + '"' for word in words)
        rows = connection.execute(
            """SELECT DISTINCT c.document_id FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid
               WHERE chunks_fts MATCH ? AND c.chunk_index = 0""", (query,))
        for (document_id,) in rows:
            found.setdefault(document_id, set()).add(use_case)
    return found
