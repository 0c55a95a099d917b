"""Acceptance criteria and selection policy per use case, as structured rules, and what an admin has decided.

The rules are read from the team's own documents at answer time (engine.rules.rulebook); this module holds their
shape and the admin's part: a reviewed rule set per use case (which from then on wins over the documents), the
direction of a metric nobody else gives one to, and which use case a document governs when its text does not
say. A reviewed use case belongs to the admin until given back to its documents (`discard_review`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from engine.access.roles import require_admin
from engine.core.database import transaction, utc_now
from engine.knowledge.sources import SOURCE_ID_PATTERN

COMPARISONS = (">=", "<=", ">", "<")


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
    sentence: str = ""  # the document's own words it was read from

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
        """A missing metric fails: a criterion that cannot be verified is not met."""
        if value is None or not math.isfinite(value):
            return False
        return {">=": value >= self.threshold, "<=": value <= self.threshold,
                ">": value > self.threshold, "<": value < self.threshold}[self.comparison]

    @property
    def label(self) -> str:
        return f"{self.metric} {self.comparison} {self.threshold:g} ({'hard' if self.hard else 'soft'})"


@dataclass(frozen=True)
class UseCasePolicy:
    """How the candidates that pass are ranked: every part is the team's own (no part applies unless a document or an
    admin states it), each with the source id of the document that states it."""

    use_case: str
    priority_metric: str
    tie_breaker: str | None
    source_id: str
    reviewed: bool = False
    priority_higher_is_better: bool | None = None  # None: the metric's own direction
    tie_breaker_higher_is_better: bool | None = None
    near_best_margin: float | None = None  # candidates this close to the best are equivalent; None: only the best
    near_best_relative: bool = False  # the margin is a share of the best value (1% = 0.01)
    family_order: tuple[str, ...] = ()  # within the near-best set, simplest family first
    part_sources: dict = field(default_factory=dict, compare=False)  # "tie_breaker"/"near_best"/"family_order" -> source id

    def __post_init__(self):
        if not self.use_case.strip() or not (self.priority_metric or "").strip():
            raise CriteriaError(f"policy {self.use_case or '?'}: use case and priority metric are required")
        if not SOURCE_ID_PATTERN.match(self.source_id or ""):
            raise CriteriaError(f"policy {self.use_case}: source id {self.source_id!r} is not 'domain:entity'")
        if self.near_best_margin is not None and not (math.isfinite(self.near_best_margin) and self.near_best_margin >= 0):
            raise CriteriaError(f"policy {self.use_case}: near-best margin {self.near_best_margin!r} is not a number >= 0")

    def source_of(self, part: str) -> str:
        return self.part_sources.get(part) or self.source_id


def reviewed_rules(connection, use_case: str) -> tuple[list[AcceptanceCriterion], UseCasePolicy | None, str | None]:
    """The admin's reviewed rules of a use case and who saved them; ([], None, None) when it has none."""
    rows = connection.execute(
        """SELECT use_case, metric, comparison, threshold, hard, source_id, rationale, sentence, reviewed_by
           FROM acceptance_criteria WHERE use_case = ? AND reviewed = 1 ORDER BY hard DESC, metric""", (use_case,)).fetchall()
    criteria = [AcceptanceCriterion(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], True, r[7]) for r in rows]
    row = connection.execute(
        """SELECT use_case, priority_metric, tie_breaker, source_id, priority_higher_is_better, tie_breaker_higher_is_better,
                  near_best_margin, near_best_relative, family_order, reviewed_by
           FROM use_case_policies WHERE use_case = ? AND reviewed = 1""", (use_case,)).fetchone()
    policy = None
    if row:
        policy = UseCasePolicy(row[0], row[1], row[2], row[3], True, _bool(row[4]), _bool(row[5]), row[6], bool(row[7]),
                               tuple(json.loads(row[8] or "[]")))
    reviewer = (row[9] if row else None) or (rows[0][8] if rows else None)
    if not criteria and policy is None and not _marked_reviewed(connection, use_case):
        return [], None, None
    return criteria, policy, reviewer or "admin"


def _bool(value) -> bool | None:
    return None if value is None else bool(value)


def _marked_reviewed(connection, use_case: str) -> bool:
    """A use case an admin reviewed down to no rule at all still belongs to the admin."""
    return connection.execute("SELECT 1 FROM reviewed_use_cases WHERE use_case = ?", (use_case,)).fetchone() is not None


def reviewed_use_cases(connection) -> list[str]:
    return [row[0] for row in connection.execute("SELECT use_case FROM reviewed_use_cases ORDER BY 1")]


def save_reviewed_rules(connection, use_case: str, criteria: list[AcceptanceCriterion], policy: UseCasePolicy | None,
                        reviewer: str = "admin") -> None:
    """An admin's reviewed version of one use case's rules replaces what was there, in one transaction."""
    require_admin("editing acceptance criteria")
    if any(c.use_case != use_case for c in criteria) or (policy and policy.use_case != use_case):
        raise CriteriaError(f"every row must belong to use case {use_case!r}")
    keys = [(c.metric, c.comparison, c.hard) for c in criteria]
    if len(set(keys)) != len(keys):
        raise CriteriaError(f"{use_case}: the same metric, comparison and kind appear twice")
    now = utc_now()
    with transaction(connection):
        connection.execute("DELETE FROM acceptance_criteria WHERE use_case = ?", (use_case,))
        connection.execute("DELETE FROM use_case_policies WHERE use_case = ?", (use_case,))
        connection.executemany(
            """INSERT INTO acceptance_criteria(use_case, metric, comparison, threshold, hard, source_id, rationale, sentence,
                                               reviewed, reviewed_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)""",
            [(c.use_case, c.metric, c.comparison, float(c.threshold), int(c.hard), c.source_id, c.rationale, c.sentence,
              reviewer, now) for c in criteria],
        )
        if policy is not None:
            connection.execute(
                """INSERT INTO use_case_policies(use_case, priority_metric, tie_breaker, source_id, priority_higher_is_better,
                       tie_breaker_higher_is_better, near_best_margin, near_best_relative, family_order, reviewed, reviewed_by,
                       updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)""",
                (use_case, policy.priority_metric, policy.tie_breaker, policy.source_id, policy.priority_higher_is_better,
                 policy.tie_breaker_higher_is_better, policy.near_best_margin, int(policy.near_best_relative),
                 json.dumps(list(policy.family_order)), reviewer, now),
            )
        connection.execute(
            """INSERT INTO reviewed_use_cases(use_case, reviewed_by, reviewed_at) VALUES (?, ?, ?)
               ON CONFLICT(use_case) DO UPDATE SET reviewed_by = excluded.reviewed_by, reviewed_at = excluded.reviewed_at""",
            (use_case, reviewer, now))


def discard_review(connection, use_case: str) -> None:
    """Give a use case back to its documents: drop the admin's rules, the documents' are read again."""
    require_admin("editing acceptance criteria")
    with transaction(connection):
        connection.execute("DELETE FROM acceptance_criteria WHERE use_case = ?", (use_case,))
        connection.execute("DELETE FROM use_case_policies WHERE use_case = ?", (use_case,))
        connection.execute("DELETE FROM reviewed_use_cases WHERE use_case = ?", (use_case,))


def metric_directions(connection) -> dict[str, bool]:
    """Directions an admin gave to metrics that neither the catalog nor the documents direct (True: higher is better)."""
    return {row[0]: bool(row[1]) for row in connection.execute("SELECT metric, higher_is_better FROM metric_directions")}


def set_metric_direction(connection, metric: str, higher_is_better: bool | None, admin: str = "admin") -> None:
    """None forgets the admin's direction."""
    require_admin("setting a metric's direction")
    if not (metric or "").strip():
        raise CriteriaError("a metric name is required")
    _set_or_forget(connection, "metric_directions", "metric", metric,
                   None if higher_is_better is None else {"higher_is_better": int(higher_is_better)}, admin)


NO_USE_CASE = ""  # an admin's "this document governs no use case"


def document_assignments(connection) -> dict[str, str]:
    """Document origin -> the use case an admin says it governs ('' for none)."""
    return {row[0]: row[1] for row in connection.execute("SELECT origin, use_case FROM document_use_cases")}


def assign_document(connection, origin: str, use_case: str | None, admin: str = "admin") -> None:
    """Which use case a document governs, by an admin: a name, NO_USE_CASE for none, None to let its text decide."""
    require_admin("choosing the use case a document governs")
    _set_or_forget(connection, "document_use_cases", "origin", origin, None if use_case is None else {"use_case": use_case}, admin)


def _set_or_forget(connection, table: str, key_column: str, key: str, values: dict | None, admin: str) -> None:
    """One admin decision row: written (with who and when) or, for None, forgotten."""
    with transaction(connection):
        if values is None:
            connection.execute(f"DELETE FROM {table} WHERE {key_column} = ?", (key,))
            return
        columns = [key_column, *values, "set_by", "set_at"]
        updates = ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
        connection.execute(
            f"INSERT INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT({key_column}) DO UPDATE SET {updates}", (key, *values.values(), admin, utc_now()))
