"""The deployment decision, made by rules and never by the LLM (guideline:model-selection).

1. every hard criterion must hold (a missing metric fails); 2. the passing candidates are ranked on the use
case's priority metric; 3. those within the near-best margin of the best are equivalent, and among them the one
that meets every soft criterion, then the simplest family, then the best tie-breaker value is recommended.
If no candidate passes, nothing is recommended and the closest candidate is named with what it failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.criteria import AcceptanceCriterion, UseCasePolicy
from engine.metric_catalog import metric_spec, near_best

if TYPE_CHECKING:
    from engine.candidates import Candidate

SIMPLICITY_ORDER = ("linear", "gradient-boosting", "random-forest", "mlp")  # guideline:model-selection, step 6
DEFAULT_TIE_BREAKER = "model_size_mb"


@dataclass(frozen=True)
class CriterionCheck:
    criterion: AcceptanceCriterion
    value: float | None
    passed: bool


@dataclass(frozen=True)
class Assessment:
    """One candidate against the rules; `standing` says where it ended up and why, in plain words."""

    candidate: Candidate
    checks: tuple[CriterionCheck, ...]
    near_best: bool
    standing: str

    @property
    def failed_hard(self) -> list[CriterionCheck]:
        return [check for check in self.checks if check.criterion.hard and not check.passed]

    @property
    def failed_soft(self) -> list[CriterionCheck]:
        return [check for check in self.checks if not check.criterion.hard and not check.passed]

    @property
    def passes_hard(self) -> bool:
        return not self.failed_hard


@dataclass(frozen=True)
class Decision:
    use_case: str
    policy: UseCasePolicy | None
    criteria: tuple[AcceptanceCriterion, ...]
    assessments: tuple[Assessment, ...]  # the recommended first, then the other passing ones, then the rest
    recommended: Candidate | None
    closest: Candidate | None  # when nothing passes: the candidate with the fewest hard failures

    @property
    def priority_metric(self) -> str | None:
        return self.policy.priority_metric if self.policy else None

    def assessment(self, name: str) -> Assessment | None:
        return next((a for a in self.assessments if a.candidate.name == name), None)

    def to_dict(self) -> dict:
        """Plain data for the answer record and the CLI's JSON."""
        return {
            "use_case": self.use_case,
            "recommended": self.recommended.name if self.recommended else None,
            "closest": self.closest.name if self.closest else None,
            "priority_metric": self.priority_metric,
            "tie_breaker": self.policy.tie_breaker if self.policy else None,
            "policy_source_id": self.policy.source_id if self.policy else None,
            "criteria": [{"metric": c.metric, "comparison": c.comparison, "threshold": c.threshold, "hard": c.hard,
                          "source_id": c.source_id} for c in self.criteria],
            "candidates": [
                {"name": a.candidate.name, "version": a.candidate.version, "passes_hard": a.passes_hard,
                 "near_best": a.near_best, "standing": a.standing,
                 "checks": [{"criterion": check.criterion.label, "metric": check.criterion.metric, "value": check.value,
                             "passed": check.passed} for check in a.checks]}
                for a in self.assessments
            ],
        }


def decide(use_case: str, candidates, criteria: list[AcceptanceCriterion], policy: UseCasePolicy | None) -> Decision:
    checked = [(candidate, _checks(candidate, criteria)) for candidate in candidates]
    passing, failing = [], []
    for item in checked:
        (passing if all(check.passed for check in item[1] if check.criterion.hard) else failing).append(item)
    priority = metric_spec(policy.priority_metric) if policy else None

    ranked_passing, near = _rank_passing(passing, priority, policy)
    assessments = []
    for index, (candidate, checks) in enumerate(ranked_passing):
        is_near = candidate.name in near
        if index == 0:
            standing = "recommended"
        elif is_near:
            standing = "passes every hard criterion and is within the near-best margin, but " + _why_behind(
                ranked_passing[0], (candidate, checks), policy)
        else:
            standing = "passes every hard criterion but ranks lower on the priority metric"
        assessments.append(Assessment(candidate, tuple(checks), is_near, standing))
    failing.sort(key=lambda item: (sum(not ch.passed for ch in item[1] if ch.criterion.hard), _priority_key(item[0], priority)))
    for candidate, checks in failing:
        failed = ", ".join(check.criterion.label for check in checks if check.criterion.hard and not check.passed)
        assessments.append(Assessment(candidate, tuple(checks), False, f"fails {failed}"))
    recommended = ranked_passing[0][0] if ranked_passing else None
    closest = failing[0][0] if not ranked_passing and failing else None
    return Decision(use_case, policy, tuple(criteria), tuple(assessments), recommended, closest)


def _checks(candidate, criteria: list[AcceptanceCriterion]) -> list[CriterionCheck]:
    return [CriterionCheck(c, candidate.metrics.get(c.metric), c.holds_for(candidate.metrics.get(c.metric))) for c in criteria]


def _priority_key(candidate, priority) -> float:
    """Sort key, smaller is better; a candidate without the priority metric sorts last."""
    value = candidate.metrics.get(priority.name) if priority else None
    if value is None or not math.isfinite(value):
        return math.inf
    return -value if priority.higher_is_better else value


def _family_rank(candidate) -> int:
    return SIMPLICITY_ORDER.index(candidate.family) if candidate.family in SIMPLICITY_ORDER else len(SIMPLICITY_ORDER)


def _tie_breaker_key(candidate, policy) -> float:
    spec = metric_spec((policy.tie_breaker if policy else None) or DEFAULT_TIE_BREAKER)
    value = candidate.metrics.get(spec.name)
    if value is None or not math.isfinite(value):
        return math.inf
    return -value if spec.higher_is_better else value


def _rank_passing(passing, priority, policy) -> tuple[list, set[str]]:
    """Near-best set first (soft criteria, simplicity, tie-breaker), then the rest by the priority metric."""
    by_priority = sorted(passing, key=lambda item: (_priority_key(item[0], priority), item[0].name))
    if not by_priority or priority is None or math.isinf(_priority_key(by_priority[0][0], priority)):
        return by_priority, set()
    best = by_priority[0][0].metrics[priority.name]
    near = [item for item in by_priority if math.isfinite(_priority_key(item[0], priority))
            and near_best(priority, item[0].metrics[priority.name], best)]
    near.sort(key=lambda item: (
        any(not ch.passed for ch in item[1] if not ch.criterion.hard),
        _family_rank(item[0]),
        _tie_breaker_key(item[0], policy),
        _priority_key(item[0], priority),
        item[0].name,
    ))
    names = {item[0].name for item in near}
    return near + [item for item in by_priority if item[0].name not in names], names


def _why_behind(winner, other, policy) -> str:
    """Why an equivalent candidate lost to the recommended one, naming the first rule that separated them."""
    (win, win_checks), (candidate, checks) = winner, other
    soft_failures = [ch.criterion.label for ch in checks if not ch.criterion.hard and not ch.passed]
    if soft_failures and all(ch.passed for ch in win_checks if not ch.criterion.hard):
        return f"misses the soft criterion {', '.join(soft_failures)}"
    if _family_rank(candidate) > _family_rank(win):
        return f"the simpler family ({win.family or 'unknown'}) is preferred over {candidate.family or 'an unknown family'}"
    tie = (policy.tie_breaker if policy else None) or DEFAULT_TIE_BREAKER
    return f"loses on the tie-breaker {tie}"
