"""The rules that decide one use case, read at answer time from the documents that govern it, with their provenance.

Which documents govern a use case is decided in engine.rules.governance. A sentence that names other use cases but
not this one is not read for it. Every rule keeps the sentence and document it came from; documents that disagree on
a rule make a conflict, which blocks the recommendation until an admin saves a reviewed rule set (which then wins
over every document).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from engine.registry.metric_vocabulary import MetricVocabulary, vocabulary_for
from engine.registry.use_cases import use_case_descriptions
from engine.rules.criteria import AcceptanceCriterion, UseCasePolicy, metric_directions, reviewed_rules
from engine.rules.decision import Decision, decide
from engine.rules.extraction import read_rules
from engine.rules.governance import document_governance, named_use_cases, section_of_another, use_case_terms
from engine.rules.proposed_rules import CRITERION, FAMILY_ORDER, NEAR_BEST, PRIORITY, TIE_BREAKER, UNREAD, ProposedRule
from engine.rules.quantities import numbers
from engine.rules.statements import headed_rule_units


@dataclass(frozen=True)
class GoverningDocument:
    document_id: int
    title: str
    origin: str
    how: str  # "chosen by an admin", "front matter", "named in its text"


@dataclass(frozen=True)
class RuleProvenance:
    kind: str  # criterion, priority, tie_breaker, near_best, family_order
    rule: str  # the rule in the product's words ("latency_p95_ms < 40 (hard)")
    sentence: str
    source_id: str
    document: str


@dataclass(frozen=True)
class RuleConflict:
    subject: str  # what the documents disagree on
    statements: tuple[RuleProvenance, ...]

    @property
    def text(self) -> str:
        said = "; ".join(f"{s.document} <<SRC:{s.source_id}>> says {s.rule}" for s in self.statements)
        return f"The documents disagree on {self.subject}: {said}"


@dataclass(frozen=True)
class Rulebook:
    use_case: str
    criteria: tuple[AcceptanceCriterion, ...]
    policy: UseCasePolicy | None
    state: str  # "reviewed" (an admin's rule set), "extracted" (read from documents) or "none"
    provenance: tuple[RuleProvenance, ...] = ()
    conflicts: tuple[RuleConflict, ...] = ()
    documents: tuple[GoverningDocument, ...] = ()
    undirected: tuple[str, ...] = ()  # metrics a rule ranks on whose direction nobody gave
    reviewed_by: str | None = None
    extracted: Rulebook | None = field(default=None, compare=False)  # for a reviewed use case: what the documents say now
    unread: tuple[RuleProvenance, ...] = ()  # hard requirements stated in a sentence the extraction could not read

    @property
    def hard_criteria(self) -> list[AcceptanceCriterion]:
        return [c for c in self.criteria if c.hard]

    def blockers(self) -> list[str]:
        """Why no candidate may be recommended from these rules, whatever the metrics (empty when they can decide)."""
        reasons = [conflict.text for conflict in self.conflicts]
        reasons += [f'{s.document} <<SRC:{s.source_id}>> states a hard requirement that could not be read as a rule: '
                    f'"{s.sentence}" ({s.rule}); an admin writes it as a rule on the Knowledge page (Criteria tab)'
                    for s in self.unread]
        if self.undirected:
            reasons.append(f"no document says whether higher or lower is better for {', '.join(self.undirected)}: "
                           "an admin sets it on the Knowledge page (Criteria tab)")
        if not self.hard_criteria and self.policy is None:
            reasons.append(self.missing_text())
        return reasons

    def missing_text(self) -> str:
        where = (f"the documents that govern it ({', '.join(d.title for d in self.documents)})" if self.documents
                 else "no document governs it")
        return (f"no acceptance criterion and no way to rank the candidates are recorded for {self.use_case}: {where}. "
                "Write them in a guideline that names the use case (for example 'latency must stay below 40 ms', "
                "'pick the one with the best AUC') and upload it on the Knowledge page, or enter them on its Criteria tab")


@dataclass(frozen=True)
class RuleText:
    """One piece of a governing document: the text of a chunk and the source id it is cited by."""

    source_id: str
    document: str  # its title
    text: str
    origin: str = ""  # which file or table it came from


def rulebook(connection, use_case: str, candidates, all_candidates=None) -> Rulebook:
    """The rules that decide `use_case`: an admin's reviewed set when there is one, else what its documents say.

    `candidates` are the use case's; `all_candidates` every use case's (to tell which documents name which)."""
    all_candidates = candidates if all_candidates is None else all_candidates
    terms = use_case_terms(all_candidates, [use_case])
    governance = document_governance(connection, terms, only=use_case, descriptions=use_case_descriptions(all_candidates))
    governing = [document_id for document_id, (use_cases, _) in governance.items() if use_case in use_cases]
    documents = [GoverningDocument(document_id, title, origin, governance[document_id][1]) for document_id, title, origin in
                 connection.execute(f"SELECT id, title, origin FROM documents WHERE id IN ({', '.join('?' * len(governing))}) "
                                    "ORDER BY id", governing)]
    texts = []
    for document in documents:
        texts += [RuleText(source_id, document.title, text, document.origin) for source_id, text in connection.execute(
            "SELECT source_id, text FROM chunks WHERE document_id = ? ORDER BY chunk_index", (document.document_id,))]
    directions = metric_directions(connection)
    extracted = rules_from_texts(use_case, texts, candidates, terms, directions, tuple(documents))
    extracted = _with_claimed_twice(extracted, texts)
    criteria, policy, reviewer = reviewed_rules(connection, use_case)
    if reviewer is None:
        return extracted
    vocabulary = vocabulary_for(frozenset(_keys(candidates)), tuple(sorted(directions.items())))
    return Rulebook(use_case, tuple(criteria), policy, "reviewed", reviewed_by=reviewer, documents=tuple(documents),
                    undirected=_undirected(policy, vocabulary),
                    extracted=extracted)


def decision_for(connection, use_case: str, candidates, all_candidates=None) -> tuple[Rulebook, Decision]:
    """The use case's rules and the decision they make on these candidates: what the chat, the evaluation and the
    tests all decide with."""
    rules = rulebook(connection, use_case, candidates, all_candidates)
    return rules, decide(use_case, candidates, list(rules.criteria), rules.policy, rules.blockers())


def _with_claimed_twice(rules: Rulebook, texts: list[RuleText]) -> Rulebook:
    """Two documents citing themselves by one source id (a second file claiming `criteria:<use case>`) are a conflict:
    which of them states the rules is for an admin to say, not for the one ingested last."""
    claimed: dict[str, set[str]] = {}
    for text in texts:
        claimed.setdefault(text.source_id, set()).add(text.origin or text.document)
    doubled = {source_id: documents for source_id, documents in claimed.items() if len(documents) > 1}
    if not doubled:
        return rules
    conflicts = list(rules.conflicts)
    for source_id, documents in sorted(doubled.items()):
        statements = tuple(p for p in rules.provenance if p.source_id == source_id) or tuple(
            RuleProvenance("document", "claims this source id", "", source_id, document) for document in sorted(documents))
        conflicts.append(RuleConflict(f"which document is {source_id} (claimed by {', '.join(sorted(documents))})", statements))
    return replace(rules, conflicts=tuple(conflicts), state="extracted")


def _keys(candidates) -> set[str]:
    return {key for candidate in candidates for key in candidate.metrics}


_read: OrderedDict[tuple, Rulebook] = OrderedDict()  # the same texts read against the same registry: read once
_READ_CACHE = 256


def rules_from_texts(use_case: str, texts: list[RuleText], candidates, terms: dict[str, tuple[str, ...]] | None = None,
                     directions: dict[str, bool] | None = None, documents: tuple[GoverningDocument, ...] = ()) -> Rulebook:
    """The rules these governing texts state for `use_case`, read against its candidates' metrics and families."""
    terms = terms or use_case_terms(candidates)
    key = (use_case, tuple(texts), tuple((c.name, c.family, tuple(sorted(c.metrics.items()))) for c in candidates),
           tuple(sorted(terms.items())), tuple(sorted((directions or {}).items())), documents)
    if key in _read:
        _read.move_to_end(key)
        return _read[key]
    book = _read_rules(use_case, texts, candidates, terms, directions, documents)
    _read[key] = book
    if len(_read) > _READ_CACHE:
        _read.popitem(last=False)
    return book


def _read_rules(use_case: str, texts: list[RuleText], candidates, terms, directions, documents) -> Rulebook:
    vocabulary = vocabulary_for(frozenset(_keys(candidates)), tuple(sorted((directions or {}).items())), True)
    families = sorted({c.family for c in candidates if c.family})
    observed: dict[str, list[float]] = {}
    for candidate in candidates:
        for key, value in candidate.metrics.items():
            observed.setdefault(key, []).append(value)
    others = {name: words for name, words in terms.items() if name != use_case}
    found: dict[tuple, tuple[ProposedRule, RuleText, str]] = {}
    for text in texts:
        previous = ""
        for heading, unit in headed_rule_units(text.text):
            if (_about_another(unit, use_case, terms, others) or _about_another(heading, use_case, terms, others)
                    or section_of_another(heading, use_case, terms)):
                continue  # a sentence, or a section, about another use case
            # "... score the character error rate of that round trip. It is capped at two percent.": read with the one before
            refers_back = previous and _REFERS_BACK.match(unit) and numbers(unit) and not vocabulary.mentions(unit)
            reading = f"{previous} {unit}" if refers_back else unit
            previous = unit
            for rule in read_rules(reading, vocabulary, families, observed, heading):
                key = (rule.kind, rule.metrics, rule.comparison, rule.threshold, rule.hard, rule.higher_is_better,
                       rule.relative, rule.families, text.document)
                found.setdefault(key, (rule, text, heading))  # the same rule twice in a document (list and table, chunk overlap)
    return _assemble(use_case, _newest_only(list(found.values())), vocabulary, documents)


_VERSION = re.compile(r"\bv(?:ersion)?\s?(\d+(?:\.\d+)*)\b", re.I)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE = re.compile(r"\b(\d{4})-(\d\d)-(\d\d)\b|\b(\d{1,2})\s+(" + "|".join(_MONTHS) + r")[a-z]*\.?\s+(\d{4})\b", re.I)


def _recency(heading: str) -> tuple | None:
    """Where a section stands in a changelog: its version ("v3"), else its date ("6 May 2025", "2025-05-06")."""
    if version := _VERSION.search(heading):
        return (0, *map(int, version.group(1).split(".")))
    if date := _DATE.search(heading):
        if date.group(1):
            return (1, int(date.group(1)), int(date.group(2)), int(date.group(3)))
        return (1, int(date.group(6)), _MONTHS.index(date.group(5).lower()[:3]) + 1, int(date.group(4)))
    return None


def _newest_only(found: list[tuple[ProposedRule, RuleText, str]]) -> list[tuple[ProposedRule, RuleText]]:
    """A changelog states a rule again when it changes it ("v3: coverage between 77% and 83%", "v1: between 75% and
    85%"): of one document's rules on the same bound, those under its newest version or date stand; the older ones
    are history, not a conflict. Sections without a version or date are never dropped."""
    def subject(rule: ProposedRule, text: RuleText) -> tuple:
        bound = _bound(rule.comparison) if rule.kind == CRITERION else ""
        return text.document, rule.kind, rule.metrics if rule.kind != PRIORITY else (), bound

    dated = [(rule, text, _recency(heading)) for rule, text, heading in found]
    newest: dict[tuple, tuple] = {}
    for rule, text, when in dated:
        if when is not None:
            key = subject(rule, text)
            newest[key] = max(newest.get(key, when), when)
    return [(rule, text) for rule, text, when in dated if when is None or when == newest[subject(rule, text)]]


_REFERS_BACK = re.compile(r"(?:it|this|that|this (?:figure|number|value|metric|score|rate))\b", re.I)


def _about_another(text: str, use_case: str, terms, others) -> bool:
    return bool(text) and bool(named_use_cases(text, others)) and not named_use_cases(text, {use_case: terms.get(use_case, ())})


def _describe(rule: ProposedRule, vocabulary: MetricVocabulary) -> str:
    if rule.kind == CRITERION:
        spec = vocabulary.spec(rule.metrics[0])
        return (f"{rule.metrics[0]} {rule.comparison} {rule.threshold:g}{' ' + spec.unit if spec.unit else ''}"
                f" ({'hard' if rule.hard else 'soft'})")
    if rule.kind in (PRIORITY, TIE_BREAKER):
        direction = rule.higher_is_better if rule.higher_is_better is not None else vocabulary.spec(rule.metrics[0]).higher_is_better
        way = {True: "highest", False: "lowest", None: "best"}[direction]
        return f"{'rank on' if rule.kind == PRIORITY else 'ties go to'} the {way} {rule.metrics[0]}"
    if rule.kind == UNREAD:
        bounded = f" of {', '.join(rule.metrics)}" if rule.metrics else ""
        return f"a hard limit{bounded} at {rule.written} that could not be read as a rule on a logged metric"
    if rule.kind == NEAR_BEST:
        margin = f"{rule.threshold:.4g} {'relative' if rule.relative else 'absolute'}"
        return f"near-best margin {margin}" + (f" for {', '.join(rule.metrics)}" if rule.metrics else "")
    return "simplest family first: " + " < ".join(rule.families)


def _assemble(use_case: str, found: list[tuple[ProposedRule, RuleText]], vocabulary, documents) -> Rulebook:
    provenance = {id(rule): RuleProvenance(rule.kind, _describe(rule, vocabulary), rule.sentence, text.source_id, text.document)
                  for rule, text in found}
    conflicts: list[RuleConflict] = []

    def agreed(kind: str, group_of, subject_of) -> dict:
        """The rules of one kind by group; a group whose members disagree becomes a conflict, never a merge."""
        groups: dict = {}
        for rule, _text in found:
            if rule.kind == kind:
                groups.setdefault(group_of(rule), []).append(rule)
        chosen = {}
        for group, rules in groups.items():
            if len({_value(rule) for rule in rules}) > 1:
                conflicts.append(RuleConflict(subject_of(group), tuple(provenance[id(r)] for r in rules)))
            else:  # "below 40" and "at most 40" agree on the number: the strict one stands for both
                chosen[group] = next((r for r in rules if r.comparison in ("<", ">")), rules[0])
        return chosen

    chosen_criteria = agreed(CRITERION, lambda r: (r.metrics[0], _bound(r.comparison), r.hard),
                             lambda g: f"the {g[1]} {'hard' if g[2] else 'soft'} limit of {g[0]}")
    _hardness_conflicts(chosen_criteria, provenance, conflicts)
    priority = agreed(PRIORITY, lambda r: "priority", lambda g: "the metric candidates are ranked on")
    tie = agreed(TIE_BREAKER, lambda r: "tie", lambda g: "the tie-breaker")
    order = agreed(FAMILY_ORDER, lambda r: "order", lambda g: "the order of model families")
    criteria = tuple(sorted(
        (AcceptanceCriterion(use_case, r.metrics[0], r.comparison, r.threshold, r.hard, provenance[id(r)].source_id,
                             sentence=r.sentence) for r in chosen_criteria.values()),
        key=lambda c: (not c.hard, c.metric, c.comparison)))
    policy, undirected = None, ()
    if "priority" in priority:
        rule = priority["priority"]
        metric = rule.metrics[0]
        margins = agreed(NEAR_BEST, lambda r: metric if not r.metrics or metric in r.metrics else f"other:{r.metrics}",
                         lambda g: f"the near-best margin of {metric}")
        margin = margins.get(metric)
        tie_rule, order_rule = tie.get("tie"), order.get("order")
        part_sources = {part: provenance[id(r)].source_id for part, r in
                        (("tie_breaker", tie_rule), ("near_best", margin), ("family_order", order_rule)) if r is not None}
        policy = UseCasePolicy(
            use_case, metric, tie_rule.metrics[0] if tie_rule else None, provenance[id(rule)].source_id,
            priority_higher_is_better=rule.higher_is_better,
            tie_breaker_higher_is_better=tie_rule.higher_is_better if tie_rule else None,
            near_best_margin=margin.threshold if margin else None, near_best_relative=bool(margin and margin.relative),
            family_order=order_rule.families if order_rule else (), part_sources=part_sources,
        )
        undirected = _undirected(policy, vocabulary)
    # a requirement also read elsewhere in its document (the other language of a bilingual rule, a summary) is read
    read = {(rule.comparison, text.document, _as_written(rule.written)) for rule, text in found if rule.kind == CRITERION}
    unread = tuple(dict.fromkeys(provenance[id(rule)] for rule, text in found if rule.kind == UNREAD
                                 and (rule.comparison, text.document, _as_written(rule.written)) not in read))
    state = "extracted" if criteria or policy or conflicts or unread else "none"
    return Rulebook(use_case, criteria, policy, state, tuple(provenance.values()), tuple(conflicts), tuple(documents), undirected,
                    unread=unread)


def _as_written(number: str) -> str:
    return re.sub(r"\s+", "", number.lower()).replace(",", ".")


def _value(rule: ProposedRule):
    """What two statements of one rule must share to agree."""
    return {CRITERION: (rule.threshold,), PRIORITY: (rule.metrics, rule.higher_is_better),
            TIE_BREAKER: (rule.metrics, rule.higher_is_better), NEAR_BEST: (rule.threshold, rule.relative),
            FAMILY_ORDER: (rule.families,)}[rule.kind]


def _bound(comparison: str) -> str:
    return "upper" if comparison in ("<", "<=") else "lower"


def _hardness_conflicts(chosen: dict, provenance, conflicts: list[RuleConflict]) -> None:
    """The same limit written as hard in one document and soft in another is a disagreement, not two rules."""
    for (metric, bound, hard), rule in list(chosen.items()):
        other = chosen.get((metric, bound, not hard))
        if hard and other is not None and other.threshold == rule.threshold and \
                provenance[id(other)].document != provenance[id(rule)].document:
            conflicts.append(RuleConflict(f"whether the {bound} limit of {metric} is hard",
                                          (provenance[id(rule)], provenance[id(other)])))


def _undirected(policy: UseCasePolicy | None, vocabulary: MetricVocabulary) -> tuple[str, ...]:
    if policy is None:
        return ()
    missing = []
    if policy.priority_higher_is_better is None and vocabulary.spec(policy.priority_metric).higher_is_better is None:
        missing.append(policy.priority_metric)
    if policy.tie_breaker and policy.tie_breaker_higher_is_better is None and vocabulary.spec(policy.tie_breaker).higher_is_better is None:
        missing.append(policy.tie_breaker)
    return tuple(missing)
