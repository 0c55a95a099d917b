"""Rules read from the words teams write: comparisons, units, hard and soft, preferences, margins, family orders,
and the sentences that describe rather than require."""

from __future__ import annotations

import pytest

from engine.registry.metric_keys import metric_spec
from engine.registry.metric_vocabulary import MetricVocabulary
from engine.rules.extraction import confirm, read_rules
from engine.rules.proposed_rules import CRITERION, FAMILY_ORDER, NEAR_BEST, PRIORITY, TIE_BREAKER, UNREAD, ProposedRule
from engine.rules.statements import headed_rule_units, rule_units

KEYS = ["latency_p50_ms", "latency_p95_ms", "model_size_mb", "roc_auc", "f1", "recall", "precision", "mape", "rmse",
        "log_loss", "training_time_s", "throughput_rps", "peak_ram_gb", "ndcg_at_10", "cost_per_1k_usd", "team_score"]
VOCABULARY = MetricVocabulary(KEYS, catalog_fallback=True)
OBSERVED = {"mape": [8.2, 11.0], "recall": [0.91, 0.88]}
FAMILIES = ["logistic-regression", "gradient-boosting", "random-forest", "neural-net"]


def criteria(sentence: str) -> set[tuple]:
    return {(r.metrics[0], r.comparison, round(r.threshold, 6), r.hard)
            for unit in rule_units(sentence) for r in read_rules(unit, VOCABULARY, FAMILIES, OBSERVED) if r.kind == CRITERION}


@pytest.mark.parametrize(("sentence", "expected"), [
    ("Tail latency has to stay below 40 milliseconds.", {("latency_p95_ms", "<", 40, True)}),
    ("We need a recall no lower than 0.85.", {("recall", ">=", 0.85, True)}),
    ("A model is not deployed unless its recall is at least 90%.", {("recall", ">=", 0.9, True)}),
    ("The serialized model must not exceed 1.2 GB.", {("model_size_mb", "<=", 1200, True)}),
    ("The 95th percentile latency must be under 0.2 s.", {("latency_p95_ms", "<", 200, True)}),
    ("Ideally the median latency is under 5 ms.", {("latency_p50_ms", "<", 5, False)}),
    ("Precision should preferably be above 0.5.", {("precision", ">", 0.5, False)}),
    ("F1 has to be 0.9 or higher.", {("f1", ">=", 0.9, True)}),
    ("MAPE between 0 and 12% is required.", {("mape", ">=", 0, True), ("mape", "<=", 12, True)}),
    ("Root mean squared error must not be above 40.", {("rmse", "<=", 40, True)}),
    ("Log loss may not exceed 0.35.", {("log_loss", "<=", 0.35, True)}),
    ("Training should take less than an hour.", {("training_time_s", "<", 3600, False)}),
    ("The filter must sustain at least 2,000 requests per second.", {("throughput_rps", ">=", 2000, True)}),
    ("It has to fit in 2 GB of RAM.", {("peak_ram_gb", "<=", 2, True)}),
    ("Offline NDCG@10 must be at least 0.42.", {("ndcg_at_10", ">=", 0.42, True)}),
    ("Serving cost should stay under five cents per thousand queries.", {("cost_per_1k_usd", "<", 0.05, False)}),
    ("The p95 latency budget is 10 ms.", {("latency_p95_ms", "<=", 10, True)}),
    ("A candidate is rejected if its p95 latency exceeds 25 ms.", {("latency_p95_ms", "<=", 25, True)}),
    ("Models are excluded when recall falls below 0.8.", {("recall", ">=", 0.8, True)}),
    ("Larger artefacts are accepted with a written exception, but the model size must not exceed 50 MB.",
     {("model_size_mb", "<=", 50, True)}),
    ("Ideally the p50 latency is under 5 ms, but it must never exceed 20 ms.",
     {("latency_p50_ms", "<", 5, False), ("latency_p50_ms", "<=", 20, True)}),
    ("F1 should be above 0.9 and the p95 latency must stay under 30 ms.",
     {("f1", ">", 0.9, False), ("latency_p95_ms", "<", 30, True)}),
    ("- `f1` >= 0.95 — hard — The second reader must keep errors rare.", {("f1", ">=", 0.95, True)}),
    ("- `model_size_mb` <= 20 — soft — larger artefacts only with a written justification.", {("model_size_mb", "<=", 20, False)}),
    ("- Recall: at least 0.9", {("recall", ">=", 0.9, True)}),  # a list item states a rule without a modal
    ("The service cannot be slower than 250 ms at p95.", {("latency_p95_ms", "<=", 250, True)}),
    ("No candidate may take longer than 80 ms at p95.", {("latency_p95_ms", "<=", 80, True)}),
    ("We will not ship anything whose recall is below 0.8.", {("recall", ">=", 0.8, True)}),
    ("We would rather not ship anything whose precision is below 0.6, but the editors can overrule it.",
     {("precision", ">=", 0.6, False)}),
    ("Recall has to be 0.8 at minimum.", {("recall", ">=", 0.8, True)}),
    ("- Log loss: 0.3 at most.", {("log_loss", "<=", 0.3, True)}),
    ("The gateway can absorb at most 1,500 requests per second.", {("throughput_rps", "<=", 1500, True)}),
    ("Throughput must be at least 3 requests a minute.", {("throughput_rps", ">=", 0.05, True)}),
    ("The p95 latency must stay within 20-40 ms.", {("latency_p95_ms", ">=", 20, True), ("latency_p95_ms", "<=", 40, True)}),
    ("The model has to fit in a quarter of a megabyte.", {("model_size_mb", "<=", 0.25, True)}),
    ("It must use no more than 2 GiB of RAM.", {("peak_ram_gb", "<=", 2, True)}),  # who writes GiB logs GiB
    ("Recall must be at least 90 percentage points.", {("recall", ">=", 0.9, True)}),
    ("The p95 latency must be under two hundred milliseconds.", {("latency_p95_ms", "<", 200, True)}),
    ("Exceeding 8 GB of RAM disqualifies a candidate.", {("peak_ram_gb", "<=", 8, True)}),
    ("Recall shall not fall short of ninety percent.", {("recall", ">=", 0.9, True)}),
    ("A score of 0.7 or better on the team score is required.", set()),  # direction unknown: "better" cannot be read
])
def test_comparisons_in_words_units_and_hardness(sentence, expected):
    assert criteria(sentence) == expected


@pytest.mark.parametrize("sentence", [
    "The 2024 model had an AUC of 0.91 and a p99 latency of 55 ms.",
    "We retrain every 30 days on at least 2 million rows.",
    "If latency is above 40 ms the page times out.",
    "Forests can easily exceed the 5 MB budget.",
    "In 2025 a random forest was rejected because its p95 latency was above 10 ms.",
    "The request to raise the latency budget above 5 ms was declined.",
    "The regulator's guidance quotes a recall above 0.8 for comparable systems.",
    "Anything slower than 10 ms at the 95th percentile produces visible stutter.",
    "Recall over the 2024 backtest improved.",
    "The vendor we are replacing measures 15% WER on it.",
    "Until last quarter we ranked by recall; please don't any more.",
    "Recall must improve on the champion by at least 2.5 percentage points.",  # a difference, not a threshold
    "When PSI rose above 0.3 last spring we retrained the champion.",
])
def test_sentences_that_describe_propose_no_rule(sentence):
    assert criteria(sentence) == set()


def rules_of(sentence: str, kind: str) -> list[ProposedRule]:
    return [r for unit in rule_units(sentence) for r in read_rules(unit, VOCABULARY, FAMILIES, OBSERVED) if r.kind == kind]


@pytest.mark.parametrize(("sentence", "metric", "higher"), [
    ("Of the models that qualify, pick the one with the best AUC.", "roc_auc", True),
    ("Choose the one with the lowest RMSE.", "rmse", False),
    ("Prefer the highest F1.", "f1", True),
    ("Among the rerankers that meet the NDCG bar and the latency cap, we ship the one with the best recall.", "recall", True),
    ("Priority metric: `log_loss` (lower is better).", "log_loss", False),
    ("Ranking of eligible models: precision, highest first.", "precision", True),
    ("Selection: lowest MAPE.", "mape", False),
])
def test_preference_sentences_name_the_priority_metric(sentence, metric, higher):
    [rule] = rules_of(sentence, PRIORITY)
    assert (rule.metrics, rule.higher_is_better) == ((metric,), higher)


@pytest.mark.parametrize(("sentence", "metric", "higher"), [
    ("Ties go to the smaller model.", "model_size_mb", False),
    ("If two are equally good, take the faster one.", "latency_p95_ms", False),
    ("If MAPE is identical, prefer the lower RMSE.", "rmse", False),
    ("If it is a dead heat, the cheaper one wins.", "cost_per_1k_usd", False),
    ("Tie-breaker: `latency_p50_ms` (lower is better).", "latency_p50_ms", False),
])
def test_tie_breaks(sentence, metric, higher):
    [rule] = rules_of(sentence, TIE_BREAKER)
    assert (rule.metrics, rule.higher_is_better) == ((metric,), higher)
    assert not rules_of(sentence, PRIORITY)


def test_margins_and_family_orders():
    [absolute] = rules_of("Candidates whose AUC is within 0.005 of the best are treated as equivalent.", NEAR_BEST)
    assert (absolute.metrics, absolute.threshold, absolute.relative) == (("roc_auc",), 0.005, False)
    [relative] = rules_of("Near-best margin: within 1% (relative) of the best RMSE.", NEAR_BEST)
    assert (relative.threshold, relative.relative) == (0.01, True)
    [order] = rules_of("Prefer the simplest family, in the order logistic regression, gradient boosting, random forest, "
                       "neural net.", FAMILY_ORDER)
    assert order.families == tuple(FAMILIES)
    assert not rules_of("Gradient boosting and logistic regression were within the margin, so the simpler one won.", FAMILY_ORDER)


def test_tables_in_a_teams_own_columns():
    table = ("| What we measure | Requirement | Binding? |\n|---|---|---|\n"
             "| Recall at the alert threshold | no lower than 85% | yes |\n"
             "| Time to retrain | under 6 hours | no, but tell us |\n")
    assert criteria(table) == {("recall", ">=", 0.85, True), ("training_time_s", "<", 21600, False)}


def test_a_metric_no_candidate_logs_is_still_a_rule_that_everyone_fails():
    assert criteria("Specificity must be at least 0.7.") == {("specificity", ">=", 0.7, True)}
    assert "specificity" not in VOCABULARY.logged


def test_every_rule_is_confirmed_against_its_own_sentence():
    [rule] = rules_of("Recall must be at least 0.9.", CRITERION)
    assert confirm(rule, VOCABULARY)
    invented = ProposedRule(CRITERION, "Recall must be at least 0.9.", ("recall",), ">=", 0.95, "0.95")
    assert not confirm(invented, VOCABULARY)  # the number is not in the sentence
    elsewhere = ProposedRule(CRITERION, "Recall must be at least 0.9.", ("precision",), ">=", 0.9, "0.9")
    assert not confirm(elsewhere, VOCABULARY)  # nor is the metric


@pytest.mark.parametrize(("key", "label", "higher", "unit"), [
    ("latency_p99_ms", "p99 latency", False, "ms"),
    ("p95_latency_ms", "p95 latency", False, "ms"),
    ("val_auc", "val auc", True, ""),
    ("sensitivity", "sensitivity", True, ""),
    ("wer", "word error rate", False, ""),
    ("peak_ram_gb", "peak ram", False, "GB"),
    ("mape_pct", "MAPE", False, "%"),
    ("map_50_95", "map 50 95", True, ""),
    ("fairness_gap", "fairness gap", False, ""),
    ("team_score", "team score", None, ""),
])
def test_metric_keys_are_understood_from_their_parts(key, label, higher, unit):
    spec = metric_spec(key)
    assert (spec.label, spec.higher_is_better, spec.unit) == (label, higher, unit)


def test_phrases_find_the_logged_key_and_a_generic_word_names_every_key_it_fits():
    vocabulary = MetricVocabulary(["latency_p50_ms", "latency_p95_ms", "map_50", "map_50_95", "catalog_coverage", "serve_p99_ms"])
    found = {m.words: m.keys for m in vocabulary.mentions(
        "Latency matters; the 95th percentile latency and mAP at IoU 0.5 and mAP@0.5:0.95, catalogue coverage, serving p99.")}
    assert found["Latency"] == ("latency_p50_ms", "latency_p95_ms", "serve_p99_ms")  # a percentile of a time is a latency
    assert found["95th percentile latency"] == ("latency_p95_ms",)
    assert found["mAP at IoU 0.5"] == ("map_50",) and found["mAP@0.5:0.95"] == ("map_50_95",)
    assert found["catalogue coverage"] == ("catalog_coverage",)
    assert found["serving"] == ("serve_p99_ms",)


def criteria_with(keys: list[str], text: str, observed: dict | None = None) -> set[tuple]:
    vocabulary = MetricVocabulary(keys, catalog_fallback=True)
    return {(r.metrics[0], r.comparison, round(r.threshold, 6), r.hard)
            for heading, unit in headed_rule_units(text) for r in read_rules(unit, vocabulary, (), observed or {}, heading)
            if r.kind == CRITERION}


@pytest.mark.parametrize(("keys", "text", "expected"), [
    # the one metric a number's unit and the sentence's words can bound
    (["cpu_latency_ms", "top1_accuracy"], "Inference on the CPU pool must stay under eighty milliseconds per image.",
     {("cpu_latency_ms", "<", 80, True)}),
    (["gen_ms_per_img", "fid_30k"], "**How fast does it have to be?**\nFour seconds per 1024 by 1024 image at the most, on one GPU.",
     {("gen_ms_per_img", "<=", 4000, True)}),
    (["p90_err_m", "median_err_m"], "The 90th percentile of the distance to the drop point must be under 250 m¹.",
     {("p90_err_m", "<", 250, True)}),
    (["top1_accuracy", "top5_accuracy"], "Top-5 accuracy shall not fall short of ninety-five percent.",
     {("top5_accuracy", ">=", 0.95, True)}),
    # units teams write: cost per request against per 1k, energy, power, mass, yield, footnote marks, decimal commas
    (["cost_usd_per_1k"], "Cost: at most 0.4 cents per request (blocking).", {("cost_usd_per_1k", "<=", 4.0, True)}),
    (["energy_mj_per_tile"], "- Energy: no more than 2 joules per 512 x 512 tile.", {("energy_mj_per_tile", "<=", 2000, True)}),
    (["avg_power_mw"], "Its average power draw must not go above one and a half milliwatts.", {("avg_power_mw", "<=", 1.5, True)}),
    (["train_co2_kg"], "Training the model can't have emitted more than 50 kg CO2e.", {("train_co2_kg", "<=", 50, True)}),
    (["rmse_kg_ha"], "RMSE must be no more than 0.65 t/ha.", {("rmse_kg_ha", "<=", 650, True)}),
    (["p99_lookup_us"], "The 99th percentile lookup latency must be at most 2 ms³.", {("p99_lookup_us", "<=", 2000, True)}),
    (["peak_rss_mb"], "- Peak memory ≤ 2,5 GB", {("peak_rss_mb", "<=", 2500, True)}),
    (["toxicity_rate"], "Toxicity: at most 1 per 1,000 responses (blocking).", {("toxicity_rate", "<=", 0.001, True)}),
    (["nsfw_flag_rate"], "The safety classifier must flag fewer than one image in 500.", {("nsfw_flag_rate", "<", 0.002, True)}),
    (["f1_val"], "We would also like an F1 of at least nine tenths.", {("f1_val", ">=", 0.9, False)}),
    (["fa_per_day"], "It must not raise more than one false alarm a week.", {("fa_per_day", "<=", round(1 / 7, 6), True)}),
    (["ttfa_ms"], "Time to first audio is required to stay under a quarter of a second.", {("ttfa_ms", "<", 250, True)}),
    # which metric a comparison bounds
    (["flash_kb", "ram_kb"], "It has to fit in half a megabyte of flash, and it has to run in under forty kilobytes of RAM.",
     {("flash_kb", "<=", 500, True), ("ram_kb", "<", 40, True)}),
    (["mase_seasonal_naive", "forecast_job_s"], "A candidate's MASE, scaled by that seasonal naive forecast, must be below 0.85.",
     {("mase_seasonal_naive", "<", 0.85, True)}),
    (["macro_f1_top200", "micro_f1_test"], "- macro F1 over the 200 most frequent tags: 0.55 or better",
     {("macro_f1_top200", ">=", 0.55, True)}),
    (["recall_at_50", "recall_at_50_de"], "- AC1: Recall@50 on the clause benchmark is at least 90%.", {("recall_at_50", ">=", 0.9, True)}),
    (["recall_at_50", "recall_at_50_de"], "Recall@50 on the German subset must be 0.85 or better.",
     {("recall_at_50_de", ">=", 0.85, True)}),
    (["within_50m_rate", "p90_err_m"], "At least 85% of parcels must be placed within 50 m of the drop point.",
     {("within_50m_rate", ">=", 0.85, True)}),
    (["eo_gap_age"], "The equal opportunity gap across owner age bands shall not exceed 0.05.", {("eo_gap_age", "<=", 0.05, True)}),
    (["npv"], "Its negative predictive value for an infarction within 30 days must be at least 99.5%.", {("npv", ">=", 0.995, True)}),
    (["r2_holdout", "r2_worst_region"], "| Gate | Limit | Blocking |\n|---|---|---|\n"
     "| R² on the 2024 hold-out farms | 0.70 or higher | yes |\n"
     "| R² in the worst of the nine regions | not below 0.45 | yes |\n",
     {("r2_holdout", ">=", 0.7, True), ("r2_worst_region", ">=", 0.45, True)}),
    (["train_wall_s"], "A model whose full retraining takes longer than 90 minutes is not released.", {("train_wall_s", "<=", 5400, True)}),
    (["synthesis_rtf"], "A synthesis real-time factor below 0.1 would be nice, but it is not a condition.",
     {("synthesis_rtf", "<", 0.1, False)}),
    (["artifact_size_mb"], "## Nice to have\n\n- [ ] Model artifact under 100 MB\n", {("artifact_size_mb", "<", 100, False)}),
    (["disk_size_mb"], "If you can, keep the model under 500 MB on disk.", {("disk_size_mb", "<", 500, False)}),
    # a bilingual rule is read once per language; "der" is an article, not DER
    (["der_eval", "spk_count_acc"], "- Genauigkeit der geschätzten Sprecheranzahl ≥ 90 % / "
     "accuracy of the estimated number of speakers ≥ 90%",
     {("spk_count_acc", ">=", 0.9, True)}),
    # a "key: value" block under a heading line is a list with that heading
    (["hamming_loss_test", "avg_tags_per_doc"], "gates (blocking):\n  Hamming loss on the test set: at most 0.0040\n\n"
     "advisory (not blocking):\n  average number of tags per article: between 3 and 8\n",
     {("hamming_loss_test", "<=", 0.004, True), ("avg_tags_per_doc", ">=", 3, False), ("avg_tags_per_doc", "<=", 8, False)}),
])
def test_units_subjects_and_layouts_of_teams_we_had_not_seen(keys, text, expected):
    assert criteria_with(keys, text) == expected


@pytest.mark.parametrize(("keys", "text"), [
    (["p99_lookup_us"], "The former limit of 5 ms was retired in 2024."),
    (["p95_latency_ms"], "FYI, not part of the bar: if a request takes longer than 2 seconds, the portal retries it once."),
    (["mase_seasonal_naive"], "A forecast that does not beat seasonal naive by more than 15% on MASE does not go live."),
    (["pinball_q90_mw"], "The limit on the pinball loss at P90 is relaxed from 4.0 MW to 4.5 MW."),
])
def test_history_conditions_and_changes_are_not_thresholds(keys, text):
    assert criteria_with(keys, text) == set()


@pytest.mark.parametrize(("keys", "sentence", "metric", "higher"), [
    (["wer_clean", "wer_noisy"], "We deploy whichever qualifying model has the lowest word error rate on the noisy set.",
     "wer_noisy", False),
    (["precision_at_1pct_fpr"], "Where more than one model satisfies criteria 3.1 to 3.3, the model with the highest precision at a "
     "1% false positive rate is promoted.", "precision_at_1pct_fpr", True),
    (["rule_out_rate", "npv"], "Among the models that meet both, choose the one that rules out the largest share of patients "
     "(the rule-out rate).", "rule_out_rate", True),
    (["voice_size_mb", "mos"], "Among the voices that meet all four conditions, the one with the highest mean opinion score wins.",
     "mos", True),
    (["ndcg10_clauses", "index_mb"], "- AC4: the one with the best nDCG@10 on the clause benchmark is selected.", "ndcg10_clauses", True),
])
def test_preferences_of_teams_we_had_not_seen(keys, sentence, metric, higher):
    vocabulary = MetricVocabulary(keys, catalog_fallback=True)
    [rule] = [r for r in read_rules(sentence, vocabulary) if r.kind == PRIORITY]
    assert (rule.metrics, rule.higher_is_better) == ((metric,), higher)


def test_a_tickets_priority_field_is_not_a_ranking():
    vocabulary = MetricVocabulary(["index_mb", "ndcg10_clauses"], catalog_fallback=True)
    assert not read_rules("**Type:** Story **Priority:** Major **Labels:** embeddings, vector-index", vocabulary)


def test_a_requirement_the_product_cannot_bind_is_proposed_as_unread_not_dropped():
    vocabulary = MetricVocabulary(["roc_auc", "p95_latency_ms"], catalog_fallback=True)
    [rule] = read_rules("The widget count must be at most 3 per page.", vocabulary)
    assert (rule.kind, rule.comparison, rule.written, rule.hard) == (UNREAD, "<=", "3", True)
    assert confirm(rule, vocabulary)
    assert not read_rules("The dashboard shows at most 3 widgets per page.", vocabulary)  # no requirement words
