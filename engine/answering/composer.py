"""The deterministic answer: the decision written out from its own data, used when the LLM's answer fails.

It says the same four things an LLM answer must (recommendation, why, why not the others, risks), with the
real metric values and a marker after each claim, so it always passes the verifier.
"""

from __future__ import annotations

from engine.answering.prompting import MAX_EXPLANATION_SENTENCES, explanation_opening
from engine.registry.metric_keys import metric_spec
from engine.rules.decision import Assessment, Decision

NEAR_BUDGET_SHARE = 0.10  # a budget (latency, size, error) met with less than 10% headroom is worth a risk line
NEAR_SCORE_SHARE = 0.01  # a score in [0, 1] within 1% of its threshold is worth a risk line


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
        among = "among the candidates that pass every hard criterion " if decision.has_hard_criteria else ""
        if decision.priority_metric:
            lines.append(f"- It ranks first {among}on the priority metric "
                         f"{decision.priority_metric}: {_value(winner.candidate, decision.priority_metric)} "
                         f"<<SRC:{decision.policy.source_id}>>")
        else:
            lines.append("- It is the only candidate that passes every hard criterion")
        lines += [f"- {_check_line(check)}" for check in winner.checks]
        lines += _policy_lines(decision, winner)
    elif decision.blocked:
        lines.append("Recommendation: none, because the rules cannot decide for this use case")
        lines += ["", "What is missing:"] + [f"- {reason}" for reason in decision.blocked]
        lines += ["", "The candidates side by side:"] + [f"- {_metrics_line(a.candidate)}" for a in decision.assessments]
        return _with_further_reading(lines, hits)
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
    return _with_further_reading(lines, hits)


def compose_explanation(decision: Decision) -> str:
    """The explanation the LLM is asked for, written from the decision: the prefilled opening, why, then why not the
    closest alternatives, each sentence ending with its marker. SFT data teaches this shape; it passes the verifier."""
    policy_source = f" <<SRC:{decision.policy.source_id}>>" if decision.policy else ""
    if decision.recommended:
        winner = decision.assessment(decision.recommended.name)
        metric = decision.priority_metric
        if metric and policy_source:
            among = " among the candidates that pass every hard criterion" if decision.has_hard_criteria else ""
            why = f"it ranks first{among} on {metric} with {_value(winner.candidate, metric)}{policy_source}."
        else:
            why = f"it is the only candidate that passes every hard criterion <<SRC:{decision.criteria[0].source_id}>>."
        sentences = [f"{explanation_opening(decision)} {why}"]
        others = [a for a in decision.assessments if a is not winner]
    elif decision.closest and decision.criteria:
        sentences = [f"{explanation_opening(decision)} none of them passes every hard criterion <<SRC:{decision.criteria[0].source_id}>>."]
        others = list(decision.assessments)
    else:
        return ""
    for assessment in others[:MAX_EXPLANATION_SENTENCES - 1]:
        sentences.append(_why_not_sentence(assessment, decision))
    return " ".join(sentences)


def _why_not_sentence(assessment: Assessment, decision: Decision) -> str:
    candidate = assessment.candidate
    if assessment.failed_hard:
        check = assessment.failed_hard[0]
        c = check.criterion
        shown = metric_spec(c.metric).format(check.value) if check.value is not None else "no logged value"
        return f"{candidate.name} has {c.metric} {shown}, which fails {c.metric} {c.comparison} {c.threshold:g} <<SRC:{c.source_id}>>."
    metric = decision.priority_metric
    shown = f" ({metric} {_value(candidate, metric)})" if metric else ""
    source = decision.policy.source_id if decision.policy else candidate.source_id
    return f"{candidate.name}{shown} {assessment.standing} <<SRC:{source}>>."


def _with_further_reading(lines: list[str], hits) -> str:
    cited = "\n".join(lines)
    further = [hit for hit in hits if f"<<SRC:{hit.source_id}>>" not in cited]
    further = list({hit.source_id: hit for hit in further}.values())[:2]
    if further:
        lines += ["", "Read before deploying: " + "; ".join(f"{hit.document_title} <<SRC:{hit.source_id}>>" for hit in further)]
    return "\n".join(lines)


def _policy_lines(decision: Decision, winner: Assessment) -> list[str]:
    """The team's own ranking rules that shaped the choice, each with the document that states it."""
    policy, lines = decision.policy, []
    if policy is None:
        return lines
    near = [a for a in decision.assessments if a.near_best and a is not winner]
    if policy.near_best_margin is not None and near:
        lines.append(f"- Candidates within the team's near-best margin on {policy.priority_metric} count as equivalent "
                     f"<<SRC:{policy.source_of('near_best')}>>")
    if policy.family_order and near:
        lines.append(f"- Among equivalent candidates the team prefers the simpler family, in the order "
                     f"{', '.join(policy.family_order)} <<SRC:{policy.source_of('family_order')}>>")
    if policy.tie_breaker and near:
        lines.append(f"- Ties are broken on {policy.tie_breaker} <<SRC:{policy.source_of('tie_breaker')}>>")
    return lines


def _metrics_line(candidate) -> str:
    shown = ", ".join(f"{name} {metric_spec(name).format(value)}" for name, value in sorted(candidate.metrics.items()))
    return f"{candidate.name} <<SRC:{candidate.source_id}>>: {shown or 'no metrics logged'}"


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
                         f"noise of a single held-out split <<SRC:{decision.policy.source_of('near_best')}>>")
        if not decision.has_hard_criteria:
            risks.append("No hard acceptance criterion is recorded for this use case, so nothing was ruled out: check latency, "
                         "size and quality budgets with the team before deploying")
        if winner.candidate.alias != "champion":
            risks.append(f"{winner.candidate.name} does not hold the champion alias yet: moving the alias is the deployment "
                         "decision, to be recorded with its approval")
    return risks


def _near_limit(metric: str, value: float, threshold: float) -> bool:
    """Little headroom: within 1% of the threshold for scores in [0, 1], within 10% of it otherwise.

    Stated without numbers on purpose: the verifier reads every number next to a metric name as a metric value."""
    share = NEAR_SCORE_SHARE if metric_spec(metric).bounded else NEAR_BUDGET_SHARE
    return abs(value - threshold) <= abs(threshold) * share
