"""Which use case a question is about, from the registry's own words.

A use case is named by the `use_case` tag of its candidates. A question that spells the name out (with
spaces, hyphens or British spelling) is matched directly; otherwise the question is compared by meaning with
each use case's description, built from its name, its task tag and its candidates' registry descriptions.
Below a minimum similarity nothing is matched: answering about the wrong use case is worse than asking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MIN_SIMILARITY = 0.30
_SPELLING = {"tumour": "tumor", "tumours": "tumors"}


@dataclass(frozen=True)
class UseCaseMatch:
    use_case: str | None
    similarity: float
    how: str  # "named", "meaning" or "none"
    alternatives: tuple[str, ...] = ()  # the use cases there are, for a question that matched none


def _words(text: str) -> list[str]:
    return [_SPELLING.get(word, word) for word in re.findall(r"[a-z0-9]+", text.lower())]


def use_case_descriptions(candidates) -> dict[str, str]:
    """One text per use case: its name in words, its task and what its candidates are for."""
    parts: dict[str, list[str]] = {}
    for candidate in candidates:
        texts = parts.setdefault(candidate.use_case, [candidate.use_case.replace("-", " ").replace("_", " "), candidate.task.replace("-", " ")])
        if candidate.description and candidate.description not in texts:
            texts.append(candidate.description)
    return {use_case: ". ".join(texts) for use_case, texts in parts.items()}


def match_use_case(question: str, candidates, embed) -> UseCaseMatch:
    """`embed` turns a list of texts into normalized vectors (KnowledgeBase.embed)."""
    descriptions = use_case_descriptions(candidates)
    known = tuple(sorted(descriptions))
    if not descriptions or not question.strip():
        return UseCaseMatch(None, 0.0, "none", known)
    words = " ".join(_words(question))
    named = [use_case for use_case in known if " ".join(_words(use_case)) in words]
    if len(named) == 1:
        return UseCaseMatch(named[0], 1.0, "named", known)
    pool = named or list(known)
    vectors = embed([question[:2000], *(descriptions[use_case] for use_case in pool)])
    similarities = vectors[1:] @ vectors[0]
    best = int(np.argmax(similarities))
    if similarities[best] < MIN_SIMILARITY:
        return UseCaseMatch(None, float(similarities[best]), "none", known)
    return UseCaseMatch(pool[best], float(similarities[best]), "meaning", known)
