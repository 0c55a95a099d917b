"""Deterministic scoring of answers to golden items, and the metrics of a set of scored items.

An answer to a static or dynamic item is accurate when every key fact is in it and it recommends no model but the
one the decision engine recommends (read the way the chat's verifier reads a recommendation: the candidate named
on a line that recommends, else the first candidate named). Its citation is present when it carries a
`<<SRC:...>>` marker, and correct when it cites at least one expected source and nothing the source registry does
not know. A refusal item is answered right when the answer recommends no model and says it will not or cannot.

The chat shows the decision's composed answer first, then the LLM's explanation of it, one verified sentence at
a time (engine.answering.explanation). What is scored is the LLM's own text: its explanation draft, which begins with the
opening the chat prefilled for it (the decided model and its marker), and everything it wrote after, verified or
not. Because that opening is given, `agreement` and the facts of the opening (the recommended model) hold by
construction, so citations are scored on what the LLM wrote after it; what the LLM adds is what can fail. Items the chat answered without
asking the LLM (no use case matched: the chat's own refusal; or nothing to explain) are scored on what it showed.
What users were shown (the decision, then the explanation's verified sentences) is scored too (`shown_accuracy`);
`explanation_kept_rate` says how often every sentence the LLM wrote passed verification, `explanation_shown_rate`
how often at least one did (kept or partial).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation

import numpy as np

from engine.answering.citations import find_markers, strip_markers
from engine.answering.golden_set import Fact
from engine.answering.verifier import recommended_name
from eval.golden import ResolvedItem

_REFUSAL = re.compile(
    r"\b(recommend nothing|recommend no |no model|none of the|not recommend|cannot|can not|can't|could not|couldn't|"
    r"unable|no candidate|do not know|don't know|not sure|no use case|not covered|not able|no registered|"
    r"which use case|not in the registry|outside)", re.I)
SHOWN_STATES = ("kept", "partial")  # explanations with at least one verified sentence shown
_DECIMAL = re.compile(r"\d+\.\d+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalize(text: str) -> str:
    """Text as facts are compared: markers and emphasis out, lowercase, one spelling, canonical numbers."""
    text = strip_markers(text or "").lower()
    for old, new in (("tumour", "tumor"), ("≥", ">="), ("≤", "<="), ("×", "x"), ("–", "-"), ("—", "-"), ("²", "2"),
                     ("’", "'")):
        text = text.replace(old, new)
    text = re.sub(r"[*`]", "", text)
    text = re.sub(r"[_\-]", " ", text)
    text = _THOUSANDS.sub("", text)
    text = _DECIMAL.sub(_canonical_number, text)
    text = re.sub(r"(\d)\s+%", r"\1%", text)
    text = re.sub(r"(\d)([a-z])", r"\1 \2", text)
    return re.sub(r"\s+", " ", text).strip()


def _canonical_number(match: re.Match) -> str:
    try:
        value = Decimal(match.group(0)).normalize()
    except InvalidOperation:
        return match.group(0)
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def fact_found(fact: Fact, normalized_text: str) -> bool:
    """Any alternative of the fact, as a whole word or number of the (normalized) text."""
    for alternative in fact:
        wanted = normalize(alternative)
        if wanted and re.search(rf"(?<![a-z0-9])(?<!\d[.,]){re.escape(wanted)}(?![a-z0-9])(?![.,]\d)", normalized_text):
            return True
    return False


def refuses(text: str, candidate_names: list[str]) -> bool:
    """The answer recommends no candidate and says it will not or cannot."""
    return recommended_name(text or "", candidate_names) is None and bool(_REFUSAL.search(normalize(text)))


@dataclass
class ItemResult:
    """One golden item answered by one LLM version: what was said, what was checked, how it scored."""

    id: str
    question: str
    type: str
    category: str
    use_case: str | None
    status: str = "scored"  # or "skipped"
    skip_reason: str | None = None
    llm_asked: bool = False
    explanation_state: str = "none"  # 'kept' | 'partial' | 'dropped' | 'failed'; 'none': the LLM was not asked
    sentences_kept: int = 0  # of the explanation: the verified sentences shown
    answer: str = ""  # the LLM's explanation draft, prefilled opening first (what is scored); else the chat's answer
    shown: str = ""  # what the chat showed: the decision's composed answer, then the explanation's verified sentences
    attempts: list[str] = field(default_factory=list)  # what the LLM generated after the prefilled opening (one per ask)
    facts: list[dict] = field(default_factory=list)  # {"fact": [alternatives], "found": bool}
    expected_sources: list[str] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)
    unknown_cited: list[str] = field(default_factory=list)
    expected_recommendation: str | None = None
    recommended_in_answer: str | None = None
    contradiction: bool = False
    accurate: bool | None = None  # static/dynamic items
    citation_present: bool | None = None
    citation_correct: bool | None = None
    refused: bool | None = None  # refusal items
    shown_correct: bool | None = None
    agrees: bool | None = None  # the LLM's recommendation equals the decision engine's (LLM asked, use case known)
    latency_ms: float | None = None
    verification_problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def correct(self) -> bool | None:
        return self.refused if self.type == "refusal" else self.accurate

    def to_dict(self) -> dict:
        return asdict(self)


def score(result: ItemResult, resolved: ResolvedItem, *, candidate_names: list[str], known_sources: set[str],
          expected_recommendation: str | None) -> ItemResult:
    """Fill in the checks of an answered item (its answer, shown text and llm_asked already set)."""
    item = resolved.item
    result.expected_sources = list(resolved.sources)
    result.expected_recommendation = expected_recommendation
    result.recommended_in_answer = recommended_name(result.answer, candidate_names)
    # the LLM's own citations: those it wrote after the prefilled opening, whose marker it was given
    result.cited = find_markers(result.attempts[0] if result.llm_asked and result.attempts else result.answer)
    result.unknown_cited = [source for source in result.cited if source not in known_sources]
    if item.is_refusal:
        result.refused = refuses(result.answer, candidate_names)
        result.shown_correct = refuses(result.shown, candidate_names)
        return result
    text = normalize(result.answer)
    result.facts = [{"fact": list(fact), "found": fact_found(fact, text)} for fact in resolved.facts]
    result.contradiction = result.recommended_in_answer not in (None, expected_recommendation)
    result.accurate = all(f["found"] for f in result.facts) and not result.contradiction
    result.citation_present = bool(result.cited)
    result.citation_correct = (result.citation_present and not result.unknown_cited
                               and any(source in resolved.sources for source in result.cited))
    shown = normalize(result.shown)
    result.shown_correct = (all(fact_found(fact, shown) for fact in resolved.facts)
                            and recommended_name(result.shown, candidate_names) in (None, expected_recommendation))
    if result.llm_asked and expected_recommendation is not None:
        result.agrees = result.recommended_in_answer == expected_recommendation
    return result


def _mean(values) -> float | None:
    values = [float(bool(v)) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    """numpy's linear percentile, as guideline:latency-measurement computes latencies."""
    return float(np.percentile(values, q)) if values else None


def metrics(results: list[ItemResult]) -> dict[str, float]:
    """The version's golden-set metrics; a metric with no item to measure it is left out (the gate then says so)."""
    scored = [r for r in results if r.status == "scored"]
    answered = [r for r in scored if r.type != "refusal"]
    refusals = [r for r in scored if r.type == "refusal"]
    asked = [r for r in scored if r.llm_asked]
    latencies = [r.latency_ms for r in (asked or scored) if r.latency_ms is not None]
    values = {
        "accuracy": _mean(r.accurate for r in answered),
        "static_accuracy": _mean(r.accurate for r in answered if r.type == "static"),
        "dynamic_accuracy": _mean(r.accurate for r in answered if r.type == "dynamic"),
        "citation_presence": _mean(r.citation_present for r in answered),
        "citation_correctness": _mean(r.citation_correct for r in answered),
        "refusal_accuracy": _mean(r.refused for r in refusals),
        "agreement": _mean(r.agrees for r in answered),
        "shown_accuracy": _mean(r.shown_correct for r in scored),
        "explanation_kept_rate": _mean(r.explanation_state == "kept" for r in asked),
        "explanation_shown_rate": _mean(r.explanation_state in SHOWN_STATES for r in asked),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "items_scored": float(len(scored)),
        "items_skipped": float(len(results) - len(scored)),
    }
    for category in sorted({r.category for r in scored}):
        values[f"accuracy_{category.replace('-', '_')}"] = _mean(r.correct for r in scored if r.category == category)
    return {key: value for key, value in values.items() if value is not None}
