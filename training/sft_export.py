"""The JSONL export of an SFT dataset: the exact bytes an SFT run trains on, and their hash.

Separate from the datasets (training.sft_data) because the export is the contract with training: the file's
format, its byte-for-byte determinism and the hash an SFT version's lineage records must not drift when the review
workflow changes.

The export (`export_dataset`) writes `<folder>/<name>.jsonl`: one JSON object per accepted pair with the keys
instruction, output, source_ids and style, in a fixed order (sorted by content, so the same accepted pairs always
give the same bytes). The sha256 of those bytes (first 16 hex digits) is the dataset hash: the id an SFT run
records for lineage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from engine.access.roles import require_admin
from engine.core.database import transaction, utc_now
from training.sft_data import SftDataError, check_name, list_pairs


@dataclass(frozen=True)
class SftExport:
    name: str
    dataset_hash: str
    pair_count: int
    path: Path
    styles: dict[str, int]


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
