"""Checks an LLM answer against the decision and the real metrics before anyone sees it as the answer.

Three checks (issue: grounded answers): the model the answer recommends is the decision's (a candidate passing
every hard criterion), or none when nothing passes; every number presented as a metric equals a real value of
that metric (a candidate's value or a criterion's threshold) within the rounding it is written with; every
`<<SRC:...>>` marker is one the product knows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from engine.citations import find_markers
from engine.decision import Decision
from engine.metric_catalog import CATALOG

# How answers name metrics, beyond the catalog's own names and labels.
_METRIC_WORDS = {
    "accuracy": ("accuracy",),
    "f1": ("f1", "f1 score", "f1-score", "macro f1"),
    "roc_auc": ("roc auc", "roc_auc", "auc", "roc-auc", "auroc"),
    "r2": ("r2", "r²", "r^2", "r squared", "coefficient of determination"),
    "rmse": ("rmse", "root mean squared error"),
    "mae": ("mae", "mean absolute error"),
    "latency_p50_ms": ("latency_p50_ms", "p50 latency", "p50", "median latency"),
    "latency_p95_ms": ("latency_p95_ms", "p95 latency", "p95", "latency"),
    "model_size_mb": ("model_size_mb", "model size", "size"),
    "training_time_s": ("training_time_s", "training time"),
}
_UNIT_METRICS = {"ms": ("latency_p50_ms", "latency_p95_ms"), "mb": ("model_size_mb",), "mib": ("model_size_mb",)}
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(\s*%|\s*(?:ms|mb|mib)\b)?", re.I)
_METRIC_NAME = re.compile(
    r"(?<![a-z0-9_])(" + "|".join(sorted({re.escape(w) for words in _METRIC_WORDS.values() for w in words}, key=len, reverse=True)) + r")(?![a-z0-9_])",
    re.I,
)
_NUMBER_WINDOW = 40  # characters after a metric name where its value is expected


@dataclass(frozen=True)
class Verification:
    ok: bool
    problems: tuple[str, ...]
    recommended_in_answer: str | None
    numbers_checked: int
    markers: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def verify_answer(text: str, decision: Decision, candidates, known_source_ids: set[str]) -> Verification:
    problems: list[str] = []
    names = sorted({c.name for c in candidates}, key=len, reverse=True)
    recommended = recommended_name(text, names)
    expected = decision.recommended.name if decision.recommended else None
    if expected and recommended != expected:
        problems.append(f"it must recommend {expected}, the candidate the rules chose"
                        + (f", not {recommended}" if recommended else ", and name it"))
    elif not expected and recommended:
        problems.append(f"no candidate passes every hard criterion, yet it recommends {recommended}")

    numbers_checked = 0
    for metrics, value, written, context, position in metric_numbers(text):
        numbers_checked += 1
        line = text[text.rfind("\n", 0, position) + 1:position]
        named = _last_name(line, names)
        about = [c for c in candidates if c.name == named] if named else list(candidates)
        if not _is_real_value(metrics, value, written, decision, about):
            problems.append(f"'{context.strip()}' gives a {CATALOG[metrics[0]].label} of {written} that no candidate or criterion has")

    markers = tuple(find_markers(text))
    if not markers:
        problems.append("it cites no source: every claim needs a <<SRC:...>> marker")
    unknown = [marker for marker in markers if marker not in known_source_ids]
    if unknown:
        problems.append(f"it cites unknown sources: {', '.join(unknown[:5])}")
    if not text.strip():
        problems.append("it is empty")
    return Verification(not problems, tuple(dict.fromkeys(problems)), recommended, numbers_checked, markers)


def recommended_name(text: str, names: list[str]) -> str | None:
    """The candidate named on the 'Recommendation' line, else the first candidate named anywhere."""
    for line in text.splitlines():
        if re.search(r"recommend", line, re.I):
            named = _first_name(line, names)
            if named or re.search(r"\b(no|none)\b", line, re.I):
                return named
    return _first_name(text, names)


def _mentions(text: str, names: list[str]) -> list[tuple[int, str]]:
    return sorted((m.start(), name) for name in names for m in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text))


def _first_name(text: str, names: list[str]) -> str | None:
    found = _mentions(text, names)
    return found[0][1] if found else None


def _last_name(text: str, names: list[str]) -> str | None:
    """The candidate a number on this line is about: the last one named before it, if any."""
    found = _mentions(text, names)
    return found[-1][1] if found else None


def metric_numbers(text: str):
    """(metrics it may be, value, as written, context, position) for each number the text presents as a metric value.

    A metric name up to 40 characters before the number (in the same sentence, with no other number between)
    says which metric; a unit alone says only the kind ("12.3 ms" may be the p50 or the p95 latency)."""
    for match in _NUMBER.finditer(text):
        number, suffix = match.group(1), (match.group(2) or "").strip().lower()
        before = re.split(r"[.!?]\s|\n", text[max(0, match.start() - _NUMBER_WINDOW):match.start()])[-1]
        named = [m for m in _METRIC_NAME.finditer(before) if not re.search(r"\d", before[m.end():])]
        if named:
            word = named[-1].group(1).lower()
            metrics = (next(metric for metric, words in _METRIC_WORDS.items() if word in words),)
            if word in ("latency", "p95") and suffix == "ms":
                metrics = _UNIT_METRICS["ms"] if word == "latency" else metrics
        elif suffix in _UNIT_METRICS:
            metrics = _UNIT_METRICS[suffix]
        else:
            continue
        written = number + ("%" if suffix == "%" else "")
        yield metrics, float(number), written, text[max(0, match.start() - 30):match.end()], match.start()


def _is_real_value(metrics: tuple[str, ...], value: float, written: str, decision: Decision, candidates) -> bool:
    """Equal to a candidate's value or a criterion's threshold of one of these metrics, at the precision written."""
    decimals = len(written.rstrip("%").partition(".")[2])
    tolerance = 0.5 * 10 ** -decimals + 1e-9
    real = [c.metrics[m] for c in candidates for m in metrics if m in c.metrics]
    real += [c.threshold for c in decision.criteria if c.metric in metrics]
    scale = 100 if written.endswith("%") else 1
    return any(abs(value - r * scale) <= tolerance for r in real)
