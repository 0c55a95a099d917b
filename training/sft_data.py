"""SFT datasets: named sets of instruction/output pairs in the knowledge database, reviewed, then exported.

Pairs come from training.sft_generation (knowledge chunks in several styles, the product's own recommendation
task, refusals) and from accepted feedback corrections. Every candidate pair goes through `add_pairs`, which
validates it (training.sft_pair_checks.pair_problem) and drops duplicates; what is dropped is counted by reason on
the dataset, so an administrator sees how much a generator wasted and why.

A pair keeps the text it was generated with and, once an administrator edits it, the edited text beside it; the
export (training.sft_export) uses the edited text. Its review state is pending, accepted or rejected; only accepted
pairs are exported. Several named datasets can coexist, so several SFT variants come from one CPT version.

Who: generation, review, edits, export and deletion are admin actions (engine.access.roles.require_admin); the CLI and
Ray jobs act for the operator, an administrator.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from engine.access.roles import current_identity, require_admin
from engine.core.database import transaction, utc_now
from training.sft_pair_checks import DROP_REASONS, PairCandidate, normalized, normalized_words, pair_problem, similar

REVIEW_STATES = ("pending", "accepted", "rejected")
DATASET_STATES = ("queued", "generating", "ready", "failed", "cancelled")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class SftDataError(ValueError):
    """An SFT data request or action that cannot be done; one line saying why. Nothing was changed."""


@dataclass(frozen=True)
class SftPair:
    id: int
    dataset: str
    style: str
    question: str
    instruction: str  # the edited text when there is one
    output: str
    edited: bool
    chunk_ids: list[int]
    source_ids: list[str]
    generator: str
    state: str
    created_at: str
    reviewed_by: str | None
    reviewed_at: str | None


@dataclass(frozen=True)
class SftDataset:
    name: str
    state: str
    created_at: str
    created_by: str | None
    config: dict
    pending: int
    accepted: int
    rejected: int
    drops: dict[str, int]
    styles: dict[str, int]
    progress: dict = field(default_factory=dict)  # done, total, message while generating
    error: str | None = None
    pid: int | None = None
    exported_hash: str | None = None

    @property
    def pairs(self) -> int:
        return self.pending + self.accepted + self.rejected

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


@dataclass(frozen=True)
class AddOutcome:
    added: int
    drops: dict[str, int]


# --- datasets ---------------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SftDataError(f"dataset name {name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def create_dataset(connection, name: str, config: dict, *, state: str = "ready") -> SftDataset:
    """A new, empty named dataset; SftDataError when the name is malformed or taken."""
    require_admin("creating an SFT dataset")
    check_name(name)
    if state not in DATASET_STATES:
        raise SftDataError(f"unknown dataset state {state!r}")
    now = utc_now()
    with transaction(connection):
        if connection.execute("SELECT 1 FROM sft_datasets WHERE name = ?", (name,)).fetchone():
            raise SftDataError(f"an SFT dataset named {name} already exists; choose another name or delete it first")
        connection.execute(
            """INSERT INTO sft_datasets(name, state, config, created_by, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (name, state, json.dumps(config, sort_keys=True), current_identity().name, now, now))
    return get_dataset(connection, name)


def get_dataset(connection, name: str) -> SftDataset:
    found = _datasets(connection, "WHERE d.name = ?", (name,))
    if not found:
        raise SftDataError(f"no SFT dataset named {name}")
    return found[0]


def list_datasets(connection) -> list[SftDataset]:
    """Every named dataset, newest first, with its pair counts by review state."""
    return _datasets(connection, "", ())


def _datasets(connection, where: str, params: tuple) -> list[SftDataset]:
    rows = connection.execute(
        f"""SELECT d.name, d.state, d.created_at, d.created_by, d.config, d.drops, d.progress, d.error, d.pid,
                   d.exported_hash,
                   (SELECT count(*) FROM sft_pairs p WHERE p.dataset = d.name AND p.state = 'pending'),
                   (SELECT count(*) FROM sft_pairs p WHERE p.dataset = d.name AND p.state = 'accepted'),
                   (SELECT count(*) FROM sft_pairs p WHERE p.dataset = d.name AND p.state = 'rejected')
            FROM sft_datasets d {where} ORDER BY d.created_at DESC, d.name""", params).fetchall()
    datasets = []
    for row in rows:
        styles = dict(connection.execute(
            "SELECT style, count(*) FROM sft_pairs WHERE dataset = ? GROUP BY style ORDER BY style", (row[0],)).fetchall())
        datasets.append(SftDataset(row[0], row[1], row[2], row[3], json.loads(row[4]), row[10], row[11], row[12],
                                   json.loads(row[5]), styles, json.loads(row[6]), row[7], row[8], row[9]))
    return datasets


def update_dataset(connection, name: str, **fields) -> None:
    """Progress and state of a generation run (its worker's writes); fields: state, progress, error, pid, config."""
    allowed = {"state", "progress", "error", "pid", "config"}
    if unknown := set(fields) - allowed:
        raise ValueError(f"not dataset fields: {', '.join(sorted(unknown))}")
    if fields.get("state", "ready") not in DATASET_STATES:
        raise ValueError(f"unknown dataset state {fields['state']!r}")
    values = {key: json.dumps(value, sort_keys=True) if key in ("progress", "config") else value for key, value in fields.items()}
    assignments = ", ".join(f"{key} = ?" for key in values)
    with transaction(connection):
        connection.execute(f"UPDATE sft_datasets SET {assignments}, updated_at = ? WHERE name = ?",
                           [*values.values(), utc_now(), name])


def delete_dataset(connection, name: str) -> None:
    require_admin("deleting an SFT dataset")
    dataset = get_dataset(connection, name)
    if dataset.state in ("queued", "generating"):
        raise SftDataError(f"SFT dataset {name} is still being generated; cancel the generation first")
    with transaction(connection):
        connection.execute("DELETE FROM sft_datasets WHERE name = ?", (name,))


# --- pairs --------------------------------------------------------------------------------------------------------


def add_pairs(connection, name: str, candidates: list[PairCandidate], *, drops: dict[str, int] | None = None,
              reserved_questions: list[str] = ()) -> AddOutcome:
    """Validate and store candidate pairs as pending; invalid and duplicate ones are counted, with `drops` (failures
    counted by the caller, such as failed LLM calls), on the dataset. `reserved_questions` (the golden set's) may
    not be asked: a pair asking one of them, or nearly, would leak the evaluation into training."""
    require_admin("adding SFT pairs")
    get_dataset(connection, name)
    counted = Counter({reason: count for reason, count in (drops or {}).items() if count})
    if unknown := set(counted) - set(DROP_REASONS):
        raise ValueError(f"unknown drop reasons: {', '.join(sorted(unknown))}")
    reserved = [normalized_words(question) for question in reserved_questions]
    added = 0
    with transaction(connection):
        known = [(row[0], frozenset(row[0].split())) for row in connection.execute(
            "SELECT question_key FROM sft_pairs WHERE dataset = ?", (name,))]
        keys = {key for key, _ in known}
        for candidate in candidates:
            reason = pair_problem(connection, candidate)
            key, words = normalized(candidate.judged_question), normalized_words(candidate.judged_question)
            if reason is None and any(similar(words, golden) for golden in reserved):
                reason = "golden_overlap"
            if reason is None and (key in keys or any(similar(words, other) for _, other in known)):
                reason = "duplicate"
            if reason:
                counted[reason] += 1
                continue
            connection.execute(
                """INSERT INTO sft_pairs(dataset, style, question, question_key, instruction, output, chunk_ids,
                                         source_ids, generator, state, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)""",
                (name, candidate.style, candidate.judged_question.strip(), key, candidate.instruction.strip(),
                 candidate.output.strip(), json.dumps(list(candidate.chunk_ids)),
                 json.dumps(list(dict.fromkeys(candidate.source_ids))), candidate.generator, utc_now()))
            keys.add(key)
            known.append((key, words))
            added += 1
        if counted:
            row = connection.execute("SELECT drops FROM sft_datasets WHERE name = ?", (name,)).fetchone()
            total = Counter(json.loads(row[0])) + counted
            connection.execute("UPDATE sft_datasets SET drops = ?, updated_at = ? WHERE name = ?",
                               (json.dumps(dict(sorted(total.items()))), utc_now(), name))
    return AddOutcome(added, dict(sorted(counted.items())))


def list_pairs(connection, name: str, *, state: str | None = None, style: str | None = None,
               limit: int = 500, offset: int = 0) -> list[SftPair]:
    """A dataset's pairs in the order they were made, optionally of one review state or style."""
    get_dataset(connection, name)
    if state is not None and state not in REVIEW_STATES:
        raise SftDataError(f"unknown review state {state!r}; expected one of {', '.join(REVIEW_STATES)}")
    where, params = ["dataset = ?"], [name]
    if state:
        where.append("state = ?")
        params.append(state)
    if style:
        where.append("style = ?")
        params.append(style)
    rows = connection.execute(
        f"""SELECT id, dataset, style, question, coalesce(edited_instruction, instruction), coalesce(edited_output, output),
                   edited_instruction IS NOT NULL OR edited_output IS NOT NULL, chunk_ids, source_ids, generator, state,
                   created_at, reviewed_by, reviewed_at
            FROM sft_pairs WHERE {' AND '.join(where)} ORDER BY id LIMIT ? OFFSET ?""", [*params, limit, offset]).fetchall()
    return [SftPair(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), json.loads(r[7]), json.loads(r[8]), r[9], r[10],
                    r[11], r[12], r[13]) for r in rows]


def review_pairs(connection, name: str, pair_ids: list[int], state: str) -> int:
    """Set the review state of these pairs of the dataset (accept, reject, or back to pending); the number changed."""
    require_admin("reviewing SFT pairs")
    if state not in REVIEW_STATES:
        raise SftDataError(f"unknown review state {state!r}; expected one of {', '.join(REVIEW_STATES)}")
    get_dataset(connection, name)
    ids = [int(pair_id) for pair_id in pair_ids]
    with transaction(connection):
        found = {row[0] for row in connection.execute(
            f"SELECT id FROM sft_pairs WHERE dataset = ? AND id IN ({','.join('?' * len(ids))})", [name, *ids])}
        if missing := [pair_id for pair_id in ids if pair_id not in found]:
            raise SftDataError(f"SFT dataset {name} has no pair {', '.join(map(str, missing[:5]))}")
        changed = sum(connection.execute(
            "UPDATE sft_pairs SET state = ?, reviewed_by = ?, reviewed_at = ? WHERE id = ? AND state != ?",
            (state, current_identity().name, utc_now(), pair_id, state)).rowcount for pair_id in ids)
    return changed


def accept_all(connection, name: str, *, style: str | None = None) -> int:
    """Accept every pending pair of the dataset (of one style); the number accepted."""
    require_admin("reviewing SFT pairs")
    ids = [pair.id for pair in list_pairs(connection, name, state="pending", style=style, limit=10**9)]
    return review_pairs(connection, name, ids, "accepted") if ids else 0


def edit_pair(connection, pair_id: int, *, instruction: str | None = None, output: str | None = None) -> SftPair:
    """An administrator's edit of a pair's text, kept beside the generated text and validated like it."""
    require_admin("editing an SFT pair")
    row = connection.execute(
        """SELECT dataset, style, question, coalesce(edited_instruction, instruction), coalesce(edited_output, output)
           FROM sft_pairs WHERE id = ?""", (pair_id,)).fetchone()
    if row is None:
        raise SftDataError(f"no SFT pair {pair_id}")
    dataset, style, question, current_instruction, current_output = row
    instruction = current_instruction if instruction is None else instruction.strip()
    output = current_output if output is None else output.strip()
    problem = pair_problem(connection, PairCandidate(style, instruction, output, "edit", question=question))
    if problem:
        raise SftDataError(f"the edited pair cannot be used: {DROP_REASONS[problem]}")
    with transaction(connection):
        connection.execute(
            "UPDATE sft_pairs SET edited_instruction = ?, edited_output = ?, reviewed_by = ?, reviewed_at = ? WHERE id = ?",
            (instruction, output, current_identity().name, utc_now(), pair_id))
    return next(pair for pair in list_pairs(connection, dataset, limit=10**9) if pair.id == pair_id)
