"""Acceptance criteria and the selection policy, read from the plain sentences, lists and tables teams write.

Documents are cut into units by engine.rules.statements (a sentence, a list item, a table row read with its header)
and each unit is read against the registry's metric vocabulary (`MetricVocabulary`): comparisons in words or
symbols ("no lower than 0.85", "must not exceed 1.2 GB", "between 0 and 12%", "a latency budget of 40 ms",
">= 0.95", "cannot be slower than 250 ms", "we will not ship anything whose PSI exceeds 0.25"), hard or soft from
the unit's own words ("must", "is not deployed unless" / "should", "ideally", "with a written exception"),
preference sentences ("of the models that qualify, pick the one with the best AUC"), tie-breaks ("ties go to the
smaller model"), near-best margins ("within 0.005 of the best") and a family order ("prefer, in this order,
linear, gradient boosting, ..."). Thresholds in other units are converted (engine.rules.quantities: "0.2 s" against a
metric in ms, "fourteen a week" against one per day). Sentences that describe rather than require ("the 2024 model
had an AUC of 0.91", "forests can easily exceed the 5 MB budget", "if latency is above 40 ms the page times out")
propose nothing.

Whatever proposes a rule, `confirm` checks that its metric and its number are really written in the unit it
came from before the rule is used.

This module is the entry point and the check: criteria are read by engine.rules.criterion_sentences, the selection
policy by engine.rules.policy_sentences, and both speak of engine.rules.proposed_rules.ProposedRule.
"""

from __future__ import annotations

import re
from dataclasses import replace

from engine.registry.metric_vocabulary import MetricVocabulary
from engine.rules.criterion_sentences import read_criteria
from engine.rules.named_metrics import named_by_its_unit
from engine.rules.policy_sentences import (
    CHEAPER_MODEL,
    FASTER_MODEL,
    PICK,
    SIMPLE,
    SMALLER_MODEL,
    TIE,
    read_family_order,
    read_margins,
    read_preferences,
)
from engine.rules.proposed_rules import CRITERION, FAMILY_ORDER, NEAR_BEST, PRIORITY, TIE_BREAKER, UNREAD, ProposedRule
from engine.rules.quantities import FRACTION_WORDS, WORD_NUMBER, numbers
from engine.rules.requirement_wording import DESCRIPTIVE

_CLAUSES = re.compile(r";|,\s*(?:and|but|while)\b,?|\band,|\bbut\b")


def read_rules(unit: str, vocabulary: MetricVocabulary, families=(), observed: dict[str, list[float]] | None = None,
               heading: str = "") -> list[ProposedRule]:
    """Every rule one unit states, read against the registry's vocabulary and family tags, each confirmed; the heading
    it stands under ("Nice to have", "Required") says hard or soft where the unit itself does not."""
    if not (re.search(r"\d", unit) or WORD_NUMBER.search(unit) or FRACTION_WORDS.search(unit) or PICK.search(unit)
            or TIE.search(unit) or SIMPLE.search(unit)):
        return []  # nothing to compare, prefer or order: most sentences of a document
    observed = observed or {}
    rules = read_criteria(unit, vocabulary, observed, heading)
    if not DESCRIPTIVE.search(unit):  # "gradient boosting and linear were within the margin" is history, not policy
        rules += read_margins(unit, vocabulary) + read_family_order(unit, families)
    for clause in _CLAUSES.split(unit):  # "Gini is reported too, and the winner is whichever has the highest Gini"
        if clause.strip() and not DESCRIPTIVE.search(clause):
            rules += [replace(rule, sentence=unit) for rule in read_preferences(clause, vocabulary)]
    return [rule for rule in rules if confirm(rule, vocabulary)]


def confirm(rule: ProposedRule, vocabulary: MetricVocabulary) -> bool:
    """The deterministic check every proposed rule passes before it is used: its metric and number are in its sentence."""
    named = {key for mention in vocabulary.mentions(rule.sentence) for key in mention.keys}
    if rule.implied:
        named |= {key for n in numbers(rule.sentence) for key in named_by_its_unit(rule.sentence, n.unit, vocabulary)}
        named |= set(vocabulary.keys_of_kind("recall")) if re.search(r"\bmiss(?:es|ed)?\b", rule.sentence, re.I) else set()
    if rule.kind in (CRITERION, PRIORITY) and not set(rule.metrics) <= named:
        return False
    if rule.kind == TIE_BREAKER and not (set(rule.metrics) <= named or SMALLER_MODEL.search(rule.sentence)
                                         or FASTER_MODEL.search(rule.sentence) or CHEAPER_MODEL.search(rule.sentence)):
        return False
    if rule.kind in (CRITERION, NEAR_BEST, UNREAD):
        number = re.sub(r"[\s,]", "", rule.written.lower())
        if not number or number not in re.sub(r"[\s,]", "", rule.sentence.lower()):
            return False
    if rule.kind == FAMILY_ORDER and len(rule.families) < 2:
        return False
    return True
