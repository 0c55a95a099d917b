"""A rule as the reader proposes it from one unit of a document, and the kinds of rule there are.

Kept apart from the sentence readers so that the rulebook, the verifier and the Knowledge page can speak of a proposed
rule and its kind without the patterns that read it.
"""

from __future__ import annotations

from dataclasses import dataclass

CRITERION, PRIORITY, TIE_BREAKER, NEAR_BEST, FAMILY_ORDER = "criterion", "priority", "tie_breaker", "near_best", "family_order"
# A hard requirement the unit states ("Four seconds per image at the most") whose metric could not be told: it must
# stop the decision rather than vanish, or the model that breaks it may be recommended.
UNREAD = "unread"


@dataclass(frozen=True)
class ProposedRule:
    """One rule as read from one unit of a document; `sentence` is that unit, verbatim."""

    kind: str
    sentence: str
    metrics: tuple[str, ...] = ()  # registry keys; several when the words fit several ("latency" with p50 and p95)
    comparison: str | None = None
    threshold: float | None = None  # in the metric's own unit
    written: str = ""  # the threshold as the document writes it ("0.2 s", "90%")
    hard: bool = True
    higher_is_better: bool | None = None  # priority and tie-breaker direction; None: the metric's own
    relative: bool = False  # near-best margin as a share of the best value
    families: tuple[str, ...] = ()  # family order, simplest first
    implied: bool = False  # the metric is the model's size, named by its unit: "the model has to fit in 50 MB"
