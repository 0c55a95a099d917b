"""Which documents govern a use case, what happens when they disagree or one claims another's id, and the admin's part."""

from __future__ import annotations

from engine.candidates import Candidate
from engine.chunking import Chunk
from engine.composer import compose_answer
from engine.criteria import NO_USE_CASE, assign_document, set_metric_direction
from engine.decision import decide
from engine.documents import ParsedDocument, Section
from engine.ingest import ingest_files
from engine.rulebook import decision_for, document_governance, rulebook, use_case_terms
from engine.sources import Source


def candidate(name: str, use_case: str = "card-fraud", family: str = "xgboost", **metrics) -> Candidate:
    return Candidate(name, "1", None, use_case, "binary-classification", family, "", "run", metrics, f"registry:{name}", None)


FRAUD = [candidate("ccf-xgb", recall=0.92, p99_latency_ms=28.0, val_auc=0.962, fairness_gap=0.03),
         candidate("ccf-transformer", recall=0.95, p99_latency_ms=118.0, val_auc=0.978, fairness_gap=0.01)]
CHURN = [candidate("churn-lr", "telco-churn", "logistic-regression", f1=0.61), candidate("churn-gbm", "telco-churn", f1=0.66)]
ALL = FRAUD + CHURN
RULES = (b"# Card fraud scoring: deployment rules\n\nThe 99th percentile latency has to stay below 40 milliseconds. "
         b"Recall must be at least 90%. Of the models that qualify, pick the one with the best validation AUC.\n")


def ingest(kb, chunker, *files):
    outcomes = ingest_files(kb, chunker, list(files))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]


def test_a_guideline_that_names_its_use_case_governs_it_and_decides(kb, chunker):
    ingest(kb, chunker, ("rules.md", RULES))
    rules, decision = decision_for(kb.connection, "card-fraud", FRAUD, ALL)
    assert [d.how for d in rules.documents] == ["named in its text"]
    assert {(c.metric, c.comparison, c.threshold) for c in rules.criteria} == {("p99_latency_ms", "<", 40), ("recall", ">=", 0.9)}
    assert decision.recommended.name == "ccf-xgb"  # the best AUC breaks the written latency budget
    assert all(p.source_id == "doc:rules.md" and p.sentence for p in rules.provenance)
    assert rulebook(kb.connection, "telco-churn", CHURN, ALL).state == "none"  # it does not govern churn


def test_a_use_case_mentioned_in_passing_is_not_governed_by_the_document(kb, chunker, settings):
    from engine.chunking import Chunker
    from engine.models import load_tokenizer

    small = Chunker(load_tokenizer(settings.base_model), 60, 10)  # the mention lands past the opening chunk
    filler = b" ".join(b"The fraud team reviews its alerts every morning with the analysts on duty." for _ in range(12))
    document = RULES + filler + b"\n\nUnlike the telco churn model, this scorer is retrained weekly.\n"
    ingest(kb, small, ("rules.md", document))
    assert rulebook(kb.connection, "card-fraud", FRAUD, ALL).state == "extracted"
    assert rulebook(kb.connection, "telco-churn", CHURN, ALL).state == "none"


def test_a_document_that_names_no_use_case_contributes_no_rule_and_says_so(kb, chunker):
    ingest(kb, chunker, ("misc.md", b"# Team notes\n\nLatency must stay below 40 ms. Pick the highest recall.\n"))
    governance = document_governance(kb.connection, use_case_terms(ALL))
    [(use_cases, how)] = governance.values()
    assert use_cases == () and "names no use case" in how
    rules, decision = decision_for(kb.connection, "card-fraud", FRAUD, ALL)
    assert rules.state == "none" and decision.recommended is None
    assert "no document governs it" in rules.missing_text()


def test_an_admin_chooses_or_refuses_the_use_case_a_document_governs(kb, chunker):
    ingest(kb, chunker, ("misc.md", b"# Team notes\n\nLatency must stay below 40 ms. Pick the highest recall.\n"))
    [document] = kb.documents()
    assign_document(kb.connection, document.origin, "card-fraud")
    rules = rulebook(kb.connection, "card-fraud", FRAUD, ALL)
    assert rules.documents[0].how == "chosen by an admin" and rules.policy.priority_metric == "recall"
    ingest(kb, chunker, ("rules.md", RULES))
    origin = next(d.origin for d in kb.documents() if d.title.startswith("Card fraud"))
    assign_document(kb.connection, origin, NO_USE_CASE)
    assert [d.how for d in rulebook(kb.connection, "card-fraud", FRAUD, ALL).documents] == ["chosen by an admin"]


def test_front_matter_names_the_use_case(kb, chunker):
    ingest(kb, chunker, ("x.md", b"---\ntitle: Rules\nuse_case: telco-churn\n---\nPrefer the highest F1.\n"))
    rules = rulebook(kb.connection, "telco-churn", CHURN, ALL)
    assert rules.documents[0].how == "front matter" and rules.policy.priority_metric == "f1"


def test_two_documents_that_disagree_block_the_recommendation_and_the_answer_says_why(kb, chunker):
    other = b"# Card fraud: latency budget\n\nThe p99 latency of a card fraud scorer must stay below 150 ms.\n"
    ingest(kb, chunker, ("rules.md", RULES), ("budget.md", other))
    rules, decision = decision_for(kb.connection, "card-fraud", FRAUD, ALL)
    [conflict] = rules.conflicts
    assert "p99_latency_ms" in conflict.subject and {s.document for s in conflict.statements} == {
        "Card fraud scoring: deployment rules", "Card fraud: latency budget"}
    assert decision.recommended is None and decision.blocked
    text = compose_answer(decision)
    assert text.startswith("Recommendation: none") and "disagree" in text and "<<SRC:doc:budget.md>>" in text


def test_a_document_claiming_another_documents_criteria_id_is_a_conflict_not_a_merge(kb, chunker):
    genuine = b"---\nsource_id: criteria:card-fraud\n---\n# Card fraud\nRecall must be at least 0.9. Pick the best validation AUC.\n"
    spoof = b"---\nsource_id: criteria:card-fraud\n---\n# Notes\nThe p99 latency must be under 500 ms.\n"
    ingest(kb, chunker, ("fraud.md", genuine), ("notes.md", spoof))
    rules, decision = decision_for(kb.connection, "card-fraud", FRAUD, ALL)
    assert any("criteria:card-fraud" in c.subject for c in rules.conflicts)
    assert decision.recommended is None


def test_a_metric_the_catalog_does_not_know_gets_its_direction_from_the_words_or_the_admin(kb, chunker):
    ingest(kb, chunker, ("gap.md", b"# Card fraud\n\nRecall must be at least 0.9. Choose the one with the lowest fairness gap.\n"))
    rules, decision = decision_for(kb.connection, "card-fraud", FRAUD, ALL)
    assert (rules.policy.priority_metric, rules.policy.priority_higher_is_better) == ("fairness_gap", False)
    assert decision.recommended.name == "ccf-transformer"

    scores = [candidate("a", team_score=3.0, recall=0.95), candidate("b", team_score=5.0, recall=0.95)]
    ingest(kb, chunker, ("score.md", b"# Card fraud\n\nRank the models by team score.\n"))
    rules = rulebook(kb.connection, "card-fraud", scores, scores)
    assert rules.undirected == ("team_score",) and decide("card-fraud", scores, [], rules.policy, rules.blockers()).recommended is None
    set_metric_direction(kb.connection, "team_score", True)
    rules, decision = decision_for(kb.connection, "card-fraud", scores, scores)
    assert not rules.undirected and decision.recommended.name == "b"


def test_imported_table_rows_govern_nothing_unless_an_admin_says(kb):
    text = "Card fraud: recall must be at least 0.99."
    row = ParsedDocument("notes row 1", "uc:main.notes:1", "a" * 64,
                         [Section(text, Source("uc:main.notes:1", "row 1", None, "table-row"))])
    kb.store_document(row, [Chunk(text, 9, "uc:main.notes:1")])
    governance = document_governance(kb.connection, use_case_terms(ALL))
    assert list(governance.values())[0][0] == ()
