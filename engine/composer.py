"""The deterministic answer: the decision written out from its own data, used when the LLM's answer fails.

It says the same four things an LLM answer must (recommendation, why, why not the others, risks), with the
real metric values and a marker after each claim, so it always passes the verifier.
"""

from __future__ import annotations

from engine.decision import Assessment, Decision
from engine.metric_catalog import NEAR_BEST_ABSOLUTE, metric_spec

NEAR_BUDGET_SHARE = 0.10  # a budget (latency, size, error) met with less than 10% headroom is worth a risk line


def _value(candidate, metric: str) -> str:
    return metric_spec(metric).format(candidate.metrics[metric]) if metric in candidate.metrics else "missing"


def _check_line(check) -> str:
    c = check.criterion
    verdict = "meets" if check.passed else "fails"
    shown = metric_spec(c.metric).format(check.value) if check.value is not None else "no logged value"
    return f"{c.metric} {shown} {verdict} {c.comparison} {c.threshold:g} ({'hard' if c.hard else 'soft'}) <<SRC:{c.source_id}>>"


def compose_answer(decision: Decision, hits=(), *, age_note: str | None = None) -> str:
    """`hits` are the retrieved knowledge chunks; the best two not cited yet are pointed to for further reading."""
    lines: list[str] = []
    if decision.recommended:
        winner = decision.assessment(decision.recommended.name)
        lines.append(f"Recommendation: {winner.candidate.name} (version {winner.candidate.version}) <<SRC:{winner.candidate.source_id}>>")
        lines += ["", "Why:"]
        if decision.priority_metric:
            lines.append(f"- It ranks first among the candidates that pass every hard criterion on the priority metric "
                         f"{decision.priority_metric}: {_value(winner.candidate, decision.priority_metric)} <<SRC:{decision.policy.source_id}>>")
        lines += [f"- {_check_line(check)}" for check in winner.checks]
    else:
        lines.append("Recommendation: none of the candidates passes every hard criterion, so no model should be deployed"
                     + (f" <<SRC:{decision.policy.source_id}>>" if decision.policy else ""))
        if decision.closest:
            closest = decision.assessment(decision.closest.name)
            lines += ["", f"Closest: {closest.candidate.name} <<SRC:{closest.candidate.source_id}>>"]
            lines += [f"- {_check_line(check)}" for check in closest.failed_hard]
    others = [a for a in decision.assessments if a.candidate is not decision.recommended and a.candidate is not decision.closest]
    if others:
        lines += ["", "Why not the others:"]
        lines += [f"- {_why_not(a, decision)}" for a in others]
    risks = _risks(decision, age_note)
    if risks:
        lines += ["", "Risks:"]
        lines += [f"- {risk}" for risk in risks]
    cited = "\n".join(lines)
    further = [hit for hit in hits if f"<<SRC:{hit.source_id}>>" not in cited]
    further = list({hit.source_id: hit for hit in further}.values())[:2]
    if further:
        lines += ["", "Read before deploying: " + "; ".join(f"{hit.document_title} <<SRC:{hit.source_id}>>" for hit in further)]
    return "\n".join(lines)


def _why_not(assessment: Assessment, decision: Decision) -> str:
    candidate = assessment.candidate
    head = f"{candidate.name} <<SRC:{candidate.source_id}>>"
    if assessment.failed_hard:
        return f"{head}: " + "; ".join(_check_line(check) for check in assessment.failed_hard)
    metric = decision.priority_metric
    shown = f" ({metric} {_value(candidate, metric)})" if metric else ""
    policy = f" <<SRC:{decision.policy.source_id}>>" if decision.policy else ""
    return f"{head}{shown}: {assessment.standing}{policy}"


def _risks(decision: Decision, age_note: str | None) -> list[str]:
    """Risks that follow from the data itself: thin margins, near-budget values, soft misses, stale metrics."""
    risks = []
    if age_note:
        risks.append(age_note)
    winner = decision.assessment(decision.recommended.name) if decision.recommended else None
    if winner:
        for check in winner.failed_soft:
            risks.append(f"It misses a soft criterion, so the exception needs a written approval: {_check_line(check)}")
        for check in winner.checks:
            c = check.criterion
            if c.hard and check.value is not None and _near_limit(c.metric, check.value, c.threshold):
                risks.append(f"{c.metric} is close to its limit, so re-measure it before deploying: {_check_line(check)}")
        near = [a.candidate.name for a in decision.assessments if a.near_best and a is not winner]
        if near:
            risks.append(f"{', '.join(near)} is within the near-best margin on {decision.priority_metric}: the difference may be "
                         f"noise of a single held-out split" + (f" <<SRC:{decision.policy.source_id}>>" if decision.policy else ""))
        if winner.candidate.alias != "champion":
            risks.append(f"{winner.candidate.name} does not hold the champion alias yet: moving the alias is the deployment "
                         "decision, to be recorded with its approval")
    return risks


def _near_limit(metric: str, value: float, threshold: float) -> bool:
    """Little headroom: within the near-best margin for scores in [0, 1], within 10% of the threshold otherwise.

    Stated without numbers on purpose: the verifier reads every number next to a metric name as a metric value."""
    margin = NEAR_BEST_ABSOLUTE if metric_spec(metric).bounded else abs(threshold) * NEAR_BUDGET_SHARE
    return abs(value - threshold) <= margin
