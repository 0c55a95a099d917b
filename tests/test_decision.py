"""Acceptance criteria from the knowledge base, the rule-based decision, the composed answer and the verifier."""

from __future__ import annotations

import pytest
from tests_support import verify_answer

from engine.answering.composer import compose_answer
from engine.demo.workspace import DEMO_CORPUS
from engine.knowledge.ingest import ingest_files
from engine.registry.candidates import Candidate
from engine.rules.criteria import (
    AcceptanceCriterion,
    CriteriaError,
    UseCasePolicy,
    discard_review,
    reviewed_rules,
    save_reviewed_rules,
)
from engine.rules.decision import decide
from engine.rules.rulebook import rulebook

CRITERIA = [
    AcceptanceCriterion("tumor-screening", "f1", ">=", 0.95, True, "criteria:tumor-screening"),
    AcceptanceCriterion("tumor-screening", "roc_auc", ">=", 0.98, True, "criteria:tumor-screening"),
    AcceptanceCriterion("tumor-screening", "latency_p95_ms", "<=", 10, True, "criteria:tumor-screening"),
    AcceptanceCriterion("tumor-screening", "model_size_mb", "<=", 20, False, "criteria:tumor-screening"),
]
FAMILIES = ("linear", "gradient-boosting", "random-forest", "mlp")
POLICY = UseCasePolicy("tumor-screening", "roc_auc", "latency_p95_ms", "criteria:tumor-screening",
                       near_best_margin=0.005, family_order=FAMILIES)


def candidate(name: str, family: str, **metrics) -> Candidate:
    return Candidate(name=name, version="1", alias=None, use_case="tumor-screening", task="binary-classification",
                     family=family, description="", run_id="run", metrics=metrics, source_id=f"registry:{name}", url=None)


LINEAR = candidate("ts-linear", "linear", f1=0.97, roc_auc=0.990, latency_p95_ms=0.41, model_size_mb=0.01)
BOOSTING = candidate("ts-boosting", "gradient-boosting", f1=0.966, roc_auc=0.997, latency_p95_ms=4.2, model_size_mb=0.6)
FOREST = candidate("ts-forest", "random-forest", f1=0.972, roc_auc=0.999, latency_p95_ms=23.5, model_size_mb=7.9)
MLP = candidate("ts-mlp", "mlp", f1=0.94, roc_auc=0.995, latency_p95_ms=0.5, model_size_mb=0.2)
ALL = [LINEAR, BOOSTING, FOREST, MLP]


def test_most_accurate_model_is_ruled_out_by_a_hard_budget():
    decision = decide("tumor-screening", ALL, CRITERIA, POLICY)
    assert decision.recommended is BOOSTING  # best roc_auc among the passing ones
    forest = decision.assessment("ts-forest")
    assert not forest.passes_hard and [c.criterion.metric for c in forest.failed_hard] == ["latency_p95_ms"]
    assert "latency_p95_ms <= 10" in forest.standing
    assert [a.candidate.name for a in decision.assessments][:2] == ["ts-boosting", "ts-linear"]


def test_near_best_set_prefers_the_simpler_family():
    close = candidate("ts-linear", "linear", f1=0.97, roc_auc=0.9935, latency_p95_ms=0.4, model_size_mb=0.01)
    decision = decide("tumor-screening", [BOOSTING, close], CRITERIA, POLICY)
    assert decision.recommended is close  # within 0.005 of 0.997, and linear is simpler
    assert "simpler family" in decision.assessment("ts-boosting").standing


def test_soft_criterion_breaks_the_tie_before_simplicity():
    big_linear = candidate("ts-linear", "linear", f1=0.97, roc_auc=0.996, latency_p95_ms=0.4, model_size_mb=25)
    decision = decide("tumor-screening", [big_linear, BOOSTING], CRITERIA, POLICY)
    assert decision.recommended is BOOSTING
    assert "soft criterion" in decision.assessment("ts-linear").standing


def test_missing_metric_fails_a_hard_criterion_and_nothing_passing_means_no_recommendation():
    unmeasured = candidate("ts-unmeasured", "linear", f1=0.99, roc_auc=0.999)
    decision = decide("tumor-screening", [unmeasured, FOREST], CRITERIA, POLICY)
    assert decision.recommended is None
    assert decision.closest is not None and decision.closest.name in {"ts-unmeasured", "ts-forest"}
    text = compose_answer(decision)
    assert text.startswith("Recommendation: none")
    assert verify_answer(text, decision, [unmeasured, FOREST],
                         {"criteria:tumor-screening", "registry:ts-unmeasured", "registry:ts-forest"}).ok


def test_error_metrics_use_a_relative_margin():
    criteria = [AcceptanceCriterion("d", "r2", ">=", 0.4, True, "criteria:d")]
    policy = UseCasePolicy("d", "rmse", "model_size_mb", "criteria:d", near_best_margin=0.01, near_best_relative=True,
                           family_order=FAMILIES)
    linear = Candidate("d-linear", "1", None, "d", "regression", "linear", "", "r", {"r2": 0.45, "rmse": 53.5, "model_size_mb": 0.01},
                       "registry:d-linear", None)
    boosting = Candidate("d-boost", "1", None, "d", "regression", "gradient-boosting", "", "r",
                         {"r2": 0.46, "rmse": 53.0, "model_size_mb": 0.3}, "registry:d-boost", None)
    assert decide("d", [boosting, linear], criteria, policy).recommended is linear  # 53.5 is within 1% of 53.0


KNOWN = {"criteria:tumor-screening", *(f"registry:{c.name}" for c in ALL)}


@pytest.fixture
def decision():
    return decide("tumor-screening", ALL, CRITERIA, POLICY)


def test_composed_answer_passes_the_verifier(decision):
    text = compose_answer(decision)
    assert text.startswith("Recommendation: ts-boosting")
    assert "ts-forest" in text and "latency_p95_ms 23.50 ms fails <= 10" in text
    verification = verify_answer(text, decision, ALL, KNOWN)
    assert verification.ok, verification.problems
    assert verification.numbers_checked >= 8


def test_verifier_accepts_a_faithful_free_text_answer(decision):
    text = ("Recommendation: ts-boosting <<SRC:registry:ts-boosting>>\n"
            "It has the best ROC AUC of the passing models, 0.997, and a p95 latency of 4.2 ms <<SRC:criteria:tumor-screening>>.\n"
            "Why not ts-forest: its latency of 23.5 ms breaks the 10 ms budget <<SRC:criteria:tumor-screening>>. "
            "Its accuracy-like F1 is 97.2% but that does not matter.")
    verification = verify_answer(text, decision, ALL, KNOWN)
    assert verification.ok, verification.problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Recommendation: ts-forest <<SRC:registry:ts-forest>> with ROC AUC 0.999.", "must recommend ts-boosting"),
        ("Recommendation: ts-boosting <<SRC:registry:ts-boosting>> with a ROC AUC of 0.999.", "ROC AUC of 0.999"),
        ("Recommendation: ts-boosting <<SRC:registry:ts-boosting>>, p95 latency 3.1 ms.", "3.1"),
        ("Recommendation: ts-boosting <<SRC:doc:made-up.pdf:page-1>>", "unknown sources"),
        ("Recommendation: ts-boosting, ROC AUC 0.997.", "cites no source"),
        ("Recommendation: ts-boosting <<SRC:registry:ts-boosting>> reaches an F1 of 99.0%.", "99.0%"),
        ("Recommendation: ts-boosting <<SRC:registry:ts-boosting>>\nts-linear <<SRC:registry:ts-linear>> has a ROC AUC of 0.997.", "0.997"),
        ("I would not deploy anything today.", "must recommend ts-boosting"),
    ],
)
def test_verifier_rejects_wrong_models_numbers_and_markers(decision, text, problem):
    verification = verify_answer(text, decision, ALL, KNOWN)
    assert not verification.ok
    assert any(problem in p for p in verification.problems), verification.problems


def test_house_rules_apply_only_where_a_document_states_them():
    close = candidate("ts-linear", "linear", f1=0.97, roc_auc=0.9935, latency_p95_ms=0.4, model_size_mb=0.01)
    bare = UseCasePolicy("tumor-screening", "roc_auc", None, "criteria:tumor-screening")
    assert decide("tumor-screening", [BOOSTING, close], CRITERIA, bare).recommended is BOOSTING  # no margin: the best wins
    no_order = UseCasePolicy("tumor-screening", "roc_auc", "latency_p95_ms", "criteria:tumor-screening", near_best_margin=0.005)
    assert decide("tumor-screening", [BOOSTING, close], CRITERIA, no_order).recommended is close  # tie-breaker: lower latency
    slow_linear = candidate("ts-linear", "linear", f1=0.97, roc_auc=0.9935, latency_p95_ms=9.0, model_size_mb=0.01)
    assert decide("tumor-screening", [BOOSTING, slow_linear], CRITERIA, no_order).recommended is BOOSTING


def test_an_exact_tie_no_rule_breaks_recommends_nothing():
    twin = candidate("ts-twin", "gradient-boosting", f1=0.966, roc_auc=0.997, latency_p95_ms=4.2, model_size_mb=0.6)
    bare = UseCasePolicy("tumor-screening", "roc_auc", None, "criteria:tumor-screening")
    decision = decide("tumor-screening", [BOOSTING, twin], CRITERIA, bare)
    assert decision.recommended is None and "tie on every rule" in decision.blocked[0]
    with_tie_breaker = UseCasePolicy("tumor-screening", "roc_auc", "latency_p95_ms", "criteria:tumor-screening", near_best_margin=0.0)
    faster = candidate("ts-twin", "gradient-boosting", f1=0.966, roc_auc=0.997, latency_p95_ms=3.0, model_size_mb=0.6)
    assert decide("tumor-screening", [BOOSTING, faster], CRITERIA, with_tie_breaker).recommended is faster


def test_no_rules_recommend_nothing_and_never_claim_criteria():
    decision = decide("tumor-screening", ALL, [], None)
    assert decision.recommended is None and decision.blocked
    text = compose_answer(decision)
    assert text.startswith("Recommendation: none")
    assert "passes every hard criterion" not in text and "ranks lower on the priority metric" not in text
    assert all(name in text for name in ("ts-linear", "ts-boosting", "ts-forest", "ts-mlp"))
    assert verify_answer(text, decision, ALL, KNOWN).ok
    hard_only = decide("tumor-screening", ALL, CRITERIA, None)
    assert hard_only.recommended is None and "no document names a metric to rank them on" in hard_only.blocked[0]
    one_passes = decide("tumor-screening", [BOOSTING, FOREST], CRITERIA, None)
    assert one_passes.recommended is BOOSTING
    priority_only = decide("tumor-screening", ALL, [], UseCasePolicy("tumor-screening", "roc_auc", None, "criteria:x"))
    assert priority_only.recommended is FOREST
    assert all("hard criterion" in a.standing for a in priority_only.assessments[1:])
    assert "passes every hard criterion" not in compose_answer(priority_only)


def test_rules_are_read_from_the_demo_criteria_documents(kb, chunker):
    files = [(p.name, p.read_bytes()) for p in sorted(DEMO_CORPUS.glob("*.md"))]
    assert all(outcome.ok for outcome in ingest_files(kb, chunker, files))
    rules = rulebook(kb.connection, "tumor-screening", ALL)
    assert rules.state == "extracted" and not rules.conflicts
    tumor = {c.metric: c for c in rules.criteria}
    assert tumor["latency_p95_ms"].comparison == "<=" and tumor["latency_p95_ms"].threshold == 10 and tumor["latency_p95_ms"].hard
    assert not tumor["model_size_mb"].hard and "written justification" in tumor["model_size_mb"].sentence
    assert (rules.policy.priority_metric, rules.policy.tie_breaker, rules.policy.near_best_margin) == ("roc_auc", "latency_p95_ms", 0.005)
    assert rules.policy.family_order == FAMILIES and rules.policy.source_of("family_order") == "guideline:model-selection"
    assert {d.how for d in rules.documents if d.title.startswith("Acceptance")} == {"front matter"}


FRAUD = [Candidate(f"fraud-{family}", "1", None, "fraud", "binary-classification", family, "", "run", {"recall": recall},
                   f"registry:fraud-{family}", None) for family, recall in (("linear", 0.95), ("boosting", 0.91))]


def test_reviewed_rules_win_over_documents_until_given_back(kb, chunker):
    document = (b"---\nsource_id: criteria:fraud\n---\n# Fraud\n- `recall` >= 0.9 \xe2\x80\x94 hard \xe2\x80\x94 catch fraud\n\n"
                b"Priority metric: `recall`\n")
    assert ingest_files(kb, chunker, [("fraud.md", document)])[0].ok
    assert [c.threshold for c in rulebook(kb.connection, "fraud", FRAUD).criteria] == [0.9]
    [chunk] = kb.chunks()
    kb.edit_chunk(chunk.id, chunk.text.replace("0.9", "0.92"))
    assert [c.threshold for c in rulebook(kb.connection, "fraud", FRAUD).criteria] == [0.92]
    edited = AcceptanceCriterion("fraud", "recall", ">=", 0.85, True, "criteria:fraud", "relaxed by the risk board")
    save_reviewed_rules(kb.connection, "fraud", [edited], UseCasePolicy("fraud", "recall", None, "criteria:fraud"), "ada")
    assert ingest_files(kb, chunker, [("fraud.md", document.replace(b"0.9", b"0.99"))])[0].status == "updated"
    rules = rulebook(kb.connection, "fraud", FRAUD)
    [kept] = rules.criteria
    assert (kept.threshold, kept.reviewed, kept.rationale, rules.state, rules.reviewed_by) == (
        0.85, True, "relaxed by the risk board", "reviewed", "ada")
    assert [c.threshold for c in rules.extracted.criteria] == [0.99]  # what the document says now, shown beside the review
    discard_review(kb.connection, "fraud")
    assert [(c.threshold, c.reviewed) for c in rulebook(kb.connection, "fraud", FRAUD).criteria] == [(0.99, False)]
    kb.delete_document(kb.documents()[0].id)
    assert rulebook(kb.connection, "fraud", FRAUD).state == "none"


def test_a_use_case_reviewed_down_to_no_rules_stays_the_admins(kb, chunker):
    document = b"# Fraud rules\nFor fraud, recall must be at least 0.9. Pick the model with the highest recall.\n"
    assert ingest_files(kb, chunker, [("fraud.md", document)])[0].ok
    assert rulebook(kb.connection, "fraud", FRAUD).state == "extracted"
    save_reviewed_rules(kb.connection, "fraud", [], None, "ada")
    rules = rulebook(kb.connection, "fraud", FRAUD)
    assert (rules.state, rules.criteria, rules.policy) == ("reviewed", (), None)
    assert decide("fraud", FRAUD, [], None, rules.blockers()).recommended is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"comparison": "=="}, "comparison"),
        ({"threshold": float("nan")}, "finite"),
        ({"threshold": "high"}, "finite"),
        ({"metric": " "}, "required"),
        ({"source_id": "no domain"}, "domain:entity"),
    ],
)
def test_malformed_criteria_are_rejected_and_nothing_is_saved(kb, fields, message):
    valid = {"use_case": "fraud", "metric": "recall", "comparison": ">=", "threshold": 0.9, "hard": True, "source_id": "criteria:fraud"}
    save_reviewed_rules(kb.connection, "fraud", [AcceptanceCriterion(**valid)], None)
    with pytest.raises(CriteriaError, match=message):
        save_reviewed_rules(kb.connection, "fraud", [AcceptanceCriterion(**{**valid, **fields})], None)
    assert [c.threshold for c in reviewed_rules(kb.connection, "fraud")[0]] == [0.9]


def test_duplicate_rules_are_rejected_without_change(kb):
    rule = AcceptanceCriterion("fraud", "recall", ">=", 0.9, True, "criteria:fraud")
    save_reviewed_rules(kb.connection, "fraud", [rule], None)
    with pytest.raises(CriteriaError, match="twice"):
        save_reviewed_rules(kb.connection, "fraud", [rule, rule], None)
    assert len(reviewed_rules(kb.connection, "fraud")[0]) == 1
