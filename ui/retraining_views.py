"""What the Retraining page shows and checks, as plain functions: the CPT and SFT forms' values, the snapshot
preview's tables, the SFT datasets' table, the jobs table, progress texts and curves.

Pages keep only widgets and layout; everything here runs (and is tested) without a browser or Streamlit. The work
(configs, snapshots, jobs) is done by `training.config`, `training.dataset_snapshot`, `training.job_launch` and `training.job_following`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from engine.core import database
from engine.core.paths import CONFIGS_DIR
from engine.lifecycle.start_versions import offered_as_start, starts_sft
from engine.lifecycle.training_jobs import FINAL_STATES, TrainingJob
from engine.registry.mlflow_candidates import all_pages
from training.config import LATEST, AdapterTraining, ConfigError, load_config
from training.dataset_snapshot import SPLITS, DatasetSnapshot, SnapshotChanges
from training.job_following import JobProgress

CONFIG_FOLDER = CONFIGS_DIR
RECIPES = {"cpt": "CPT: continual pretraining on the knowledge base", "sft": "SFT: fine-tuning a CPT version on an SFT dataset"}
POLL_SECONDS = 3.0  # how often the jobs table refreshes while a job is unfinished
LOG_TAIL_LINES = 200

# The settings each recipe's form shows, in its order; the other keys come from the YAML (file, upload or edit).
TRAINING_KEYS = (
    "quantization", "lora.r", "lora.alpha", "lora.dropout",
    "learning_rate", "epochs", "max_steps", "batch_size",
    "gradient_accumulation_steps", "max_seq_length", "eval_steps", "save_steps",
)
FORM_KEYS = {"cpt": ("start_from", "snapshot", "replay_ratio", *TRAINING_KEYS),
             "sft": ("start_from", "dataset", "validation_share", *TRAINING_KEYS)}
TEXT_KEYS = ("learning_rate",)  # typed as text so that 2e-5 can be written as such


def open_database(settings):
    """The knowledge database (it holds `training_jobs`), without loading any model; the caller closes it."""
    settings.ensure_workspace()
    return database.connect(settings.knowledge_db)


def widget_key(config_key: str, kind: str = "cpt") -> str:
    """The Streamlit key of a config key's widget in a recipe's form: `lora.r` -> `cpt_lora_r`, `sft_lora_r`."""
    return f"{kind}_" + config_key.replace(".", "_")


def config_path(kind: str) -> Path:
    return CONFIG_FOLDER / f"{kind}.yaml"


def first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# --- the form ---------------------------------------------------------------------------------------------------


def default_config(kind: str = "cpt") -> tuple[AdapterTraining, str | None]:
    """The form's starting point: configs/<kind>.yaml, or the built-in defaults and why the file could not be used."""
    try:
        return load_config(kind, config_path(kind)), None
    except ConfigError as error:
        return load_config(kind, None), str(error)


def default_yaml_text(kind: str = "cpt") -> str:
    """The YAML editor's first text: the commented default file, else the defaults written out."""
    try:
        return config_path(kind).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return config_yaml(load_config(kind, None))


def config_yaml(config: AdapterTraining) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def config_from_yaml_text(text: str, kind: str = "cpt") -> AdapterTraining:
    """A checked config from YAML text (an upload or the editor); ConfigError names every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML ({first_line(error)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of keys to values")
    return load_config(kind, data)


def form_values(config: AdapterTraining) -> dict[str, Any]:
    """The form widgets' values for a config, by config key."""
    flat = config.flat()
    values = {key: flat[key] for key in FORM_KEYS[config.kind]}
    for key in TEXT_KEYS:
        values[key] = f"{values[key]:g}"
    return values


def config_from_form(base: dict, values: dict[str, Any], kind: str = "cpt") -> AdapterTraining:
    """The config to launch: the base mapping (YAML) with the form's values on top; ConfigError names every bad key."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in values.items():
        if isinstance(value, str):
            value = value.strip()
        section, _, name = key.rpartition(".")
        if section:
            target = merged.setdefault(section, {})
            if not isinstance(target, dict):
                continue  # the base already says what is wrong with the section
            target[name] = value
        else:
            merged[name] = value
    return load_config(kind, merged)


def config_problems(error: ConfigError) -> list[str]:
    """ConfigError's problems, one per item (they are joined with '; ' before each key)."""
    return [part for part in re.split(r"; (?=[a-z_]+(?:\.[a-z_]+)?: )", str(error)) if part]


def problems_markdown(intro: str, error: ConfigError) -> str:
    problems = config_problems(error)
    if len(problems) == 1:
        return f"{intro}: {problems[0]}"
    return f"{intro}:\n\n" + "\n".join(f"- {problem}" for problem in problems)


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
    from mlflow import MlflowClient

    name = settings.llm_registry_name
    if settings.tracking_uri.startswith("sqlite:///") and not settings.mlflow_registry_uri \
            and not Path(settings.tracking_uri.removeprefix("sqlite:///")).exists():
        return []  # no store yet, so no version; opening it would create it (seconds of migrations)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)
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


# --- jobs -------------------------------------------------------------------------------------------------------


def polling_interval(jobs: list[TrainingJob]) -> float | None:
    """Seconds between refreshes while some job is unfinished; None (no polling) when all are finished."""
    return POLL_SECONDS if any(not job.finished for job in jobs) else None


def table_progress(settings, jobs: list[TrainingJob], known: dict[str, JobProgress], read_progress) -> tuple[dict, list[str]]:
    """Each job's progress: read again for unfinished jobs, once for finished ones (kept in `known`, which is
    updated). Returns (progress by job id, None where unreadable; problems, one line each)."""
    progress, problems = {}, []
    for job in jobs:
        if job.finished and job.id in known:
            progress[job.id] = known[job.id]
            continue
        try:
            progress[job.id] = read_progress(settings, job)
        except Exception as error:  # MLflow down, a deleted run: the row shows what the database knows
            progress[job.id] = None
            problems.append(f"{job.id}: cannot read its MLflow run ({first_line(error)})")
            continue
        if job.finished:
            known[job.id] = progress[job.id]
    return progress, problems


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_time(stamp: str | None) -> str:
    """'2025-01-31T09:15:00+00:00' -> '2025-01-31 09:15 UTC'."""
    return f"{stamp[:16].replace('T', ' ')} UTC" if stamp else ""


def steps_text(progress: JobProgress | None) -> str:
    if progress is None:
        return "?"
    return f"{progress.step}/{progress.total_steps}" if progress.total_steps else (str(progress.step) if progress.step else "")


def version_label(registry_name: str, job: TrainingJob) -> str:
    return f"{registry_name}/{job.llm_version}" if job.llm_version else ""


def model_version_url(settings, number: str) -> str | None:
    """The MLflow UI page of a version when the tracking server has one (http); None for a local store."""
    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")) or settings.mlflow_registry_uri:
        return None
    return f"{uri.rstrip('/')}/#/models/{settings.llm_registry_name}/versions/{number}"


def jobs_frame(jobs: list[TrainingJob], progress: dict[str, JobProgress | None], registry_name: str) -> pd.DataFrame:
    rows = []
    for job in jobs:
        done = progress.get(job.id)
        rows.append({
            "job": job.id,
            "kind": job.kind.upper(),
            "state": job.state,
            "started": format_time(job.created_at),
            "start from": job.start_from,
            "data": job.data,
            "step": steps_text(done),
            "ETA": format_eta(done.eta_s) if done and not job.finished else "",
            "LLM version": version_label(registry_name, job),
            "message": job.message or "",
        })
    return pd.DataFrame(rows, columns=["job", "kind", "state", "started", "start from", "data", "step", "ETA", "LLM version", "message"])


def job_label(job: TrainingJob) -> str:
    return f"{job.id} · {job.state}"


def progress_fraction(progress: JobProgress, job: TrainingJob) -> float:
    if job.state == "succeeded":
        return 1.0
    if not progress.total_steps:
        return 0.0
    return min(1.0, max(0.0, progress.step / progress.total_steps))


def progress_text(progress: JobProgress, job: TrainingJob) -> str:
    """'step 12/40 · ETA 3 min 20 s · 1,234 tokens/s · resumed from step 10'."""
    if not progress.total_steps and not progress.step:
        return {"queued": "waiting for the cluster", "running": "starting: loading the model and the data"}.get(job.state, job.state)
    parts = [f"step {steps_text(progress)}"]
    if progress.eta_s is not None and not job.finished:
        parts.append(f"ETA {format_eta(progress.eta_s)}")
    if progress.tokens_per_s:
        parts.append(f"{progress.tokens_per_s:,.0f} tokens/s")
    if progress.resumed_from_step:
        parts.append(f"resumed from step {progress.resumed_from_step}")
    return " · ".join(parts)


def curve_frame(series: dict[str, list[tuple[int, float]]]) -> pd.DataFrame:
    """Curves for st.line_chart: one column per series, indexed by step (series may have different steps)."""
    frames = [pd.Series(dict(points), name=name, dtype=float) for name, points in series.items() if points]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, axis=1).sort_index()
    frame.index.name = "step"
    return frame


def unfinished(jobs: list[TrainingJob]) -> list[str]:
    return [job.id for job in jobs if job.state not in FINAL_STATES]
