"""Evaluation rules without models: fact matching, scoring of hand-made answers (contradictions, wrong and unknown
citations, refusals), the metrics of a set of items, golden-file checks, placeholders, and the gate."""

from __future__ import annotations

import json

import pytest

from engine.answering.golden_set import GoldenError, load_golden
from engine.answering.prompting import explanation_opening
from engine.registry.candidates import Candidate
from engine.rules.criteria import AcceptanceCriterion, UseCasePolicy
from engine.rules.decision import decide
from eval.gate import DEFAULT_GATE, GateConfig, GateError, judge, load_gate_config
from eval.golden import Expectation, NotApplicable, resolve_item
from eval.scoring import ItemResult, fact_found, metrics, normalize, refuses, score

CRITERIA = "criteria:tumor-screening"


def candidate(family: str, roc_auc: float, p95: float, alias=None) -> Candidate:
    name = f"tumor-screening-{family}"
    return Candidate(name, "1", alias, "tumor-screening", "binary-classification", family, "", "run",
                     {"roc_auc": roc_auc, "f1": 0.97, "latency_p95_ms": p95}, f"registry:{name}", None)


@pytest.fixture(scope="module")
def decision():
    candidates = [candidate("linear", 0.991, 0.6, "champion"), candidate("mlp", 0.9905, 0.7),
                  candidate("random-forest", 0.995, 62.0), candidate("gradient-boosting", 0.97, 1.2)]
    criteria = [AcceptanceCriterion("tumor-screening", "roc_auc", ">=", 0.98, True, CRITERIA),
                AcceptanceCriterion("tumor-screening", "latency_p95_ms", "<=", 10, True, CRITERIA)]
    policy = UseCasePolicy("tumor-screening", "roc_auc", "latency_p95_ms", CRITERIA, near_best_margin=0.005,
                           family_order=("linear", "gradient-boosting", "random-forest", "mlp"))
    return decide("tumor-screening", candidates, criteria, policy)


@pytest.fixture(scope="module")
def expectation(decision) -> Expectation:
    return Expectation.from_decision(decision)


NAMES = ["tumor-screening-gradient-boosting", "tumor-screening-linear", "tumor-screening-mlp", "tumor-screening-random-forest"]
KNOWN = {CRITERIA, "decisions:log", *(f"registry:{name}" for name in NAMES)}


def golden_file(tmp_path, *items, raw: str | None = None):
    path = tmp_path / "golden.jsonl"
    path.write_text(raw if raw is not None else "\n".join(json.dumps(item) for item in items) + "\n", encoding="utf-8")
    return path


def item(**overrides) -> dict:
    return {"id": "ts-1", "question": "Which model should I deploy for tumour screening?", "type": "dynamic",
            "category": "recommendation", "use_case": "tumor-screening", "key_facts": ["{recommended}"],
            "expected_sources": ["registry:{recommended}", CRITERIA], **overrides}


def scored(tmp_path, expectation, answer: str, *, shown: str | None = None, **overrides) -> ItemResult:
    golden = load_golden(golden_file(tmp_path, item(**overrides)))
    entry = golden.items[0]
    result = ItemResult(entry.id, entry.question, entry.type, entry.category, entry.use_case, llm_asked=True,
                        explanation_state="kept", answer=answer, shown=shown if shown is not None else answer)
    return score(result, resolve_item(entry, expectation if entry.use_case else None), candidate_names=NAMES,
                 known_sources=KNOWN, expected_recommendation=expectation.recommended if entry.use_case else None)


# --- matching facts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fact, text, found", [
    (("tumor-screening-linear",), "Deploy **tumor-screening-linear** <<SRC:registry:tumor-screening-linear>>.", True),
    (("tumor screening linear",), "Deploy tumor_screening-linear now", True),
    (("tumour screening",), "for tumor screening", True),
    (("0.4",), "r2 >= 0.40 (hard)", True),
    (("0.95",), "an F1 of 0.955", False),
    (("0.95",), "it reached 10.95 points", False),
    (("10",), "latency_p95_ms <= 10 (hard)", True),
    (("10",), "within 100 ms", False),
    (("10",), "it took 10,000 calls", False),
    (("10",), "a value of 1.10", False),
    (("10 ms",), "budget is 10ms at p95", True),
    (("1797",), "1,797 images", True),
    (("1%",), "within 1 % relative", True),
    (("m.k.",), "Approved by M.K. and A.O.", True),
    (("8x8",), "an 8x8 grid", True),
    (("criteria",), "Recommendation <<SRC:criteria:tumor-screening>>", False),  # marker ids are not text
    (("calibration", "drift"), "the probabilities drifted", False),
    (("calibration", "drift"), "after calibration drift", True),
])
def test_a_fact_is_found_as_a_whole_word_or_number(fact, text, found):
    assert fact_found(fact, normalize(text)) is found


def test_refusal_means_no_recommendation_and_saying_so():
    assert refuses("I could not tell which use case this question is about, so I recommend nothing.", NAMES)
    assert refuses("No model in the registry covers fraud detection.", NAMES)
    assert not refuses("Deploy tumor-screening-linear.", NAMES)
    assert not refuses("I can't be sure, but tumor-screening-linear should do.", NAMES)  # still recommends one
    assert not refuses("Paris is the capital of France.", NAMES)


# --- scoring hand-made answers ------------------------------------------------------------------------------------


def test_a_faithful_answer_scores_on_every_count(tmp_path, expectation):
    result = scored(tmp_path, expectation, "Recommendation: tumor-screening-linear <<SRC:registry:tumor-screening-linear>>\n"
                                           "It passes every hard criterion <<SRC:criteria:tumor-screening>>.")
    assert expectation.recommended == "tumor-screening-linear"
    assert result.accurate and not result.contradiction and result.agrees
    assert result.citation_present and result.citation_correct and result.unknown_cited == []
    assert result.facts == [{"fact": ["tumor-screening-linear"], "found": True}] and result.shown_correct


def test_an_explanation_draft_gets_the_recommendation_from_its_prefilled_opening(tmp_path, expectation, decision):
    """The chat writes the opening (the decided model and its marker) for the LLM: a draft that adds nothing useful
    agrees and names the recommended model, but facts it did not write are not found."""
    draft = explanation_opening(decision) + " zq blorp wibble"
    recommendation = scored(tmp_path, expectation, draft)
    assert draft.startswith("tumor-screening-linear <<SRC:registry:tumor-screening-linear>>")
    assert recommendation.accurate and recommendation.agrees and recommendation.citation_correct
    criteria = scored(tmp_path, expectation, draft, type="static", category="criteria", key_facts=["0.98"],
                      expected_sources=[CRITERIA])
    assert not criteria.accurate and criteria.citation_present and not criteria.citation_correct
    assert criteria.facts == [{"fact": ["0.98"], "found": False}]
    grounded = scored(tmp_path, expectation, draft.replace(" zq blorp wibble", " its roc_auc is 0.991, above the 0.98 "
                                                           "floor <<SRC:criteria:tumor-screening>>."),
                      type="static", category="criteria", key_facts=["0.98"], expected_sources=[CRITERIA])
    assert grounded.accurate and grounded.citation_correct


def test_recommending_another_model_contradicts_even_with_every_fact(tmp_path, expectation):
    answer = ("Recommendation: tumor-screening-random-forest <<SRC:registry:tumor-screening-random-forest>>: it beats "
              "tumor-screening-linear on ROC AUC <<SRC:criteria:tumor-screening>>.")
    result = scored(tmp_path, expectation, answer)
    assert result.facts[0]["found"] and result.contradiction and not result.accurate and result.agrees is False
    assert result.recommended_in_answer == "tumor-screening-random-forest"
    assert result.citation_correct  # cited right, said wrong: each check on its own


def test_unknown_and_unexpected_citations_are_not_correct(tmp_path, expectation):
    made_up = scored(tmp_path, expectation, "Deploy tumor-screening-linear <<SRC:criteria:tumor-screening>> <<SRC:wiki:made-up>>")
    assert made_up.accurate and made_up.citation_present and not made_up.citation_correct
    assert made_up.unknown_cited == ["wiki:made-up"]
    unexpected = scored(tmp_path, expectation, "Deploy tumor-screening-linear <<SRC:decisions:log>>")
    assert unexpected.citation_present and not unexpected.citation_correct and unexpected.unknown_cited == []
    bare = scored(tmp_path, expectation, "Deploy tumor-screening-linear.")
    assert bare.accurate and not bare.citation_present and not bare.citation_correct


def test_a_missing_fact_and_list_placeholders(tmp_path, expectation):
    result = scored(tmp_path, expectation, "Which ones fail? tumor-screening-random-forest <<SRC:criteria:tumor-screening>>",
                    key_facts=["{rejected:latency_p95_ms}", ["latency", "p95"]], expected_sources=[CRITERIA])
    assert result.facts == [{"fact": ["tumor-screening-random-forest"], "found": True},
                            {"fact": ["latency", "p95"], "found": False}]
    assert not result.accurate
    # the recommendation read from this answer is the candidate it names: a contradiction, as the verifier reads it
    assert result.contradiction


def test_refusal_items_are_scored_on_refusing(tmp_path, expectation):
    refusal = {"id": "ref-1", "question": "Which model for fraud?", "type": "refusal", "category": "unknown-use-case"}
    golden = load_golden(golden_file(tmp_path, refusal))
    entry = golden.items[0]

    def run(answer):
        result = ItemResult(entry.id, entry.question, entry.type, entry.category, None, answer=answer, shown=answer)
        return score(result, resolve_item(entry, None), candidate_names=NAMES, known_sources=KNOWN, expected_recommendation=None)

    assert run("I could not tell which use case this is about, so I recommend nothing.").refused
    assert run("Deploy tumor-screening-linear <<SRC:registry:tumor-screening-linear>>").refused is False
    assert run("x").accurate is None and run("x").correct is False


def test_metrics_of_a_set_of_items():
    def result(id_, kind, category, *, accurate=None, refused=None, cited=None, correct=None, asked=True,
               state="kept", latency=None, agrees=None, shown=True, status="scored"):
        r = ItemResult(id_, "q", kind, category, None if kind == "refusal" else "uc", status=status, llm_asked=asked,
                       explanation_state=state if asked else "none", accurate=accurate, refused=refused,
                       citation_present=cited, citation_correct=correct, latency_ms=latency, agrees=agrees,
                       shown_correct=shown)
        return r

    results = [
        result("a", "static", "criteria", accurate=True, cited=True, correct=True, latency=100.0, agrees=True),
        result("b", "static", "criteria", accurate=False, cited=True, correct=False, latency=200.0, agrees=True,
               state="dropped"),
        result("c", "dynamic", "recommendation", accurate=True, cited=False, correct=False, latency=300.0, agrees=False,
               state="partial"),
        result("g", "dynamic", "recommendation", accurate=True, cited=True, correct=True, latency=400.0, agrees=True,
               state="failed"),
        result("d", "refusal", "off-topic", refused=True, asked=False, latency=5.0),
        result("e", "refusal", "off-topic", refused=False, asked=False, latency=5.0, shown=False),
        result("f", "dynamic", "rejection", status="skipped", state="kept"),
    ]
    values = metrics(results)
    assert values["accuracy"] == pytest.approx(3 / 4) and values["static_accuracy"] == 0.5 and values["dynamic_accuracy"] == 1.0
    assert values["citation_presence"] == pytest.approx(3 / 4) and values["citation_correctness"] == pytest.approx(2 / 4)
    assert values["refusal_accuracy"] == 0.5 and values["agreement"] == pytest.approx(3 / 4)
    # of the answers the LLM was asked to explain (a, b, c, g): kept whole; shown at least in part (kept or partial)
    assert values["explanation_kept_rate"] == pytest.approx(1 / 4)
    assert values["explanation_shown_rate"] == pytest.approx(2 / 4)
    assert "fallback_rate" not in values
    assert values["shown_accuracy"] == pytest.approx(5 / 6)
    assert values["latency_p50_ms"] == 250.0 and values["latency_p95_ms"] == pytest.approx(385.0)  # LLM answers only
    assert (values["items_scored"], values["items_skipped"]) == (6, 1)
    assert values["accuracy_criteria"] == 0.5 and values["accuracy_off_topic"] == 0.5 and "accuracy_rejection" not in values
    assert "refusal_accuracy" not in metrics(results[:4])  # nothing measured: left out, and the gate says so
    unasked = metrics(results[4:6])  # no LLM asked: no explanation rate to report
    assert "explanation_kept_rate" not in unasked and "explanation_shown_rate" not in unasked


# --- the golden file ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, problem", [
    ("{not json", "line 1: not valid JSON"),
    (json.dumps([1]), "line 1: an item must be a JSON object"),
    (json.dumps(item(question="")), "(ts-1): question must be a non-empty string"),
    (json.dumps(item(type="trivia")), "type must be one of static, dynamic, refusal (got 'trivia')"),
    (json.dumps(item(category="Mixed Case")), "category 'Mixed Case' must be lowercase"),
    (json.dumps(item(answer="x")), "unknown field 'answer'"),
    (json.dumps(item(type="static")), "a static item cannot use {recommended}; make it dynamic"),
    (json.dumps(item(key_facts=["0.98"], expected_sources=[CRITERIA])), "a dynamic item needs a placeholder"),
    (json.dumps(item(key_facts=["{best}"])), "unknown placeholder {best}"),
    (json.dumps(item(key_facts=[["{rejected}", "none"]])), "a list placeholder ({rejected}) must be a fact of its own"),
    (json.dumps(item(key_facts=[])), "key_facts must list at least one fact"),
    (json.dumps(item(key_facts=[["", "x"]])), "each key fact must be a non-empty string or a list of them"),
    (json.dumps(item(expected_sources=["criteria tumor"])), "expected source 'criteria tumor' is not a 'domain:entity'"),
    (json.dumps(item(use_case=None)), "use_case must be a non-empty string for a dynamic item"),
    (json.dumps({"id": "r", "question": "q?", "type": "refusal", "category": "off-topic", "key_facts": ["no"]}),
     "a refusal item has no use_case, key_facts or expected_sources"),
])
def test_a_malformed_golden_line_is_named(tmp_path, line, problem):
    path = golden_file(tmp_path, raw=line + "\n")
    with pytest.raises(GoldenError) as raised:
        load_golden(path)
    assert problem in str(raised.value) and str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_golden_file_level_problems(tmp_path):
    with pytest.raises(GoldenError, match="line 3: id 'ts-1' is also on line 1"):
        load_golden(golden_file(tmp_path, raw=f"{json.dumps(item())}\n# a comment\n{json.dumps(item())}\n"))
    with pytest.raises(GoldenError, match="no golden items"):
        load_golden(golden_file(tmp_path, raw="\n# nothing\n"))
    with pytest.raises(GoldenError, match="cannot read the golden file"):
        load_golden(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": "caf\xe9"}')
    with pytest.raises(GoldenError, match="not UTF-8"):
        load_golden(tmp_path / "latin1.jsonl")
    golden = load_golden(golden_file(tmp_path, item(), item(id="ts-2"), item(id="ts-3", category="other")))
    assert [i.id for i in golden.select(per_category=1)] == ["ts-1", "ts-3"]
    assert [i.id for i in golden.select(ids=["ts-3", "ts-1"])] == ["ts-1", "ts-3"]
    with pytest.raises(GoldenError, match="no golden item ts-9"):
        golden.select(ids=["ts-9"])


def test_placeholders_resolve_from_the_decision_or_make_the_item_not_applicable(tmp_path, expectation):
    assert expectation.values | {} == {"recommended": "tumor-screening-linear", "recommended_family": "linear",
                                       "recommended_version": "1", "priority_metric": "roc_auc", "priority_value": "0.991",
                                       "champion": "tumor-screening-linear"}
    assert expectation.lists["rejected"] == ("tumor-screening-random-forest", "tumor-screening-gradient-boosting")
    assert expectation.lists["rejected:latency_p95_ms"] == ("tumor-screening-random-forest",)
    assert expectation.lists["near_best"] == ("tumor-screening-mlp",)
    golden = load_golden(golden_file(tmp_path, item(key_facts=["{rejected:roc_auc}", ["{recommended_family}", "simplest"]],
                                                    expected_sources=["registry:{rejected}", CRITERIA])))
    resolved = resolve_item(golden.items[0], expectation)
    assert resolved.facts == (("tumor-screening-gradient-boosting",), ("linear", "simplest"))
    assert resolved.sources == ("registry:tumor-screening-random-forest", "registry:tumor-screening-gradient-boosting", CRITERIA)
    nothing = load_golden(golden_file(tmp_path, item(key_facts=["{rejected:model_size_mb}"])))
    with pytest.raises(NotApplicable, match=r"\{rejected:model_size_mb\} is empty for tumor-screening"):
        resolve_item(nothing.items[0], expectation)
    with pytest.raises(NotApplicable, match="no candidates in the registry"):
        resolve_item(nothing.items[0], None)


# --- the gate -------------------------------------------------------------------------------------------------------


def test_the_shipped_gate_holds_seed_004s_targets():
    config = load_gate_config(DEFAULT_GATE)
    assert config == GateConfig()
    assert (config.accuracy_min, config.citation_presence_min, config.refusal_accuracy_min, config.latency_p95_ms_max) == (
        0.95, 0.90, 0.90, 1500.0)


@pytest.mark.parametrize("data, problem", [
    ({"accuracy": 0.9}, "accuracy: unknown key (known: accuracy_min"),
    ({"accuracy_min": "high"}, "accuracy_min: must be a number or null (got 'high')"),
    ({"accuracy_min": True}, "accuracy_min: must be a number or null"),
    ({"refusal_accuracy_min": 95}, "refusal_accuracy_min: must be a share between 0 and 1 (got 95)"),
    ({"latency_p95_ms_max": 0}, "latency_p95_ms_max: must be a positive number of milliseconds"),
    ({"general_perplexity_max_increase_pct": -1}, "general_perplexity_max_increase_pct: must be a percentage of at least 0"),
])
def test_a_bad_gate_key_is_named(tmp_path, data, problem):
    with pytest.raises(GateError, match="^gate: " + problem.replace("(", r"\(").replace(")", r"\)")):
        load_gate_config(data)
    path = tmp_path / "gate.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(GateError, match=str(path)):
        load_gate_config(path)


def test_gate_files_that_cannot_be_read(tmp_path):
    with pytest.raises(GateError, match="cannot read the gate configuration"):
        load_gate_config(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n", encoding="utf-8")
    with pytest.raises(GateError, match="must be a mapping"):
        load_gate_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("accuracy_min: [\n", encoding="utf-8")
    with pytest.raises(GateError, match="not valid YAML"):
        load_gate_config(tmp_path / "broken.yaml")
    assert load_gate_config({"latency_p95_ms_max": None}).latency_p95_ms_max is None  # null: not checked


GOOD = {"accuracy": 0.97, "citation_presence": 0.95, "refusal_accuracy": 1.0, "latency_p95_ms": 900.0,
        "general_perplexity": 10.5}


def test_go_when_every_check_holds_with_the_passed_checks_as_reasons():
    verdict = judge(GOOD, GateConfig(), base_general_perplexity=10.0, items_evaluated=80, items_total=80)
    assert verdict.go and verdict.verdict == "GO"
    assert verdict.reasons == ("accuracy 97% meets the gate's 95%", "citation presence 95% meets the gate's 90%",
                               "refusal accuracy 100% meets the gate's 90%", "p95 latency 900 ms is within the 1,500 ms budget",
                               "general perplexity 10.50 vs the base model's 10.00 (+5.0%) is within the 10% allowed rise")


def test_no_go_names_every_failed_check():
    values = {**GOOD, "accuracy": 0.5, "latency_p95_ms": 95_000.0, "general_perplexity": 12.0}
    values.pop("refusal_accuracy")
    verdict = judge(values, GateConfig(agreement_min=0.9), base_general_perplexity=10.0, items_evaluated=12, items_total=80)
    assert verdict.verdict == "NO-GO"
    assert verdict.reasons == (
        "only 12 of the 80 golden items were scored (not selected, or not applicable to this registry): a GO needs them all",
        "accuracy 50% is below the gate's 95%",
        "refusal accuracy was not measured (no golden item of its kind was scored)",
        "recommendation agreement was not measured (no golden item of its kind was scored)",
        "p95 latency 95,000 ms is over the 1,500 ms budget",
        "general perplexity 12.00 vs the base model's 10.00 (+20.0%) rose more than the 10% allowed: general ability was lost",
    )
    unmeasured = judge(GOOD, GateConfig(), base_general_perplexity=None, items_evaluated=80, items_total=80)
    assert unmeasured.reasons == ("general perplexity (the forgetting check) was not measured: the snapshot has no held-out "
                                  "replay text",)
