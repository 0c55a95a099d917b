"""How metric values are written: the same text in the prompt, the answer, the tables, and read back by the verifier."""

from __future__ import annotations

import pytest

from engine.registry.metric_keys import metric_spec
from engine.rules.criteria import UseCasePolicy
from engine.rules.decision import near_best


@pytest.mark.parametrize(
    ("metric", "value", "written"),
    [
        ("model_size_mb", 0.0019598, "0.0020 MB"),  # the demo's logistic regression: never shown as 0.00 MB
        ("model_size_mb", 0.255, "0.26 MB"),
        ("model_size_mb", 0.0, "0.00 MB"),
        ("model_size_mb", 1e-12, "0.00000000 MB"),
        ("latency_p95_ms", 62.189, "62.19 ms"),
        ("roc_auc", 0.99456, "0.995"),
        ("roc_auc", 0.0004, "0.00040"),
        ("rmse", 53.046, "53.05"),
        ("recall_at_5", 0.5, "0.500"),  # a metric the catalog does not know: neutral, higher is better
    ],
)
def test_values_are_written_with_enough_digits(metric, value, written):
    assert metric_spec(metric).format(value) == written


def test_a_tiny_model_size_in_a_composed_answer_passes_the_verifier():
    from tests_support import verify_answer

    from engine.answering.composer import compose_answer
    from engine.registry.candidates import Candidate
    from engine.rules.criteria import AcceptanceCriterion, UseCasePolicy
    from engine.rules.decision import decide

    tiny = Candidate("ts-linear", "1", "champion", "ts", "binary-classification", "linear", "", "run",
                     {"roc_auc": 0.99, "model_size_mb": 0.0019598}, "registry:ts-linear", None)
    rule = AcceptanceCriterion("ts", "model_size_mb", "<=", 20, True, "criteria:ts")
    decision = decide("ts", [tiny], [rule], UseCasePolicy("ts", "roc_auc", None, "criteria:ts"))
    text = compose_answer(decision)
    assert "model_size_mb 0.0020 MB meets <= 20" in text
    assert verify_answer(text, decision, [tiny], {"registry:ts-linear", "criteria:ts"}).ok


def test_near_best_margins_are_the_teams_absolute_or_relative_ones():
    absolute = UseCasePolicy("ts", "roc_auc", None, "criteria:ts", near_best_margin=0.005)
    relative = UseCasePolicy("d", "rmse", None, "criteria:d", near_best_margin=0.01, near_best_relative=True)
    assert near_best(absolute, 0.992, 0.997) and not near_best(absolute, 0.991, 0.997)
    assert near_best(relative, 53.5, 53.0) and not near_best(relative, 53.6, 53.0)
    none_stated = UseCasePolicy("d", "rmse", None, "criteria:d")
    assert near_best(none_stated, 53.0, 53.0) and not near_best(none_stated, 53.01, 53.0)
