"""SFT datasets: named sets of instruction/output pairs in the knowledge database, reviewed, then exported.

Pairs come from training.sft_generation (knowledge chunks in several styles, the product's own recommendation
task, refusals) and from accepted feedback corrections. Every candidate pair goes through `add_pairs`, which
validates it (`pair_problem`) and drops duplicates; what is dropped is counted by reason on the dataset, so an
administrator sees how much a generator wasted and why.

A pair keeps the text it was generated with and, once an administrator edits it, the edited text beside it; the
export uses the edited text. Its review state is pending, accepted or rejected; only accepted pairs are exported.

The export (`export_dataset`) writes `<folder>/<name>.jsonl`: one JSON object per accepted pair with the keys
instruction, output, source_ids and style, in a fixed order (sorted by content, so the same accepted pairs always
give the same bytes). The sha256 of those bytes (first 16 hex digits) is the dataset hash: the id an SFT run
records for lineage. Several named datasets can coexist, so several SFT variants come from one CPT version.

Who: generation, review, edits, export and deletion are admin actions (engine.access.roles.require_admin); the CLI and
Ray jobs act for the operator, an administrator.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.access.roles import current_identity, require_admin
from engine.answering.citations import find_markers
from engine.core.database import transaction, utc_now
from engine.knowledge.sources import resolve

REVIEW_STATES = ("pending", "accepted", "rejected")
DATASET_STATES = ("queued", "generating", "ready", "failed", "cancelled")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_INSTRUCTION_CHARS, MAX_INSTRUCTION_CHARS = 10, 16_000  # a recommendation instruction is the chat's whole prompt
MIN_OUTPUT_CHARS, MAX_OUTPUT_CHARS = 20, 4_000
MIN_WORD_SHARE = 0.6  # below this share of word-like tokens a text is garbled
MAX_TRIGRAM_REPEATS = 4  # a word trigram repeated this often is a generation loop
NEAR_DUPLICATE = 0.85  # Jaccard similarity of question word sets from which two questions are the same
STYLES_WITHOUT_MARKERS = ("refusal",)  # the chat's refusal cites nothing

# Why a generation is dropped; the dataset counts each.
DROP_REASONS = {
    "generation_failed": "the LLM call failed (HTTP error, broken or empty stream)",
    "unparsable": "the reply is not in the requested format",
    "ungrounded": "most of the pair's words are not the excerpt's (a question about something else)",
    "empty": "empty instruction or output",
    "too_short": "instruction or output too short",
    "too_long": "instruction or output too long",
    "refusal": "the generator refused",
    "garbled": "mostly non-words or a repetition loop",
    "unknown_marker": "a <<SRC>> marker the source registry does not know",
    "duplicate": "same or nearly the same question as a pair already in the dataset",
    "golden_overlap": "same or nearly the same question as an evaluation (golden set) question",
    "use_case_mismatch": "the chat would take the question for another use case (or, for a refusal, for a use case)",
    "not_verified": "the answer does not pass the chat's verifier",
}

_REFUSAL = re.compile(r"^\W*(i cannot|i can't|i can not|i'm sorry|i am sorry|as an ai|i am unable|i'm unable|"
                      r"i do not have access|i don't have access|sorry, but)", re.I)
_WORD = re.compile(r"^[(\"'\[]*[^\W_][\w.:'’/-]*?[)\]\"'.,;:!?%]*$")  # words, numbers, ids (latency_p95_ms), J.P.
_PUNCTUATION = re.compile(r"^[^\w]+$")
_MARKER_TEXT = re.compile(r"<<[^<>\n]*>>")


class SftDataError(ValueError):
    """An SFT data request or action that cannot be done; one line saying why. Nothing was changed."""


@dataclass(frozen=True)
class PairCandidate:
    """A generated pair before validation. `question` is what duplicates are judged on (for a recommendation pair,
    whose instruction is the chat's whole prompt, the user's question); it defaults to the instruction."""

    style: str
    instruction: str
    output: str
    generator: str
    chunk_ids: tuple[int, ...] = ()
    source_ids: tuple[str, ...] = ()
    question: str | None = None

    @property
    def judged_question(self) -> str:
        return self.question if self.question is not None else self.instruction


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


@dataclass(frozen=True)
class SftExport:
    name: str
    dataset_hash: str
    pair_count: int
    path: Path
    styles: dict[str, int]


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


# --- validation -------------------------------------------------------------------------------------------------


def normalized(text: str) -> str:
    """Text as duplicates are judged: markers removed, lowercase, words only, single spaces."""
    text = _MARKER_TEXT.sub(" ", text or "").lower()
    return " ".join(re.findall(r"[a-z0-9]+", text.replace("tumour", "tumor")))


def _word_set(text: str) -> frozenset[str]:
    return frozenset(normalized(text).split())


def similar(a: frozenset[str], b: frozenset[str]) -> bool:
    """Near-duplicate questions: Jaccard similarity of their word sets of at least NEAR_DUPLICATE."""
    if not a or not b:
        return a == b
    return len(a & b) / len(a | b) >= NEAR_DUPLICATE


def garbled(text: str) -> bool:
    """Mostly non-words (a broken model, a wrong tokenizer) or a generation loop (one word trigram again and again)."""
    tokens = [token for token in _MARKER_TEXT.sub(" ", text).split() if not _PUNCTUATION.match(token)]
    if not tokens:
        return False
    if sum(1 for token in tokens if _WORD.match(token)) / len(tokens) < MIN_WORD_SHARE:
        return True
    words = [token.lower().strip(".,;:!?") for token in tokens]
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(trigrams) and trigrams.most_common(1)[0][1] >= MAX_TRIGRAM_REPEATS


def pair_problem(connection, candidate: PairCandidate) -> str | None:
    """Why this pair must not train a model (a DROP_REASONS key), or None. Its markers must all be known to the
    source registry; knowledge and recommendation outputs must carry at least one."""
    instruction, output = (candidate.instruction or "").strip(), (candidate.output or "").strip()
    if not instruction or not output:
        return "empty"
    if len(instruction) < MIN_INSTRUCTION_CHARS or len(output) < MIN_OUTPUT_CHARS:
        return "too_short"
    if len(instruction) > MAX_INSTRUCTION_CHARS or len(output) > MAX_OUTPUT_CHARS:
        return "too_long"
    if _REFUSAL.match(output) and candidate.style != "refusal":
        return "refusal"
    if garbled(output) or garbled(candidate.judged_question):
        return "garbled"
    markers = find_markers(output)
    if candidate.style not in STYLES_WITHOUT_MARKERS and not markers:
        return "unknown_marker"
    if set(markers) - set(resolve(connection, markers)):
        return "unknown_marker"
    return None


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
    reserved = [_word_set(question) for question in reserved_questions]
    added = 0
    with transaction(connection):
        known = [(row[0], frozenset(row[0].split())) for row in connection.execute(
            "SELECT question_key FROM sft_pairs WHERE dataset = ?", (name,))]
        keys = {key for key, _ in known}
        for candidate in candidates:
            reason = pair_problem(connection, candidate)
            key, words = normalized(candidate.judged_question), _word_set(candidate.judged_question)
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


# --- export -------------------------------------------------------------------------------------------------------


def export_lines(connection, name: str) -> list[str]:
    """The accepted pairs as JSONL lines, sorted so that the same pairs always give the same bytes."""
    pairs = list_pairs(connection, name, state="accepted", limit=10**9)
    lines = [json.dumps({"instruction": pair.instruction, "output": pair.output, "source_ids": pair.source_ids,
                         "style": pair.style}, ensure_ascii=False, sort_keys=True) for pair in pairs]
    return sorted(lines)


def export_dataset(settings, connection, name: str, folder: Path) -> SftExport:
    """Write `<folder>/<name>.jsonl` of the accepted pairs; SftDataError when there is no such dataset or it has no
    accepted pair. The returned hash names exactly these bytes (the dataset id of an SFT run's lineage)."""
    require_admin("exporting an SFT dataset")
    check_name(name)
    lines = export_lines(connection, name)
    if not lines:
        raise SftDataError(f"SFT dataset {name} has no accepted pair to export; review its pairs first")
    data = "".join(line + "\n" for line in lines).encode()
    dataset_hash = hashlib.sha256(data).hexdigest()[:16]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    staging = folder / f".{name}.jsonl.{os.getpid()}.tmp"
    staging.write_bytes(data)
    os.replace(staging, path)
    with transaction(connection):
        connection.execute("UPDATE sft_datasets SET exported_hash = ?, updated_at = ? WHERE name = ?",
                           (dataset_hash, utc_now(), name))
    styles = Counter(json.loads(line)["style"] for line in lines)
    return SftExport(name, dataset_hash, len(lines), path, dict(sorted(styles.items())))


def exports_dir(settings) -> Path:
    """Where the page and the CLI write exports by default: <workspace>/exports/sft/."""
    return settings.workspace / "exports" / "sft"
