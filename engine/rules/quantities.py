"""Numbers as guidelines write them, with their units, and their conversion to a metric's own unit.

"0.2 s", "1,200 MB", "$0.05", "five cents", "an hour", "half a second", "one in five", "2 pages per second",
"fourteen false alarms a week": each is a value and a unit in pint's spelling (a rate as "1/week"); `convert`
turns it into the unit a registry metric is logged in, with pint, or refuses when the two cannot be the same kind
of quantity ("40 ms" cannot bound a score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from engine.registry.metric_catalog import RATE_UNITS, UNIT_TOKENS, unit_dimension

_UNIT_WORDS = sorted({*UNIT_TOKENS, "per cent"} - {"day", "days", "week", "weeks"}, key=len, reverse=True)
_NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                 "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
                 "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
                 "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "a hundred": 100,
                 "thousand": 1000, "a thousand": 1000}
_FRACTIONS = {"half a": 0.5, "half an": 0.5, "a half": 0.5, "a quarter of a": 0.25, "a quarter of an": 0.25,
              "a third of a": 1 / 3, "a third of an": 1 / 3, "three quarters of a": 0.75, "three quarters of an": 0.75}
_UNIT = "|".join(re.escape(u) for u in _UNIT_WORDS)
_ONE_WORD = "|".join(re.escape(w) for w in sorted(_NUMBER_WORDS, key=len, reverse=True))
# "two hundred", "ninety-five", "one and a half", "twelve thousand": number words written together
_WORD = rf"(?:{_ONE_WORD})(?:(?:\s+and\s+|[\s-]+)(?:{_ONE_WORD}|a half))*"
_DIGITS = r"[-+±]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+,\d{1,2}(?![\d,])|\d+)(?:\.\d+)?"  # "2,5 GB" is a decimal comma
# "0.2 s", "1,200 MB", "$0.05"; number words and fractions only with a unit ("five cents", "an hour", "half a second");
# "one in five" is a share.
_TIME_WORDS = "|".join(sorted((re.escape(w) for w in RATE_UNITS), key=len, reverse=True)) + r"|hours|minutes|seconds|days|weeks|months"
_END = r"(?![^\W¹²³⁴⁵⁶⁷⁸⁹⁰])"  # a footnote mark may follow a unit: "250 m¹", "2 ms³"
NUMBER = re.compile(
    r"(?<![\w$£€])(?P<ratio_a>" + _DIGITS + r"|" + _WORD + r")(?:(?:\s+(?!in\b|per\b)[a-z]{3,})?\s+(?:in|out of)|\s+per)\s+(?:every\s+)?"
    r"(?!(?:19|20)\d\d(?![\d,]))(?P<ratio_b>" + _DIGITS + r"|" + _WORD + r")" + _END +  # "one image in 500", not "in 2024"
    r"(?!\s*(?:" + _TIME_WORDS + r")\b)"  # "1 per 10 hours" is a rate
    r"|(?<![\w.@])(?P<dollar>\$\s?)?(?P<n>" + _DIGITS + r")(?:\s*(?P<u>" + _UNIT + r")" + _END + r")?"
    r"|(?<![\w])(?P<parts>" + _WORD + r")\s+(?P<part>tenths?|hundredths?|thousandths?)" + _END +  # "nine tenths"
    r"|(?<![\w])(?P<f>" + "|".join(sorted(map(re.escape, _FRACTIONS), key=len, reverse=True)) + r")\s+(?P<fu>" + _UNIT + r")" + _END +
    r"|(?<![\w])(?P<w>" + _WORD + r"|an?)\s+(?:an?\s+)?(?P<wu>" + _UNIT + r")" + _END,
    re.I,
)
# "0.4 cents per request", "$4 per 1,000 requests": what an amount is counted for
_PER_ITEMS = re.compile(r"^\s*(?:per|for each|for every|each|/)\s*(?:(?P<n>[\d,]+|1k|thousand|a thousand|million|1m)\s+)?[a-z]{3,}", re.I)
_COUNTS = {"1k": 1000, "thousand": 1000, "a thousand": 1000, "million": 1e6, "1m": 1e6}
FRACTION_WORDS = re.compile(r"\b(?:half|quarter|third)\b", re.I)
WORD_NUMBER = re.compile(r"(?<![\w])(?:" + _WORD + r")(?![\w])", re.I)
# "2 pages per second", "fourteen false alarms a week", "one per ten hours": the number is a rate
_RATE = re.compile(r"^(?:\s+[a-z][\w-]*){0,3}?\s+(?:per|a|an|each|every)\s+(?:(?P<n>\d+|" + _WORD + r")\s+)?"
                   r"(?P<u>" + "|".join(sorted(RATE_UNITS, key=len, reverse=True)) + r")s?\b", re.I)


@dataclass(frozen=True)
class WrittenNumber:
    """A number as written in a text, with its unit in pint's spelling ("ms", "GB"), "%" or ""."""

    start: int
    end: int
    value: float
    unit: str
    text: str
    per: float | None = None  # how many items an amount is for: "$4 per 1,000 requests" is 4 per 1000


def numbers(text: str) -> list[WrittenNumber]:
    found, taken = [], set()
    for match in WORD_NUMBER.finditer(text):  # "fourteen false alarms a week", "one per ten hours"
        if rate := _RATE.match(text[match.end():match.end() + 60]):
            value = _value(match.group(0)) / (_value(rate.group("n")) if rate.group("n") else 1)
            end = match.end() + rate.end()
            found.append(WrittenNumber(match.start(), end, value, f"1/{RATE_UNITS[rate.group('u').lower()]}", match.group(0)))
            taken.update(range(match.start(), end))
    for match in NUMBER.finditer(text):
        if match.start() in taken:
            continue
        if match.group("ratio_a"):
            value, unit = _value(match.group("ratio_a")) / max(_value(match.group("ratio_b")), 1e-12), ""
        elif match.group("parts"):
            share = {"tenth": 10, "hundredth": 100, "thousandth": 1000}[match.group("part").lower().rstrip("s")]
            value, unit = _value(match.group("parts")) / share, ""
        elif match.group("f"):
            value, unit = _FRACTIONS[match.group("f").lower()], match.group("fu").lower()
        elif match.group("w"):
            word = match.group("w").lower()
            value, unit = (1.0 if word in ("a", "an") else _value(word)), match.group("wu").lower()
        else:
            value, unit = _digits(match.group("n")), (match.group("u") or "").lower()
            unit = "USD" if match.group("dollar") else unit
        unit = "%" if unit == "per cent" else UNIT_TOKENS.get(unit, unit if unit == "USD" else "")
        end = match.end()
        if not unit and (rate := _RATE.match(text[end:end + 60])):
            value /= _value(rate.group("n")) if rate.group("n") else 1
            unit, end = f"1/{RATE_UNITS[rate.group('u').lower()]}", end + rate.end()
        per = None
        if unit_dimension(unit) in ("money", "energy", "mass") and (items := _PER_ITEMS.match(text[end:end + 40])):
            written = (items.group("n") or "1").lower()
            per = _COUNTS.get(written) or float(written.replace(",", "") or 1)
        found.append(WrittenNumber(match.start(), end, value, unit, match.group(0).strip(), per))
    return sorted(found, key=lambda number: number.start)


def _digits(written: str) -> float:
    """"1,200" is twelve hundred, "2,5" two and a half (a decimal comma is followed by one or two digits)."""
    written = written.replace("±", "").strip()
    if re.fullmatch(r"[-+]?\d+,\d{1,2}", written):
        return float(written.replace(",", "."))
    return float(written.replace(",", ""))


def _value(written: str) -> float:
    written = written.lower().replace("±", "").strip()
    if re.fullmatch(r"[-+]?[\d,]+(?:\.\d+)?", written):
        return _digits(written)
    written = written.replace(",", "")
    total, current = 0.0, 0.0
    for word in re.split(r"[\s-]+", written.replace("a half", "half")):
        if word in ("and", "a", "an"):
            continue
        if word == "half":
            current += 0.5
        elif word in ("hundred",):
            current = (current or 1) * 100
        elif word in ("thousand",):
            total, current = total + (current or 1) * 1000, 0.0
        else:
            current += _NUMBER_WORDS[word]
    return total + current


@cache
def _units():
    import pint  # a unit registry takes 0.3 s to build: only once, and only when a unit needs converting

    return pint.UnitRegistry()


def convert(value: float, unit: str, spec, observed: list[float], per: float | None = None) -> float | None:
    """The threshold in the metric's own unit, or None when the units cannot be the same kind of quantity.

    `per`: the items the written amount is for ("0.4 cents per request" against cost_usd_per_1k is 4.0)."""
    if per is not None:
        value = value * spec.per / per
    if unit == "%":
        if spec.unit == "%":
            return value
        on_fraction_scale = max(abs(v) for v in observed) <= 1.5 if observed else spec.bounded
        return value / 100 if on_fraction_scale else value
    if not unit or unit.lower() == spec.unit.lower():
        return value  # also "4.5 MW" against pinball_q90_mw: a key cannot tell mW from MW, its team can
    if spec.dimension == "money" and unit_dimension(unit) == "money":
        return value / 100 if unit == "¢" else value
    if not spec.unit or unit_dimension(unit) != spec.dimension:
        return None  # "40 ms" cannot bound a score, "50 MB" cannot bound a latency
    target = spec.unit
    if unit in _BINARY.values() and target in _BINARY:
        target = _BINARY[target]  # a team that writes GiB logs its "mb" in MiB
    return float(_units().Quantity(value, unit).to(target).magnitude)


_BINARY = {"kB": "KiB", "MB": "MiB", "GB": "GiB"}
