"""What a Retraining job starts from and learns from, as the page offers and previews it: the LLM versions to
start from, the dataset snapshots (CPT) and SFT datasets to train on, a snapshot's tables and what changed since the
last run.

Separate from the form (`ui.retraining_form`, which checks the settings) and the jobs table (`ui.retraining_jobs`,
which follows launched jobs): these read the registry and the written data before anything is launched. Everything
here runs (and is tested) without a browser or Streamlit; the snapshots themselves are `training.dataset_snapshot`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from engine.core.mlflow_client import registry_client, store_missing
from engine.lifecycle.start_versions import offered_as_start, starts_sft
from engine.lifecycle.training_jobs import TrainingJob
from engine.registry.mlflow_candidates import all_pages
from training.config import LATEST
from training.dataset_snapshot import SPLITS, DatasetSnapshot, SnapshotChanges
from ui.formatting import format_time

# --- choices ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionChoice:
    number: str
    label: str
    starts_sft: bool = False  # a CPT version SFT's 'latest' may pick


def llm_versions(settings) -> list[VersionChoice]:
    """The registry's LLM versions a job may start from, newest first: archived and failed ones are left out (a
    config naming one still shows it, through `start_options`). MlflowClient errors propagate: the page says MLflow
    is down."""
    name = settings.llm_registry_name
    if store_missing(settings):
        return []  # no store yet, so no version; opening it would create it (seconds of migrations)
    client = registry_client(settings)
    quoted = f'"{name}"' if "'" in name else f"'{name}'"
    found = all_pages(client.search_model_versions, filter_string=f"name = {quoted}")
    choices = []
    for version in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags = version.tags or {}
        if not offered_as_start(tags):
            continue
        details = [part for part in (tags.get("training", "").upper(), tags.get("status"), tags.get("job_id")) if part]
        choices.append(VersionChoice(str(version.version), f"{name}/{version.version}" + (f" · {' · '.join(details)}" if details else ""),
                                     starts_sft(tags)))
    return choices


def start_options(versions: list[VersionChoice], current: str) -> dict[str, str]:
    """Start-from choices (value -> label): the base model, then every version; a configured unknown one too."""
    options = {"base": "Base model"} | {v.number: v.label for v in versions}
    if current not in options:
        options[current] = f"version {current} (not in the registry, archived or failed)"
    return options


def sft_start_options(versions: list[VersionChoice], current: str) -> dict[str, str]:
    """SFT's start choices: the newest CPT version (the default), every CPT version, the base model."""
    cpt = [version for version in versions if version.starts_sft]
    options = {LATEST: f"Newest CPT version ({cpt[0].label})" if cpt else "Newest CPT version (none yet: train one first)"}
    options |= {version.number: version.label for version in cpt} | {"base": "Base model (no CPT)"}
    if current not in options:
        options[current] = f"version {current} (not a CPT version of the registry)"
    return options


def dataset_options(datasets, current: str) -> dict[str, str]:
    """SFT dataset choices (value -> label) with their accepted pairs; 'latest' is the newest with any."""
    usable = [dataset for dataset in datasets if dataset.accepted]
    options = {LATEST: f"Newest with accepted pairs ({usable[0].name})" if usable else "Newest with accepted pairs (none yet)"}
    options |= {dataset.name: f"{dataset.name} · {dataset.accepted} accepted" + (f", {dataset.pending} pending" if dataset.pending else "")
                for dataset in datasets}
    if current not in options:
        options[current] = f"{current} (not found)"
    return options


def datasets_frame(datasets) -> pd.DataFrame:
    """The SFT datasets (training.sft_data.SftDataset), newest first: review counts and styles."""
    rows = [{"dataset": dataset.name, "state": dataset.state, "accepted": dataset.accepted, "pending": dataset.pending,
             "rejected": dataset.rejected, "styles": ", ".join(f"{style} {count}" for style, count in dataset.styles.items()),
             "created": format_time(dataset.created_at)} for dataset in datasets]
    return pd.DataFrame(rows, columns=["dataset", "state", "accepted", "pending", "rejected", "styles", "created"])


def dataset_caption(datasets, config) -> str:
    """What an SFT config trains on, in one line: the dataset, its accepted pairs and about how many are held out."""
    name = config.dataset
    if name == LATEST:
        usable = [dataset for dataset in datasets if dataset.accepted]
        if not usable:
            return "No dataset has accepted pairs yet: accept some in the dataset's review first."
        name = usable[0].name
    found = next((dataset for dataset in datasets if dataset.name == name), None)
    if found is None:
        return f"There is no SFT dataset named {name}."
    held_out = min(found.accepted - 1, max(1, round(config.validation_share * found.accepted))) if found.accepted > 1 else 0
    return (f"The job trains on the {found.accepted} accepted pair(s) of `{name}` (exported at launch), about {held_out} "
            f"of them held out for the evaluation loss; pending and rejected pairs are left out.")


def snapshot_options(snapshots: list[DatasetSnapshot], current: str) -> dict[str, str]:
    """Snapshot choices (value -> label): a new one, the newest written, then every written snapshot."""
    options = {"new": "New: snapshot the knowledge base at launch",
               "latest": f"Latest written ({snapshots[0].id})" if snapshots else "Latest written (none yet)"}
    for snapshot in snapshots:
        options[snapshot.id] = f"{snapshot.id} · {snapshot.manifest.get('created_at', '')[:16].replace('T', ' ')} · " \
                               f"{snapshot.manifest['splits']['train']['tokens']:,} train tokens"
    if current not in options:
        options[current] = f"{current} (not found)"
    return options


# --- the snapshot preview ---------------------------------------------------------------------------------------


def knowledge_fingerprint(connection) -> tuple:
    """Changes whenever a document or chunk is written, so cached previews know when they are stale."""
    generation = connection.execute("SELECT generation FROM index_state").fetchone()[0]
    documents = tuple(connection.execute("SELECT count(*), coalesce(max(id), 0) FROM documents").fetchone())
    return (generation, *documents)


def snapshot_summary(manifest: dict) -> dict[str, str]:
    """The headline numbers of a snapshot: documents, tokens, replay share of the training tokens."""
    splits = manifest["splits"]
    return {
        "Documents": f"{sum(splits[s]['domain_documents'] for s in SPLITS):,}",
        "Tokens": f"{sum(splits[s]['tokens'] for s in SPLITS):,}",
        "Knowledge tokens": f"{sum(splits[s]['domain_tokens'] for s in SPLITS):,}",
        "Replay share": f"{splits['train']['replay_share']:.0%}",
    }


def snapshot_table(manifest: dict) -> pd.DataFrame:
    """Documents and tokens per source domain and split, then the replay text and the totals."""
    splits = manifest["splits"]
    domains = sorted({domain for split in SPLITS for domain in splits[split]["domain"]})
    rows = []
    for domain in domains:
        row = {"source": domain}
        for split in SPLITS:
            counts = splits[split]["domain"].get(domain, {"documents": 0, "tokens": 0})
            row[f"{split} documents"], row[f"{split} tokens"] = counts["documents"], counts["tokens"]
        rows.append(row)
    replay = {"source": "replay (general text)"}
    total = {"source": "total"}
    for split in SPLITS:
        replay[f"{split} documents"], replay[f"{split} tokens"] = splits[split]["replay_documents"], splits[split]["replay_tokens"]
        total[f"{split} documents"] = splits[split]["domain_documents"] + splits[split]["replay_documents"]
        total[f"{split} tokens"] = splits[split]["tokens"]
    return pd.DataFrame([*rows, replay, total])


def reference_snapshot(jobs: list[TrainingJob], snapshots: list[DatasetSnapshot]) -> tuple[DatasetSnapshot | None, TrainingJob | None]:
    """What 'new since the last run' compares with: the newest job's snapshot, else the newest snapshot."""
    written = {snapshot.id: snapshot for snapshot in snapshots}
    for job in jobs:  # newest first
        if job.snapshot_id in written:
            return written[job.snapshot_id], job
    return (snapshots[0] if snapshots else None), None


def changes_summary(changes: SnapshotChanges) -> str:
    counts = [f"{len(items)} {label}" for label, items in
              (("added", changes.added), ("changed", changes.changed), ("removed", changes.removed))]
    return ", ".join(counts)


def changes_rows(changes: SnapshotChanges) -> list[dict]:
    return [{"change": label, "document": origin}
            for label, items in (("added", changes.added), ("changed", changes.changed), ("removed", changes.removed))
            for origin in items]
