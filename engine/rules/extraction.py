"""Acceptance criteria and the selection policy, read from the plain sentences, lists and tables teams write.

Documents are cut into units by engine.rules.statements (a sentence, a list item, a table row read with its header)
and each unit is read against the registry's metric vocabulary (`MetricVocabulary`): comparisons in words or
symbols ("no lower than 0.85", "must not exceed 1.2 GB", "between 0 and 12%", "a latency budget of 40 ms",
">= 0.95", "cannot be slower than 250 ms", "we will not ship anything whose PSI exceeds 0.25"), hard or soft from
the unit's own words ("must", "is not deployed unless" / "should", "ideally", "with a written exception"),
preference sentences ("of the models that qualify, pick the one with the best AUC"), tie-breaks ("ties go to the
smaller model"), near-best margins ("within 0.005 of the best") and a family order ("prefer, in this order,
linear, gradient boosting, ..."). Thresholds in other units are converted (engine.rules.quantities: "0.2 s" against a
metric in ms, "fourteen a week" against one per day). Sentences that describe rather than require ("the 2024 model had an AUC of 0.91", "forests can easily
exceed the 5 MB budget", "if latency is above 40 ms the page times out") propose nothing.

Whatever proposes a rule, `confirm` checks that its metric and its number are really written in the unit it
came from before the rule is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from engine.registry.metric_catalog import unit_dimension
from engine.registry.metric_keys import ABBREVIATIONS
from engine.registry.metric_vocabulary import MetricVocabulary
from engine.rules.quantities import FRACTION_WORDS, NUMBER, WORD_NUMBER, WrittenNumber, convert, numbers

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


# ---------------------------------------------------------------------------------------------------- words

# (pattern, comparison). Longest first; "{N}" is where the number stands. Direction words ("faster than") read
# the metric's own direction: they are resolved in _comparison().
_COMPARISONS = [
    (r"at the most|at the very most|must not exceed|may not exceed|must never exceed|should not exceed|shall not exceed|cannot exceed|can't exceed|"
     r"does not exceed|do not exceed|not to exceed|never exceeds?|no more than|not more than|at most|no higher than|"
     r"not higher than|no greater than|not greater than|no larger than|no bigger than|no slower than|not above|"
     r"not over|up to|or less|or lower|or below|or fewer|maximum of|a maximum of|max\.? of|capped at|cap of|"
     r"ceiling of|limit of|budget of|budget is|limit is|maximum is|fits? (?:in|into|within)|within|at (?:the )?maximum|≤|<=|=<", "<="),
    (r"at the least|at the very least|no less than|not less than|at least|no lower than|not lower than|no fewer than|no smaller than|not below|"
     r"never (?:fall|drop|dip|go)s? below|must not (?:fall|drop|dip|go) below|should not (?:fall|drop|dip|go) below|"
     r"not (?:fall|drop|dip|go) below|or more|or higher|or above|minimum of|a minimum of|min\.? of|at (?:a |the )?minimum|"
     r"floor of|minimum is|≥|>=|=>", ">="),
    (r"less than|lower than|below|under|beneath|fewer than|smaller than|shorter than|faster than|cheaper than|<", "<"),
    (r"more than|greater than|higher than|above|over(?!\s+the\b)|exceeds?|exceeding|in excess of|larger than|bigger than|"
     r"longer than|slower than|go(?:es)? beyond|beyond|>", ">"),
    (r"fall(?:s)? short of|falls? below", "<"),
    (r"(?:required |needs? |has |have )?to reach|reach(?:es)?|achieves?", ">="),
    (r"or better", "better_eq"),
    (r"or worse", "worse_eq"),
    (r"better than", "better"),
    (r"worse than", "worse"),
    (r"target of|target is|targets? (?:is |of )?|aim(?:s|ing)? for", "target"),
]
_COMPARISON = re.compile(r"(?:(?<![A-Za-z])|(?=[<>≤≥=]))(?:" + "|".join(f"(?P<c{i}>{pattern})" for i, (pattern, _) in enumerate(_COMPARISONS)) + r")(?![a-z])", re.I)
_CLAUSES = re.compile(r";|,\s*(?:and|but|while)\b,?|\band,|\bbut\b")
_CLAUSE_BREAK = re.compile(r";|,\s*(?:but|and|while|whereas)\b|\bbut\b", re.I)
_PLUS_MINUS = re.compile(r"\bwithin\s+(?:±|\+/-|\+-|plus or minus)\s*(?P<n>\d[\d,.]*\s*(?:%|percent|[a-zµ]+)?)", re.I)
_TRAILING = {"or less", "or lower", "or below", "or fewer", "or more", "or higher", "or above", "or better", "or worse"}
_FILLER = r"(?:\s*(?:the|a|an|of|value of|mark of|level of|threshold of|roughly|about|around|approximately|[a-z]+['’]s|[:=~|]))*\s*"
_BETWEEN = re.compile(r"(?<!relaxed )(?<!raised )(?<!lowered )(?<!tightened )(?<!changed )(?<!drops )(?<!dropped )(?<!moved )"
                      r"(?<!increased )(?<!reduced )(?<!goes )(?<!went )\b(?:between|from|within|in the range(?: of)?|range of|inside)\s+(?P<a>[-+]?\d[\d,.]*)\s*(?P<ua>[%\w]*)(?:\s+(?:and|to)\s+|\s*[-–]\s*)(?P<b>[-+]?\d[\d,.]*\s*(?:%|[a-zµ]+)?)", re.I)

_SOFT = re.compile(
    r"\b(?:should|shouldn't|ideally|preferably|preferred|prefer(?:ably)?|would like|nice to have|target|aim(?:s|ing)? (?:for|at|to)|"
    r"aspire|desirable|desired|recommended|where possible|if possible|wherever possible|soft|exception|justification|tolerated|"
    r"goal|optional|strive|nice to|would be (?:nice|good|great)|we'd like|would (?:also |still )?like|not a hard stop|would rather|"
    r"rather not|preference|a guide|not a gate|can overrule|can be overruled|if (?:you|we) can|if feasible|"
    r"nice-to-have|not blocking|non-blocking|not (?:a |the )?gates?|not part of the bar|"
    r"can (?:still )?(?:go live|ship|be deployed|be released|launch) without|(?<=\[)tracked(?=\])|tracked only|"
    r"do not require|does not require|not required|not a requirement)\b", re.I)
_HARD = re.compile(
    r"\b(?:must|required|requires?|requirement|has to|have to|need(?:s)? to|needs?|needed|only (?:when|if)|unless|shall|"
    r"mandatory|hard|non-negotiable|at all times|cannot|can't|may not|never|not deployed|not acceptable|unacceptable|"
    r"no exceptions?|is a must|disqualif\w*|budget|limit|limited to|maximum|minimum|cap|capped|floor|ceiling|ruled out|blocking|"
    r"gates?|gated|all required|go-live|before go-live|keep|bar)\b", re.I)
_CONDITION = re.compile(r"(?:^\s*|[,;:(]\s*|\b(?:and|but)\s+)(?:if(?!\s+(?:you|we)\s+can\b|\s+possible\b|\s+feasible\b)|when|(?<=, )where|whenever|anything|any model that|because|since|although|"
                        r"though|e\.g\.|for example|for instance|such as)\b", re.I)
_ONLY_IF = re.compile(r"\bonly (?:if|when)\b|\bunless\b", re.I)
_DESCRIPTIVE = re.compile(r"\b(?:was|were|had|did|got|scored|reached|achieved|(?<!the )(?<!our )(?<!its )measured|(?<!the )logged|(?<!if you )(?<!if we )can(?!['’]t|not)|could(?!n['’]t| not)|might|may(?! not)|"
                          r"often|typically|usually|easily|tends? to|historically|last (?:year|spring|summer|autumn|winter)|"
                          r"until|used to|previously|formerly|former|earlier limit|old limit|previous limit|no longer|any ?more|in the past|superseded|dropped|"
                          r"in (?:19|20)\d\d|failed|passed|led|won|lost|broke|"
                          r"beat|missed|excluded|(?<!is )(?<!be )(?<!are )(?<!gets )promoted|replaced|retired|observed|showed|reported|request to|requested|"
                          r"proposal|proposed|raise (?:the|a|our) (?:limit|threshold|budget|bar)|raised|relax(?:ed|ing)?(?= the)|declined|quotes?|quoted|according to|comparable|exceeded|fell|dropped|came in|"
                          r"stayed|competitive|averaged|discussed|next year|next quarter|roadmap|aspiration|ambition|published|"
                          r"advertises|advertised|vendor claims|public checkpoints)\b", re.I)
# "is rejected if latency exceeds 40 ms" states the rule "latency <= 40 ms" by its negation.
_REJECT_IF = re.compile(
    r"\b(?:reject\w*|exclud\w*|disqualif\w*|ruled out|fails?|not (?:be )?(?:deployed|accepted|considered|promoted)|"
    r"never (?:be )?(?:deployed|accepted|promoted)|blocked)\s+(?:if|when|whenever|once)\b"
    r"|\b(?:not|never|won't|will not|cannot|can't|do not|don't|would rather not)\s+(?:ship|launch|deploy|release|accept|promote|"
    r"approve|go live with|put)\s+(?:anything|(?:an?|any|the)?\s*[\w-]+(?:\s+[\w-]+)?)\s+(?:whose|that|which|with|if|where|"
    r"when|unless)\b", re.I)

_PICK = re.compile(
    r"\b(?:pick|picks|choose|chooses|choosing|select|selects|selection|prefer|prefers|preferred|take|takes|deploy|deploys|"
    r"go with|goes to|ships?|adopts?|adopted|goes live|ranking|ranked|rank|(?:is|are|be|gets?) (?:promoted|released|deployed|chosen|selected)|"
    r"favou?r|favou?rs|wins?|winner|recommend|rank(?:ed|s)? (?:by|on)|sort(?:ed)? by|order(?:ed)? by|decided? (?:by|on)|"
    r"the one with|whichever has|maximi[sz]es?|minimi[sz]es?|optimi[sz]es? for|compare[ds]? on|priority|primary|deciding|"
    r"ranking metric|selection metric|main metric|key metric)\b", re.I)
_UP = re.compile(r"\b(?:highest|largest|greatest|maximum|max|higher|larger|greater|most|maximi[sz]es?|top|biggest)\b", re.I)
_DOWN = re.compile(r"\b(?:lowest|smallest|least|fewest|minimum|min|lower|smaller|minimi[sz]es?|fastest|faster|cheapest|"
                   r"cheaper|shortest|lightest|lighter)\b", re.I)
_SUPERLATIVE = re.compile(r"\b(?:best|highest|lowest|largest|smallest|top|greatest|maximum|minimum|strongest|fewest|least)\b", re.I)
_BEST = re.compile(r"\b(?:best|better|strongest|optimal)\b", re.I)
_DIRECTION_NOTE = re.compile(r"\((?:[^)]*?)\b(higher|lower|larger|smaller)\b[^)]*\bbetter\b[^)]*\)", re.I)
_TIE = re.compile(r"\b(?:ties?|tied|tie-?break\w*|equally good|equivalent|a draw|dead heat|same score|cannot be separated|"
                  r"too close to call|otherwise equal|identical|(?:exactly )?the same|equal|exactly level|level (?:on|with)|on a par|neck and neck)\b", re.I)
_SMALLER_MODEL = re.compile(r"\b(?:smaller|smallest|lighter|lightest|leaner)\s+(?:model|one|artefact|artifact|candidate|checkpoint)s?\b", re.I)
_FASTER_MODEL = re.compile(r"\b(?:faster|fastest|quicker|quickest)\s+(?:model|one|candidate)s?\b", re.I)
_CHEAPER_MODEL = re.compile(r"\b(?:cheaper|cheapest)\s+(?:model|one|candidate)s?\b", re.I)
_MARGIN = re.compile(r"\bwithin\s+(?:an?\s+)?(?:(?:absolute|relative)\s+)?(?:margin\s+of\s+)?", re.I)
_MARGIN_CONTEXT = re.compile(r"\b(?:near-?best|equivalent|margin|as good as|of the best|treated as equal|ties?|tied|noise|"
                             r"indistinguishable)\b", re.I)
_SIMPLE = re.compile(r"\b(?:simple|simpler|simplest|simplicity|in (?:this|that|the) order|in order of preference|"
                     r"prefer(?:red|ence)?|order)\b", re.I)


# ---------------------------------------------------------------------------------------------------- reading

def read_rules(unit: str, vocabulary: MetricVocabulary, families=(), observed: dict[str, list[float]] | None = None,
               heading: str = "") -> list[ProposedRule]:
    """Every rule one unit states, read against the registry's vocabulary and family tags, each confirmed; the heading
    it stands under ("Nice to have", "Required") says hard or soft where the unit itself does not."""
    if not (re.search(r"\d", unit) or WORD_NUMBER.search(unit) or FRACTION_WORDS.search(unit) or _PICK.search(unit)
            or _TIE.search(unit) or _SIMPLE.search(unit)):
        return []  # nothing to compare, prefer or order: most sentences of a document
    observed = observed or {}
    rules = _criteria(unit, vocabulary, observed, heading)
    if not _DESCRIPTIVE.search(unit):  # "gradient boosting and linear were within the margin" is history, not policy
        rules += _margins(unit, vocabulary) + _family_order(unit, families)
    for clause in _CLAUSES.split(unit):  # "Gini is reported too, and the winner is whichever has the highest Gini"
        if clause.strip() and not _DESCRIPTIVE.search(clause):
            rules += [replace(rule, sentence=unit) for rule in _preferences(clause, vocabulary)]
    return [rule for rule in rules if confirm(rule, vocabulary)]


def _criteria(unit: str, vocabulary: MetricVocabulary, observed, heading: str = "") -> list[ProposedRule]:
    mentions = vocabulary.mentions(unit)
    rules, previous_keys, previous_end = [], (), 0
    for comparison, start, number in _comparisons(unit):
        window = max(previous_end, start - 60)
        tie = any(not any(m.start <= t.start() < m.end for m in mentions) and _names_a_tie(t, mentions)
                  for t in _TIE.finditer(unit, window, start))
        if tie or _MARGIN.match(unit[start:]) and _MARGIN_CONTEXT.search(unit):
            continue  # "within 0.005 of the best" is a margin, "ties go to ..." a tie-break
        if any(m.start <= start < m.end and re.search(r"\d", m.words) for m in mentions):
            continue  # "placed within 50 m" names within_50m_rate: part of the metric, not a threshold
        if _QUALIFIER.search(unit, 0, number.start) or _inside_an_aside(unit, start) and _outside_asides(unit):
            continue  # "of the units with 30 or more cycles", "(completions that reproduce 150 or more characters)"
        clause_start = max([previous_end] + [m.end() for m in _CLAUSE_BREAK.finditer(unit, 0, start)])
        segment = unit[clause_start:number.end]
        before = _fitting(_prefer_logged([m for m in mentions if previous_end <= m.start and m.end <= start], vocabulary),
                          number, vocabulary)
        after = _fitting(_prefer_logged([m for m in mentions if number.start < m.start <= number.end + 40
                                         and not NUMBER.search(unit[number.end:max(number.end, m.start)])], vocabulary),
                         number, vocabulary)
        if missed := _recall_from_misses(unit, start, number, vocabulary):
            comparison, number, keys = _MIRRORED.get(comparison, comparison), *missed
        else:
            keys = _bounded_keys(unit, number, before, after, vocabulary) or previous_keys
        implied = bool(missed) or not keys and bool(keys := _named_by_its_unit(segment, number.unit, vocabulary))
        previous_end, previous_keys = number.end, keys
        if _RELATIVE_TO.search(unit):
            continue  # "does not beat seasonal naive by more than 15%": a difference, not a threshold
        reach = 120 if _A_MODEL_THAT.search(segment) else 60  # "a model that misses ... in the backtest is not acceptable"
        if keys and _DISQUALIFIES.match(unit[number.end:number.end + reach]) and not _MODAL.search(segment):
            # "exceeding 8 GB disqualifies", "a model whose retraining takes longer than 90 minutes is not released"
            comparison, hard = _NEGATION[comparison], True
        elif keys and _REJECT_IF.search(segment):
            comparison, hard = _NEGATION[comparison], not _SOFT.search(segment)
        elif _requires(segment, unit, heading) and not _HEDGED_AFTER.match(unit[number.end:]):
            hard = _hardness(segment, unit, heading) and comparison != "target"
        else:
            continue
        read = []
        for key in keys:
            spec = vocabulary.spec(key)
            threshold = convert(number.value, number.unit, spec, observed.get(key, []), number.per)
            op = _resolved(comparison, spec.higher_is_better)
            if threshold is not None and op is not None:
                read.append(ProposedRule(CRITERION, unit, (key,), op, threshold, number.text, hard, implied=implied))
        if not read and hard and _states_a_requirement(segment, unit, heading):
            read.append(ProposedRule(UNREAD, unit, keys, comparison, number.value, number.text))
        rules += read
    return rules


def _bounded_keys(unit: str, number: WrittenNumber, before, after, vocabulary: MetricVocabulary) -> tuple[str, ...]:
    """The metric a number bounds: the one it is "of" ("under forty kilobytes of RAM"), the only one after it its unit
    fits ("more than one false alarm a week"), else the subject named before it."""
    owned = [m for m in after if _OF_THE.fullmatch(unit[number.end:m.start])]
    if after and _fits(after[0], number, vocabulary) and not any(_fits(m, number, vocabulary) for m in before):
        owned = owned or after[:1]
    return _disambiguated(owned[0].keys, unit) if owned else _subject(before, after, unit, vocabulary)


def _recall_from_misses(unit: str, start: int, number: WrittenNumber, vocabulary: MetricVocabulary):
    """"A model that misses more than one in five of the failures is not acceptable": a bound on the share missed is
    one on the one recall the registry logs (1 - 0.2); (the share as a recall, the recall key) or None."""
    recalls = vocabulary.keys_of_kind("recall")
    if not _MISSES.search(unit, 0, start) or number.unit not in ("", "%") or len(recalls) != 1:
        return None
    share = number.value / 100 if number.unit == "%" else number.value
    return replace(number, value=1 - share, unit=""), tuple(recalls)


def _states_a_requirement(segment: str, unit: str, heading: str) -> bool:
    """Hard words in the clause, the unit or the heading above it ("Go-live gates (ALL blocking)"), a ≤/≥ sign or a
    list item: what a reader takes for a requirement even when the product cannot tell which metric it bounds."""
    return bool(_HARD.search(segment) or _HARD.search(unit) or _HARD.search(heading) or re.search(r"[<>≤≥]", segment)
                or unit.startswith("- ") and not _DESCRIPTIVE.search(unit) and not _CONTEXT_HEADING.search(heading)
                and not _A_STEP.match(unit))


# "- **Warm-up.** Make at least 10 warm-up calls": a step of a procedure, what a person does, not what a model must meet
_A_STEP = re.compile(r"^-\s+(?:\*\*[^*]{1,40}\*\*\s*|[A-Z][\w -]{0,30}[.:]\s+)?(?:make|run|use|take|copy|time|discard|repeat|"
                     r"record|measure|call|send|collect|load|start|wait|write|compute|average|report|check|trigger|"
                     r"open|click|upload|download|restart|set|add|remove)\b", re.I)
# "## For context", "Notes", "Background": a list under such a heading informs, it does not require
_CONTEXT_HEADING = re.compile(r"\b(?:context|background|notes?|history|for reference|for information|informative|"
                              r"not rules|not requirements|faq|glossary|definitions|rules? of thumb|tips)\b", re.I)
# "An RMSE below 15 cycles usually means the model is good": what a number tends to mean, not a requirement
_HEDGED_AFTER = re.compile(r"^[^.;]{0,30}?\b(?:usually|typically|often|generally|normally|tends? to|means?|indicates?|suggests?)\b", re.I)


_THE_MODEL = re.compile(r"\b(?:the |a |each |any )?(?:model|artefact|artifact|checkpoint|weights|binary|bundle)\b", re.I)
# "Inference on the CPU pool must stay under eighty milliseconds per image": a time per prediction
_PER_PREDICTION = re.compile(r"\b(?:inference|predictions?|per (?:image|request|call|prediction|transaction|query|item|record|"
                             r"sample|utterance|document|page)|responds?|response|answers?|scor(?:e|es|ing) (?:a|each|one))\b", re.I)


def _named_by_its_unit(segment: str, unit: str, vocabulary: MetricVocabulary) -> tuple[str, ...]:
    """A number whose unit only one logged metric can have bounds that metric when the words point at it: "the model
    has to fit in a quarter of a megabyte" (its size), "inference must stay under eighty milliseconds" (its latency),
    "the 90th percentile of the distance ... under 250 m" (the one error in metres the sentence's p90 picks)."""
    dimension = unit_dimension(unit)
    if dimension == "size" and _THE_MODEL.search(segment):
        keys = vocabulary.keys_of_kind("model_size") or [k for k in vocabulary.keys if vocabulary.spec(k).dimension == "size"]
    elif dimension == "time" and _PER_PREDICTION.search(segment):
        keys = vocabulary.keys_of_kind("latency") or vocabulary.keys_of_kind("inference_time")
    elif dimension in ("length", "energy", "power", "mass"):  # units no score, size or time can have
        keys = [k for k in vocabulary.keys if vocabulary.spec(k).dimension == dimension]
    else:
        return ()
    keys = _disambiguated(tuple(keys), segment)
    return keys if len(keys) == 1 else ()


def _subject(before, after, unit: str, vocabulary: MetricVocabulary) -> tuple[str, ...]:
    """The metric a comparison bounds: the last one named before it (not one inside an aside in parentheses), else
    the first named right after its number ("at least 2,000 requests per second"); a logged metric wins over a
    catalog word nobody logs."""
    outside = [m for m in before if unit[:m.start].count("(") <= unit[:m.start].count(")")] or before
    if " | " in unit and outside:  # a table row names its metric in its first cell
        outside = outside[:1]
    logged_before = [m for m in outside if set(m.keys) <= vocabulary.logged]
    logged_after = [m for m in after if set(m.keys) <= vocabulary.logged]
    if logged_before:
        chosen = logged_before[0 if " | " in unit else -1]
        head = next((m for m in reversed(logged_before) if not m.partial and m.end <= chosen.start), None)
        if chosen.partial and head and len(_disambiguated(head.keys, unit)) == 1 and _MODIFIER.fullmatch(unit[head.end:chosen.start]):
            chosen = head  # "macro F1 over the 200 most frequent tags": the tags qualify the F1
        return _disambiguated(chosen.keys, unit)
    if logged_after:
        return _disambiguated(logged_after[0].keys, unit)
    return outside[-1].keys if outside else after[0].keys if after else ()


_QUALIFIER = re.compile(r"\b(?:with|having|for)\s+(?:at least\s+|more than\s+|over\s+|up to\s+)?$", re.I)


def _inside_an_aside(unit: str, position: int) -> bool:
    return unit[:position].count("(") > unit[:position].count(")")


def _outside_asides(unit: str) -> bool:
    """Whether the unit compares something outside its parentheses too."""
    return any(not _inside_an_aside(unit, match.start()) for match in _COMPARISON.finditer(unit))


def _names_a_tie(word, mentions) -> bool:
    """"the same WAPE" ties two models; "at the same operating point" does not."""
    return not word.group(0).lower().endswith("the same") or any(0 <= m.start - word.end() <= 2 for m in mentions)


_OF_THE = re.compile(r"\s+(?:of|in)\s+(?:the\s+|its\s+)?", re.I)
_MODIFIER = re.compile(r"\s+(?:over|of|on|for|across|in|at|per|among|from)\b[^,;:()]*", re.I)


def _disambiguated(keys: tuple[str, ...], unit: str) -> tuple[str, ...]:
    """A generic word ("precision") that fits precision_at_10pct and precision_at_20pct names the one whose own part
    the sentence writes ("in that top decile", "at 10%"); when the sentence writes no key's own part, the key that
    is the others' plain form (recall_at_50 beside recall_at_50_de); else all of them."""
    if len(keys) < 2:
        return keys
    text = unit.lower()
    joined = text.replace("-", "")  # "hold-out" writes holdout

    def where(form: str) -> int:
        found = [i for i in (text.find(form), joined.find(form)) if i >= 0]
        return min(found) if found else -1

    seen = {key: sorted(i for i in map(where, _own_forms(key, keys)) if i >= 0) for key in keys}
    written = [key for key in keys if seen[key]]
    if len(written) > 1:  # "its UAR on the worst-scoring accent group": worst and accent beat accent alone
        most = max(len(seen[key]) for key in written)
        written = [key for key in written if len(seen[key]) == most]
        if len(written) > 1:  # "the gap between its best and its worst accent group": the part written first
            first = min(seen[key][0] for key in written)
            written = [key for key in written if seen[key][0] == first]
    if len(written) == 1:
        return tuple(written)
    parts = {key: set(re.split(r"[_\-@]+", key.lower())) for key in keys}
    plain = [key for key in keys if all(parts[key] < parts[other] for other in keys if other != key)]
    return tuple(plain) if not written and len(plain) == 1 else keys


def _own_forms(key: str, keys: tuple[str, ...]) -> list[str]:
    shared = set.intersection(*(set(re.split(r"[_\-@]+", k.lower())) for k in keys))
    forms = []
    for token in set(re.split(r"[_\-@]+", key.lower())) - shared:
        if share := re.fullmatch(r"(\d+)(?:pct|percent|p)", token):
            n = share.group(1)
            forms += [f"{n}%", f"{n} %", f"{n} percent"] + {"10": ["decile"], "20": ["quintile"], "25": ["quartile"]}.get(n, [])
        elif percentile := re.fullmatch(r"p(\d{2,3})", token):
            forms += [token, f"{percentile.group(1)}th"]
        elif top := re.fullmatch(r"top(\d+)", token):
            forms += [f"top {top.group(1)}", token]
        elif token.isalpha() and len(token) >= 4:
            forms.append(token)  # uplift_calibration_slope is the one a sentence about its "slope" names
        elif token in ABBREVIATIONS:
            forms.append(ABBREVIATIONS[token])  # recall_at_50_de is the one "on the German subset" names
    return forms


def _fitting(mentions, number: WrittenNumber, vocabulary: MetricVocabulary) -> list:
    """"MASE, scaled by that seasonal naive forecast, must be below 0.85": a bare number bounds a score, not the
    forecast job's seconds, and "40 minutes" a time; the mentions whose unit can take the number win."""
    return [m for m in mentions if _fits(m, number, vocabulary)] or mentions


def _fits(mention, number: WrittenNumber, vocabulary: MetricVocabulary) -> bool:
    dimension = unit_dimension(number.unit)
    owns = [vocabulary.spec(key).dimension for key in mention.keys]
    return all(own == dimension or (dimension in ("", "percent") and own in ("", "percent")) for own in owns)


def _prefer_logged(mentions, vocabulary: MetricVocabulary) -> list:
    """A metric the registry logs wins over a catalog word nobody logs ("Accuracy: the median absolute percentage error")."""
    logged = [m for m in mentions if set(m.keys) <= vocabulary.logged]
    return logged or mentions


def _resolved(comparison: str, higher_is_better: bool | None) -> str | None:
    """"better than" and "a target of" mean a direction only the metric knows."""
    if comparison not in ("better", "worse", "better_eq", "worse_eq", "target"):
        return comparison
    if higher_is_better is None:
        return None
    up = {"better": ">", "worse": "<", "better_eq": ">=", "worse_eq": "<=", "target": ">="}[comparison]
    return up if higher_is_better else {">": "<", "<": ">", ">=": "<=", "<=": ">="}[up]


def _comparisons(unit: str):
    """(comparison, where it starts, its number) for each comparison the unit writes out with a number."""
    taken = set()
    for match in _BETWEEN.finditer(unit):
        found = numbers(unit[match.start():match.end()])
        if len(found) >= 2 and found[0].value <= found[1].value:
            low, high = (WrittenNumber(n.start + match.start(), n.end + match.start(), n.value, found[1].unit or n.unit, n.text)
                         for n in found[:2])
            taken.update(range(match.start(), match.end()))
            yield ">=", match.start(), low
            yield "<=", match.start(), high
    for match in _PLUS_MINUS.finditer(unit):
        [number] = numbers(match.group("n"))
        taken.update(range(match.start(), match.end()))
        low = WrittenNumber(match.start("n"), match.end("n"), -number.value, number.unit, match.group("n"))
        high = WrittenNumber(match.start("n"), match.end("n"), number.value, number.unit, match.group("n"))
        yield ">=", match.start(), low
        yield "<=", match.start(), high
    if (none := _NONE_ALLOWED.match(unit)) and not _COMPARISON.search(unit):  # "- Zero unsafe statements": at most 0
        yield "<=", none.start("n"), WrittenNumber(none.start("n"), none.end("n"), 0.0, "", none.group("n"))
    for match in _COMPARISON.finditer(unit):
        if match.start() in taken:
            continue
        words = match.group(0).lower()
        comparison = next(_COMPARISONS[i][1] for i in range(len(_COMPARISONS)) if match.group(f"c{i}"))
        if words in _TRAILING:  # "0.9 or higher": the number stands before
            found = [n for n in numbers(unit[:match.start()])
                     if re.fullmatch(r"(?:\s+[A-Za-z@.\-]+){0,4}\s*", unit[n.end:match.start()])]
        else:
            following = re.match(_FILLER, unit[match.end():])
            found = [n for n in numbers(unit) if match.end() <= n.start <= match.end() + following.end()
                     and not _looks_like_a_year(n, unit[match.end():n.start]) and not _PERIOD.match(unit, n.end)]
            if not found and words in _AFTER_THE_NUMBER:
                found = [n for n in numbers(unit[:match.start()]) if _PER_WHAT.fullmatch(unit[n.end:match.start()])]  # "5% at most"
            comparison = _negated(unit[:match.start()], comparison)
        if found:
            yield comparison, match.start(), found[-1]


# between a number and its "at most": nothing, or what it is counted per ("four seconds per 1024 by 1024 image")
_PER_WHAT = re.compile(r"[\s,]*(?:(?:per|a|an|each|for each)\s+[^,;.()]{1,40}?[\s,]*)?", re.I)
_NONE_ALLOWED = re.compile(r"^(?:-\s+)?(?P<n>zero|no)\s+(?=[a-z])(?!more\b|less\b|fewer\b|later\b|longer\b|model\b|one\b)", re.I)
_AFTER_THE_NUMBER = {"at most", "at least", "at the most", "at the least", "maximum", "minimum", "max", "min", "at minimum",
                     "at a minimum", "at maximum", "at the minimum", "at the maximum"}
_MISSES = re.compile(r"\bmiss(?:es|ed)?\s+$", re.I)
_MIRRORED = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
_NEGATION = {"<": ">=", ">": "<=", "<=": ">", ">=": "<", "better": "worse_eq", "worse": "better_eq", "better_eq": "worse",
             "worse_eq": "better", "target": "target"}


# "an infarction within 30 days", "over the last 26 weeks": a bare number of calendar periods is a window, not a threshold
_PERIOD = re.compile(r"\s*(?:calendar\s+)?(?:days?|weeks?|months?|years?|quarters?)\b", re.I)


def _looks_like_a_year(number: WrittenNumber, filler: str) -> bool:
    """"above the 2019 level": a bare year after "the" is a date, not a threshold."""
    return (not number.unit and number.value.is_integer() and 1900 <= number.value <= 2100
            and re.search(r"\bthe\b", filler, re.I) is not None)


_NEGATED_BEFORE = re.compile(
    r"(?:\b(?:not|never|no|cannot|can't|can not|may not|must not|mustn't|should not|shouldn't|will not|won't|"
    r"is not allowed to|are not allowed to)|\bno\s+\w+(?:\s+\w+)?\s+(?:may|can|should|must|will|is allowed to))\s+"
    r"(?:ever\s+)?(?:be\s+|have\s+(?:been\s+)?[a-z]+(?:ed|en|t)\s+|(?!only\b|just\b|even\b)[a-z]+\s+)?$",
    # "can't have emitted more than 50 kg", "must not raise more than one false alarm", "may not use more than 2 GB"
    re.I)


def _negated(before: str, comparison: str) -> str:
    """"not below 0.9" is ">= 0.9"; phrases with their own negation ("no more than") are listed whole."""
    if _NEGATED_BEFORE.search(before):
        return _NEGATION[comparison]
    return comparison


_A_MODEL_THAT = re.compile(r"\b(?:a|any)\s+(?:model|candidate|forecast|scorer|detector|classifier|system)\s+(?:that|whose|which)\b", re.I)
_DISQUALIFIES = re.compile(r"^[^.;]{0,100}?\b(?:disqualif\w*|rules? (?:it|the model|a model|a candidate) out|is a no-go|"
                           r"is not acceptable|is unacceptable|means (?:rejection|no-go)|is rejected|gets? (?:it )?rejected|"
                           r"(?:is|are|will be) (?:not|never) (?:released|deployed|shipped|promoted|approved|accepted)|"
                           r"(?:does not|doesn't|do not|will not|won't) go live)\b", re.I)
_MODAL = re.compile(r"\b(?:must|shall|has to|have to|needs? to|is required to|are required to)\b", re.I)
# "must improve on the champion by at least 2 points" bounds a difference, not the metric: not a threshold to check
_RELATIVE_TO = re.compile(r"\b(?:improve\w*|beat\w*|outperform\w*)\b[^.;]{0,40}?\bby\b|\b(?:than|over) the (?:current|champion|"
                          r"baseline|incumbent|production)\b[^.;]{0,20}?\bby\b", re.I)
_NONE_MAY = re.compile(r"\bno\s+\w+(?:\s+\w+)?\s+(?:may|can|should|must|will|is allowed to)\b", re.I)  # "no candidate may"
# "can absorb at most", "will tolerate no more than": a stated capacity is a limit, not a possibility
_CAPACITY = re.compile(r"\b(?:can|will|would|could)\s+(?:only\s+)?(?:\w+\s+){1,2}?(?=at most|no more than|up to|at least|at the most)", re.I)


def _requires(segment: str, unit: str, heading: str = "") -> bool:
    """A comparison is a rule when its clause requires or prefers it, not when it describes or conditions; a heading
    that asks or states a requirement ("How fast does it have to be?") makes the plain answer under it one."""
    if _ONLY_IF.search(segment) or _NONE_MAY.search(segment):
        return True
    if _CONDITION.search(segment) or _DESCRIPTIVE.search(_CAPACITY.sub("", segment)) or _RELATIVE_TO.search(unit):
        return False
    return bool(_HARD.search(segment) or _SOFT.search(segment) or _HARD.search(unit) or _SOFT.search(unit) or _CAPACITY.search(segment)
                or re.search(r"[<>≤≥]", segment) or " | " in unit or _HARD.search(heading)
                or unit.startswith("- ") and not _CONTEXT_HEADING.search(heading))


_MARKUP_KIND = re.compile(r"(?:^|[|—–-]\s*\**)(hard|soft)(?:\**\s*(?:[|—–-]|$))", re.I)


def _hardness(segment: str, unit: str, heading: str = "") -> bool:
    """The comparison's own clause first, then a hard/soft cell or dash field, then the whole unit's words, then the
    section's heading ("Nice to have")."""
    if _SOFT.search(segment):
        return False
    if _HARD.search(segment):
        return True
    if marked := _MARKUP_KIND.search(unit):
        return marked.group(1).lower() == "hard"
    if _SOFT.search(unit) or _HARD.search(unit):
        return not _SOFT.search(unit)
    return not _SOFT.search(heading)


def _preferences(unit: str, vocabulary: MetricVocabulary) -> list[ProposedRule]:
    """The priority metric ("pick the one with the best AUC") and the tie-breaker ("ties go to the smaller model")."""
    mentions = vocabulary.mentions(unit)
    tie = _TIE.search(unit)
    rules = []
    if tie:
        rules += _tie_breaker(unit, tie, mentions, vocabulary)
        return rules
    pick = _PICK.search(unit)
    if not pick or any(numbers(unit[c.end():c.end() + 12]) for c in _COMPARISON.finditer(unit)):
        return rules  # no preference, or a threshold sentence
    logged = [m for m in mentions if set(m.keys) <= vocabulary.logged]
    logged = [m for m in logged if not m.partial] or logged  # "among the voices ..., the highest mean opinion score"
    # "the best MRR", "the highest validation AUC", "MAP@12, highest first": the superlative names the metric
    ranked = {}
    for word in _SUPERLATIVE.finditer(unit):
        for mention in logged:
            between = unit[word.end():mention.start] if mention.start >= word.end() else unit[mention.end:word.start()]
            if re.fullmatch(r"[\s,]*(?:(?:the|a|an|offline|online|validation|holdout|test|overall|mean|average)\s+)*[\s,]*", between):
                ranked.setdefault(_disambiguated(mention.keys, unit), word.group(0))
    named = set(ranked) or {_disambiguated(m.keys, unit) for m in logged if m.end > pick.start() - 40}
    # "the lowest word error rate on the noisy set": the narrower mention is the one meant
    named = {keys for keys in named if not any(set(other) < set(keys) for other in named)}
    if len(named) != 1 or len(next(iter(named))) != 1:
        return rules  # several metrics in one preference sentence: not a priority statement
    keys = next(iter(named))
    spec = vocabulary.spec(keys[0])
    # "choose the one that rules out the largest share of patients (the rule-out rate)": a pick, a superlative, one metric
    if not (ranked or _SUPERLATIVE.search(_COMPARISON.sub(" ", unit)) or _RANKING_WORD.search(unit)):  # "at least" ranks nothing
        return rules
    if not ranked and all(m.partial for m in logged if _disambiguated(m.keys, unit) == keys):
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
    if _MARGIN.search(after):
        return []
    named = [m for m in mentions if m.start >= start and set(m.keys) <= vocabulary.logged]
    keys, direction = (), None
    if len({m.keys for m in named}) == 1:
        keys = named[0].keys
        direction = _direction(unit[start:named[0].end + 25], vocabulary.spec(keys[0]))
    elif _SMALLER_MODEL.search(after):
        keys, direction = tuple(vocabulary.keys_of_kind("model_size")) or tuple(vocabulary.keys_of_kind("memory")), False
    elif _FASTER_MODEL.search(after):
        times = vocabulary.keys_of_kind("latency") or vocabulary.keys_of_kind("inference_time")
        if times:
            keys, direction = tuple(sorted(times, key=lambda k: -(vocabulary.spec(k).percentile or 0))[:1]), False
        else:
            keys, direction = tuple(vocabulary.keys_of_kind("throughput")), True
    elif _CHEAPER_MODEL.search(after):
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


def _margins(unit: str, vocabulary: MetricVocabulary) -> list[ProposedRule]:
    """"within 0.005 of the best" (absolute) or "within 1% (relative)": the metrics after the number are its scope."""
    if not _MARGIN_CONTEXT.search(unit):
        return []
    mentions = vocabulary.mentions(unit)
    written = [n for n in numbers(unit) if n.unit in ("", "%")]
    rules = []
    for index, number in enumerate(written):
        lead = unit[max(0, number.start - 40):number.start]
        tail = unit[number.end:number.end + 30]
        if not (_MARGIN.search(lead) or re.match(r"\s*\**\s*(?:absolute|relative)", tail, re.I)):
            continue
        relative = number.unit == "%" or bool(re.match(r"\s*\**\s*\(?relative", tail, re.I))
        value = number.value / 100 if number.unit == "%" else number.value
        upto = written[index + 1].start if index + 1 < len(written) else len(unit)
        scope = [m for m in mentions if number.end <= m.start < upto] or [m for m in mentions if m.end <= number.start]
        keys = tuple(dict.fromkeys(key for m in scope for key in m.keys))
        rules.append(ProposedRule(NEAR_BEST, unit, keys, threshold=value, written=number.text, relative=relative))
    return rules


def _family_order(unit: str, families) -> list[ProposedRule]:
    """Two or more registry families named in a sentence about simplicity or preference, simplest first."""
    if not families or not _SIMPLE.search(unit):
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


def confirm(rule: ProposedRule, vocabulary: MetricVocabulary) -> bool:
    """The deterministic check every proposed rule passes before it is used: its metric and number are in its sentence."""
    named = {key for mention in vocabulary.mentions(rule.sentence) for key in mention.keys}
    if rule.implied:
        named |= {key for n in numbers(rule.sentence) for key in _named_by_its_unit(rule.sentence, n.unit, vocabulary)}
        named |= set(vocabulary.keys_of_kind("recall")) if re.search(r"\bmiss(?:es|ed)?\b", rule.sentence, re.I) else set()
    if rule.kind in (CRITERION, PRIORITY) and not set(rule.metrics) <= named:
        return False
    if rule.kind == TIE_BREAKER and not (set(rule.metrics) <= named or _SMALLER_MODEL.search(rule.sentence)
                                         or _FASTER_MODEL.search(rule.sentence) or _CHEAPER_MODEL.search(rule.sentence)):
        return False
    if rule.kind in (CRITERION, NEAR_BEST, UNREAD):
        number = re.sub(r"[\s,]", "", rule.written.lower())
        if not number or number not in re.sub(r"[\s,]", "", rule.sentence.lower()):
            return False
    if rule.kind == FAMILY_ORDER and len(rule.families) < 2:
        return False
    return True
