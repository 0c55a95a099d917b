"""Review of flagged answers: the admin's correction, accepted or rejected, and what it teaches the next snapshot.

A flagged answer is one a user gave a thumbs-down. Its review (table `feedback_reviews`, one row per answer,
created by the first review action) has a state, `pending` until an admin accepts or rejects it; the
admin's correction text, which starts as the user's "right answer" and is the admin's own once saved; a note;
and who did the last review action (save, accept, reject, reopen) and when: the caller's identity
(engine.access.roles: the signed-in administrator, "operator" from the CLI). Every action is for administrators only.
The review is kept apart from the feedback row because a user may edit or withdraw their feedback at any time
(`save_feedback` replaces it): an accepted correction is the admin's word and stays accepted; the page says when
the user has withdrawn the flag (a flag withdrawn before any review leaves the queue).

Every action is one transaction that reads the current state and writes, or refuses with ReviewError (a
ValueError) and changes nothing: an empty or oversized correction, a correction citing a source the registry
does not know (or a malformed marker), accepting or rejecting what is not pending, editing what is decided.
Accepted and rejected reviews are reopened first, so the text that was accepted is the text that trains.

What a correction teaches (`training_text`): continual pretraining learns every token of a document as text to
imitate, so the training text holds the question, the candidates and their metrics as they were when it was
asked (with their citation markers), the rules' decision, and the corrected answer; never the wrong answer or
the user's complaint, which would teach the model the very mistake. The candidates make the corrected
recommendation and its numbers true *of those metrics on that date* rather than a bare claim ("deploy X for
tumour screening") that the next registry change makes stale. Corrections join the train split only: they
are few, written to be learned, and the validation split measures held-out knowledge and replay text, which a
handful of corrections would only make noisier (training.dataset_snapshot).

The retraining suggestion (seed 004's triggers: new documentation, user feedback) counts what the last
trained snapshot does not hold: accepted corrections (new or edited since) and knowledge documents added or
changed. Retraining is suggested from `SUGGEST_AFTER_CORRECTIONS` corrections, or when the new or changed
documents reach `SUGGEST_AFTER_DOCUMENT_SHARE` of the knowledge base (seed 004: more than 10% new data is a
retrain with "significant new data"), at least one document. Both are arguments of `retraining_suggestion`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from engine.access.roles import current_identity, require_admin
from engine.answering.citations import find_markers, strip_markers
from engine.answering.records import MAX_FEEDBACK_CHARS, AnswerRecord, Feedback, load_answer
from engine.core.database import transaction, utc_now
from engine.knowledge.sources import resolve
from engine.registry.metric_keys import display_order, metric_spec

REVIEW_STATES = ("pending", "accepted", "rejected")
MAX_CORRECTION_CHARS = MAX_FEEDBACK_CHARS  # the user's "right answer" fits, so a prefilled draft can be saved as is
MAX_NOTE_CHARS = 2_000
MAX_TRAINING_CANDIDATES = 8  # the prompt shows as many (engine.answering.prompting.MAX_PROMPT_CANDIDATES)
SUGGEST_AFTER_CORRECTIONS = 5
SUGGEST_AFTER_DOCUMENT_SHARE = 0.10
FINISHED_WITHOUT_MODEL = ("failed", "cancelled")  # job states whose snapshot taught no model

_MARKER_START = re.compile(r"<<[ \t]*SRC\b")


class ReviewError(ValueError):
    """A review action was refused; the message says why. Nothing was changed."""


@dataclass(frozen=True)
class FlaggedAnswer:
    answer: AnswerRecord
    feedback: Feedback
    state: str  # 'pending' | 'accepted' | 'rejected'
    correction: str | None  # the admin's saved text; None until the first save
    note: str | None
    reviewer: str | None  # who did the last review action, and when
    reviewed_at: str | None

    @property
    def draft(self) -> str:
        """The text the correction editor starts from: the admin's saved correction, else the user's right answer."""
        return self.correction if self.correction is not None else (self.feedback.correct_answer or "")

    @property
    def withdrawn(self) -> bool:
        """The user has since turned the thumbs-down into a thumbs-up."""
        return self.feedback.rating != 0


@dataclass(frozen=True)
class RetrainingSuggestion:
    corrections: int  # accepted corrections the reference snapshot lacks (new, or edited since)
    documents: int  # knowledge documents added or changed since the reference snapshot
    reference: str | None  # the snapshot compared with; None when no model has been trained yet
    min_corrections: int
    min_documents: int

    @property
    def due(self) -> bool:
        return self.corrections >= self.min_corrections or self.documents >= self.min_documents

    @property
    def message(self) -> str:
        counts = (f"{self.corrections} accepted correction{'s' if self.corrections != 1 else ''} and "
                  f"{self.documents} new/changed document{'s' if self.documents != 1 else ''}")
        if self.reference is None:
            return f"{counts}, and no LLM has been trained yet: consider training."
        return f"{counts} since the last snapshot (`{self.reference}`): consider retraining."


# --- reading --------------------------------------------------------------------------------------------------------

_SELECT = """SELECT f.answer_id, f.rating, f.what_was_wrong, f.correct_answer, f.created_at, f.updated_at,
                    coalesce(r.state, 'pending') AS state, r.correction, r.note, r.reviewer, r.reviewed_at
             FROM feedback f JOIN answers a ON a.id = f.answer_id
             LEFT JOIN feedback_reviews r ON r.answer_id = f.answer_id
             WHERE (f.rating = 0 OR r.answer_id IS NOT NULL)"""


def _filters(state: str | None, llm_version: str | None) -> tuple[str, list]:
    if state is not None and state not in REVIEW_STATES:
        raise ValueError(f"state must be one of {', '.join(REVIEW_STATES)}, not {state!r}")
    where, params = "", []
    if state is not None:
        where, params = where + " AND coalesce(r.state, 'pending') = ?", params + [state]
    if llm_version is not None:
        where, params = where + " AND a.llm_version = ?", params + [llm_version]
    return where, params


def _flagged(connection, row) -> FlaggedAnswer:
    feedback = Feedback(*(row[name] for name in ("answer_id", "rating", "what_was_wrong", "correct_answer",
                                                 "created_at", "updated_at")))
    return FlaggedAnswer(load_answer(connection, row["answer_id"]), feedback, row["state"], row["correction"],
                         row["note"], row["reviewer"], row["reviewed_at"])


def list_flagged(connection, *, state: str | None = None, llm_version: str | None = None,
                 limit: int = 100) -> list[FlaggedAnswer]:
    """Flagged answers (and reviewed ones whose flag was withdrawn), newest first, optionally of one state or version."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive whole number, not {limit!r}")
    where, params = _filters(state, llm_version)
    rows = connection.execute(f"{_SELECT}{where} ORDER BY f.answer_id DESC LIMIT ?", [*params, limit]).fetchall()
    return [_flagged(connection, row) for row in rows]


def get_flagged(connection, answer_id: int) -> FlaggedAnswer:
    """One flagged answer; KeyError when the answer does not exist or was never flagged."""
    row = connection.execute(f"{_SELECT} AND f.answer_id = ?", (answer_id,)).fetchone()
    if row is None:
        if connection.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
            raise KeyError(f"no answer {answer_id}")
        raise KeyError(f"answer {answer_id} is not flagged: only thumbs-down answers are reviewed")
    return _flagged(connection, row)


def review_counts(connection, *, llm_version: str | None = None) -> dict[str, int]:
    """How many flagged answers are in each state (every state present, zeros included)."""
    where, params = _filters(None, llm_version)
    rows = connection.execute(f"SELECT state, count(*) FROM ({_SELECT}{where}) GROUP BY state", params).fetchall()
    return {state: 0 for state in REVIEW_STATES} | {state: count for state, count in rows}


def flagged_versions(connection) -> list[str]:
    """The LLM versions that wrote a flagged answer, for the page's filter."""
    return [row[0] for row in connection.execute(
        f"SELECT DISTINCT a.llm_version FROM ({_SELECT}) s JOIN answers a ON a.id = s.answer_id ORDER BY 1")]


# --- checking ----------------------------------------------------------------------------------------------------------


def _text(name: str, value, limit: int, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ReviewError(f"the {name} must be text, not {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise ReviewError(f"the {name} is empty: write the right answer first")
    if len(value) > limit:
        raise ReviewError(f"the {name} is {len(value):,} characters long; the limit is {limit:,}")
    return value


def offered_source_ids(answer: AnswerRecord) -> set[str]:
    """What the answer's evidence may cite: its candidates, criteria, policy and retrieved knowledge."""
    ids = {c.get("source_id") for c in answer.candidates} | {s.get("source_id") for s in answer.sources}
    ids |= {c.get("source_id") for c in answer.decision.get("criteria", [])} | {answer.decision.get("policy_source_id")}
    return {source_id for source_id in ids if source_id}


def correction_problems(connection, answer: AnswerRecord, correction: str) -> list[str]:
    """What keeps a correction from being accepted: markers citing sources neither the registry nor the answer's
    evidence knows, and text that starts a marker but is not a valid one (it would teach a broken citation)."""
    problems = []
    cited = find_markers(correction)
    known = offered_source_ids(answer) | set(resolve(connection, cited))
    if unknown := [source_id for source_id in cited if source_id not in known]:
        plural = "s" if len(unknown) > 1 else ""
        problems.append(f"it cites source{plural} the registry does not know: {', '.join(unknown)} (register "
                        f"{'them' if plural else 'it'} on the Knowledge page, or remove the marker{plural})")
    if malformed := len(_MARKER_START.findall(strip_markers(correction))):
        problems.append(f"it has {malformed} malformed citation marker{'s' if malformed > 1 else ''} "
                        "(write them as <<SRC:domain:id>>, on one line)")
    return problems


# --- acting (each one transaction) ---------------------------------------------------------------------------------


def _write(connection, answer_id: int, state: str, correction: str | None, note: str | None) -> None:
    connection.execute(
        """INSERT INTO feedback_reviews(answer_id, state, correction, note, reviewer, reviewed_at)
           VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT(answer_id) DO UPDATE SET state = excluded.state, correction = excluded.correction,
           note = excluded.note, reviewer = excluded.reviewer, reviewed_at = excluded.reviewed_at""",
        (answer_id, state, correction, note, current_identity().name, utc_now()),
    )


def _pending(connection, answer_id: int, action: str) -> FlaggedAnswer:
    current = get_flagged(connection, answer_id)
    if current.state != "pending":
        raise ReviewError(f"answer {answer_id} is already {current.state}: reopen it to {action}")
    return current


def save_correction(connection, answer_id: int, correction: str, *, note: str | None = None) -> FlaggedAnswer:
    """Save the admin's correction of a pending flagged answer (a draft: it teaches nothing until accepted).
    A note of None keeps the saved one."""
    require_admin("reviewing feedback")
    correction = _text("correction", correction, MAX_CORRECTION_CHARS, required=True)
    note = _text("note", note, MAX_NOTE_CHARS, required=False)
    with transaction(connection):
        current = _pending(connection, answer_id, "edit the correction")
        _write(connection, answer_id, "pending", correction, current.note if note is None else note or None)
    return get_flagged(connection, answer_id)


def accept(connection, answer_id: int, correction: str | None = None, *, note: str | None = None) -> FlaggedAnswer:
    """Accept a pending flagged answer's correction (the given text, else the saved draft or the user's right answer):
    it joins the next snapshot's training text."""
    require_admin("reviewing feedback")
    if correction is not None:
        correction = _text("correction", correction, MAX_CORRECTION_CHARS, required=True)
    note = _text("note", note, MAX_NOTE_CHARS, required=False)
    with transaction(connection):
        current = _pending(connection, answer_id, "accept it again")
        text = correction if correction is not None else _text("correction", current.draft, MAX_CORRECTION_CHARS,
                                                               required=True)
        if problems := correction_problems(connection, current.answer, text):
            raise ReviewError(f"not accepted: {'; '.join(problems)}")
        _write(connection, answer_id, "accepted", text, current.note if note is None else note or None)
    return get_flagged(connection, answer_id)


def reject(connection, answer_id: int, *, note: str | None = None) -> FlaggedAnswer:
    """Reject a pending flagged answer (the user was wrong, or the answer cannot be corrected): it teaches nothing."""
    require_admin("reviewing feedback")
    note = _text("note", note, MAX_NOTE_CHARS, required=False)
    with transaction(connection):
        current = _pending(connection, answer_id, "reject it again")
        _write(connection, answer_id, "rejected", current.correction, current.note if note is None else note or None)
    return get_flagged(connection, answer_id)


def reopen(connection, answer_id: int, *, note: str | None = None) -> FlaggedAnswer:
    """Put an accepted or rejected answer back to pending (its correction is kept as the draft): an accepted one
    leaves the next snapshot."""
    require_admin("reviewing feedback")
    note = _text("note", note, MAX_NOTE_CHARS, required=False)
    with transaction(connection):
        current = get_flagged(connection, answer_id)
        if current.state == "pending":
            raise ReviewError(f"answer {answer_id} is pending already")
        _write(connection, answer_id, "pending", current.correction, current.note if note is None else note or None)
    return get_flagged(connection, answer_id)


# --- what a correction teaches -------------------------------------------------------------------------------------


def training_text(answer: AnswerRecord, correction: str) -> str:
    """The correction as a CPT document: the question, the candidates as they were (with their markers), the rules'
    decision, then the corrected answer (see the module docstring for why, and why not the wrong answer)."""
    asked = answer.asked_at[:10]
    parts = [f"Question: {answer.question.strip()}"]
    if answer.candidates:
        use_case = f" for {answer.use_case}" if answer.use_case else ""
        lines = [f"Candidates{use_case} on {asked}, from the MLflow model registry:"]
        lines += [_candidate_line(candidate, answer.decision) for candidate in _ordered_candidates(answer)]
        if (left_out := len(answer.candidates) - MAX_TRAINING_CANDIDATES) > 0:
            lines.append(f"({left_out} more candidates rank lower.)")
        parts.append("\n".join(lines))
    if answer.decision:
        recommended = answer.decision.get("recommended")
        verdict = f"recommend {recommended}" if recommended else "no candidate passes every hard criterion"
        parts.append(f"Decision by the acceptance criteria: {verdict}.")
    parts.append(f"Answer (reviewed by the ML platform team, {asked}):\n{correction.strip()}")
    return "\n\n".join(parts)


def _ordered_candidates(answer: AnswerRecord) -> list[dict]:
    order = [row["name"] for row in answer.decision.get("candidates", [])]
    ranked = sorted(answer.candidates, key=lambda c: order.index(c["name"]) if c["name"] in order else len(order))
    return ranked[:MAX_TRAINING_CANDIDATES]


def _candidate_line(candidate: dict, decision: dict) -> str:
    first = [c["metric"] for c in decision.get("criteria", [])]
    if decision.get("priority_metric"):
        first.insert(0, decision["priority_metric"])
    metrics = candidate.get("metrics", {})
    names = [name for name in dict.fromkeys(first + display_order(metrics)) if name in metrics]
    values = ", ".join(f"{metric_spec(name).label} {metric_spec(name).format(metrics[name])}" for name in names)
    champion = " (champion)" if candidate.get("alias") == "champion" else ""
    marker = f" <<SRC:{candidate['source_id']}>>" if candidate.get("source_id") else ""
    family = f", {candidate['family']}" if candidate.get("family") else ""
    standing = next((row.get("standing") for row in decision.get("candidates", []) if row["name"] == candidate["name"]), "")
    return f"- {candidate['name']} version {candidate.get('version', '?')}{champion}{marker}{family}: {values}" + (
        f"; {standing}" if standing else "")


def accepted_training_texts(connection) -> list[tuple[int, str]]:
    """(answer id, training text) of every accepted correction, by answer id."""
    rows = connection.execute(
        "SELECT answer_id, correction FROM feedback_reviews WHERE state = 'accepted' ORDER BY answer_id").fetchall()
    return [(answer_id, training_text(load_answer(connection, answer_id), correction)) for answer_id, correction in rows]


def text_digest(text: str) -> str:
    """How snapshots and suggestions recognise a correction's training text (sha256 of its UTF-8 bytes)."""
    return hashlib.sha256(text.encode()).hexdigest()


# --- retraining suggestion -----------------------------------------------------------------------------------------


def trained_snapshot(jobs, snapshots):
    """The snapshot the newest job that did not fail or get cancelled learns (or learnt) from, when it is still
    written; None when no model has been trained. `jobs` newest first (engine.lifecycle.training_jobs.list_jobs)."""
    written = {snapshot.id: snapshot for snapshot in snapshots}
    for job in jobs:
        if job.state not in FINISHED_WITHOUT_MODEL and job.snapshot_id in written:
            return written[job.snapshot_id]
    return None


def retraining_suggestion(connection, reference, changes, *, min_corrections: int = SUGGEST_AFTER_CORRECTIONS,
                          document_share: float = SUGGEST_AFTER_DOCUMENT_SHARE) -> RetrainingSuggestion:
    """What the reference snapshot (a training.dataset_snapshot.DatasetSnapshot, or None when nothing was trained) lacks:
    accepted corrections not in it, and documents added or changed since (`changes`: its SnapshotChanges; None
    or an exception when unknown, then only corrections count)."""
    known = {entry["text_sha256"] for entry in (reference.manifest.get("correction_documents", []) if reference else [])}
    corrections = sum(1 for _, text in accepted_training_texts(connection) if text_digest(text) not in known)
    total = connection.execute("SELECT count(DISTINCT document_id) FROM chunks").fetchone()[0]
    if reference is None:
        documents = total
    elif hasattr(changes, "added") and hasattr(changes, "changed"):
        documents = len(changes.added) + len(changes.changed)
    else:
        documents = 0
    return RetrainingSuggestion(corrections, documents, reference.id if reference else None, min_corrections,
                                max(1, math.ceil(document_share * total)))
