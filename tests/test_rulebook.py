"""Which documents govern a use case, what happens when they disagree or one claims another's id, and the admin's part."""

from __future__ import annotations

from engine.answering.composer import compose_answer
from engine.knowledge.chunking import Chunk
from engine.knowledge.documents import ParsedDocument, Section
from engine.knowledge.ingest import ingest_files
from engine.knowledge.sources import Source
from engine.registry.candidates import Candidate
from engine.rules.criteria import NO_USE_CASE, assign_document, set_metric_direction
from engine.rules.decision import decide
from engine.rules.governance import document_governance, use_case_terms
from engine.rules.rulebook import decision_for, rulebook


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
    from engine.knowledge.chunking import Chunker
    from engine.llm.bundled import load_tokenizer

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


def test_a_hard_requirement_that_cannot_be_read_stops_the_recommendation_and_says_which(kb, chunker):
    unreadable = RULES + b"\nThe scorer must keep the widget count at most 3 per transaction.\n"
    ingest(kb, chunker, ("rules.md", unreadable))
    rules, decision = decision_for(kb.connection, "card-fraud", FRAUD, ALL)
    [unread] = rules.unread
    assert "widget count" in unread.sentence and unread.document == "Card fraud scoring: deployment rules"
    assert decision.recommended is None and decision.blocked  # better than recommending a model that breaks it
    text = compose_answer(decision)
    assert "could not be read as a rule" in text and "widget count at most 3" in text and "<<SRC:doc:rules.md>>" in text


def test_a_changelog_keeps_the_newest_value_of_each_rule(kb, chunker):
    changelog = (b"# Card fraud scoring: rules changelog\n\n## v2 - 6 May 2025 (current)\n\n"
                 b"- Recall must now be at least 92% (it was 90% in v1).\n\n## v1 - 2 September 2024\n\n"
                 b"- Recall must be at least 90%.\n- The p99 latency has to stay below 40 ms.\n"
                 b"- Of the models that qualify, pick the one with the best validation AUC.\n")
    ingest(kb, chunker, ("changelog.md", changelog))
    rules, decision = decision_for(kb.connection, "card-fraud", FRAUD, ALL)
    assert not rules.conflicts
    assert {(c.metric, c.threshold) for c in rules.criteria} == {("recall", 0.92), ("p99_latency_ms", 40)}  # v1's latency still holds
    assert decision.recommended.name == "ccf-xgb"


def test_a_section_about_another_use_case_gives_it_no_rules(kb, chunker):
    chest = [candidate("cp-gbm", "chest-pain-rule-out", npv=0.997, sensitivity=0.99, specificity=0.5, rule_out_rate=0.44),
             candidate("cp-lr", "chest-pain-rule-out", npv=0.996, sensitivity=0.985, specificity=0.58, rule_out_rate=0.40)]
    embolism = [candidate("pe-gbm", "pe-rule-out", npv=0.99, sensitivity=0.97, specificity=0.47, rule_out_rate=0.38)]
    guideline = (b"# Emergency department rule-out models\n\n## 1. Chest pain: ruling out a heart attack\n\n"
                 b"- Its negative predictive value must be at least 99.5%.\n- Its sensitivity must be 98% or higher.\n"
                 b"- Among the models that meet both, choose the one with the highest rule-out rate.\n\n"
                 b"## 2. Suspected pulmonary embolism: avoiding CT scans\n\n- Its sensitivity must be at least 95%.\n"
                 b"- Among the models that meet both, choose the one with the highest specificity.\n")
    ingest(kb, chunker, ("ed.md", guideline))
    rules, decision = decision_for(kb.connection, "chest-pain-rule-out", chest, chest + embolism)
    assert not rules.conflicts and rules.policy.priority_metric == "rule_out_rate"
    assert {(c.metric, c.threshold) for c in rules.criteria} == {("npv", 0.995), ("sensitivity", 0.98)}
    assert decision.recommended.name == "cp-gbm"


def test_a_title_that_describes_a_use_case_in_the_registrys_words_governs_it(kb, chunker):
    described = [Candidate("tc-bert", "1", None, "txn-categorisation", "multiclass-classification", "transformer",
                           "Categorises card transactions for the budgeting app.", "run", {"weighted_f1": 0.91},
                           "registry:tc-bert", None)]
    ingest(kb, chunker, ("checklist.md", b"# Card transaction categories (budgeting app): pre-release checklist\n\n"
                                         b"- [ ] Weighted F1 of at least 0.88\n"))
    rules = rulebook(kb.connection, "txn-categorisation", described, described + ALL)
    assert [d.how for d in rules.documents] == ["its opening describes it"]
    assert {(c.metric, c.threshold) for c in rules.criteria} == {("weighted_f1", 0.88)}


def test_a_sentence_that_refers_back_is_read_with_the_one_before(kb, chunker):
    voices = [candidate("tts-a", "ivr-voice", roundtrip_cer=0.011, mos=4.1), candidate("tts-b", "ivr-voice", roundtrip_cer=0.0205, mos=4.3)]
    ingest(kb, chunker, ("ivr.md", b"# IVR voice: rules\n\nWe score the character error rate of the round trip. "
                                   b"It is capped at two percent. The one with the highest mean opinion score wins.\n"))
    rules, decision = decision_for(kb.connection, "ivr-voice", voices, voices)
    assert {(c.metric, c.comparison, c.threshold) for c in rules.criteria} == {("roundtrip_cer", "<=", 0.02)}
    assert decision.recommended.name == "tts-a"
