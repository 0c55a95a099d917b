"""Frozen dataset snapshots for continual pretraining: knowledge base text plus general replay text.

A snapshot is a folder `<workspace>/snapshots/<id>/` holding train.jsonl, validation.jsonl and manifest.json.
The id is a hash of the data and the settings that made it, so the same knowledge base and settings always give
the same id and byte-identical data files, and a training run can name exactly what it learned from.

Documents are split by a hash of their content digest, never by chunk, so no document is on both sides and a
document keeps its side as others come and go. Replay text is general English mixed in at a share of the
tokens of each split (seed 001: 20%), so that training on team knowledge does not erase general language;
issue 5 measures general perplexity on the held-out replay.

Accepted corrections of flagged answers (engine.answering.feedback_review) are documents of kind "correction", cited as
`correction:answer-<id>`, and go to the train split only: they are few and written to be learned, a held-out one
would teach nothing, and the validation split measures held-out knowledge ("domain") and replay text, which
CPT's evaluation reads by kind, so a correction there would be neither trained on nor measured. They count as
domain text of the source domain "correction" (so the replay share is of all training tokens), and the split
counts and the manifest also name them apart. Accepting, editing or reopening a correction changes the train
file, hence the snapshot id.

A document's text is its chunks joined in order, overlap included: the stored chunks do not record where the
overlap ends (the splitter's pieces are stripped and chunks can be edited), so a suffix/prefix match cannot
tell overlap from text that really repeats, and guessing could delete real text. The repeat is at most
`chunk_overlap` tokens per chunk boundary (about 2% of the demo corpus).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.answering.feedback_review import accepted_training_texts, text_digest
from engine.core import database
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.llm.bundled import BUNDLED, BUNDLED_LLM_GGUF, load_tokenizer

DEFAULT_REPLAY_RATIO = 0.2  # seed 001: replay is 20% of the training tokens
DEFAULT_VALIDATION_SHARE = 0.1
SPLITS = ("train", "validation")
CHUNK_SEPARATOR = "\n\n"
REPLAY_SOURCE = {
    "name": "pydoc_data",
    "description": "Python's reference documentation topics, shipped with the interpreter (pydoc_data.topics)",
    "licence": "PSF-2.0",
}


class SnapshotError(ValueError):
    """A snapshot cannot be made from these inputs; the message names the problem. Nothing was written."""


@dataclass(frozen=True)
class DatasetSnapshot:
    id: str
    directory: Path
    manifest: dict

    @property
    def train_path(self) -> Path:
        return self.directory / "train.jsonl"

    @property
    def validation_path(self) -> Path:
        return self.directory / "validation.jsonl"

    @property
    def exists(self) -> bool:
        return (self.directory / "manifest.json").is_file()


@dataclass(frozen=True)
class SnapshotChanges:
    """Knowledge base documents (by origin) that differ from what a snapshot was made of."""

    added: list[str]
    changed: list[str]
    removed: list[str]


@dataclass(frozen=True)
class _Document:
    text: str
    source_id: str
    document: str
    kind: str
    split_key: str
    tokens: int


def snapshots_dir(workspace: Path) -> Path:
    return workspace / "snapshots"


def tokenizer_name(base_model: str) -> str:
    """A name for the tokenizer that is the same on every machine (the bundled one's cache path is not)."""
    return f"{BUNDLED}:{BUNDLED_LLM_GGUF.removesuffix('.gguf')}" if base_model == BUNDLED else Path(base_model).name


def check_settings(replay_ratio: float, validation_share: float) -> None:
    """Reject settings that cannot make a training mix, before any work is done."""
    if not 0 <= replay_ratio < 1:
        raise SnapshotError(f"replay ratio must be at least 0 and below 1 (got {replay_ratio})")
    if not 0 < validation_share <= 0.5:
        raise SnapshotError(f"validation share must be above 0 and at most 0.5 (got {validation_share})")


def accepted_corrections(connection) -> list[dict]:
    """Accepted corrections of flagged answers as snapshot records of kind "correction", by answer id.

    Only accepted ones: a pending or rejected correction is unreviewed or refused and must not teach the model.
    The text is engine.answering.feedback_review.training_text: the question, the candidates then, the decision and the
    corrected answer."""
    return [{"text": text, "source_id": f"correction:answer-{answer_id}", "document": f"correction:answer-{answer_id}",
             "kind": "correction"}
            for answer_id, text in accepted_training_texts(connection)]


def preview_snapshot(kb: KnowledgeBase, tokenizer, workspace: Path, *, tokenizer_label: str,
                     replay_ratio: float = DEFAULT_REPLAY_RATIO,
                     validation_share: float = DEFAULT_VALIDATION_SHARE) -> DatasetSnapshot:
    """The snapshot that `build_snapshot` would write (id, counts, documents), without writing anything."""
    snapshot, _ = _plan(kb, tokenizer, workspace, tokenizer_label, replay_ratio, validation_share)
    return snapshot


def build_snapshot(kb: KnowledgeBase, tokenizer, workspace: Path, *, tokenizer_label: str,
                   replay_ratio: float = DEFAULT_REPLAY_RATIO,
                   validation_share: float = DEFAULT_VALIDATION_SHARE) -> DatasetSnapshot:
    """Write the snapshot of the knowledge base as it is now, or return the existing one with the same id."""
    planned, files = _plan(kb, tokenizer, workspace, tokenizer_label, replay_ratio, validation_share)
    if planned.exists:
        return load_snapshot(workspace, planned.id)
    manifest = {**planned.manifest, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    staging = planned.directory.with_name(f".{planned.id}.tmp{os.getpid()}")
    staging.mkdir(parents=True)
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(staging, planned.directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not planned.exists:  # not a concurrent writer of the same snapshot: a real failure
            raise
    return load_snapshot(workspace, planned.id)


def load_snapshot(workspace: Path, snapshot_id: str) -> DatasetSnapshot:
    directory = snapshots_dir(workspace) / snapshot_id
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot {snapshot_id} in {snapshots_dir(workspace)}") from None
    return DatasetSnapshot(snapshot_id, directory, manifest)


def list_snapshots(workspace: Path) -> list[DatasetSnapshot]:
    """Written snapshots, newest first."""
    root = snapshots_dir(workspace)
    if not root.is_dir():
        return []
    found = [load_snapshot(workspace, path.name) for path in root.iterdir()
             if not path.name.startswith(".") and (path / "manifest.json").is_file()]
    return sorted(found, key=lambda snapshot: (snapshot.manifest["created_at"], snapshot.id), reverse=True)


def read_split(snapshot: DatasetSnapshot, split: str) -> list[dict]:
    """The records of one split, in file order."""
    if split not in SPLITS:
        raise ValueError(f"no split {split!r}; the splits are {', '.join(SPLITS)}")
    path = snapshot.directory / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def changes_since(snapshot: DatasetSnapshot, kb: KnowledgeBase) -> SnapshotChanges:
    """What is new in the knowledge base since a snapshot: documents added, changed (new file content or an
    edited chunk) or removed, by origin."""
    before = {doc["origin"]: (doc["sha256"], doc["text_sha256"]) for doc in snapshot.manifest["documents"]}
    now = {doc.origin: (doc.sha256, _sha256(_document_text(kb, doc.id, doc.chunk_count)))
           for doc in kb.documents() if doc.chunk_count}
    return SnapshotChanges(
        added=sorted(origin for origin in now if origin not in before),
        changed=sorted(origin for origin in now if origin in before and now[origin] != before[origin]),
        removed=sorted(origin for origin in before if origin not in now),
    )


def snapshot_workspace(settings, *, replay_ratio: float = DEFAULT_REPLAY_RATIO,
                       validation_share: float = DEFAULT_VALIDATION_SHARE, write: bool = True) -> DatasetSnapshot:
    """Build (or preview) the snapshot of the configured workspace. Reads chunks only: no embedding model."""
    kb = KnowledgeBase(database.connect(settings.ensure_workspace() / "knowledge.sqlite"), embedder=None)
    try:
        make = build_snapshot if write else preview_snapshot
        return make(kb, load_tokenizer(settings.base_model), settings.workspace,
                    tokenizer_label=tokenizer_name(settings.base_model),
                    replay_ratio=replay_ratio, validation_share=validation_share)
    finally:
        kb.connection.close()


def _plan(kb, tokenizer, workspace, tokenizer_label, replay_ratio, validation_share) -> tuple[DatasetSnapshot, dict]:
    """Everything a snapshot is, computed in memory: the snapshot (id, manifest without created_at) and its files."""
    check_settings(replay_ratio, validation_share)
    stored = [doc for doc in kb.documents() if doc.chunk_count]
    if len(stored) < 2:
        raise SnapshotError(
            f"the knowledge base has {len(stored)} document(s); a snapshot needs at least 2, "
            "so that one can be held out for validation: ingest documents first"
        )
    domain = _domain_documents(kb, stored, tokenizer)
    domain_split = _split(domain, validation_share)
    replay = _replay_documents(tokenizer)
    replay_split = _split(replay, validation_share)
    corrections = _correction_documents(kb.connection, tokenizer)
    records, counts = {}, {}
    for split in SPLITS:
        ours = [doc for doc in domain if domain_split[doc.split_key] == split] + (corrections if split == "train" else [])
        domain_tokens = sum(doc.tokens for doc in ours)
        target = round(domain_tokens * replay_ratio / (1 - replay_ratio))
        mixed = _take_replay([doc for doc in replay if replay_split[doc.split_key] == split], target, tokenizer)
        records[split] = sorted(ours + mixed, key=lambda doc: _sha256(f"order:{doc.document}"))
        counts[split] = _counts(ours, mixed)
    config = {
        "replay_ratio": replay_ratio,
        "validation_share": validation_share,
        "replay_source": REPLAY_SOURCE,
        "tokenizer": tokenizer_label,
        "chunk_separator": CHUNK_SEPARATOR,
    }
    files = {f"{split}.jsonl": _jsonl(records[split]) for split in SPLITS}
    snapshot_id = _sha256(json.dumps(config, sort_keys=True) + "".join(
        _sha256(files[f"{split}.jsonl"]) for split in SPLITS))[:16]
    manifest = {
        "id": snapshot_id,
        "config": config,
        "splits": counts,
        "corrections": len(corrections),
        "correction_documents": [{"document": doc.document, "text_sha256": text_digest(doc.text), "tokens": doc.tokens,
                                  "split": "train"} for doc in corrections],
        "documents": sorted(
            ({"origin": doc.origin, "title": doc.title, "sha256": doc.sha256, "text_sha256": _sha256(rec.text),
              "source_id": rec.source_id, "split": domain_split[rec.split_key], "tokens": rec.tokens}
             for doc, rec in zip(stored, domain, strict=True)),
            key=lambda entry: entry["origin"],
        ),
    }
    return DatasetSnapshot(snapshot_id, snapshots_dir(workspace) / snapshot_id, manifest), files


def _domain_documents(kb, stored, tokenizer) -> list[_Document]:
    texts, source_ids = [], []
    for doc in stored:
        chunks = kb.chunks(document_id=doc.id, limit=doc.chunk_count)
        texts.append(CHUNK_SEPARATOR.join(chunk.text for chunk in chunks))
        source_ids.append(_common_source_id([chunk.source_id for chunk in chunks]))
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [
        _Document(text, source_id, doc.origin, "domain", f"domain:{doc.sha256}", tokens)
        for doc, text, source_id, tokens in zip(stored, texts, source_ids, lengths, strict=True)
    ]


def _correction_documents(connection, tokenizer) -> list[_Document]:
    records = accepted_corrections(connection)
    if not records:
        return []
    lengths = [len(ids) for ids in tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]]
    return [_Document(record["text"], record["source_id"], record["document"], "correction",
                      record["document"], tokens)
            for record, tokens in zip(records, lengths, strict=True)]


def _document_text(kb, document_id: int, chunk_count: int) -> str:
    return CHUNK_SEPARATOR.join(chunk.text for chunk in kb.chunks(document_id=document_id, limit=chunk_count))


def _common_source_id(source_ids: list[str]) -> str:
    """The source id a whole document cites: the shared part of its chunks' ids (`doc:a.pdf:page-1` and
    `doc:a.pdf:page-2` -> `doc:a.pdf`), at least the source domain."""
    parts = [source_id.split(":") for source_id in source_ids]
    shared = []
    for segment in zip(*parts, strict=False):
        if len(set(segment)) > 1:
            break
        shared.append(segment[0])
    return ":".join(shared) or parts[0][0]


def _replay_documents(tokenizer) -> list[_Document]:
    """The replay text: one document per topic of Python's bundled reference documentation."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    texts = [topics[name].strip() for name in names]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [
        _Document(text, f"replay:{REPLAY_SOURCE['name']}", f"{REPLAY_SOURCE['name']}:{name}", "replay",
                  f"replay:{name}", tokens)
        for name, text, tokens in zip(names, texts, lengths, strict=True) if text
    ]


def _split(documents: list[_Document], validation_share: float) -> dict[str, str]:
    """Each document's side: validation when the hash of its key falls below the share. When the hash leaves
    a side empty, the document nearest the boundary moves over, so that both sides always have one."""
    scores = {doc.split_key: _unit_score(doc.split_key) for doc in documents}
    sides = {key: "validation" if score < validation_share else "train" for key, score in scores.items()}
    ranked = sorted(scores, key=scores.get)
    if len(ranked) >= 2 and "validation" not in sides.values():
        sides[ranked[0]] = "validation"
    if len(ranked) >= 2 and "train" not in sides.values():
        sides[ranked[-1]] = "train"
    return sides


def _take_replay(candidates: list[_Document], target_tokens: int, tokenizer) -> list[_Document]:
    """Replay documents in a fixed pseudo-random order until the target is met; the last one is cut to fit."""
    taken, total = [], 0
    for doc in sorted(candidates, key=lambda doc: _sha256(f"order:{doc.document}")):
        if total >= target_tokens:
            break
        if total + doc.tokens > target_tokens:
            ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"][: target_tokens - total]
            text = tokenizer.decode(ids).strip()
            doc = _Document(text, doc.source_id, doc.document, doc.kind, doc.split_key,
                            len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        taken.append(doc)
        total += doc.tokens
    return taken


def _counts(domain: list[_Document], replay: list[_Document]) -> dict:
    by_domain: dict[str, dict] = {}
    for doc in domain:
        entry = by_domain.setdefault(doc.source_id.split(":", 1)[0], {"documents": 0, "tokens": 0})
        entry["documents"] += 1
        entry["tokens"] += doc.tokens
    domain_tokens = sum(doc.tokens for doc in domain)
    replay_tokens = sum(doc.tokens for doc in replay)
    total = domain_tokens + replay_tokens
    corrections = [doc for doc in domain if doc.kind == "correction"]
    return {
        "domain": dict(sorted(by_domain.items())),
        "domain_documents": len(domain),
        "domain_tokens": domain_tokens,
        "correction_documents": len(corrections),
        "correction_tokens": sum(doc.tokens for doc in corrections),
        "replay_documents": len(replay),
        "replay_tokens": replay_tokens,
        "tokens": total,
        "replay_share": round(replay_tokens / total, 4) if total else 0.0,
    }


def _jsonl(documents: list[_Document]) -> bytes:
    lines = (json.dumps({"text": doc.text, "source_id": doc.source_id, "document": doc.document, "kind": doc.kind},
                        ensure_ascii=False, sort_keys=True) for doc in documents)
    return "".join(line + "\n" for line in lines).encode()


def _unit_score(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()
