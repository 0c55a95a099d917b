"""The comparisons a unit writes out with their numbers: "no lower than 0.85", "between 0 and 12%", "5% at most",
">= 0.95", "must never fall below", and what "better than" or "a target of" means for a metric.

Separate because finding a comparison and its number is the same work whatever the rule: the criterion reader
turns them into thresholds, and the policy reader uses the same patterns to tell a threshold sentence from a
preference.
"""

from __future__ import annotations

import re

from engine.rules.quantities import WrittenNumber, numbers

# (pattern, comparison). Longest first; "{N}" is where the number stands. Direction words ("faster than") read
# the metric's own direction: they are resolved in resolved_comparison().
_COMPARISONS = [
    (r"at the most|at the very most|must not exceed|may not exceed|must never exceed|should not exceed|shall not exceed|"
     r"cannot exceed|can't exceed|"
     r"does not exceed|do not exceed|not to exceed|never exceeds?|no more than|not more than|at most|no higher than|"
     r"not higher than|no greater than|not greater than|no larger than|no bigger than|no slower than|not above|"
     r"not over|up to|or less|or lower|or below|or fewer|maximum of|a maximum of|max\.? of|capped at|cap of|"
     r"ceiling of|limit of|budget of|budget is|limit is|maximum is|fits? (?:in|into|within)|within|at (?:the )?maximum|≤|<=|=<", "<="),
    (r"at the least|at the very least|no less than|not less than|at least|no lower than|not lower than|no fewer than|"
     r"no smaller than|not below|"
     r"never (?:fall|drop|dip|go)s? below|must not (?:fall|drop|dip|go) below|should not (?:fall|drop|dip|go) below|"
     r"not (?:fall|drop|dip|go) below|or more|or higher|or above|minimum of|a minimum of|min\.? of|at (?:a |the )?minimum|"
     r"floor of|minimum is|≥|>=|=>", ">="),
    (r"less than|lower than|below|under|beneath|fewer than|smaller than|shorter than|faster than|cheaper than|<", "<"),
    (r"more than|greater than|higher than|above|over(?!\s+the\b)|exceeds?|exceeding|in excess of|larger than|bigger than|"
     r"longer than|slower than|go(?:es)? beyond|beyond|>", ">"),
    (r"fall(?:s)? short of|falls? below", "<"),
    (r"(?:required |needs? |has |have )?to reach|reach(?:es)?|achieves?", ">="),
    (r"or better", "better_eq"),
    (r"or worse", "worse_eq"),
    (r"better than", "better"),
    (r"worse than", "worse"),
    (r"target of|target is|targets? (?:is |of )?|aim(?:s|ing)? for", "target"),
]
COMPARISON = re.compile(r"(?:(?<![A-Za-z])|(?=[<>≤≥=]))(?:"
                        + "|".join(f"(?P<c{i}>{pattern})" for i, (pattern, _) in enumerate(_COMPARISONS)) + r")(?![a-z])", re.I)
_PLUS_MINUS = re.compile(r"\bwithin\s+(?:±|\+/-|\+-|plus or minus)\s*(?P<n>\d[\d,.]*\s*(?:%|percent|[a-zµ]+)?)", re.I)
_TRAILING = {"or less", "or lower", "or below", "or fewer", "or more", "or higher", "or above", "or better", "or worse"}
_FILLER = r"(?:\s*(?:the|a|an|of|value of|mark of|level of|threshold of|roughly|about|around|approximately|[a-z]+['’]s|[:=~|]))*\s*"
_BETWEEN = re.compile(r"(?<!relaxed )(?<!raised )(?<!lowered )(?<!tightened )(?<!changed )(?<!drops )(?<!dropped )(?<!moved )"
                      r"(?<!increased )(?<!reduced )(?<!goes )(?<!went )\b(?:between|from|within|in the range(?: of)?|range of|inside)"
                      r"\s+(?P<a>[-+]?\d[\d,.]*)\s*(?P<ua>[%\w]*)(?:\s+(?:and|to)\s+|\s*[-–]\s*)"
                      r"(?P<b>[-+]?\d[\d,.]*\s*(?:%|[a-zµ]+)?)", re.I)


# between a number and its "at most": nothing, or what it is counted per ("four seconds per 1024 by 1024 image")
_PER_WHAT = re.compile(r"[\s,]*(?:(?:per|a|an|each|for each)\s+[^,;.()]{1,40}?[\s,]*)?", re.I)
_NONE_ALLOWED = re.compile(r"^(?:-\s+)?(?P<n>zero|no)\s+(?=[a-z])(?!more\b|less\b|fewer\b|later\b|longer\b|model\b|one\b)", re.I)
_AFTER_THE_NUMBER = {"at most", "at least", "at the most", "at the least", "maximum", "minimum", "max", "min", "at minimum",
                     "at a minimum", "at maximum", "at the minimum", "at the maximum"}
MIRRORED = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
NEGATION = {"<": ">=", ">": "<=", "<=": ">", ">=": "<", "better": "worse_eq", "worse": "better_eq", "better_eq": "worse",
            "worse_eq": "better", "target": "target"}


# "an infarction within 30 days", "over the last 26 weeks": a bare number of calendar periods is a window, not a threshold
_PERIOD = re.compile(r"\s*(?:calendar\s+)?(?:days?|weeks?|months?|years?|quarters?)\b", re.I)


def _looks_like_a_year(number: WrittenNumber, filler: str) -> bool:
    """"above the 2019 level": a bare year after "the" is a date, not a threshold."""
    return (not number.unit and number.value.is_integer() and 1900 <= number.value <= 2100
            and re.search(r"\bthe\b", filler, re.I) is not None)


_NEGATED_BEFORE = re.compile(
    r"(?:\b(?:not|never|no|cannot|can't|can not|may not|must not|mustn't|should not|shouldn't|will not|won't|"
    r"is not allowed to|are not allowed to)|\bno\s+\w+(?:\s+\w+)?\s+(?:may|can|should|must|will|is allowed to))\s+"
    r"(?:ever\s+)?(?:be\s+|have\s+(?:been\s+)?[a-z]+(?:ed|en|t)\s+|(?!only\b|just\b|even\b)[a-z]+\s+)?$",
    # "can't have emitted more than 50 kg", "must not raise more than one false alarm", "may not use more than 2 GB"
    re.I)


def _negated(before: str, comparison: str) -> str:
    """"not below 0.9" is ">= 0.9"; phrases with their own negation ("no more than") are listed whole."""
    if _NEGATED_BEFORE.search(before):
        return NEGATION[comparison]
    return comparison


def resolved_comparison(comparison: str, higher_is_better: bool | None) -> str | None:
    """"better than" and "a target of" mean a direction only the metric knows."""
    if comparison not in ("better", "worse", "better_eq", "worse_eq", "target"):
        return comparison
    if higher_is_better is None:
        return None
    up = {"better": ">", "worse": "<", "better_eq": ">=", "worse_eq": "<=", "target": ">="}[comparison]
    return up if higher_is_better else {">": "<", "<": ">", ">=": "<=", "<=": ">="}[up]


def written_comparisons(unit: str):
    """(comparison, where it starts, its number) for each comparison the unit writes out with a number."""
    taken = set()
    for match in _BETWEEN.finditer(unit):
        found = numbers(unit[match.start():match.end()])
        if len(found) >= 2 and found[0].value <= found[1].value:
            low, high = (WrittenNumber(n.start + match.start(), n.end + match.start(), n.value, found[1].unit or n.unit, n.text)
                         for n in found[:2])
            taken.update(range(match.start(), match.end()))
            yield ">=", match.start(), low
            yield "<=", match.start(), high
    for match in _PLUS_MINUS.finditer(unit):
        [number] = numbers(match.group("n"))
        taken.update(range(match.start(), match.end()))
        low = WrittenNumber(match.start("n"), match.end("n"), -number.value, number.unit, match.group("n"))
        high = WrittenNumber(match.start("n"), match.end("n"), number.value, number.unit, match.group("n"))
        yield ">=", match.start(), low
        yield "<=", match.start(), high
    if (none := _NONE_ALLOWED.match(unit)) and not COMPARISON.search(unit):  # "- Zero unsafe statements": at most 0
        yield "<=", none.start("n"), WrittenNumber(none.start("n"), none.end("n"), 0.0, "", none.group("n"))
    for match in COMPARISON.finditer(unit):
        if match.start() in taken:
            continue
        words = match.group(0).lower()
        comparison = next(_COMPARISONS[i][1] for i in range(len(_COMPARISONS)) if match.group(f"c{i}"))
        if words in _TRAILING:  # "0.9 or higher": the number stands before
            found = [n for n in numbers(unit[:match.start()])
                     if re.fullmatch(r"(?:\s+[A-Za-z@.\-]+){0,4}\s*", unit[n.end:match.start()])]
        else:
            following = re.match(_FILLER, unit[match.end():])
            found = [n for n in numbers(unit) if match.end() <= n.start <= match.end() + following.end()
                     and not _looks_like_a_year(n, unit[match.end():n.start]) and not _PERIOD.match(unit, n.end)]
            if not found and words in _AFTER_THE_NUMBER:
                found = [n for n in numbers(unit[:match.start()]) if _PER_WHAT.fullmatch(unit[n.end:match.start()])]  # "5% at most"
            comparison = _negated(unit[:match.start()], comparison)
        if found:
            yield comparison, match.start(), found[-1]
