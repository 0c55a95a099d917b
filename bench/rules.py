"""Rules from the team's own documents: extraction precision and recall, recommendation accuracy, routing precision.

Run from the repo root: `.venv/bin/python bench/rules.py [--no-routing]`. The last line printed is JSON with every figure.

What is measured
1. Rule extraction on the unseen use cases of `tests/rule_cases/` (guidelines in plain prose, written apart from the
   extractor, each with the rules a careful reader takes from it in `case.yaml`), per batch: batch 1 was written
   first and the extractor was developed against it; batch 2 was written later by someone who had not read the
   extractor, and measured before any change was made for it (see bench/README.md for that first figure). For every case the product
   (`engine.rules.rulebook.rules_from_texts`, against that case's registry metrics) and the baseline (the markup-only
   extractor the product had before: backticked metric names in `- metric >= 0.9 — hard —` bullets, `| metric |
   >= | 0.9 | hard |` table rows and `Priority metric:` lines, kept below as it was) read the same guideline.
   A rule is matched when metric, comparison, threshold (to 1e-6) and hard/soft all agree; the columns before it
   count partial agreement (metric; + comparison; + threshold). Precision = matched / extracted, recall =
   matched / expected, over all cases; the priority metric (and its direction) is counted the same way.
2. Recommendation accuracy: `engine.rules.decision.decide` on each case's registry with the rules each extractor
   read; right when it names the expected model (or nothing, where nothing passes the written rules; a case that
   expects nothing is also "right" when nothing was read, which tests/test_rule_cases.py does not accept). "wrong
   model" counts the worst outcome apart: a model recommended that the written rules do not choose.
3. Routing precision on `demo/routing.jsonl` (paraphrases, look-alikes, off-topic and two-named questions over
   the demo registry's own descriptions) with the bundled embedder: a routed question is right when it went to
   its use case; precision = right routings / routings; refusals and questions asked back are counted apart.
   The baseline is the product's earlier rule (the best use case by meaning above a similarity of 0.30).
4. Time to read one use case's rules (`rules_from_texts`), median over the cases: the chat pays it per question.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from rule_cases_support import load_cases  # noqa: E402

from engine.core.settings import load_settings  # noqa: E402
from engine.demo.registry import USE_CASES  # noqa: E402
from engine.knowledge.documents import parse_file  # noqa: E402
from engine.llm.bundled import load_embedder  # noqa: E402
from engine.registry.candidates import Candidate  # noqa: E402
from engine.registry.use_cases import match_use_case, use_case_descriptions  # noqa: E402
from engine.rules.criteria import AcceptanceCriterion, UseCasePolicy  # noqa: E402
from engine.rules.decision import decide  # noqa: E402
from engine.rules.governance import use_case_terms  # noqa: E402
from engine.rules.rulebook import RuleText, rules_from_texts  # noqa: E402

# The baseline: the product's markup-only extraction before it read prose (engine/rules/criteria.py until this change).
_METRIC = r"`?([A-Za-z][A-Za-z0-9_@.\-]*)`?"
_NUMBER = r"([-+]?\d+(?:\.\d+)?)"
_KIND = r"\**(hard|soft)\**"
_TABLE_ROW = re.compile(rf"^\s*\|\s*{_METRIC}\s*\|\s*(>=|<=|>|<)\s*\|\s*{_NUMBER}\s*\|\s*{_KIND}\s*\|\s*(.*?)\s*\|?\s*$", re.I)
_BULLET = re.compile(rf"^\s*[-*]\s+{_METRIC}\s*(>=|<=|>|<)\s*{_NUMBER}\s*[—–-]+\s*{_KIND}\s*(?:[—–-]+\s*(.*))?$", re.I)
_PRIORITY = re.compile(r"priority metric:?\**\s*`([A-Za-z][A-Za-z0-9_@.\-]*)`", re.I)


def baseline_rules(use_case: str, text: str) -> tuple[list[AcceptanceCriterion], UseCasePolicy | None]:
    criteria = {}
    for line in text.splitlines():
        if found := _TABLE_ROW.match(line) or _BULLET.match(line):
            metric, comparison, threshold, kind, _ = found.groups()
            criteria[(metric, comparison)] = AcceptanceCriterion(use_case, metric, comparison, float(threshold),
                                                                 kind.lower() == "hard", f"criteria:{use_case}")
    priority = _PRIORITY.search(text)
    return list(criteria.values()), UseCasePolicy(use_case, priority.group(1), None, f"criteria:{use_case}") if priority else None


def candidates_of(case) -> list[Candidate]:
    """Every model the case registers, a decoy of another use case (`extra_tags`) under its own use case."""
    return [Candidate(m.name, "1", None, m.tags(case)["use_case"], case.task, m.family, m.description, "run", dict(m.metrics),
                      f"registry:{m.name}", None) for m in case.models]


def rule_keys(criteria) -> list[tuple]:
    return [(c.metric, c.comparison, round(float(c.threshold), 6), bool(c.hard)) for c in criteria]


def score(extracted: list[tuple], expected: list[tuple]) -> dict:
    """Matches at four depths: metric; + comparison; + threshold; + hard/soft (the full rule)."""
    depths = {}
    for depth, name in enumerate(("metric", "comparison", "threshold", "rule"), start=1):
        left = [key[:depth] for key in expected]
        hits = 0
        for key in extracted:
            if key[:depth] in left:
                left.remove(key[:depth])
                hits += 1
        depths[name] = hits
    return depths


def extraction_and_accuracy(cases) -> dict:
    totals = {who: {"extracted": 0, "expected": 0, "metric": 0, "comparison": 0, "threshold": 0, "rule": 0,
                    "priority_right": 0, "priority_extracted": 0, "right": 0, "wrong_model": 0} for who in ("product", "baseline")}
    timings, rows = [], []
    for case in cases:
        registry = candidates_of(case)
        candidates = [c for c in registry if c.use_case == case.use_case]
        parsed = parse_file(case.guideline_path.name, case.guideline_path.read_bytes())  # HTML and front matter as ingested
        text = "\n\n".join(section.text for section in parsed.sections)
        expected = [(r.metric, r.comparison, round(float(r.threshold), 6), r.hard) for r in case.expected_rules]
        started = time.perf_counter()
        book = rules_from_texts(case.use_case, [RuleText("doc:guideline", case.name, text)], candidates, use_case_terms(registry))
        timings.append((time.perf_counter() - started) * 1000)
        read = {"product": (list(book.criteria), book.policy, book.blockers()),
                "baseline": (*baseline_rules(case.use_case, text), ())}
        row = {"case": case.name, "expected": case.expected_recommendation}
        for who, (criteria, policy, blockers) in read.items():
            keys = rule_keys(criteria)
            total = totals[who]
            total["extracted"] += len(keys)
            total["expected"] += len(expected)
            for depth, hits in score(keys, expected).items():
                total[depth] += hits
            if policy is not None:
                total["priority_extracted"] += 1
                direction = policy.priority_higher_is_better
                total["priority_right"] += bool(case.priority and policy.priority_metric == case.priority.metric
                                                and direction in (None, case.priority.higher_is_better))
            recommended = decide(case.use_case, candidates, criteria, policy, blockers).recommended
            got = recommended.name if recommended else None
            total["right"] += got == case.expected_recommendation
            total["wrong_model"] += got is not None and got != case.expected_recommendation  # the worst outcome
            row[who] = got
        rows.append(row)
    priorities = sum(1 for case in cases if case.priority)
    summary = {}
    for who, total in totals.items():
        summary[who] = {
            **{f"precision_{d}": round(total[d] / total["extracted"], 3) if total["extracted"] else 0.0
               for d in ("metric", "comparison", "threshold", "rule")},
            **{f"recall_{d}": round(total[d] / total["expected"], 3) for d in ("metric", "comparison", "threshold", "rule")},
            "priority_precision": round(total["priority_right"] / total["priority_extracted"], 3) if total["priority_extracted"] else 0.0,
            "priority_recall": round(total["priority_right"] / priorities, 3) if priorities else 0.0,
            "recommendation_accuracy": round(total["right"] / len(cases), 3),
            "wrong_model_recommended": total["wrong_model"],
            "rules_extracted": total["extracted"], "rules_expected": total["expected"],
        }
    summary["cases"] = rows
    summary["rules_read_ms_median"] = round(statistics.median(timings), 2)
    return summary


def routing() -> dict:
    """Routing precision on demo/routing.jsonl, the product's rule against the earlier similarity floor."""
    embedder = load_embedder(load_settings().embedding_model)

    def embed(texts):
        return embedder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)

    candidates = [Candidate(f"{u.name}-{r.family}", "1", None, u.name, u.task, r.family, u.purpose, "run", {},
                            f"registry:{u.name}-{r.family}", None) for u in USE_CASES for r in u.recipes]
    items = [json.loads(line) for line in (ROOT / "demo" / "routing.jsonl").read_text().splitlines() if line.strip()]
    descriptions = use_case_descriptions(candidates)
    names = sorted(descriptions)
    vectors = embed([descriptions[n] for n in names])

    def earlier(question: str) -> str | None:
        similarities = vectors @ embed([question])[0]
        best = int(np.argmax(similarities))
        return names[best] if similarities[best] >= 0.30 else None

    result = {}
    for who, route in (("product", lambda q: match_use_case(q, candidates, embed).use_case), ("baseline", earlier)):
        routed = right = refused_right = refusals_expected = paraphrases = paraphrases_routed = 0
        for item in items:
            got = route(item["question"])
            expected = item["expected"] if item["expected"] != "ambiguous" else None
            if got is not None:
                routed += 1
                right += got == expected
            if expected is None:
                refusals_expected += 1
                refused_right += got is None
            else:
                paraphrases += 1
                paraphrases_routed += got == expected
        result[who] = {"routing_precision": round(right / routed, 3) if routed else 1.0, "routed": routed,
                       "paraphrases_routed": f"{paraphrases_routed}/{paraphrases}",
                       "not_routed_when_it_must_not": f"{refused_right}/{refusals_expected}"}
    result["items"] = len(items)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-routing", action="store_true", help="skip the routing part (it loads the embedder)")
    args = parser.parse_args()
    cases = load_cases()
    figures = {}
    for batch in sorted({case.batch for case in cases}):
        chosen = [case for case in cases if case.batch == batch]
        figures[f"batch_{batch}"] = report(f"batch {batch}", chosen)
    if len(figures) > 1:
        figures["all"] = report("all batches", cases, rows=False)
    if not args.no_routing:
        figures["routing"] = routing()
        r = figures["routing"]
        print(f"Routing on demo/routing.jsonl ({r['items']} questions)")
        for who in ("baseline", "product"):
            s = r[who]
            print(f"  {who:9} precision {s['routing_precision']}  routed {s['routed']}  paraphrases routed "
                  f"{s['paraphrases_routed']}  look-alikes/off-topic/ambiguous not routed {s['not_routed_when_it_must_not']}")
    print(json.dumps(figures))


def report(title: str, cases, rows: bool = True) -> dict:
    ex = extraction_and_accuracy(cases)
    print(f"Rule extraction, {title}: {len(cases)} unseen use cases ({ex['product']['rules_expected']} expected rules)")
    print(f"{'':10} {'P metric':>9} {'P +comp':>8} {'P +thr':>7} {'P rule':>7} {'R metric':>9} {'R +comp':>8} {'R +thr':>7} "
          f"{'R rule':>7} {'P prio':>7} {'R prio':>7} {'recommend':>10} {'wrong model':>12}")
    for who in ("baseline", "product"):
        s = ex[who]
        print(f"{who:10} {s['precision_metric']:>9} {s['precision_comparison']:>8} {s['precision_threshold']:>7} "
              f"{s['precision_rule']:>7} {s['recall_metric']:>9} {s['recall_comparison']:>8} {s['recall_threshold']:>7} "
              f"{s['recall_rule']:>7} {s['priority_precision']:>7} {s['priority_recall']:>7} {s['recommendation_accuracy']:>10} "
              f"{s['wrong_model_recommended']:>12}")
    for row in ex["cases"] if rows else ():
        mark = "ok " if row["product"] == row["expected"] else "MISS"
        print(f"  {mark} {row['case']:28} expected {row['expected']!s:26} product {row['product']!s:26} baseline {row['baseline']}")
    print(f"Reading one use case's rules: {ex['rules_read_ms_median']} ms (median)")
    return ex


if __name__ == "__main__":
    main()
