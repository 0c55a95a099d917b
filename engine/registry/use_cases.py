"""Which use case a question is about, from the registry's own words; and when that is not clear, asking.

A use case is named by the `use_case` tag of its candidates. A question that spells one name out (with spaces,
hyphens, British spelling or plural forms) is matched directly, and so is one that spells out the longest part
of a single longer name ("tumour screening" for emea-tumour-screening). A question naming two or more is
ambiguous: the chat asks which one was meant. Otherwise the question is compared with each use case's
description (its name, its task tag and its candidates' registry descriptions) in two cheap ways:

- by meaning: cosine similarity of the question's and the description's sentence embeddings;
- by words: the content words the question shares with the description, stemmed. Words any deployment
  question uses ("model", "deploy", "predict", "forecast", "recognition", "latency"...) do not count, nor do
  words that most of a larger registry's use cases share ("region", "platform").

The evidence for a use case is its similarity, plus `WORD_WEIGHT` per shared word (at most `MAX_WORDS`), plus
`NAME_WEIGHT` when the question spells its name out in another order ("la progression du diabète", "prices of
houses"; of a name of three words or more, all of them but one: "value houses" for house-price-valuation).
A question is routed by meaning only when the best use case's evidence reaches `ROUTE_EVIDENCE` and beats the
runner-up's by `MARGIN`. Below that, the use cases whose evidence reaches `PLAUSIBLE_EVIDENCE` (and is within
`AMBIGUITY_BAND` of the best) make the match ambiguous: the chat asks "did you mean ...?" and recommends nothing
(`clarifying_question`). When none is plausible, nothing is matched. Answering about the wrong use case is
worse than asking.

Why these numbers (all-MiniLM-L6-v2, on demo/routing.jsonl and the second registry of tests/test_use_cases.py):
similarity alone cannot tell look-alikes from paraphrases. "Find breast cancer on mammogram images" is 0.55 from
tumor-screening's description and "recognise handwritten words" 0.49 from digit-recognition's, while honest
paraphrases go down to 0.39 ("the pathology workstation plug-in's second reader") and 0.40 ("the embedded
scheduling device in the clinic"): the old floor of 0.30 routed 25 of the 30 demo look-alikes, and a floor
that routes none of them (0.57) loses half of the paraphrases. The words differ more: a look-alike shares at most two of the
description's content words (breast, image), a paraphrase most often three or more (clinic, embedded,
scheduling, device). At 0.10 per word the highest look-alike reaches 0.75 and the route threshold is 0.77:
0.67 of similarity with one shared word, 0.57 with two, 0.47 with three, 0.37 with four. Off-topic questions
stay under 0.31, below the 0.35 at which a use case is worth asking about.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

ROUTE_EVIDENCE = 0.77  # evidence needed to route by meaning...
MARGIN = 0.10  # ...with at least this much more than the runner-up's
PLAUSIBLE_EVIDENCE = 0.35  # below this a use case is not worth asking about
AMBIGUITY_BAND = 0.15  # an ambiguous match offers the plausible use cases within this much of the best one
WORD_WEIGHT = 0.10  # evidence per content word shared with the use case's description...
MAX_WORDS = 4  # ...counting at most this many
NAME_WEIGHT = 0.20  # evidence for a name spelled out in another order ("progression du diabète", "prices of houses")
MAX_ALTERNATIVES = 5  # use cases offered when asking (every named one when the question names several)

_SPELLING = {"tumour": "tumor", "tumours": "tumors", "centre": "center", "centres": "centers", "licence": "license",
             "colour": "color", "colours": "colors", "behaviour": "behavior", "programme": "program"}
_STOPWORDS = frozenset("""
a about above after again against all also am an and another any are as at be been before being below between
both but by can could did do does doing done down during each either else even ever every few for from further
get gets getting got had has many have having he her here hers him his how i if in into is it its itself just let lets
may me might mine more most much must my neither no nor not now of off on once one ones only onto or other ought
our ours out over own per please quite rather really same shall she should so some such than that the their theirs
them then there these they this those though through thus to too under until up upon us very via was we were what
whatever when where whether which while who whom whose why will with within without would yet you your yours
""".split())
_GENERIC = frozenset("""
model models modeling modelling deploy deploys deployed deploying deployment deployments recommend recommends
recommended recommendation candidate candidates registered register registry use uses used using usable run runs
running ship shipped choose chosen pick best better good fit fits suit suits suitable need needs needed want wants
wanted tell show give find compare comparison option options right work works case cases task tasks job system
systems tool tools solution solutions thing things question answer help
machine learning ml ai artificial intelligence algorithm algorithms
predict predicts predicted predicting prediction predictions predictor forecast forecasts forecasted forecasting
forecaster estimate estimates estimated estimating estimation classify classifies classified classifying classifier
classifiers classification detect detects detected detecting detection detector recognise recognises recognised
recognising recognize recognizes recognized recognizing recognition recognizer score scores scoring rank ranks
ranking ranker regression regressor binary multiclass multi label labels time series data dataset datasets input
inputs output outputs feature features
latency size budget mb ms p50 p95 p99 accuracy precision recall f1 auc roc rmse mae mape r2 loss metric metrics
threshold thresholds criterion criteria hard soft priority tie breaker margin champion challenger version versions
family families linear logistic random forest gradient boosting mlp neural network tree trees xgboost
production serve serving served train trained training retrain evaluate evaluation benchmark pass passes fail fails
rejected reject accepted approved
""".split())


@dataclass(frozen=True)
class UseCaseMatch:
    use_case: str | None
    similarity: float  # cosine similarity of the question and the best use case's description (1.0 when named)
    how: str  # "named", "meaning", "ambiguous" (ask which of `alternatives`) or "none"
    # "none": every use case there is, sorted; "ambiguous": the plausible ones, best first; else as for "none"
    alternatives: tuple[str, ...] = ()
    evidence: float = 0.0  # what the decision weighed: similarity plus the shared words' weight (1.0 when named)
    shared_words: tuple[str, ...] = ()  # the question's content words (stemmed) found in the best use case's description


def clarifying_question(match: UseCaseMatch) -> str:
    """What the chat says instead of a recommendation when a question matched no use case (`use_case` None):
    for an ambiguous match, which of its alternatives was meant; otherwise which use cases there are."""
    if match.use_case is not None:
        raise ValueError(f"the question was matched to {match.use_case}: there is nothing to ask")
    options = list(match.alternatives)
    if match.how == "ambiguous" and options:
        if len(options) == 1:
            return (f"I am not sure this question is about {options[0]}, so I recommend nothing yet. "
                    f"Did you mean {options[0]}? If so, name it in the question; if not, the registry has no "
                    f"candidates for it.")
        return (f"This question could be about more than one use case, so I recommend nothing yet. "
                f"Which of these did you mean: {_listed(options)}? Name one of them in the question.")
    if options:
        return (f"I could not tell which use case this question is about, so I recommend nothing. "
                f"The registry has candidates for: {', '.join(options)}. Name one of them in the question.")
    return "The registry has no candidates tagged with a use case, so I recommend nothing."


def _listed(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode("ascii")
    return [_SPELLING.get(word, word) for word in re.findall(r"[a-z0-9]+", text)]


def _stem(word: str) -> str:
    """A light suffix-stripper, the same on both sides: screening/screen, diabetic/diabetes, scanned/scanner."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for _ in range(2):
        for suffix in ("ation", "ion", "ing", "ed", "er", "ic", "al", "ly", "e"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 4:
                word = word[: -len(suffix)]
                break
        else:
            break
    if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]
    return word


@lru_cache(maxsize=4096)
def _content(text: str) -> frozenset[str]:
    """The stems of a text's content words (descriptions repeat from question to question: cached)."""
    return frozenset(_stem(word) for word in _words(text)
                     if len(word) > 1 and not word.isdigit() and word not in _STOPWORDS and word not in _GENERIC)


def _same_word(a: str, b: str) -> bool:
    """One stem is the other's start (photo/photograph, fraud/fraudulent) or they share their first seven letters
    (subscriber/subscription, handwritten/handwriting). Either way their first five letters are equal."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 5 and long.startswith(short):
        return True
    return len(short) >= 7 and a[:7] == b[:7]


@lru_cache(maxsize=4096)
def _by_prefix(vocabulary: frozenset[str]) -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for word in vocabulary:
        if len(word) >= 5:
            index.setdefault(word[:5], []).append(word)
    return {prefix: tuple(words) for prefix, words in index.items()}


def _shared(question: frozenset[str], vocabulary: frozenset[str]) -> set[str]:
    """The question's stems that are also, or nearly, the vocabulary's."""
    index = _by_prefix(vocabulary)
    return {word for word in question
            if word in vocabulary or any(_same_word(word, known) for known in index.get(word[:5], ()))}


def use_case_descriptions(candidates) -> dict[str, str]:
    """One text per use case: its name in words, its task and what its candidates are for."""
    parts: dict[str, list[str]] = {}
    for candidate in candidates:
        texts = parts.setdefault(candidate.use_case,
                                 [candidate.use_case.replace("-", " ").replace("_", " "), candidate.task.replace("-", " ")])
        if candidate.description and candidate.description not in texts:
            texts.append(candidate.description)
    return {use_case: ". ".join(texts) for use_case, texts in parts.items()}


def _vocabularies(descriptions: dict[str, str]) -> dict[str, frozenset[str]]:
    """Each use case's content words, without those most use cases share (they tell none of them apart); the same
    registry's descriptions come back with every question and every governed document: computed once."""
    return _vocabularies_of(tuple(sorted(descriptions.items())))


@lru_cache(maxsize=64)
def _vocabularies_of(descriptions: tuple[tuple[str, str], ...]) -> dict[str, frozenset[str]]:
    vocabularies = {use_case: _content(text) for use_case, text in descriptions}
    if len(vocabularies) >= 4:
        counts: dict[str, int] = {}
        for words in vocabularies.values():
            for word in words:
                counts[word] = counts.get(word, 0) + 1
        common = {word for word, count in counts.items() if count >= 3 and count > len(vocabularies) / 2}
        if common:
            vocabularies = {use_case: words - common for use_case, words in vocabularies.items()}
    return vocabularies


TITLE_WORDS = 3  # a document's title shares at least this many content words with one use case's description...
TITLE_MARGIN = 2  # ...and this many more than with any other use case's, to govern it by description


def described_use_case(title: str, descriptions: dict[str, str], margin: int = TITLE_MARGIN) -> str | None:
    """The use case a document's title describes in the registry's own words ("Card transaction categories
    (budgeting app)" for txn-categorisation, whose models categorise card transactions for the budgeting app), by
    shared content words with a clear lead over every other use case (`margin` words); None when none is clearly
    described."""
    words = _content(title)
    counts = sorted(((len(_shared(words, vocabulary)), use_case) for use_case, vocabulary in _vocabularies(descriptions).items()),
                    reverse=True)
    if not counts or counts[0][0] < TITLE_WORDS or (len(counts) > 1 and counts[0][0] - counts[1][0] < margin):
        return None
    return counts[0][1]


def _named(question: str, known: tuple[str, ...]) -> list[str]:
    """The use cases the question names: those whose whole name it spells out (word for word, after stemming),
    except a name found only inside a longer name that is also found (fraud in card fraud). When no whole name is
    there, the use cases of which it spells out the longest part of two or more words, one of them a content word
    ("tumour screening" names emea-tumour-screening, and all regions' tumour screening when there are several)."""
    words = [_stem(word) for word in _words(question)]
    names = {use_case: [_stem(word) for word in _words(use_case)] for use_case in known}
    spans = {use_case: found for use_case, name in names.items() if name
             if (found := [(i, i + len(name)) for i in range(len(words) - len(name) + 1) if words[i:i + len(name)] == name])}
    if spans:
        return [use_case for use_case, found in spans.items()
                if not all(any(other != use_case and a <= i and j <= b and (b - a) > (j - i)
                               for other, others in spans.items() for a, b in others)
                           for i, j in found)]
    parts = {use_case: _longest_part(name, words) for use_case, name in names.items() if len(name) >= 3}
    longest = max(parts.values(), default=0)
    if longest < 2:
        return []
    tied = [use_case for use_case, length in parts.items() if length == longest]
    # "rule out a heart attack ... with chest pain" uses all of chest-pain-rule-out's words, two of pe-rule-out's
    coverage = {use_case: sum(word in words for word in names[use_case]) / len(names[use_case]) for use_case in tied}
    return [use_case for use_case in tied if coverage[use_case] == max(coverage.values())]


def _longest_part(name: list[str], words: list[str]) -> int:
    """The length of the longest run of consecutive name words (with a content word in it) found in `words`."""
    text = f" {' '.join(words)} "
    for length in range(len(name) - 1, 1, -1):
        for start in range(len(name) - length + 1):
            part = name[start:start + length]
            if _content(" ".join(part)) and f" {' '.join(part)} " in text:
                return length
    return 0


def _name(use_case: str) -> frozenset[str]:
    return frozenset(_stem(word) for word in _words(use_case))


def initials(words: list[str]) -> set[str]:
    """The initials of every run of two to four content words: "heart failure" gives "hf"."""
    return {"".join(word[0] for word in words[i:i + n]) for n in (2, 3, 4) for i in range(len(words) - n + 1)
            if all(len(word) >= 3 and word.isalpha() and word not in _STOPWORDS for word in words[i:i + n])}


def _named_with_initials(use_case: str, stems: list[str], spelled_out: set[str]) -> bool:
    """A name with an initialism, spelled out: "readmission ... after a heart failure" for hf-readmission-survival.
    All of its words but one are there, the initialism among them."""
    name = _words(use_case)
    spelled = [word for word in name if 2 <= len(word) <= 4 and word.isalpha() and word in spelled_out]
    used = sum(_stem(word) in stems or word in spelled for word in name)
    return bool(spelled) and len(name) >= 2 and used >= max(2, len(name) - 1)


def _loosely_named(use_case: str, words: list[str], *, partly: bool = False) -> bool:
    """Every word of the name within as many consecutive words of the question, plus one, in any order ("progression
    du diabète"); `partly`: of a name of three words or more, all words but one ("value houses" for
    house-price-valuation)."""
    name = _name(use_case)
    needed = len(name) - 1 if partly and len(name) >= 3 else len(name)
    width = needed + 1
    return bool(name) and any(len(name & set(words[start:start + width])) >= needed
                              for start in range(max(1, len(words) - width + 1)))


def match_use_case(question: str, candidates, embed) -> UseCaseMatch:
    """`embed` turns a list of texts into normalized vectors (KnowledgeBase.embed)."""
    descriptions = use_case_descriptions(candidates)
    known = tuple(sorted(descriptions))
    if not descriptions or not question.strip():
        return UseCaseMatch(None, 0.0, "none", known)
    stems = [_stem(word) for word in _words(question[:2000])]
    named = _named(question, known)
    # a name spelled out in another order counts as naming the use case when another one is named too
    reordered = [use_case for use_case in known if use_case not in named and _loosely_named(use_case, stems)
                 and not any(_name(use_case) <= _name(other) for other in named)]
    if len(named) == 1 and not reordered:
        return UseCaseMatch(named[0], 1.0, "named", known, 1.0)
    pool = list(known)
    vectors = embed([question[:2000], *(descriptions[use_case] for use_case in pool)])
    similarities = {use_case: float(s) for use_case, s in zip(pool, vectors[1:] @ vectors[0], strict=True)}
    words = _content(question[:2000])
    vocabularies = _vocabularies(descriptions)
    shared = {use_case: _shared(words, vocabularies[use_case]) for use_case in pool}
    spelled_initials = initials(_words(question[:2000]))
    evidence = {use_case: similarities[use_case] + WORD_WEIGHT * min(len(shared[use_case]), MAX_WORDS)
                + (NAME_WEIGHT if use_case in reordered or _loosely_named(use_case, stems, partly=True)
                   or _named_with_initials(use_case, stems, spelled_initials) else 0.0)
                for use_case in pool}
    order = sorted(pool, key=lambda use_case: (-evidence[use_case], use_case))
    if len(named) + len(reordered) >= 2:  # two or more named: ask which, best first
        chosen = sorted([*named, *reordered], key=lambda use_case: (-evidence[use_case], use_case))
        return _match(None, "ambiguous", tuple(chosen), chosen[0], similarities, evidence, shared)
    best = order[0]
    runner_up = evidence[order[1]] if len(order) > 1 else -1.0
    if evidence[best] >= ROUTE_EVIDENCE and evidence[best] - runner_up >= MARGIN:
        return _match(best, "meaning", known, best, similarities, evidence, shared)
    plausible = [use_case for use_case in order
                 if evidence[use_case] >= PLAUSIBLE_EVIDENCE and evidence[use_case] >= evidence[best] - AMBIGUITY_BAND]
    if plausible:
        return _match(None, "ambiguous", tuple(plausible[:MAX_ALTERNATIVES]), best, similarities, evidence, shared)
    return _match(None, "none", known, best, similarities, evidence, shared)


def _match(use_case, how, alternatives, best, similarities, evidence, shared) -> UseCaseMatch:
    return UseCaseMatch(use_case, similarities[best], how, alternatives, evidence[best], tuple(sorted(shared[best])))
