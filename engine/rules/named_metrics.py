"""Which of the registry's metrics a unit's words name: the one a number bounds, the one a generic word means among
several logged keys ("precision" beside precision_at_10pct and precision_at_20pct), the one a unit points at
("the model has to fit in 50 MB").

Separate because criteria and preferences both have to narrow the vocabulary's mentions down to one logged key, and
that choice has its own rules whatever the rule being read.
"""

from __future__ import annotations

import re
from dataclasses import replace

from engine.registry.metric_catalog import unit_dimension
from engine.registry.metric_keys import ABBREVIATIONS
from engine.registry.metric_vocabulary import MetricVocabulary
from engine.rules.quantities import WrittenNumber


def bounded_keys(unit: str, number: WrittenNumber, before, after, vocabulary: MetricVocabulary) -> tuple[str, ...]:
    """The metric a number bounds: the one it is "of" ("under forty kilobytes of RAM"), the only one after it its unit
    fits ("more than one false alarm a week"), else the subject named before it."""
    owned = [m for m in after if _OF_THE.fullmatch(unit[number.end:m.start])]
    if after and _fits(after[0], number, vocabulary) and not any(_fits(m, number, vocabulary) for m in before):
        owned = owned or after[:1]
    return disambiguated_keys(owned[0].keys, unit) if owned else _subject(before, after, unit, vocabulary)


_MISSES = re.compile(r"\bmiss(?:es|ed)?\s+$", re.I)


def recall_from_misses(unit: str, start: int, number: WrittenNumber, vocabulary: MetricVocabulary):
    """"A model that misses more than one in five of the failures is not acceptable": a bound on the share missed is
    one on the one recall the registry logs (1 - 0.2); (the share as a recall, the recall key) or None."""
    recalls = vocabulary.keys_of_kind("recall")
    if not _MISSES.search(unit, 0, start) or number.unit not in ("", "%") or len(recalls) != 1:
        return None
    share = number.value / 100 if number.unit == "%" else number.value
    return replace(number, value=1 - share, unit=""), tuple(recalls)


_THE_MODEL = re.compile(r"\b(?:the |a |each |any )?(?:model|artefact|artifact|checkpoint|weights|binary|bundle)\b", re.I)
# "Inference on the CPU pool must stay under eighty milliseconds per image": a time per prediction
_PER_PREDICTION = re.compile(r"\b(?:inference|predictions?|per (?:image|request|call|prediction|transaction|query|item|record|"
                             r"sample|utterance|document|page)|responds?|response|answers?|scor(?:e|es|ing) (?:a|each|one))\b", re.I)


def named_by_its_unit(segment: str, unit: str, vocabulary: MetricVocabulary) -> tuple[str, ...]:
    """A number whose unit only one logged metric can have bounds that metric when the words point at it: "the model
    has to fit in a quarter of a megabyte" (its size), "inference must stay under eighty milliseconds" (its latency),
    "the 90th percentile of the distance ... under 250 m" (the one error in metres the sentence's p90 picks)."""
    dimension = unit_dimension(unit)
    if dimension == "size" and _THE_MODEL.search(segment):
        keys = vocabulary.keys_of_kind("model_size") or [k for k in vocabulary.keys if vocabulary.spec(k).dimension == "size"]
    elif dimension == "time" and _PER_PREDICTION.search(segment):
        keys = vocabulary.keys_of_kind("latency") or vocabulary.keys_of_kind("inference_time")
    elif dimension in ("length", "energy", "power", "mass"):  # units no score, size or time can have
        keys = [k for k in vocabulary.keys if vocabulary.spec(k).dimension == dimension]
    else:
        return ()
    keys = disambiguated_keys(tuple(keys), segment)
    return keys if len(keys) == 1 else ()


def _subject(before, after, unit: str, vocabulary: MetricVocabulary) -> tuple[str, ...]:
    """The metric a comparison bounds: the last one named before it (not one inside an aside in parentheses), else
    the first named right after its number ("at least 2,000 requests per second"); a logged metric wins over a
    catalog word nobody logs."""
    outside = [m for m in before if unit[:m.start].count("(") <= unit[:m.start].count(")")] or before
    if " | " in unit and outside:  # a table row names its metric in its first cell
        outside = outside[:1]
    logged_before = [m for m in outside if set(m.keys) <= vocabulary.logged]
    logged_after = [m for m in after if set(m.keys) <= vocabulary.logged]
    if logged_before:
        chosen = logged_before[0 if " | " in unit else -1]
        head = next((m for m in reversed(logged_before) if not m.partial and m.end <= chosen.start), None)
        if (chosen.partial and head and len(disambiguated_keys(head.keys, unit)) == 1
                and _MODIFIER.fullmatch(unit[head.end:chosen.start])):
            chosen = head  # "macro F1 over the 200 most frequent tags": the tags qualify the F1
        return disambiguated_keys(chosen.keys, unit)
    if logged_after:
        return disambiguated_keys(logged_after[0].keys, unit)
    return outside[-1].keys if outside else after[0].keys if after else ()


_OF_THE = re.compile(r"\s+(?:of|in)\s+(?:the\s+|its\s+)?", re.I)
_MODIFIER = re.compile(r"\s+(?:over|of|on|for|across|in|at|per|among|from)\b[^,;:()]*", re.I)


def disambiguated_keys(keys: tuple[str, ...], unit: str) -> tuple[str, ...]:
    """A generic word ("precision") that fits precision_at_10pct and precision_at_20pct names the one whose own part
    the sentence writes ("in that top decile", "at 10%"); when the sentence writes no key's own part, the key that
    is the others' plain form (recall_at_50 beside recall_at_50_de); else all of them."""
    if len(keys) < 2:
        return keys
    text = unit.lower()
    joined = text.replace("-", "")  # "hold-out" writes holdout

    def where(form: str) -> int:
        found = [i for i in (text.find(form), joined.find(form)) if i >= 0]
        return min(found) if found else -1

    seen = {key: sorted(i for i in map(where, _own_forms(key, keys)) if i >= 0) for key in keys}
    written = [key for key in keys if seen[key]]
    if len(written) > 1:  # "its UAR on the worst-scoring accent group": worst and accent beat accent alone
        most = max(len(seen[key]) for key in written)
        written = [key for key in written if len(seen[key]) == most]
        if len(written) > 1:  # "the gap between its best and its worst accent group": the part written first
            first = min(seen[key][0] for key in written)
            written = [key for key in written if seen[key][0] == first]
    if len(written) == 1:
        return tuple(written)
    parts = {key: set(re.split(r"[_\-@]+", key.lower())) for key in keys}
    plain = [key for key in keys if all(parts[key] < parts[other] for other in keys if other != key)]
    return tuple(plain) if not written and len(plain) == 1 else keys


def _own_forms(key: str, keys: tuple[str, ...]) -> list[str]:
    shared = set.intersection(*(set(re.split(r"[_\-@]+", k.lower())) for k in keys))
    forms = []
    for token in set(re.split(r"[_\-@]+", key.lower())) - shared:
        if share := re.fullmatch(r"(\d+)(?:pct|percent|p)", token):
            n = share.group(1)
            forms += [f"{n}%", f"{n} %", f"{n} percent"] + {"10": ["decile"], "20": ["quintile"], "25": ["quartile"]}.get(n, [])
        elif percentile := re.fullmatch(r"p(\d{2,3})", token):
            forms += [token, f"{percentile.group(1)}th"]
        elif top := re.fullmatch(r"top(\d+)", token):
            forms += [f"top {top.group(1)}", token]
        elif token.isalpha() and len(token) >= 4:
            forms.append(token)  # uplift_calibration_slope is the one a sentence about its "slope" names
        elif token in ABBREVIATIONS:
            forms.append(ABBREVIATIONS[token])  # recall_at_50_de is the one "on the German subset" names
    return forms


def fitting_mentions(mentions, number: WrittenNumber, vocabulary: MetricVocabulary) -> list:
    """"MASE, scaled by that seasonal naive forecast, must be below 0.85": a bare number bounds a score, not the
    forecast job's seconds, and "40 minutes" a time; the mentions whose unit can take the number win."""
    return [m for m in mentions if _fits(m, number, vocabulary)] or mentions


def _fits(mention, number: WrittenNumber, vocabulary: MetricVocabulary) -> bool:
    dimension = unit_dimension(number.unit)
    owns = [vocabulary.spec(key).dimension for key in mention.keys]
    return all(own == dimension or (dimension in ("", "percent") and own in ("", "percent")) for own in owns)


def logged_first(mentions, vocabulary: MetricVocabulary) -> list:
    """A metric the registry logs wins over a catalog word nobody logs ("Accuracy: the median absolute percentage error")."""
    logged = [m for m in mentions if set(m.keys) <= vocabulary.logged]
    return logged or mentions
