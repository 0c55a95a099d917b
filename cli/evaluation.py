"""`deploywise eval --versions base,3,4 [--golden PATH] [--json]`: the Evaluation page's comparison for terminals and
scripts, run in this process. Exit 0 when every version gets GO, 1 otherwise (a NO-GO,
or an evaluation that failed midway), 2 for a request that cannot run (unknown version, malformed golden file or
gate configuration); nothing is written then."""

from __future__ import annotations

import json
import sys

from cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, stderr_progress
from engine.answering.golden_set import DEFAULT_GOLDEN
from eval.gate import DEFAULT_GATE
from eval.harness import run_evaluation
from eval.plan import EvaluationError, parse_versions, plan_evaluation

EXIT_NO_GO = EXIT_PARTIAL
SHOWN = (("domain_perplexity", "domain perplexity", "{:.2f}"), ("general_perplexity", "general perplexity", "{:.2f}"),
         ("accuracy", "accuracy", "{:.0%}"), ("citation_presence", "citation presence", "{:.0%}"),
         ("citation_correctness", "citation correctness", "{:.0%}"), ("refusal_accuracy", "refusal accuracy", "{:.0%}"),
         ("agreement", "agreement", "{:.0%}"),
         ("explanation_kept_rate", "explanations kept", "{:.0%}"), ("explanation_shown_rate", "explanations shown", "{:.0%}"),
         ("latency_p50_ms", "latency p50", "{:,.0f} ms"), ("latency_p95_ms", "latency p95", "{:,.0f} ms"))


def register(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate LLM versions side by side and apply the promotion gate")
    evaluate.add_argument("--versions", required=True, help="comma-separated: base, champion or version numbers (base,3,4)")
    evaluate.add_argument("--golden", help="golden set JSONL (default demo/golden.jsonl)")
    evaluate.add_argument("--gate", help="gate thresholds YAML (default configs/gate.yaml)")
    evaluate.add_argument("--per-category", type=int, metavar="N", help="only the first N items of each category "
                                                                         "(quicker; a subset never gets GO)")
    evaluate.add_argument("--items", help="only these golden item ids, comma-separated")
    evaluate.add_argument("--snapshot", help="dataset snapshot whose held-out text is measured (default: the newest "
                                             "evaluated version's training snapshot)")
    evaluate.add_argument("--max-new-tokens", type=int, help="longest explanation, in tokens (default DEPLOYWISE_LLM_MAX_NEW_TOKENS)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args, settings) -> int:
    try:
        plan = plan_evaluation(settings, parse_versions(args.versions), args.golden or DEFAULT_GOLDEN,
                               gate=args.gate or DEFAULT_GATE, snapshot_id=args.snapshot, per_category=args.per_category,
                               item_ids=[i.strip() for i in args.items.split(",") if i.strip()] if args.items else None,
                               max_new_tokens=args.max_new_tokens)
    except EvaluationError as error:
        raise UsageError(str(error)) from None
    print(f"evaluation {plan.evaluation_id}: {', '.join(p.label for p in plan.versions)} on {len(plan.items)} of "
          f"{len(plan.golden.items)} golden items, held-out text of snapshot {plan.snapshot_id}", file=sys.stderr, flush=True)
    try:
        result = run_evaluation(plan, on_progress=stderr_progress)
    except EvaluationError as error:
        print(f"deploywise: {error}", file=sys.stderr)
        return EXIT_NO_GO
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(_text(result))
    return EXIT_OK if result.all_go else EXIT_NO_GO


def _text(result) -> str:
    lines = [f"evaluation {result.plan.evaluation_id}"]
    for version in result.versions:
        lines.append(f"{version.planned.label} ({version.llm_label}): {version.verdict.verdict}")
        values = [f"{label} {fmt.format(version.metrics[key])}" for key, label, fmt in SHOWN if key in version.metrics]
        lines.append("  " + ", ".join(values))
        lines += [f"  - {reason}" for reason in version.verdict.reasons]
    return "\n".join(lines)
