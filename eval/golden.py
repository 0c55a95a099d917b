"""What a golden item expects on the live registry: its placeholders resolved from the decision engine's answer for
its use case (the golden set's format: engine.answering.golden_set)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.answering.golden_set import LISTS, PLACEHOLDER, SINGLE, Fact, GoldenItem
from engine.registry.metric_keys import metric_spec


@dataclass(frozen=True)
class Expectation:
    """The decision engine's answer for one use case on the live registry: what dynamic items are checked against."""

    use_case: str
    decision: object  # engine.rules.decision.Decision
    values: dict[str, str | None] = field(default_factory=dict)
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def recommended(self) -> str | None:
        return self.values.get("recommended")

    @classmethod
    def from_decision(cls, decision) -> Expectation:
        recommended = decision.recommended
        priority = decision.priority_metric
        champion = next((a.candidate.name for a in decision.assessments if a.candidate.alias == "champion"), None)
        values = {
            "recommended": recommended.name if recommended else None,
            "recommended_family": (recommended.family or None) if recommended else None,
            "recommended_version": recommended.version if recommended else None,
            "priority_metric": priority,
            "priority_value": (metric_spec(priority).format(recommended.metrics[priority])
                               if recommended and priority and priority in recommended.metrics else None),
            "champion": champion,
        }
        lists = {
            "passing": tuple(a.candidate.name for a in decision.assessments if a.passes_hard),
            "rejected": tuple(a.candidate.name for a in decision.assessments if not a.passes_hard),
            "near_best": tuple(a.candidate.name for a in decision.assessments
                               if a.near_best and recommended and a.candidate.name != recommended.name),
        }
        for assessment in decision.assessments:
            for check in assessment.failed_hard:
                key = f"rejected:{check.criterion.metric}"
                lists[key] = (*lists.get(key, ()), assessment.candidate.name)
        return cls(decision.use_case, decision, values, lists)


class NotApplicable(ValueError):
    """A dynamic item has nothing to check on this registry (its placeholder has no value)."""


def expand(text: str, expectation: Expectation | None) -> list[str]:
    """The strings a golden string stands for on this registry; NotApplicable when a placeholder has no value."""
    matches = list(PLACEHOLDER.finditer(text))
    if not matches:
        return [text]
    if expectation is None:
        raise NotApplicable("its use case has no candidates in the registry")
    results = [""]
    position = 0
    for match in matches:
        name, argument = match.groups()
        prefix = text[position:match.start()]
        if name in SINGLE:
            value = expectation.values.get(name)
            if value is None:
                raise NotApplicable(f"{match.group(0)} has no value for {expectation.use_case} on this registry")
            results = [r + prefix + value for r in results]
        else:
            values = expectation.lists.get(f"{name}:{argument}" if argument else name, ())
            if not values:
                raise NotApplicable(f"{match.group(0)} is empty for {expectation.use_case} on this registry")
            results = [r + prefix + value for r in results for value in values]
        position = match.end()
    return [r + text[position:] for r in results]


@dataclass(frozen=True)
class ResolvedItem:
    item: GoldenItem
    facts: tuple[Fact, ...]
    sources: tuple[str, ...]


def resolve_item(item: GoldenItem, expectation: Expectation | None) -> ResolvedItem:
    """The item with its placeholders replaced by this registry's values; NotApplicable when it cannot be."""
    facts: list[Fact] = []
    for fact in item.key_facts:
        if len(fact) == 1 and any(m.group(1) in LISTS for m in PLACEHOLDER.finditer(fact[0])):
            facts += [(value,) for value in expand(fact[0], expectation)]  # each one must appear
        else:
            facts.append(tuple(value for alternative in fact for value in expand(alternative, expectation)))
    sources = tuple(dict.fromkeys(source for s in item.expected_sources for source in expand(s, expectation)))
    return ResolvedItem(item, tuple(facts), sources)
