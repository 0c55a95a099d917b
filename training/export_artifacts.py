"""Exports as artifacts of their version's MLflow run: logged there once checked, listed for the versions page and
fetched for its downloads. Apart from the pipeline because the page lists and serves exports without building
a model.

An export of a registry version is logged to the version's MLflow run under `exports/<format>/` (its files and
`export.json`, the `Export` record) with the check figures as metrics `export.<format>.<figure>`; the LLM versions
page lists them and offers them as downloads.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

from mlflow.entities import Metric, RunTag

from engine.core.mlflow_client import registry_client
from engine.lifecycle.version_records import mlflow_problem
from engine.llm.versions import EXPORTS_ARTIFACT
from training.export_formats import FORMATS, MANIFEST, Export, ExportError, slug


def log_export(settings, llm, export: Export, target: Path) -> None:
    """The export's files and manifest under exports/<format>/ of the version's run; figures as metrics, the main
    file's digest as a tag."""
    client = registry_client(settings, llm.tracking_uri)
    path = f"{EXPORTS_ARTIFACT}/{export.format}"
    now = int(time.time() * 1000)
    prefix = f"export.{export.format}"
    figures = {"max_abs_diff": export.check.max_abs_diff, "min_cosine": export.check.min_cosine,
               "top1_agreement": export.check.top1_agreement, "size_mb": export.main_file.size / 1e6,
               "seconds": export.seconds}
    try:
        for name in [f.name for f in export.files] + [MANIFEST]:
            client.log_artifact(llm.run_id, str(target / name), path)
        client.log_batch(llm.run_id,
                         metrics=[Metric(f"{prefix}.{key}", float(value), now, 0) for key, value in figures.items()],
                         tags=[RunTag(f"{prefix}.sha256", export.main_file.sha256), RunTag(f"{prefix}.at", export.created_at),
                               RunTag(f"{prefix}.check", "passed")])
    except Exception as error:  # the store's errors vary (MLflow, SQLAlchemy, HTTP, disk)
        raise ExportError(f"{export.format} export of {llm.label} written to {target} and checked, but not logged to "
                          f"its MLflow run {llm.run_id}: {mlflow_problem(error)}") from None


# --- published exports, for the versions page -------------------------------------------------------------------


def published_exports(settings, run_id: str) -> list[Export]:
    """The exports logged to a version's run, in FORMATS order."""
    client = registry_client(settings)
    present = {Path(item.path).name for item in client.list_artifacts(run_id, EXPORTS_ARTIFACT) if item.is_dir}
    found = []
    with tempfile.TemporaryDirectory(prefix="deploywise-export-") as folder:
        for fmt in (f for f in FORMATS if f in present):
            local = client.download_artifacts(run_id, f"{EXPORTS_ARTIFACT}/{fmt}/{MANIFEST}", folder)
            found.append(Export.from_dict(json.loads(Path(local).read_text(encoding="utf-8"))))
    return found


def download_path(settings, export: Export, name: str) -> Path:
    """A local copy of one published file (fetched from the run's artifacts once; a GGUF is hundreds of MB)."""
    if name not in {f.name for f in export.files}:
        raise ExportError(f"the {export.format} export of {export.version} has no file {name}")
    expected = next(f.size for f in export.files if f.name == name)
    folder = settings.workspace.resolve() / EXPORTS_ARTIFACT / ".downloads" / export.run_id
    local = folder / EXPORTS_ARTIFACT / export.format / name
    if not (local.is_file() and local.stat().st_size == expected):
        local = Path(registry_client(settings).download_artifacts(export.run_id, f"{EXPORTS_ARTIFACT}/{export.format}/{name}", str(folder)))
    return local


def safetensors_zip(settings, export: Export) -> Path:
    """The published safetensors folder as one zip (stored, not compressed: float weights barely compress)."""
    paths = [download_path(settings, export, f.name) for f in export.files]
    archive = paths[0].parent.parent / f"{slug(export.version)}-safetensors.zip"
    if not archive.is_file():
        staging = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
        try:
            with zipfile.ZipFile(staging, "w", zipfile.ZIP_STORED) as bundle:
                for path in paths:
                    bundle.write(path, f"{slug(export.version)}/{path.name}")
            os.replace(staging, archive)
        finally:
            staging.unlink(missing_ok=True)
    return archive
