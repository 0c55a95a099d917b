"""Matching a question to a use case: by name, by meaning with the real embedder, or not at all."""

from __future__ import annotations

import pytest

from engine.candidates import Candidate
from engine.use_cases import match_use_case

DESCRIPTIONS = {
    "tumor-screening": ("binary-classification", "Classifies breast masses as malignant or benign from fine needle aspirate features for the pathology plug-in."),
    "diabetes-progression": ("regression", "Forecasts disease progression one year after baseline for diabetes patients on the scheduling device."),
    "digit-recognition": ("multiclass-classification", "Reads handwritten digits from scanned form boxes in the mobile app."),
}
CANDIDATES = [
    Candidate(f"{use_case}-{family}", "1", None, use_case, task, family, description, "run", {}, f"registry:{use_case}-{family}", None)
    for use_case, (task, description) in DESCRIPTIONS.items()
    for family in ("linear", "mlp")
]


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
