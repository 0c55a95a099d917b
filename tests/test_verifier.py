"""The verifier cannot be talked around: endorsements with negations and "instead", numbers of any logged metric in
any unit, and sentences that state rules."""

from __future__ import annotations

import pytest
from tests_support import verify_answer

from engine.answering.composer import compose_answer
from engine.answering.verifier import endorsed_names, recommended_name, verify_sentence
from engine.registry.candidates import Candidate
from engine.rules.criteria import AcceptanceCriterion, UseCasePolicy
from engine.rules.decision import decide


def candidate(name: str, **metrics) -> Candidate:
    return Candidate(name, "1", None, "fraud", "binary-classification", "xgboost", "", "run", metrics, f"registry:{name}", None)


FAST = candidate("fraud-xgb", val_auc=0.962, recall=0.912, p99_latency_ms=28.0, fairness_gap=0.031)
SLOW = candidate("fraud-transformer", val_auc=0.978, recall=0.94, p99_latency_ms=118.0, fairness_gap=0.012)
CRITERIA = [AcceptanceCriterion("fraud", "p99_latency_ms", "<", 40, True, "doc:fraud-rules.md"),
            AcceptanceCriterion("fraud", "recall", ">=", 0.9, True, "doc:fraud-rules.md")]
POLICY = UseCasePolicy("fraud", "val_auc", None, "doc:fraud-rules.md")
DECISION = decide("fraud", [FAST, SLOW], CRITERIA, POLICY)
KNOWN = {"doc:fraud-rules.md", "registry:fraud-xgb", "registry:fraud-transformer"}
NAMES = ["fraud-transformer", "fraud-xgb"]


def verify(text: str):
    return verify_answer(text, DECISION, [FAST, SLOW], KNOWN)


@pytest.mark.parametrize(("text", "endorsed"), [
    ("We do not recommend fraud-transformer; deploy fraud-xgb instead.", ["fraud-xgb"]),
    ("Deploy fraud-xgb rather than fraud-transformer.", ["fraud-xgb"]),
    ("fraud-xgb is recommended over fraud-transformer.", ["fraud-xgb"]),
    ("fraud-transformer is not recommended: its p99 latency breaks the budget.", []),
    ("Do not deploy fraud-transformer.", []),
    ("fraud-transformer has the best AUC, but we recommend fraud-xgb.", ["fraud-xgb"]),
    ("Recommendation: fraud-xgb, because fraud-transformer fails the latency budget.", ["fraud-xgb"]),
    ("Instead of fraud-xgb, the team deploys fraud-transformer.", ["fraud-transformer"]),
    ("Our choice is fraud-transformer.", ["fraud-transformer"]),
])
def test_endorsements_read_negations_and_instead(text, endorsed):
    assert endorsed_names(text, NAMES) == endorsed


@pytest.mark.parametrize("text", [
    "We do not recommend fraud-xgb; deploy fraud-transformer instead <<SRC:registry:fraud-transformer>>.",
    "Recommendation: fraud-xgb <<SRC:registry:fraud-xgb>>.\nIn the end the team deploys fraud-transformer <<SRC:doc:fraud-rules.md>>.",
    "fraud-transformer <<SRC:registry:fraud-transformer>> is the one to go with, not fraud-xgb.",
])
def test_a_draft_that_presents_another_model_anywhere_fails(text):
    verification = verify(text)
    assert not verification.ok
    assert any("must recommend fraud-xgb" in p or "presents fraud-transformer" in p for p in verification.problems), verification.problems


def test_a_faithful_draft_with_a_negated_rival_passes():
    text = ("We do not recommend fraud-transformer <<SRC:registry:fraud-transformer>>: its p99 latency of 118 ms breaks the "
            "40 ms budget <<SRC:doc:fraud-rules.md>>. Deploy fraud-xgb instead <<SRC:registry:fraud-xgb>>: validation AUC "
            "0.962, p99 latency 28 ms, recall 91.2% <<SRC:doc:fraud-rules.md>>.")
    verification = verify(text)
    assert verification.ok, verification.problems
    assert verification.recommended_in_answer == "fraud-xgb"


@pytest.mark.parametrize(("text", "problem"), [
    ("Deploy fraud-xgb <<SRC:registry:fraud-xgb>>: its fairness gap is 0.02.", "fairness gap of 0.02"),  # unknown metric
    ("Deploy fraud-xgb <<SRC:registry:fraud-xgb>>: p99 latency 0.035 s.", "0.035 s"),  # another unit
    ("Deploy fraud-xgb <<SRC:registry:fraud-xgb>>; its recall is 93%.", "93%"),
    ("Deploy fraud-xgb <<SRC:registry:fraud-xgb>>: the p99 latency must be under 25 ms <<SRC:doc:fraud-rules.md>>.",
     "not one of the rules that decided"),
    ("Deploy fraud-xgb <<SRC:registry:fraud-xgb>>: recall has to be at least 0.95 <<SRC:doc:fraud-rules.md>>.",
     "not one of the rules that decided"),
])
def test_numbers_of_any_logged_metric_and_stated_rules_are_checked(text, problem):
    verification = verify(text)
    assert not verification.ok
    assert any(problem in p for p in verification.problems), verification.problems


def test_real_values_in_other_units_and_the_real_rules_pass():
    text = ("Deploy fraud-xgb <<SRC:registry:fraud-xgb>>: p99 latency 0.028 s, fairness gap 0.031, and the p99 latency "
            "must stay below 40 ms <<SRC:doc:fraud-rules.md>>.")
    verification = verify(text)
    assert verification.ok, verification.problems


def test_the_composed_answer_always_passes():
    assert verify(compose_answer(DECISION)).ok
    nothing = decide("fraud", [SLOW], CRITERIA, POLICY)
    assert verify_answer(compose_answer(nothing), nothing, [SLOW], KNOWN).ok
    blocked = decide("fraud", [FAST, SLOW], [], None)
    assert verify_answer(compose_answer(blocked), blocked, [FAST, SLOW], KNOWN).ok


def test_when_nothing_may_be_recommended_no_endorsement_passes():
    nothing = decide("fraud", [SLOW], CRITERIA, POLICY)
    verification = verify_answer("Deploy fraud-transformer <<SRC:registry:fraud-transformer>>.", nothing, [SLOW], KNOWN)
    assert not verification.ok and "rules chose none" in verification.problems[0]


def test_a_text_without_endorsing_words_is_read_as_naming_its_first_candidate():
    assert recommended_name("fraud-xgb <<SRC:registry:fraud-xgb>> with AUC 0.962.", NAMES) == "fraud-xgb"
    assert recommended_name("Nothing should be deployed; fraud-xgb fails.", NAMES) is None


# --- one sentence of the LLM's explanation (engine.answering.verifier.verify_sentence) ------------------------------------------

MIXED = [Candidate(name, "1", None, "churn", "binary-classification", family, "", "run",
                   {"pr_auc": auc, "p95_ms": latency}, f"registry:{name}", None)
         for name, family, auc, latency in (("churn-logreg", "linear", 0.71, 2.0), ("churn-gbm", "gradient-boosting", 0.74, 9.0),
                                            ("churn-rf", "random-forest", 0.76, 55.0))]
MIXED_DECISION = decide("churn", MIXED, [AcceptanceCriterion("churn", "p95_ms", "<=", 20, True, "doc:churn")],
                        UseCasePolicy("churn", "pr_auc", None, "doc:churn"))


@pytest.mark.parametrize(("sentence", "problem"), [
    ("This is a linear model <<SRC:doc:churn>>.", "it calls churn-gbm a linear model, but it is gradient-boosting"),
    ("It is a random forest, so it is robust <<SRC:doc:churn>>.", "it calls churn-gbm a random-forest model"),
    ("churn-rf is a Gradient Boosting model <<SRC:doc:churn>>.", "it calls churn-rf a gradient-boosting model"),
    ("Its PR AUC of 0.80 is the best <<SRC:doc:churn>>.", "of 0.80 that no candidate or criterion has"),
    ("Ship churn-rf instead <<SRC:registry:churn-rf>>.", "it presents churn-rf as the one to deploy, but the rules chose churn-gbm"),
    ("It is the safest choice.", "it cites no source"),
    ("It is fast <<SRC:doc:elsewhere>>.", "unknown sources: doc:elsewhere"),
])
def test_a_sentence_with_a_wrong_claim_fails(sentence, problem):
    verdict = verify_sentence(sentence, MIXED_DECISION, MIXED, {"doc:churn", "registry:churn-rf"})
    assert not verdict.ok and any(problem in p for p in verdict.problems), verdict.problems


@pytest.mark.parametrize("sentence", [
    "churn-gbm <<SRC:registry:churn-gbm>> is the one to deploy because it is a gradient boosting model with PR AUC 0.74 <<SRC:doc:churn>>.",
    "churn-rf is a random-forest model whose p95 of 55.00 ms breaks the budget <<SRC:doc:churn>>.",
    "Unlike the random-forest model, it meets p95_ms <= 20 <<SRC:doc:churn>>.",  # about the other one, not an identity
    "churn-logreg, a linear model, ranks lower on PR AUC <<SRC:doc:churn>>.",
])
def test_a_true_sentence_passes(sentence):
    verdict = verify_sentence(sentence, MIXED_DECISION, MIXED, {"doc:churn", "registry:churn-gbm"})
    assert verdict.ok, verdict.problems
