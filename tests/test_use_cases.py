"""Matching a question to a use case: by name, by meaning with the real embedder, asking when unsure, or not at all.

Two labelled sets, one JSON-like record per question (question, expected, kind, and for "ambiguous" the use
cases it must offer, `among`):
- demo/routing.jsonl, over the demo registry as `engine.demo.registry` registers it (the same descriptions);
- OTHER_ROUTING below, over a registry of eight use cases that have nothing to do with the demo's, so that the
  thresholds are checked on a registry they were not first set on.
`expected` is a use case (a paraphrase: route there), null (a look-alike or off-topic question: route nowhere;
asking "did you mean X?" is fine, recommending is not) or "ambiguous" (two use cases named, or a question that
fits several: ask, offering them). Every item must be answered safely: never routed to another use case, and a
paraphrase that is not routed is at least asked about with its use case offered first. How many paraphrases
are routed rather than asked is measured by test_routing_precision_and_recall, with a floor.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from engine.knowledge.knowledge_base import KnowledgeBase
from engine.llm.bundled import load_embedder
from engine.registry.candidates import Candidate
from engine.registry.use_cases import UseCaseMatch, clarifying_question, match_use_case

DESCRIPTIONS = {
    "tumor-screening": ("binary-classification",
                        "Classifies breast masses as malignant or benign from fine needle aspirate features for the pathology plug-in."),
    "diabetes-progression": ("regression",
                             "Forecasts disease progression one year after baseline for diabetes patients on the scheduling device."),
    "digit-recognition": ("multiclass-classification", "Reads handwritten digits from scanned form boxes in the mobile app."),
}


def registry(descriptions: dict[str, tuple[str, str]], families=("linear", "mlp")) -> list[Candidate]:
    return [Candidate(f"{use_case}-{family}", "1", None, use_case, task, family, description, "run", {},
                      f"registry:{use_case}-{family}", None)
            for use_case, (task, description) in descriptions.items() for family in families]


CANDIDATES = registry(DESCRIPTIONS)
ROUTING = Path(__file__).resolve().parents[1] / "demo" / "routing.jsonl"
OTHER_DESCRIPTIONS = {
    "card-fraud": ("binary-classification",
                   "Scores every card payment authorisation for fraud in real time at the payment gateway; "
                   "high scores are blocked or sent to manual review."),
    "churn-prediction": ("binary-classification",
                         "Predicts which subscribers will cancel their contract in the next 30 days, "
                         "for the retention team's weekly outreach campaign."),
    "house-prices": ("regression",
                     "Estimates the sale price of a residential property from its size, location and features "
                     "for the mortgage valuation tool."),
    "search-ranking": ("learning-to-rank", "Orders the storefront's product search results by relevance to the shopper's query."),
    "demand-forecast": ("time-series-forecasting",
                        "Forecasts daily unit sales per product and store 14 days ahead for the replenishment planner."),
    "speech-transcription": ("speech-recognition", "Transcribes recorded customer calls to text for the call centre's quality review."),
    "spam-filter": ("binary-classification", "Flags unsolicited bulk email in the customer support inbox before it reaches an agent."),
    "energy-load": ("time-series-forecasting", "Forecasts the grid region's hourly electricity load one day ahead for the dispatch desk."),
}
OTHER_ROUTING = [dict(zip(("question", "expected", "kind", "among"), row)) for row in [
    ("Which model should block fraudulent credit card transactions at checkout?", "card-fraud", "paraphrase"),
    ("What should the payment gateway use to score authorisations for fraud?", "card-fraud", "paraphrase"),
    ("Best model to catch stolen cards being used online?", "card-fraud", "paraphrase"),
    ("Which model tells us which customers are about to cancel their subscription?", "churn-prediction", "paraphrase"),
    ("What should the retention team use to pick who to call this week?", "churn-prediction", "paraphrase"),
    ("Which model predicts customer attrition for the next month?", "churn-prediction", "paraphrase"),
    ("Which model should value homes for the mortgage tool?", "house-prices", "paraphrase"),
    ("Best regression model to estimate what a flat will sell for?", "house-prices", "paraphrase"),
    ("Which model predicts real estate sale prices from square metres and location?", "house-prices", "paraphrase"),
    ("Which model should order the product search results on the shop?", "search-ranking", "paraphrase"),
    ("What should rank items by relevance when a shopper types a query?", "search-ranking", "paraphrase"),
    ("Which learning-to-rank model do we deploy for site search?", "search-ranking", "paraphrase"),
    ("Which model should forecast next fortnight's sales per store for replenishment?", "demand-forecast", "paraphrase"),
    ("What should the replenishment planner use to predict how many units each shop will sell?", "demand-forecast", "paraphrase"),
    ("Which model predicts product demand two weeks ahead?", "demand-forecast", "paraphrase"),
    ("Which model should turn recorded customer calls into text?", "speech-transcription", "paraphrase"),
    ("Best speech-to-text model for the call centre's quality reviews?", "speech-transcription", "paraphrase"),
    ("Which model transcribes the support phone calls?", "speech-transcription", "paraphrase"),
    ("Which model should keep junk mail out of the support inbox?", "spam-filter", "paraphrase"),
    ("What should flag unsolicited bulk emails before an agent sees them?", "spam-filter", "paraphrase"),
    ("Which classifier detects spam in customer emails?", "spam-filter", "paraphrase"),
    ("Which model forecasts tomorrow's hourly electricity consumption for the grid?", "energy-load", "paraphrase"),
    ("What should the dispatch desk use to predict the power load a day ahead?", "energy-load", "paraphrase"),
    ("Which model predicts the grid's electricity demand hour by hour?", "energy-load", "paraphrase"),
    ("Which card fraud model do you recommend?", "card-fraud", "paraphrase"),
    ("What is the latency budget for house-prices?", "house-prices", "paraphrase"),
    ("Which model should decline suspicious card payments?", "card-fraud", "paraphrase"),
    ("Which model should flag risky authorisations for manual review?", "card-fraud", "paraphrase"),
    ("Which model identifies subscribers likely to leave next month?", "churn-prediction", "paraphrase"),
    ("What model estimates property values for mortgage applications?", "house-prices", "paraphrase"),
    ("Which model sorts search hits by relevance for shoppers?", "search-ranking", "paraphrase"),
    ("Which model predicts store-level unit sales for the next two weeks?", "demand-forecast", "paraphrase"),
    ("Which model converts call recordings to transcripts?", "speech-transcription", "paraphrase"),
    ("Which model filters bulk unsolicited emails from the support queue?", "spam-filter", "paraphrase"),
    ("Which model predicts tomorrow's hourly grid load?", "energy-load", "paraphrase"),
    ("Which model should detect fraudulent insurance claims?", None, "look-alike"),
    ("Which model should forecast stock prices for the trading desk?", None, "look-alike"),
    ("Which model should identify which speaker is talking in a meeting recording?", None, "look-alike"),
    ("Which model should predict which employees will resign?", None, "look-alike"),
    ("Which model should recommend movies to watch next?", None, "look-alike"),
    ("Which model should forecast the output of our solar panels?", None, "look-alike"),
    ("Which model should translate product descriptions into German?", None, "look-alike"),
    ("Which model should detect phishing websites?", None, "look-alike"),
    ("Which model should predict used car prices?", None, "look-alike"),
    ("Which model should forecast hospital admissions for the winter?", None, "look-alike"),
    ("Which model should classify skin lesion photos?", None, "look-alike"),
    ("Which model should detect defects on the assembly line camera?", None, "look-alike"),
    ("Which model should detect money laundering in bank transfers?", None, "look-alike"),
    ("Which model should predict customer lifetime value?", None, "look-alike"),
    ("Which model should estimate rent for apartments?", None, "look-alike"),
    ("Which model should rank job candidates for recruiters?", None, "look-alike"),
    ("Which model should forecast gas consumption of households?", None, "look-alike"),
    ("Which model should detect toxic comments on the forum?", None, "look-alike"),
    ("Which model should generate subtitles for videos?", None, "look-alike"),
    ("Which model should forecast website traffic?", None, "look-alike"),
    ("What is the capital of France?", None, "off-topic"),
    ("Write me a poem about the sea.", None, "off-topic"),
    ("How do I book a meeting room?", None, "off-topic"),
    ("Which model should I deploy?", None, "off-topic"),
    ("What's the Wi-Fi password?", None, "off-topic"),
    ("Which model for card fraud and spam filter?", "ambiguous", "two-named", ("card-fraud", "spam-filter")),
    ("Compare churn prediction with house prices: which should get the GPU budget?", "ambiguous", "two-named",
     ("churn-prediction", "house-prices")),
    ("Should demand-forecast and energy-load share a forecasting model?", "ambiguous", "two-named", ("demand-forecast", "energy-load")),
    ("Rank spam filter against search ranking for urgency.", "ambiguous", "two-named", ("spam-filter", "search-ranking")),
    ("Which time-series forecasting model should we deploy?", "ambiguous", "underspecified", ("demand-forecast", "energy-load")),
]]


def load_routing(path: Path = ROUTING) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@cache
def demo_candidates() -> tuple[Candidate, ...]:
    """The demo registry's use cases, tasks and descriptions, as `deploywise demo prepare` registers them."""
    from engine.demo.registry import USE_CASES

    return tuple(Candidate(use_case.model_name(recipe), "1", None, use_case.name, use_case.task, recipe.family, use_case.purpose,
                           "run", {}, f"registry:{use_case.model_name(recipe)}", None)
                 for use_case in USE_CASES for recipe in use_case.recipes)


@pytest.fixture(scope="module")
def embed():
    """KnowledgeBase.embed with the bundled all-MiniLM-L6-v2, loaded once for the module's many questions."""
    return KnowledgeBase(None, load_embedder()).embed


def outcome(item: dict, match: UseCaseMatch) -> str:
    """routed | refused | asked (offered what it had to) | wrong (routed elsewhere, or not asked as it should)."""
    expected = item["expected"]
    if match.use_case is not None:
        return "routed" if match.use_case == expected else "wrong"
    if expected == "ambiguous":
        return "asked" if match.how == "ambiguous" and set(item["among"]) <= set(match.alternatives) else "wrong"
    if expected is None:
        return "refused"
    return "asked" if match.how == "ambiguous" and match.alternatives[:1] == (expected,) else "wrong"


def measure(items: list[dict], candidates, embed) -> dict[str, Counter]:
    """Outcomes per kind of item, and the items answered wrongly."""
    table: dict[str, Counter] = {}
    for item in items:
        result = outcome(item, match_use_case(item["question"], candidates, embed))
        table.setdefault(item["kind"], Counter())[result] += 1
        if result == "wrong":
            table.setdefault("wrong", Counter())[item["question"]] += 1
    return table


@pytest.mark.parametrize(
    ("question", "use_case", "how"),
    [
        ("Which model should I deploy for tumour screening?", "tumor-screening", "named"),
        ("which DIGIT-RECOGNITION candidate is best", "digit-recognition", "named"),
        ("What should go into the pathology plug-in to flag malignant breast masses?", "tumor-screening", "meaning"),
        ("Which model reads the handwritten numbers on the scanned forms?", "digit-recognition", "meaning"),
        ("Quel modèle déployer pour prévoir la progression du diabète ?", "diabetes-progression", "meaning"),
    ],
)
def test_questions_find_their_use_case(kb, question, use_case, how):
    match = match_use_case(question, CANDIDATES, kb.embed)
    assert (match.use_case, match.how) == (use_case, how)


@pytest.mark.parametrize("question", ["What is the weather in Paris tomorrow?", "   ", "?!"])
def test_unrelated_questions_match_nothing_and_list_the_use_cases(kb, question):
    match = match_use_case(question, CANDIDATES, kb.embed)
    assert match.use_case is None
    assert match.alternatives == ("diabetes-progression", "digit-recognition", "tumor-screening")


def test_no_candidates_means_no_use_case(kb):
    assert match_use_case("which tumor screening model?", [], kb.embed).use_case is None


@pytest.mark.parametrize("question", [
    "Which model should classify skin lesion photos as melanoma or benign?",
    "speech recognition for the call centre",
    "stock price forecasting",
])
def test_the_look_alikes_of_the_golden_set_notes_are_not_routed(embed, question):
    """demo/GOLDEN.md: look-alikes like these were routed above the old 0.30 floor (these at 0.44, 0.33 and 0.36
    with the demo registry) and got a recommendation."""
    for candidates in (CANDIDATES, demo_candidates()):
        assert match_use_case(question, candidates, embed).use_case is None


def test_a_question_naming_two_use_cases_asks_which(embed):
    match = match_use_case("Which is stricter on latency, tumour screening or digit recognition?", CANDIDATES, embed)
    assert (match.use_case, match.how) == (None, "ambiguous")
    assert set(match.alternatives) == {"tumor-screening", "digit-recognition"}
    text = clarifying_question(match)
    assert "Which of these did you mean" in text and "tumor-screening" in text and "digit-recognition" in text


def test_a_name_inside_a_longer_name_is_not_a_second_name(embed):
    candidates = registry({"fraud": ("binary-classification", "Flags fraudulent insurance claims."),
                           "card-fraud": ("binary-classification", "Scores card payments for fraud.")})
    match = match_use_case("Which card fraud model should we deploy?", candidates, embed)
    assert (match.use_case, match.how) == ("card-fraud", "named")


def test_the_longest_part_of_a_name_names_it_when_only_one_use_case_has_it(embed):
    """Registries qualify names (a region, a product); people leave the qualifier out."""
    def regions(*names):
        return registry({f"{region}-tumour-screening": ("binary-classification", f"Model for tumour screening in the {region} region.")
                         for region in names}
                        | {"emea-churn-prediction": ("binary-classification", "Model for churn prediction in the emea region.")})

    question = "Which tumour screening candidate meets the latency budget?"
    assert match_use_case(question, regions("emea"), embed).use_case == "emea-tumour-screening"
    match = match_use_case(question, regions("emea", "apac"), embed)
    assert (match.use_case, match.how) == (None, "ambiguous")
    assert set(match.alternatives) == {"emea-tumour-screening", "apac-tumour-screening"}
    assert match_use_case("Which model for APAC tumour screening?", regions("emea", "apac"), embed).use_case == "apac-tumour-screening"


def test_clarifying_question_lists_the_alternatives_and_recommends_nothing():
    two = UseCaseMatch(None, 0.52, "ambiguous", ("demand-forecast", "energy-load"), 0.62)
    assert clarifying_question(two) == (
        "This question could be about more than one use case, so I recommend nothing yet. "
        "Which of these did you mean: demand-forecast or energy-load? Name one of them in the question.")
    three = clarifying_question(UseCaseMatch(None, 0.5, "ambiguous", ("a", "b", "c")))
    assert "Which of these did you mean: a, b or c?" in three
    one = clarifying_question(UseCaseMatch(None, 0.44, "ambiguous", ("tumor-screening",)))
    assert "Did you mean tumor-screening?" in one and "recommend nothing" in one
    none = clarifying_question(UseCaseMatch(None, 0.1, "none", ("diabetes-progression", "tumor-screening")))
    assert "diabetes-progression, tumor-screening" in none and "recommend nothing" in none
    assert "no candidates" in clarifying_question(UseCaseMatch(None, 0.0, "none"))
    with pytest.raises(ValueError):
        clarifying_question(UseCaseMatch("tumor-screening", 1.0, "named"))


def test_a_match_built_the_old_way_still_works():
    """The assistant builds `UseCaseMatch(None, 0.0, "none")` when the registry cannot be read."""
    match = UseCaseMatch(None, 0.0, "none")
    assert (match.alternatives, match.evidence, match.shared_words) == ((), 0.0, ())


def test_the_labelled_sets_are_well_formed():
    demo = load_routing()
    for items, use_cases in ((demo, {"tumor-screening", "diabetes-progression", "digit-recognition"}),
                             (OTHER_ROUTING, set(OTHER_DESCRIPTIONS))):
        assert len({item["question"] for item in items}) == len(items)
        for item in items:
            assert set(item) <= {"question", "expected", "kind", "among"}
            assert item["kind"] in {"paraphrase", "look-alike", "off-topic", "two-named", "underspecified"}
            assert item["expected"] in use_cases | {None, "ambiguous"}
            assert (item["expected"] == "ambiguous") == bool(item.get("among")) and set(item.get("among") or ()) <= use_cases
            assert (item["kind"] == "paraphrase") == (item["expected"] in use_cases)
    kinds = Counter(item["kind"] for item in demo)
    assert len(demo) >= 40 and kinds["paraphrase"] >= 20 and kinds["look-alike"] >= 15 and kinds["two-named"] >= 3
    assert {candidate.use_case for candidate in demo_candidates()} == {"tumor-screening", "diabetes-progression", "digit-recognition"}


@pytest.mark.parametrize("item", load_routing(), ids=lambda item: item["question"][:60])
def test_every_demo_routing_question_is_answered_safely(embed, item):
    match = match_use_case(item["question"], demo_candidates(), embed)
    assert outcome(item, match) != "wrong", (match.how, match.use_case, match.alternatives, round(match.evidence, 3))


@pytest.mark.parametrize("item", OTHER_ROUTING, ids=lambda item: item["question"][:60])
def test_every_question_over_another_registry_is_answered_safely(embed, item):
    match = match_use_case(item["question"], registry(OTHER_DESCRIPTIONS), embed)
    assert outcome(item, match) != "wrong", (match.how, match.use_case, match.alternatives, round(match.evidence, 3))


# Measured when the thresholds were chosen (paraphrases routed; the others asked about with their use case first;
# no look-alike or off-topic question routed and every two-named one asked, in every registry): demo registry
# 34/36, the demo set over the shorter descriptions of DESCRIPTIONS 25/36, the other registry 23/35. The floors
# are three questions below: a rounding change near a threshold must not fail them, a worse rule must.
FLOORS = {"demo": 0.85, "demo, short descriptions": 0.6, "other registry": 0.55}


def test_routing_precision_and_recall(embed):
    sets = {"demo": (load_routing(), demo_candidates()), "demo, short descriptions": (load_routing(), CANDIDATES),
            "other registry": (OTHER_ROUTING, registry(OTHER_DESCRIPTIONS))}
    report = {}
    for name, (items, candidates) in sets.items():
        table = measure(items, candidates, embed)
        report[name] = {kind: dict(counts) for kind, counts in table.items()}
        print(name, report[name])
    for name, table in report.items():
        assert "wrong" not in table, (name, table["wrong"])
        paraphrases = table["paraphrase"]
        assert paraphrases.get("routed", 0) / sum(paraphrases.values()) >= FLOORS[name], (name, table)
        assert set(table["look-alike"]) == {"refused"} and set(table["off-topic"]) == {"refused"}
        assert set(table["two-named"]) == {"asked"}


def test_the_golden_questions_route_as_before_over_the_demo_registry(embed):
    """tests/test_eval_golden.py checks this on the built demo workspace; this is the same check in a second."""
    from engine.answering.golden_set import DEFAULT_GOLDEN, load_golden

    candidates = demo_candidates()
    misrouted = []
    for item in load_golden(DEFAULT_GOLDEN).items:
        match = match_use_case(item.question, candidates, embed)
        if match.use_case != item.use_case:
            misrouted.append(f"{item.id}: {match.how} {match.use_case} {match.alternatives} ({match.evidence:.2f})")
    assert misrouted == []
