"""Checks each sentence of the LLM's explanation against the decision and the real metrics before anyone sees it.

Four checks: every candidate the sentence presents as recommended, to deploy or as the choice is the decision's
("We do not recommend A; deploy B instead" presents B, not A); every number presented as a value of any metric the
candidates log equals a real value of it (a candidate's value or a criterion's threshold) within the rounding it is
written with, in any unit it is written in; a sentence that states a rule ("must be under 25 ms") states one of the
rules that decided; every `<<SRC:...>>` marker is one the product knows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from engine.answering.citations import find_markers, strip_markers
from engine.registry.metric_catalog import unit_dimension
from engine.registry.metric_vocabulary import MetricVocabulary, vocabulary_for
from engine.rules.decision import Decision
from engine.rules.extraction import read_rules
from engine.rules.proposed_rules import CRITERION
from engine.rules.quantities import convert, numbers

# Words that present a candidate as the one to deploy; the noun "deployment" and "Read before deploying" do not.
_ENDORSE = re.compile(r"\b(?:recommend(?:s|ed|ing|ation)?|deploy(?:s|ed)?|go(?:es)? with|choos(?:e|es|ing)|chosen|choice|"
                      r"pick(?:s|ed)?|select(?:s|ed)?|promot(?:e|es|ed)|winner|roll(?:s|ed)? out|ship(?:s|ped)?)\b", re.I)
_NEGATION_BEFORE = re.compile(r"\b(?:not|never|no|n't|nothing|none|against|cannot|can't|shouldn't|won't|wouldn't)\b[\w\s']{0,12}$", re.I)
_NEGATION_AFTER = re.compile(r"^[\s,]*(?:is|are|was|should|must|would|will|can)?\s*(?:not|never|n't)\b", re.I)
_SET_ASIDE = re.compile(r"\b(?:instead of|rather than|over|than|unlike|versus|vs\.?|except|not|because|since|although|"
                        r"though|while|whereas|as opposed to)\s*$", re.I)
_BLOCK = re.compile(r"\b(?:because|since|although|though|while|whereas|instead of|rather than|over|unlike|versus|than)\b", re.I)
_CLAUSE = re.compile(r"[;.!?\n]|\bbut\b|\bhowever\b", re.I)
_NUMBER_WINDOW = 40  # characters before a number where the metric it is a value of is named
_FUNCTION_WORDS = frozenset("""about above after again against also because been before being below between both could
does doing down during each from further have having here into itself just more most only other over same should some
such than that their theirs them then there these they this those through under until very what when where which while
whom will with would your yours""".split())


@dataclass(frozen=True)
class Verification:
    ok: bool
    problems: tuple[str, ...]
    recommended_in_answer: str | None
    numbers_checked: int
    markers: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def verify_sentence(text: str, decision: Decision, candidates, known_source_ids: set[str]) -> Verification:
    """One sentence of the LLM's explanation of a decision already shown: it may not present any other model as the
    one to deploy, its numbers and rules must be real, and it must end with (carry) a known source."""
    endorsed = endorsed_names(text, _names(candidates))
    expected = decision.recommended.name if decision.recommended else None
    problems = [f"it presents {name} as the one to deploy, but the rules chose {expected or 'none'}"
                for name in endorsed if name != expected]
    numbers_checked = _claim_problems(text, decision, candidates, problems)
    markers = tuple(find_markers(text))
    if not markers:
        problems.append("it cites no source")
    problems += _marker_problems(markers, known_source_ids)
    return Verification(not problems, tuple(dict.fromkeys(problems)), endorsed[0] if endorsed else None, numbers_checked, markers)


def content_words(text: str) -> set[str]:
    """Words of four letters or more, cut to five (so 'criteria' and 'criterion' meet), without common function words."""
    return {word[:5] for word in re.findall(r"[a-z]{4,}", strip_markers(text).lower()) if word not in _FUNCTION_WORDS}


def grounded(text: str, reference: str, share: float) -> bool:
    """Whether at least `share` of the text's content words occur in the reference: a cheap guard against what a small
    model invents (a claim about something the input never mentions); it cannot judge faithfulness itself."""
    words = content_words(text)
    return not words or len(words & content_words(reference)) / len(words) >= share


def _names(candidates) -> list[str]:
    return sorted({c.name for c in candidates}, key=len, reverse=True)


def _claim_problems(text: str, decision: Decision, candidates, problems: list[str]) -> int:
    """Adds what is wrong with the text's metric values and stated rules to `problems`; returns the values checked."""
    names = _names(candidates)
    vocabulary = vocabulary_for(frozenset({key for c in candidates for key in c.metrics} | {c.metric for c in decision.criteria}))
    numbers_checked = 0
    for keys, number, context, position in metric_numbers(text, vocabulary):
        numbers_checked += 1
        line = text[text.rfind("\n", 0, position) + 1:position]
        named = _last_name(line, names)
        about = [c for c in candidates if c.name == named] if named else list(candidates)
        if not _is_real_value(keys, number, decision, about, vocabulary):
            label = vocabulary.spec(keys[0]).label
            problems.append(f"'{context.strip()}' gives a {label} of {number.text} that no candidate or criterion has")
    problems += _rule_problems(text, decision, vocabulary)
    problems += _family_problems(text, decision, candidates)
    return numbers_checked


def _family_problems(text: str, decision: Decision, candidates) -> list[str]:
    """A sentence that says what family a candidate is ("This is a gradient-boosting model") must be right: the
    candidate is the last one named before it in the sentence, else the decision's."""
    family_of = {c.name: c.family for c in candidates if c.family}
    names, problems = _names(candidates), []
    clean = _without_markers(text)
    for family in sorted(set(family_of.values())):
        spelled = "[- ]".join(re.escape(part) for part in re.split(r"[-_ ]", family))
        for claim in re.finditer(rf"\b(?:is|as|being)\s+(?:a|an|the|our)\s+(?:[\w-]+\s+){{0,2}}?{spelled}\b", clean, re.I):
            sentence_start = max(clean.rfind(mark, 0, claim.start()) for mark in (". ", "\n", "; "))
            about = _last_name(clean[sentence_start + 1:claim.start()], names) or (
                decision.recommended.name if decision.recommended else None)
            if about in family_of and family_of[about] != family:
                problems.append(f"it calls {about} a {family} model, but it is {family_of[about]}")
    return problems


def _marker_problems(markers, known_source_ids: set[str]) -> list[str]:
    unknown = [marker for marker in markers if marker not in known_source_ids]
    return [f"it cites unknown sources: {', '.join(unknown[:5])}"] if unknown else []


def endorsed_names(text: str, names: list[str]) -> list[str]:
    """The candidates the text presents as recommended, to deploy or as the choice, in order; a negated or set-aside
    one ("do not deploy A", "B instead of A", "A is not recommended") is not presented."""
    endorsed: list[str] = []
    clean = _without_markers(text)
    start = 0
    for boundary in [*(m.start() for m in _CLAUSE.finditer(clean)), len(clean)]:
        clause = clean[start:boundary]
        start = boundary + 1
        mentions = _mentions(clause, names)
        for cue in _ENDORSE.finditer(clause):
            if _NEGATION_BEFORE.search(clause[:cue.start()]) or _NEGATION_AFTER.match(clause[cue.end():]):
                continue
            chosen = _attached(clause, cue, mentions)
            if chosen and chosen not in endorsed:
                endorsed.append(chosen)
    return endorsed


def _without_markers(text: str) -> str:
    """The text with each <<SRC:...>> marker blanked out in place, so positions still point into the original."""
    return re.sub(r"<<SRC:[^>]*>>", lambda m: " " * len(m.group(0)), text)


def _attached(clause: str, cue, mentions) -> str | None:
    """The candidate a cue word is about: the nearest named after it, else before it, with nothing in between that
    sets it aside ("over", "instead of", "because") and no negation of its own ("A is not ...")."""
    after = [(pos, name) for pos, name in mentions if pos >= cue.end() and not _BLOCK.search(clause[cue.end():pos])]
    before = [(pos, name) for pos, name in mentions if pos < cue.start()
              and not _BLOCK.search(clause[pos + len(name):cue.start()]) and not _NEGATION_AFTER.match(clause[pos + len(name):])]
    for pos, name in after[:1] or before[-1:]:
        if _SET_ASIDE.search(clause[:pos]) or _NEGATION_AFTER.match(clause[pos + len(name):]):
            return None
        return name
    return None


def recommended_name(text: str, names: list[str]) -> str | None:
    """The first candidate the text presents as the one to deploy; a text with no such words at all is read as
    recommending the first candidate it names."""
    endorsed = endorsed_names(text, names)
    if endorsed:
        return endorsed[0]
    if _ENDORSE.search(text):
        return None
    found = _mentions(text, names)
    return found[0][1] if found else None


def _mentions(text: str, names: list[str]) -> list[tuple[int, str]]:
    found, taken = [], set()
    for name in names:  # longest first: "ts-linear-v2" is not also "ts-linear"
        for m in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text):
            if not taken & set(range(m.start(), m.end())):
                found.append((m.start(), name))
                taken |= set(range(m.start(), m.end()))
    return sorted(found)


def _last_name(text: str, names: list[str]) -> str | None:
    """The candidate a number on this line is about: the last one named before it, if any."""
    found = _mentions(text, names)
    return found[-1][1] if found else None


def metric_numbers(text: str, vocabulary: MetricVocabulary):
    """(keys it may be a value of, the number, context, position) for each number the text presents as a metric value.

    A metric named up to 40 characters before the number (in the same sentence, with no other number between)
    says which metric; a unit alone says only the kind ("12.3 ms" is one of the logged times)."""
    clean = _without_markers(text)
    mentions = vocabulary.mentions(clean)
    for number in numbers(clean):
        window = clean[max(0, number.start - _NUMBER_WINDOW):number.start]
        sentence_start = number.start - len(re.split(r"[.!?]\s|\n", window)[-1])
        named = [m for m in mentions if sentence_start <= m.start and m.end <= number.start
                 and not re.search(r"\d", clean[m.end:number.start])]
        if named:
            keys = named[-1].keys
        elif number.unit and number.unit != "%":
            keys = tuple(key for key, spec in vocabulary.specs.items() if spec.unit and spec.dimension == unit_dimension(number.unit))
            if not keys:
                continue
        else:
            continue
        yield keys, number, clean[max(0, number.start - 30):number.end], number.start


def _is_real_value(keys, number, decision: Decision, candidates, vocabulary: MetricVocabulary) -> bool:
    """Equal to a candidate's value or a criterion's threshold of one of these metrics, at the precision written."""
    decimals = len(re.match(r"[-+]?[\d,]*\.?(\d*)", number.text).group(1))
    for key in keys:
        spec = vocabulary.spec(key)
        observed = [c.metrics[key] for c in candidates if key in c.metrics]
        real = observed + [c.threshold for c in decision.criteria if c.metric == key]
        if number.unit == "%":
            scale = 1 if spec.unit == "%" or (observed and max(abs(v) for v in observed) > 1.5) else 100
            tolerance = 0.5 * 10 ** -decimals + 1e-9
            if any(abs(number.value - r * scale) <= tolerance for r in real):
                return True
            continue
        value = convert(number.value, number.unit, spec, observed) if number.unit else number.value
        if value is None:
            continue
        factor = abs(value / number.value) if number.value else 1.0
        tolerance = (0.5 * 10 ** -decimals) * factor + 1e-9
        if any(abs(value - r) <= tolerance for r in real):
            return True
    return False


def _rule_problems(text: str, decision: Decision, vocabulary: MetricVocabulary) -> list[str]:
    """A sentence that states a rule must state one of the decision's rules (metric, bound and threshold)."""
    problems = []
    clean = _without_markers(text)
    for sentence in re.split(r"(?<=[.!?;])\s+|\n", clean):
        for rule in read_rules(sentence, vocabulary):
            if rule.kind != CRITERION:
                continue
            metric, threshold = rule.metrics[0], rule.threshold
            upper = rule.comparison in ("<", "<=")
            if not any(c.metric == metric and (c.comparison in ("<", "<=")) == upper
                       and abs(c.threshold - threshold) <= 1e-6 * max(1.0, abs(c.threshold)) for c in decision.criteria):
                problems.append(f"'{sentence.strip()[:80]}' states a rule ({metric} {rule.comparison} {threshold:g}) "
                                "that is not one of the rules that decided")
    return problems
