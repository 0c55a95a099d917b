"""The deployment decision, made by the team's rules and never by the LLM.

1. every hard criterion must hold (a missing metric fails); 2. the passing candidates are ranked on the use
case's priority metric; 3. those within the near-best margin the team states are equivalent, and among them the
one that meets every soft criterion, then the family the team calls simplest, then the best tie-breaker value is
recommended. No margin, family order or tie-breaker applies unless the team's documents (or an admin) state it.
Nothing is recommended when no candidate passes, when the rules cannot decide (no rule at all, several passing
candidates and no way to rank them) or when the rulebook is blocked (documents that disagree); the closest
candidate is named with what it failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.registry.metric_keys import MetricSpec, metric_spec
from engine.rules.criteria import AcceptanceCriterion, UseCasePolicy

if TYPE_CHECKING:
    from engine.registry.candidates import Candidate

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
    blocked: tuple[str, ...] = ()  # why the rules could not recommend anything although candidates may pass

    @property
    def has_hard_criteria(self) -> bool:
        return any(c.hard for c in self.criteria)

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
            "near_best_margin": self.policy.near_best_margin if self.policy else None,
            "near_best_relative": self.policy.near_best_relative if self.policy else None,
            "family_order": list(self.policy.family_order) if self.policy else [],
            "blocked": list(self.blocked),
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


def decide(use_case: str, candidates, criteria: list[AcceptanceCriterion], policy: UseCasePolicy | None,
           blockers=()) -> Decision:
    """`blockers` are the rulebook's reasons it cannot decide (engine.rules.rulebook.Rulebook.blockers)."""
    checked = [(candidate, _checks(candidate, criteria)) for candidate in candidates]
    passing, failing = [], []
    for item in checked:
        (passing if all(check.passed for check in item[1] if check.criterion.hard) else failing).append(item)
    priority = _spec(policy.priority_metric, policy.priority_higher_is_better) if policy else None
    has_hard = any(c.hard for c in criteria)
    blocked = list(blockers)
    if priority is not None and priority.higher_is_better is None and not blocked:
        blocked.append(f"nobody has said whether higher or lower is better for {priority.name}")
    if not blocked and policy is None and not has_hard and passing:
        blocked.append(f"no acceptance criterion and no ranking rule are recorded for {use_case}")
    if not blocked and policy is None and len(passing) > 1:
        blocked.append(f"{len(passing)} candidates pass every hard criterion and no document names a metric to rank them on")

    ranked_passing, near = (([(c, ch) for c, ch in passing], set()) if blocked or priority is None
                            else _rank_passing(passing, priority, policy))
    if not blocked and priority is not None and len(ranked_passing) > 1 and _order_key(ranked_passing[0], priority, policy, near) \
            == _order_key(ranked_passing[1], priority, policy, near):
        blocked.append(f"{ranked_passing[0][0].name} and {ranked_passing[1][0].name} tie on every rule that ranks them "
                       f"({priority.name}" + (f", {policy.tie_breaker}" if policy.tie_breaker else "") + ") and no document "
                       "says how to break the tie")
    passes = "passes every hard criterion" if has_hard else "has no hard criterion to fail"
    assessments = []
    for index, (candidate, checks) in enumerate(ranked_passing):
        is_near = candidate.name in near
        if blocked:
            standing = f"{passes}; not recommended because the rules cannot decide" if has_hard else "not ranked: the rules cannot decide"
        elif index == 0:
            standing = "recommended"
        elif is_near:
            standing = f"{passes} and is within the near-best margin, but " + _why_behind(ranked_passing[0], (candidate, checks), policy)
        else:
            standing = f"{passes} but ranks lower on the priority metric {priority.name}"
        assessments.append(Assessment(candidate, tuple(checks), is_near, standing))
    failing.sort(key=lambda item: (sum(not ch.passed for ch in item[1] if ch.criterion.hard), _priority_key(item[0], priority)))
    for candidate, checks in failing:
        failed = ", ".join(check.criterion.label for check in checks if check.criterion.hard and not check.passed)
        assessments.append(Assessment(candidate, tuple(checks), False, f"fails {failed}"))
    recommended = ranked_passing[0][0] if ranked_passing and not blocked else None
    closest = failing[0][0] if not ranked_passing and failing else None
    return Decision(use_case, policy, tuple(criteria), tuple(assessments), recommended, closest, tuple(blocked))


def _spec(metric: str, higher_is_better: bool | None) -> MetricSpec:
    return metric_spec(metric).with_direction(higher_is_better)


def _checks(candidate, criteria: list[AcceptanceCriterion]) -> list[CriterionCheck]:
    return [CriterionCheck(c, candidate.metrics.get(c.metric), c.holds_for(candidate.metrics.get(c.metric))) for c in criteria]


def _priority_key(candidate, priority) -> float:
    """Sort key, smaller is better; a candidate without the priority metric sorts last."""
    value = candidate.metrics.get(priority.name) if priority else None
    if value is None or not math.isfinite(value) or priority.higher_is_better is None:
        return math.inf
    return -value if priority.higher_is_better else value


def _family_rank(candidate, policy) -> int:
    order = policy.family_order if policy else ()
    return order.index(candidate.family) if candidate.family in order else len(order)


def _tie_breaker_key(candidate, policy) -> float:
    if not policy or not policy.tie_breaker:
        return 0.0
    return _priority_key(candidate, _spec(policy.tie_breaker, policy.tie_breaker_higher_is_better))


def near_best(policy: UseCasePolicy, value: float, best: float) -> bool:
    """Within the team's near-best margin of the best value (absolute, or a share of the best); no margin: equal only."""
    margin = policy.near_best_margin or 0.0
    if policy.near_best_relative:
        margin *= abs(best)
    return abs(value - best) <= margin + 1e-12


def _order_key(item, priority, policy, near: set[str]) -> tuple:
    """What ranks a passing candidate, its name left out: two equal keys are a tie the rules do not break."""
    candidate, checks = item
    if candidate.name not in near:
        return (_priority_key(candidate, priority),)
    return (any(not ch.passed for ch in checks if not ch.criterion.hard), _family_rank(candidate, policy),
            _tie_breaker_key(candidate, policy), _priority_key(candidate, priority))


def _rank_passing(passing, priority, policy) -> tuple[list, set[str]]:
    """Near-best set first (soft criteria, simplicity, tie-breaker), then the rest by the priority metric."""
    by_priority = sorted(passing, key=lambda item: (_priority_key(item[0], priority), item[0].name))
    if not by_priority or math.isinf(_priority_key(by_priority[0][0], priority)):
        return by_priority, set()
    best = by_priority[0][0].metrics[priority.name]
    near = [item for item in by_priority if math.isfinite(_priority_key(item[0], priority))
            and near_best(policy, item[0].metrics[priority.name], best)]
    near.sort(key=lambda item: (
        any(not ch.passed for ch in item[1] if not ch.criterion.hard),
        _family_rank(item[0], policy),
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
    if _family_rank(candidate, policy) > _family_rank(win, policy):
        return f"the simpler family ({win.family or 'unknown'}) is preferred over {candidate.family or 'an unknown family'}"
    if policy.tie_breaker and _tie_breaker_key(candidate, policy) > _tie_breaker_key(win, policy):
        return f"loses on the tie-breaker {policy.tie_breaker}"
    return f"ranks lower on the priority metric {policy.priority_metric}"
