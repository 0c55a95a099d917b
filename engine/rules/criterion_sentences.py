"""Acceptance criteria read from one unit: each written comparison, the metric its number bounds, whether the
clause requires it and how hard, in the metric's own unit.

The reader that brings comparisons, metric names and requirement wording together; kept apart from the policy
reader, since a criterion bounds every candidate while a policy sentence only ranks those that qualify.
"""

from __future__ import annotations

import re

from engine.registry.metric_vocabulary import MetricVocabulary
from engine.rules.comparisons import COMPARISON, MIRRORED, NEGATION, resolved_comparison, written_comparisons
from engine.rules.named_metrics import bounded_keys, fitting_mentions, logged_first, named_by_its_unit, recall_from_misses
from engine.rules.policy_sentences import MARGIN, MARGIN_CONTEXT, TIE
from engine.rules.proposed_rules import CRITERION, UNREAD, ProposedRule
from engine.rules.quantities import NUMBER, convert
from engine.rules.requirement_wording import (
    A_MODEL_THAT,
    DISQUALIFIES,
    HEDGED_AFTER,
    MODAL,
    REJECT_IF,
    RELATIVE_TO,
    SOFT,
    clause_requires,
    is_hard,
    states_a_requirement,
)

_CLAUSE_BREAK = re.compile(r";|,\s*(?:but|and|while|whereas)\b|\bbut\b", re.I)


def read_criteria(unit: str, vocabulary: MetricVocabulary, observed, heading: str = "") -> list[ProposedRule]:
    """Every threshold one unit writes out as a rule, in the metric's own unit; a hard requirement whose metric
    cannot be told is proposed as UNREAD rather than dropped."""
    mentions = vocabulary.mentions(unit)
    rules, previous_keys, previous_end = [], (), 0
    for comparison, start, number in written_comparisons(unit):
        window = max(previous_end, start - 60)
        tie = any(not any(m.start <= t.start() < m.end for m in mentions) and _names_a_tie(t, mentions)
                  for t in TIE.finditer(unit, window, start))
        if tie or MARGIN.match(unit[start:]) and MARGIN_CONTEXT.search(unit):
            continue  # "within 0.005 of the best" is a margin, "ties go to ..." a tie-break
        if any(m.start <= start < m.end and re.search(r"\d", m.words) for m in mentions):
            continue  # "placed within 50 m" names within_50m_rate: part of the metric, not a threshold
        if _QUALIFIER.search(unit, 0, number.start) or _inside_an_aside(unit, start) and _outside_asides(unit):
            continue  # "of the units with 30 or more cycles", "(completions that reproduce 150 or more characters)"
        clause_start = max([previous_end] + [m.end() for m in _CLAUSE_BREAK.finditer(unit, 0, start)])
        segment = unit[clause_start:number.end]
        before = fitting_mentions(logged_first([m for m in mentions if previous_end <= m.start and m.end <= start], vocabulary),
                                  number, vocabulary)
        after = fitting_mentions(logged_first([m for m in mentions if number.start < m.start <= number.end + 40
                                               and not NUMBER.search(unit[number.end:max(number.end, m.start)])], vocabulary),
                                 number, vocabulary)
        if missed := recall_from_misses(unit, start, number, vocabulary):
            comparison, number, keys = MIRRORED.get(comparison, comparison), *missed
        else:
            keys = bounded_keys(unit, number, before, after, vocabulary) or previous_keys
        implied = bool(missed) or not keys and bool(keys := named_by_its_unit(segment, number.unit, vocabulary))
        previous_end, previous_keys = number.end, keys
        if RELATIVE_TO.search(unit):
            continue  # "does not beat seasonal naive by more than 15%": a difference, not a threshold
        reach = 120 if A_MODEL_THAT.search(segment) else 60  # "a model that misses ... in the backtest is not acceptable"
        if keys and DISQUALIFIES.match(unit[number.end:number.end + reach]) and not MODAL.search(segment):
            # "exceeding 8 GB disqualifies", "a model whose retraining takes longer than 90 minutes is not released"
            comparison, hard = NEGATION[comparison], True
        elif keys and REJECT_IF.search(segment):
            comparison, hard = NEGATION[comparison], not SOFT.search(segment)
        elif clause_requires(segment, unit, heading) and not HEDGED_AFTER.match(unit[number.end:]):
            hard = is_hard(segment, unit, heading) and comparison != "target"
        else:
            continue
        read = []
        for key in keys:
            spec = vocabulary.spec(key)
            threshold = convert(number.value, number.unit, spec, observed.get(key, []), number.per)
            op = resolved_comparison(comparison, spec.higher_is_better)
            if threshold is not None and op is not None:
                read.append(ProposedRule(CRITERION, unit, (key,), op, threshold, number.text, hard, implied=implied))
        if not read and hard and states_a_requirement(segment, unit, heading):
            read.append(ProposedRule(UNREAD, unit, keys, comparison, number.value, number.text))
        rules += read
    return rules


_QUALIFIER = re.compile(r"\b(?:with|having|for)\s+(?:at least\s+|more than\s+|over\s+|up to\s+)?$", re.I)


def _inside_an_aside(unit: str, position: int) -> bool:
    return unit[:position].count("(") > unit[:position].count(")")


def _outside_asides(unit: str) -> bool:
    """Whether the unit compares something outside its parentheses too."""
    return any(not _inside_an_aside(unit, match.start()) for match in COMPARISON.finditer(unit))


def _names_a_tie(word, mentions) -> bool:
    """"the same WAPE" ties two models; "at the same operating point" does not."""
    return not word.group(0).lower().endswith("the same") or any(0 <= m.start - word.end() <= 2 for m in mentions)
