"""The vocabulary of one registry: every phrase that names one of its logged metric keys, found in sentences.

The rule extractor, the rulebook and the verifier read documents and answers through it. It is kept apart from
reading one key (engine.registry.metric_keys) because it is built per set of logged keys, as one pattern that takes
tens of milliseconds to build, and because some of its phrases name a key only given the other keys logged beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from engine.registry.metric_catalog import KIND_BY_WORD, KINDS, UNIT_TOKENS, spelled_both_ways
from engine.registry.metric_keys import ABBREVIATIONS, GENERIC_TOKENS, SPLIT_PREFIXES, MetricSpec, key_phrases, key_tokens, metric_spec

_ENGLISH_SHORT_WORDS = {"a", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it", "me", "my", "no", "of",
                        "on", "or", "so", "to", "up", "us", "we", "and", "are", "but", "can", "for", "has", "its", "may",
                        "not", "our", "the", "was", "who", "all", "any", "new", "one", "per", "top", "use", "set", "run"}
_GENERIC_KINDS = {"loss", "cost", "memory", "model_size", "throughput", "map"}  # their words are everyday English too


def _quantity_phrase(token: str) -> str | None:
    """A number with its unit inside a key ("50m", "5min", "10pct") as prose writes it: "50 m", "±5 minutes", "10%"."""
    found = re.fullmatch(r"(\d+)([a-z%]+)", token)
    if not found or found.group(2) not in UNIT_TOKENS:
        return None
    unit = UNIT_TOKENS[found.group(2)]
    spellings = sorted({word for word, same in UNIT_TOKENS.items() if same == unit}, key=len, reverse=True)
    return rf"(?:±|\+/-)?\s*{found.group(1)}\s*(?:{'|'.join(map(re.escape, spellings))})"


def _is_initialism(token: str) -> bool:
    """"ttfa", "mttr": a key word with no vowel where English needs one, read as the initials of a phrase."""
    return 2 <= len(token) <= 5 and token.isalpha() and token not in _ENGLISH_SHORT_WORDS and not re.search(r"[aeiou]", token[1:-1] or "x")


def _inflected(tokens: list[str]) -> str:
    """A regex for the key's words as prose writes them: "serve_p95_ms" also reads "serving p95"."""
    parts = []
    for token in tokens:
        stem = token[:-1] if token.endswith("e") and len(token) > 3 else token
        parts.append(re.escape(stem) + (r"(?:e|es|ed|ing)?" if stem != token else r"(?:s|es|ed|ing)?") if token.isalpha()
                     else re.escape(token))
    return r"[\s_\-]+".join(parts)


@dataclass(frozen=True)
class MetricMention:
    start: int
    end: int
    keys: tuple[str, ...]  # several when the words fit several logged keys ("latency" with p50 and p95 logged)
    words: str
    partial: bool = False  # named by one word of the key ("voice" for voice_size_mb) or its initials, not its name


@lru_cache(maxsize=64)
def vocabulary_for(keys: frozenset[str], directions: tuple[tuple[str, bool], ...] = (), catalog_fallback: bool = False) -> MetricVocabulary:
    """One vocabulary per set of logged keys, built once per process (its pattern takes tens of milliseconds)."""
    return MetricVocabulary(keys, dict(directions), catalog_fallback=catalog_fallback)


class MetricVocabulary:
    """The metric keys a registry logs and every phrase that names them, for reading sentences of documents and answers."""

    def __init__(self, keys, directions: dict[str, bool] | None = None, *, catalog_fallback: bool = False):
        """`catalog_fallback`: words of catalog metrics no key logs name the catalog's own key ("recall" with no
        recall logged), so that a rule on a metric nobody logged fails every candidate instead of vanishing."""
        self.keys = tuple(sorted(set(keys)))
        directions = directions or {}
        specs = {key: metric_spec(key).with_direction(directions.get(key)) for key in self.keys}
        if catalog_fallback:
            logged = {spec.kind for spec in specs.values()}
            specs |= {kind.name: metric_spec(kind.name) for kind in KINDS if kind.name not in logged and kind.name not in specs
                      and kind.name not in _GENERIC_KINDS}
        self.specs = specs
        self.logged = frozenset(self.keys)
        phrases: dict[str, set[str]] = {}  # regex -> keys it names
        partial: set[str] = set()  # phrases that name a key by one of its words or its initials only: weak evidence
        for key, spec in self.specs.items():
            for word in spec.words or key_phrases(key):
                for variant in spelled_both_ways(_normal(word)):
                    phrases.setdefault(re.escape(variant).replace(r"\ ", " "), set()).add(key)
            if key in self.logged:
                tokens = [t for t in key_tokens(key) if t not in UNIT_TOKENS and t not in SPLIT_PREFIXES]
                if tokens and all(t.isalpha() for t in tokens):
                    phrases.setdefault(_inflected(tokens), set()).add(key)
                    phrases.setdefault(_inflected([ABBREVIATIONS.get(t, t) for t in tokens]), set()).add(key)  # "median error"
                alpha = [t for t in tokens if t.isalpha()]
                if 2 <= len(alpha) <= 4 and len(alpha) == len(tokens):
                    acronym = "".join(t[0] for t in alpha)
                    if acronym not in _ENGLISH_SHORT_WORDS and acronym not in UNIT_TOKENS and not KIND_BY_WORD.get(acronym):
                        phrases.setdefault(re.escape(acronym), set()).add(key)  # "NE" for normalized_entropy
                for token in tokens if len(tokens) > 1 else ():
                    token = ABBREVIATIONS.get(token, token)  # gen_ms_per_img: "per image"
                    if len(token) >= 4 and token.replace("-", "").isalpha() and token not in GENERIC_TOKENS and not KIND_BY_WORD.get(token):
                        for variant in spelled_both_ways(token):
                            phrases.setdefault(_inflected([variant]), set()).add(key)  # "batch" for batch_runtime_s
                            partial.add(_inflected([variant]))
                for before, token in zip([""] + tokens, tokens):
                    if quantity := _quantity_phrase(token):  # within_50m_rate: "within 50 m", share_within_5min: "±5 minutes"
                        phrase = (re.escape(before) + r"\s+" if before.isalpha() else "") + quantity
                        phrases.setdefault(phrase, set()).add(key)
                        partial.add(phrase)
                named_by = [t for t in tokens if t != "per"]
                if len(named_by) == 1 and _is_initialism(named_by[0]) and spec.kind is None:  # ttfa_ms: "time to first audio"
                    spelled_out = r"[\s\-]+".join(f"{letter}[a-z]*" for letter in named_by[0])
                    phrases.setdefault(spelled_out, set()).add(key)
                    partial.add(spelled_out)
        for phrase, keys in phrases.items():  # a phrase a logged key answers to is that key's, not the catalog's
            if keys & self.logged and keys - self.logged:
                keys -= keys - self.logged
        # A word several keys share ("latency", "auc", "batch") names all of them; a specific one names one.
        self._patterns = sorted(phrases, key=_literal_length, reverse=True)
        self._keys_of = [tuple(sorted(phrases[p])) for p in self._patterns]
        self._partial = [p in partial for p in self._patterns]
        self._pattern = re.compile(
            r"(?<![\w@])(?:" + "|".join(f"(?P<p{i}>{p})" for i, p in enumerate(self._patterns)) + r")(?![\w@])"
        ) if phrases else None
        self._seen: dict[str, list[MetricMention]] = {}

    def spec(self, key: str) -> MetricSpec:
        return self.specs.get(key) or metric_spec(key)

    def mentions(self, text: str) -> list[MetricMention]:
        """Every place the text names a metric, longest phrase first, in order of position (remembered per text)."""
        if self._pattern is None:
            return []
        if text in self._seen:
            return self._seen[text]
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[text] = found = self._find(text)
        return found

    def _find(self, text: str) -> list[MetricMention]:
        normal, positions = _normal_with_positions(text)
        found = []
        for match in self._pattern.finditer(normal):
            start, end = positions[match.start()], positions[match.end() - 1] + 1
            written = text[start:end]
            if len(written) <= 3 and written.isalpha() and written.islower() and written not in self.logged:
                continue  # "der" is an article, "DER" the diarization error rate; a logged key "mae" is itself
            index = int(match.lastgroup[1:])
            found.append(MetricMention(start, end, self._keys_of[index], text[start:end], self._partial[index]))
        return found

    def keys_of_kind(self, kind: str) -> list[str]:
        """The logged keys of one catalog kind."""
        return [key for key in self.keys if self.specs[key].kind == kind]


def _literal_length(pattern: str) -> int:
    """How long a phrase pattern is as written text, so that the longest phrase is tried first."""
    return len(re.sub(r"\(\?:[^)]*\)\??|\\[sS](?:\+|\*)?|[\\\[\]+*?]", "", pattern)) + pattern.count(r"[\s_\-]+")


def _normal(text: str) -> str:
    return re.sub(r"[\s_`*]+", " ", re.sub(r"[‑–—]", "-", text.lower())).strip()


def _normal_with_positions(text: str) -> tuple[str, list[int]]:
    """Lower case with runs of spaces, underscores, backticks and emphasis as one space, and where each character came from."""
    out, positions, space = [], [], False
    for index, char in enumerate(text):
        if char.isspace() or char in "_`*":
            if not space and out:
                out.append(" ")
                positions.append(index)
            space = True
            continue
        space = False
        out.append("-" if char in "‑–—" else char.lower())
        positions.append(index)
    return "".join(out), positions
