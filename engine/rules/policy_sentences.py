"""The selection policy read from one unit: the priority metric ("pick the one with the best AUC"), the tie-breaker
("ties go to the smaller model"), near-best margins ("within 0.005 of the best") and a family order.

Separate from the criteria: these sentences rank the candidates that qualify rather than bound a metric; the
criterion reader uses their tie and margin words only to leave such sentences alone.
"""

from __future__ import annotations

import re

from engine.registry.metric_vocabulary import MetricVocabulary
from engine.rules.comparisons import COMPARISON
from engine.rules.named_metrics import disambiguated_keys
from engine.rules.proposed_rules import FAMILY_ORDER, NEAR_BEST, PRIORITY, TIE_BREAKER, ProposedRule
from engine.rules.quantities import numbers

PICK = re.compile(
    r"\b(?:pick|picks|choose|chooses|choosing|select|selects|selection|prefer|prefers|preferred|take|takes|deploy|deploys|"
    r"go with|goes to|ships?|adopts?|adopted|goes live|ranking|ranked|rank|"
    r"(?:is|are|be|gets?) (?:promoted|released|deployed|chosen|selected)|"
    r"favou?r|favou?rs|wins?|winner|recommend|rank(?:ed|s)? (?:by|on)|sort(?:ed)? by|order(?:ed)? by|decided? (?:by|on)|"
    r"the one with|whichever has|maximi[sz]es?|minimi[sz]es?|optimi[sz]es? for|compare[ds]? on|priority|primary|deciding|"
    r"ranking metric|selection metric|main metric|key metric)\b", re.I)
_UP = re.compile(r"\b(?:highest|largest|greatest|maximum|max|higher|larger|greater|most|maximi[sz]es?|top|biggest)\b", re.I)
_DOWN = re.compile(r"\b(?:lowest|smallest|least|fewest|minimum|min|lower|smaller|minimi[sz]es?|fastest|faster|cheapest|"
                   r"cheaper|shortest|lightest|lighter)\b", re.I)
_SUPERLATIVE = re.compile(r"\b(?:best|highest|lowest|largest|smallest|top|greatest|maximum|minimum|strongest|fewest|least)\b", re.I)
_BEST = re.compile(r"\b(?:best|better|strongest|optimal)\b", re.I)
_DIRECTION_NOTE = re.compile(r"\((?:[^)]*?)\b(higher|lower|larger|smaller)\b[^)]*\bbetter\b[^)]*\)", re.I)
TIE = re.compile(r"\b(?:ties?|tied|tie-?break\w*|equally good|equivalent|a draw|dead heat|same score|cannot be separated|"
                 r"too close to call|otherwise equal|identical|(?:exactly )?the same|equal|exactly level|level (?:on|with)|on a par|"
                 r"neck and neck)\b", re.I)
SMALLER_MODEL = re.compile(r"\b(?:smaller|smallest|lighter|lightest|leaner)\s+(?:model|one|artefact|artifact|candidate|checkpoint)s?\b",
                           re.I)
FASTER_MODEL = re.compile(r"\b(?:faster|fastest|quicker|quickest)\s+(?:model|one|candidate)s?\b", re.I)
CHEAPER_MODEL = re.compile(r"\b(?:cheaper|cheapest)\s+(?:model|one|candidate)s?\b", re.I)
MARGIN = re.compile(r"\bwithin\s+(?:an?\s+)?(?:(?:absolute|relative)\s+)?(?:margin\s+of\s+)?", re.I)
MARGIN_CONTEXT = re.compile(r"\b(?:near-?best|equivalent|margin|as good as|of the best|treated as equal|ties?|tied|noise|"
                            r"indistinguishable)\b", re.I)
SIMPLE = re.compile(r"\b(?:simple|simpler|simplest|simplicity|in (?:this|that|the) order|in order of preference|"
                    r"prefer(?:red|ence)?|order)\b", re.I)


def read_preferences(unit: str, vocabulary: MetricVocabulary) -> list[ProposedRule]:
    """The priority metric ("pick the one with the best AUC") and the tie-breaker ("ties go to the smaller model")."""
    mentions = vocabulary.mentions(unit)
    tie = TIE.search(unit)
    rules = []
    if tie:
        rules += _tie_breaker(unit, tie, mentions, vocabulary)
        return rules
    pick = PICK.search(unit)
    if not pick or any(numbers(unit[c.end():c.end() + 12]) for c in COMPARISON.finditer(unit)):
        return rules  # no preference, or a threshold sentence
    logged = [m for m in mentions if set(m.keys) <= vocabulary.logged]
    logged = [m for m in logged if not m.partial] or logged  # "among the voices ..., the highest mean opinion score"
    # "the best MRR", "the highest validation AUC", "MAP@12, highest first": the superlative names the metric
    ranked = {}
    for word in _SUPERLATIVE.finditer(unit):
        for mention in logged:
            between = unit[word.end():mention.start] if mention.start >= word.end() else unit[mention.end:word.start()]
            if re.fullmatch(r"[\s,]*(?:(?:the|a|an|offline|online|validation|holdout|test|overall|mean|average)\s+)*[\s,]*", between):
                ranked.setdefault(disambiguated_keys(mention.keys, unit), word.group(0))
    named = set(ranked) or {disambiguated_keys(m.keys, unit) for m in logged if m.end > pick.start() - 40}
    # "the lowest word error rate on the noisy set": the narrower mention is the one meant
    named = {keys for keys in named if not any(set(other) < set(keys) for other in named)}
    if len(named) != 1 or len(next(iter(named))) != 1:
        return rules  # several metrics in one preference sentence: not a priority statement
    keys = next(iter(named))
    spec = vocabulary.spec(keys[0])
    # "choose the one that rules out the largest share of patients (the rule-out rate)": a pick, a superlative, one metric
    if not (ranked or _SUPERLATIVE.search(COMPARISON.sub(" ", unit)) or _RANKING_WORD.search(unit)):  # "at least" ranks nothing
        return rules
    if not ranked and all(m.partial for m in logged if disambiguated_keys(m.keys, unit) == keys):
        return rules  # "Priority: Major ... Labels: vector-index": a word of a key is not a ranking
    direction = _direction(ranked.get(keys, unit), spec) if not _DIRECTION_NOTE.search(unit) else _direction(unit, spec)
    rules.append(ProposedRule(PRIORITY, unit, keys, higher_is_better=direction))
    return rules


# "Priority metric: AUC" ranks; a ticket's "**Priority:** Major" does not
_RANKING_WORD = re.compile(r"priority(?!\W{0,4}:\W{0,4}(?:major|minor|critical|high|medium|low|blocker|trivial|urgent|normal|p[0-4])\b)|"
                           r"primary|deciding|rank|sort|order|maximi|minimi", re.I)


def _tie_breaker(unit: str, tie, mentions, vocabulary: MetricVocabulary) -> list[ProposedRule]:
    """What breaks a tie is written after it ("If two have the same WAPE, prefer the lower MASE", "ties go to the
    smaller model", "take the faster one"): a metric named there, else the model's size, speed or cost."""
    comma = unit.find(",", tie.end())
    conditional = re.search(r"\b(?:if|when|where|should|whenever)\b", unit[:tie.start()], re.I)
    start = comma + 1 if comma >= 0 and conditional else tie.end()
    after = unit[start:]
    if MARGIN.search(after):
        return []
    named = [m for m in mentions if m.start >= start and set(m.keys) <= vocabulary.logged]
    keys, direction = (), None
    if len({m.keys for m in named}) == 1:
        keys = named[0].keys
        direction = _direction(unit[start:named[0].end + 25], vocabulary.spec(keys[0]))
    elif SMALLER_MODEL.search(after):
        keys, direction = tuple(vocabulary.keys_of_kind("model_size")) or tuple(vocabulary.keys_of_kind("memory")), False
    elif FASTER_MODEL.search(after):
        times = vocabulary.keys_of_kind("latency") or vocabulary.keys_of_kind("inference_time")
        if times:
            keys, direction = tuple(sorted(times, key=lambda k: -(vocabulary.spec(k).percentile or 0))[:1]), False
        else:
            keys, direction = tuple(vocabulary.keys_of_kind("throughput")), True
    elif CHEAPER_MODEL.search(after):
        keys, direction = tuple(vocabulary.keys_of_kind("cost")), False
    if len(keys) != 1:
        return []
    return [ProposedRule(TIE_BREAKER, unit, keys, higher_is_better=direction)]


def _direction(text: str, spec) -> bool | None:
    if note := _DIRECTION_NOTE.search(text):
        return note.group(1).lower() in ("higher", "larger")
    if _BEST.search(text) and not (_UP.search(text) or _DOWN.search(text)):
        return spec.higher_is_better
    if _UP.search(text) and not _DOWN.search(text):
        return True
    if _DOWN.search(text) and not _UP.search(text):
        return False
    return spec.higher_is_better


def read_margins(unit: str, vocabulary: MetricVocabulary) -> list[ProposedRule]:
    """"within 0.005 of the best" (absolute) or "within 1% (relative)": the metrics after the number are its scope."""
    if not MARGIN_CONTEXT.search(unit):
        return []
    mentions = vocabulary.mentions(unit)
    written = [n for n in numbers(unit) if n.unit in ("", "%")]
    rules = []
    for index, number in enumerate(written):
        lead = unit[max(0, number.start - 40):number.start]
        tail = unit[number.end:number.end + 30]
        if not (MARGIN.search(lead) or re.match(r"\s*\**\s*(?:absolute|relative)", tail, re.I)):
            continue
        relative = number.unit == "%" or bool(re.match(r"\s*\**\s*\(?relative", tail, re.I))
        value = number.value / 100 if number.unit == "%" else number.value
        upto = written[index + 1].start if index + 1 < len(written) else len(unit)
        scope = [m for m in mentions if number.end <= m.start < upto] or [m for m in mentions if m.end <= number.start]
        keys = tuple(dict.fromkeys(key for m in scope for key in m.keys))
        rules.append(ProposedRule(NEAR_BEST, unit, keys, threshold=value, written=number.text, relative=relative))
    return rules


def read_family_order(unit: str, families) -> list[ProposedRule]:
    """Two or more registry families named in a sentence about simplicity or preference, simplest first."""
    if not families or not SIMPLE.search(unit):
        return []
    text = re.sub(r"[/_\-]", " ", unit.lower())
    positions = {}
    for family in families:
        words = re.sub(r"[/_\-]", " ", family.lower()).split()
        if not words:
            continue
        match = re.search(r"(?<![\w])" + r"\s+".join(map(re.escape, words)) + r"(?![\w])", text)
        if not match and len(words[0]) >= 3:
            match = re.search(rf"(?<![\w]){re.escape(words[0])}(?![\w])", text)
        if match:
            positions[family] = match.start()
    if len(positions) < 2:
        return []
    return [ProposedRule(FAMILY_ORDER, unit, families=tuple(sorted(positions, key=positions.get)))]
