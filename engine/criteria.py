"""Acceptance criteria and selection policy per use case, as structured rules an admin can review.

The rules are written by people in the knowledge base (one acceptance-criteria document per use case, source
id `criteria:<use_case>`), extracted from its chunks into the `acceptance_criteria` and `use_case_policies`
tables, and from then on edited there. A re-extraction never overwrites rows an admin has saved (`reviewed`).

What extraction recognises, in any chunk of a `criteria:` document:
- table rows   | `latency_p95_ms` | <= | 10 | hard | why |
- bullet lines - `f1` >= 0.95 — hard — why
- policy lines Priority metric: `roc_auc`   and   Tie-breaker: `latency_p95_ms`
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine.access import require_admin
from engine.sources import SOURCE_ID_PATTERN
from engine.store import transaction, utc_now

COMPARISONS = (">=", "<=", ">", "<")
_METRIC = r"`?([A-Za-z][A-Za-z0-9_@.\-]*)`?"
_NUMBER = r"([-+]?\d+(?:\.\d+)?)"
_KIND = r"\**(hard|soft)\**"
_TABLE_ROW = re.compile(rf"^\s*\|\s*{_METRIC}\s*\|\s*(>=|<=|>|<)\s*\|\s*{_NUMBER}\s*\|\s*{_KIND}\s*\|\s*(.*?)\s*\|?\s*$", re.I)
_BULLET = re.compile(rf"^\s*[-*]\s+{_METRIC}\s*(>=|<=|>|<)\s*{_NUMBER}\s*[—–-]+\s*{_KIND}\s*(?:[—–-]+\s*(.*))?$", re.I)
_PRIORITY = re.compile(r"priority metric:?\**\s*`([A-Za-z][A-Za-z0-9_@.\-]*)`", re.I)
_TIE_BREAKER = re.compile(r"tie-?breaker:?\**\s*`([A-Za-z][A-Za-z0-9_@.\-]*)`", re.I)


class CriteriaError(ValueError):
    """An edited criterion or policy is malformed; the message says which row and what is wrong."""


@dataclass(frozen=True)
class AcceptanceCriterion:
    use_case: str
    metric: str
    comparison: str
    threshold: float
    hard: bool
    source_id: str
    rationale: str = ""
    reviewed: bool = False

    def __post_init__(self):
        where = f"criterion {self.use_case or '?'}/{self.metric or '?'}"
        if not self.use_case.strip() or not self.metric.strip():
            raise CriteriaError(f"{where}: use case and metric are required")
        if self.comparison not in COMPARISONS:
            raise CriteriaError(f"{where}: comparison {self.comparison!r} is not one of {', '.join(COMPARISONS)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float) or not math.isfinite(self.threshold):
            raise CriteriaError(f"{where}: threshold {self.threshold!r} is not a finite number")
        if not SOURCE_ID_PATTERN.match(self.source_id or ""):
            raise CriteriaError(f"{where}: source id {self.source_id!r} is not 'domain:entity'")

    def holds_for(self, value: float | None) -> bool:
        """A missing metric fails: a criterion that cannot be verified is not met (guideline:model-selection)."""
        if value is None or not math.isfinite(value):
            return False
        return {">=": value >= self.threshold, "<=": value <= self.threshold,
                ">": value > self.threshold, "<": value < self.threshold}[self.comparison]

    @property
    def label(self) -> str:
        return f"{self.metric} {self.comparison} {self.threshold:g} ({'hard' if self.hard else 'soft'})"


@dataclass(frozen=True)
class UseCasePolicy:
    use_case: str
    priority_metric: str
    tie_breaker: str | None
    source_id: str
    reviewed: bool = False

    def __post_init__(self):
        if not self.use_case.strip() or not (self.priority_metric or "").strip():
            raise CriteriaError(f"policy {self.use_case or '?'}: use case and priority metric are required")
        if not SOURCE_ID_PATTERN.match(self.source_id or ""):
            raise CriteriaError(f"policy {self.use_case}: source id {self.source_id!r} is not 'domain:entity'")


@dataclass(frozen=True)
class ExtractedRules:
    criteria: list[AcceptanceCriterion]
    policies: list[UseCasePolicy]


def extract_rules(chunks) -> ExtractedRules:
    """Criteria and policies found in chunks (objects with .source_id and .text) of `criteria:` documents."""
    criteria: dict[tuple, AcceptanceCriterion] = {}
    policies: dict[str, dict] = {}
    for chunk in chunks:
        domain, _, use_case = chunk.source_id.partition(":")
        if domain != "criteria" or not use_case:
            continue
        for line in chunk.text.splitlines():
            found = _TABLE_ROW.match(line) or _BULLET.match(line)
            if found:
                metric, comparison, threshold, kind, rationale = found.groups()
                key = (use_case, metric, comparison)
                rationale = (rationale or "").strip().strip("|").strip()
                if key in criteria and len(criteria[key].rationale) >= len(rationale):
                    continue  # the same rule stated twice (bullet and table, or chunk overlap): keep the fuller why
                criteria[key] = AcceptanceCriterion(
                    use_case, metric, comparison, float(threshold), kind.lower() == "hard", chunk.source_id, rationale
                )
        policy = policies.setdefault(use_case, {"source_id": chunk.source_id})
        if match := _PRIORITY.search(chunk.text):
            policy["priority_metric"] = match.group(1)
        if match := _TIE_BREAKER.search(chunk.text):
            policy["tie_breaker"] = match.group(1)
    return ExtractedRules(
        sorted(criteria.values(), key=lambda c: (c.use_case, not c.hard, c.metric)),
        [UseCasePolicy(use_case, p["priority_metric"], p.get("tie_breaker"), p["source_id"])
         for use_case, p in sorted(policies.items()) if p.get("priority_metric")],
    )


@dataclass(frozen=True)
class _Chunk:
    source_id: str
    text: str


def rebuild_extracted_rules(connection) -> ExtractedRules:
    """Re-derive the rules from the `criteria:` chunks; call inside the transaction that changed those chunks.

    A use case with an admin-reviewed criterion or policy belongs to the admin from then on and is left as saved;
    a use case whose document is gone loses its extracted rules."""
    chunks = [_Chunk(*row) for row in connection.execute(
        "SELECT source_id, text FROM chunks WHERE source_domain = 'criteria' ORDER BY document_id, chunk_index")]
    owned = {row[0] for row in connection.execute(
        "SELECT use_case FROM acceptance_criteria WHERE reviewed = 1 UNION SELECT use_case FROM use_case_policies WHERE reviewed = 1")}
    extracted = extract_rules(chunks)
    rules = ExtractedRules([c for c in extracted.criteria if c.use_case not in owned],
                           [p for p in extracted.policies if p.use_case not in owned])
    now = utc_now()
    connection.execute("DELETE FROM acceptance_criteria WHERE reviewed = 0")
    connection.execute("DELETE FROM use_case_policies WHERE reviewed = 0")
    connection.executemany(
        """INSERT INTO acceptance_criteria(use_case, metric, comparison, threshold, hard, source_id, rationale, reviewed, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT(use_case, metric, comparison) DO NOTHING""",
        [(c.use_case, c.metric, c.comparison, c.threshold, int(c.hard), c.source_id, c.rationale, now) for c in rules.criteria],
    )
    connection.executemany(
        """INSERT INTO use_case_policies(use_case, priority_metric, tie_breaker, source_id, reviewed, updated_at)
           VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT(use_case) DO NOTHING""",
        [(p.use_case, p.priority_metric, p.tie_breaker, p.source_id, now) for p in rules.policies],
    )
    return rules


def discard_review(connection, use_case: str) -> ExtractedRules:
    """Give a use case back to its document: drop the admin's rows and extract the rules afresh."""
    require_admin("editing acceptance criteria")
    with transaction(connection):
        connection.execute("DELETE FROM acceptance_criteria WHERE use_case = ?", (use_case,))
        connection.execute("DELETE FROM use_case_policies WHERE use_case = ?", (use_case,))
        return rebuild_extracted_rules(connection)


def criteria_for(connection, use_case: str) -> list[AcceptanceCriterion]:
    rows = connection.execute(
        """SELECT use_case, metric, comparison, threshold, hard, source_id, rationale, reviewed
           FROM acceptance_criteria WHERE use_case = ? ORDER BY hard DESC, metric""",
        (use_case,),
    ).fetchall()
    return [AcceptanceCriterion(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], bool(r[7])) for r in rows]


def policy_for(connection, use_case: str) -> UseCasePolicy | None:
    row = connection.execute(
        "SELECT use_case, priority_metric, tie_breaker, source_id, reviewed FROM use_case_policies WHERE use_case = ?",
        (use_case,),
    ).fetchone()
    return UseCasePolicy(row[0], row[1], row[2], row[3], bool(row[4])) if row else None


def ruled_use_cases(connection) -> list[str]:
    rows = connection.execute(
        "SELECT use_case FROM acceptance_criteria UNION SELECT use_case FROM use_case_policies ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


def save_reviewed_rules(connection, use_case: str, criteria: list[AcceptanceCriterion], policy: UseCasePolicy | None) -> None:
    """An admin's reviewed version of one use case's rules replaces what was there, in one transaction."""
    require_admin("editing acceptance criteria")
    if any(c.use_case != use_case for c in criteria) or (policy and policy.use_case != use_case):
        raise CriteriaError(f"every row must belong to use case {use_case!r}")
    keys = [(c.metric, c.comparison) for c in criteria]
    if len(set(keys)) != len(keys):
        raise CriteriaError(f"{use_case}: the same metric and comparison appear twice")
    now = utc_now()
    with transaction(connection):
        connection.execute("DELETE FROM acceptance_criteria WHERE use_case = ?", (use_case,))
        connection.executemany(
            """INSERT INTO acceptance_criteria(use_case, metric, comparison, threshold, hard, source_id, rationale, reviewed, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)""",
            [(c.use_case, c.metric, c.comparison, float(c.threshold), int(c.hard), c.source_id, c.rationale, now) for c in criteria],
        )
        if policy is not None:
            connection.execute(
                """INSERT INTO use_case_policies(use_case, priority_metric, tie_breaker, source_id, reviewed, updated_at)
                   VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(use_case) DO UPDATE SET priority_metric = excluded.priority_metric,
                   tie_breaker = excluded.tie_breaker, source_id = excluded.source_id, reviewed = 1, updated_at = excluded.updated_at""",
                (use_case, policy.priority_metric, policy.tie_breaker, policy.source_id, now),
            )
