"""Export of an LLM version for serving outside the app: the merged model as safetensors, or as one GGUF file
(f16 or q8_0) with an Ollama Modelfile beside it.

- `safetensors`: a Hugging Face folder of the merged model (base + every adapter of its lineage, float32):
  weights, config, generation config and tokenizer.
- `gguf-f16`, `gguf-q8_0`: `<version>-<type>.gguf` (training.gguf_export) and `Modelfile` (ChatML template, the
  chat's system prompt, the tokenizer's end-of-turn tokens as stops, temperature 0 like the chat).

Nothing is published unchecked. The files are written in a staging folder inside the destination; a GGUF file is
read back with `gguf.GGUFReader`; then the written model is loaded again (the folder with AutoModelForCausalLM,
the GGUF file with transformers' GGUF loader) and its next-token logits at every position of a fixed set of chat
prompts are compared with the merged model's. Only when they agree within the format's tolerance are the files
moved into the destination; otherwise, or on any failure (a full disk...), the staging folder is removed and an
`ExportError` says why in one line.

An export of a registry version is logged to the version's MLflow run under `exports/<format>/` (its files and
`export.json`, the `Export` below) with the check figures as metrics `export.<format>.<figure>`; the LLM versions
page lists them and offers them as downloads. The page runs an export out of the Streamlit process
(`python -m training.export <status file>`, status in `<workspace>/exports/jobs/<id>.json`, written atomically by
the worker; a worker that died without saying so is marked failed by the next reader: `engine.core.workers`); the CLI
(`deploywise export`) runs it in its own process.
Exporting is an admin action (`engine.access.roles.require_admin`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.access.roles import require_admin
from engine.answering.prompting import SYSTEM_PROMPT
from engine.core.database import utc_now
from engine.core.errors import first_line
from engine.core.settings import load_settings, worker_settings
from engine.core.workers import StatusFile, run_work
from engine.lifecycle.version_records import mlflow_problem
from engine.llm.backend_contract import LlmError
from engine.llm.bundled import load_tokenizer, quiet_model_loading
from engine.llm.chat_prompt import fit_prompt
from engine.llm.loading import build_model
from engine.llm.versions import EXPORTS_ARTIFACT, resolve_llm_version
from training.gguf_export import GgufError, check_gguf, check_supported, ollama_modelfile, write_gguf

FORMATS = ("safetensors", "gguf-f16", "gguf-q8_0")
MANIFEST = "export.json"
MODELFILE = "Modelfile"
# The check's prompts: short questions of the chat's kind.
PROMPTS = (
    "Which model should I deploy for fraud detection?",
    "Is ts-boosting within the latency budget of the churn use case?",
    "Summarise the acceptance criteria for tumor screening.",
    "Why not the baseline?",
    "Hello",
)
STEPS = 5  # progress: build, write, read back, compare, publish


@dataclass(frozen=True)
class Tolerance:
    """How close the written model's logits must stay to the merged model's, per position."""
    min_cosine: float
    min_top1: float  # share of positions where both predict the same next token

    def text(self) -> str:
        return f"cosine >= {self.min_cosine:g} and top-1 agreement >= {self.min_top1:.0%}"


TOLERANCES = {
    "safetensors": Tolerance(0.99999, 1.0),  # the same float32 weights
    "gguf-f16": Tolerance(0.9999, 0.98),  # weights rounded to half precision
    "gguf-q8_0": Tolerance(0.98, 0.9),  # 8-bit blocks of 32 weights: an SFT version of SmolLM2 measured 0.984 at its worst position, 97% top-1
}


class ExportError(RuntimeError):
    """A refused or failed export, in one line; nothing half-written is left behind."""


@dataclass(frozen=True)
class ExportedFile:
    name: str
    size: int  # bytes
    sha256: str


@dataclass(frozen=True)
class LogitsCheck:
    """The written model's next-token logits against the merged model's, over every position of the prompts."""
    prompts: int
    positions: int
    max_abs_diff: float
    min_cosine: float
    top1_agreement: float
    tolerance: str
    passed: bool


@dataclass(frozen=True)
class Export:
    version: str  # the version's label, "deploywise-llm/3" or "base:SmolLM2-135M-Instruct"
    format: str
    folder: str
    files: list[ExportedFile]
    check: LogitsCheck
    gguf: dict | None  # training.gguf_export.GgufSummary as read back
    seconds: float
    created_at: str
    run_id: str | None = None  # the MLflow run it was logged to

    @property
    def main_file(self) -> ExportedFile:
        """The file a user downloads first: the GGUF, or the safetensors weights."""
        suffix = ".gguf" if self.format != "safetensors" else ".safetensors"
        return next((f for f in self.files if f.name.endswith(suffix)), self.files[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Export:
        return cls(**{**data, "files": [ExportedFile(**f) for f in data["files"]], "check": LogitsCheck(**data["check"])})


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose {', '.join(FORMATS)}")
    return fmt


def resolve_version(settings, version: str):
    """The LlmVersion to export: a version number of the registry ('3' or 'v3'), 'champion' or 'base'."""
    wanted = str(version).strip().removeprefix("v")
    if wanted not in ("base", "champion") and not wanted.isdigit():
        raise ExportError(f"{version!r} is not an LLM version: give a version number, 'champion' or 'base'")
    try:
        return resolve_llm_version(settings, wanted if not wanted.isdigit() else str(int(wanted)))
    except LlmError as error:
        raise ExportError(str(error)) from None


def slug(label: str) -> str:
    """A file-name form of a version label: 'deploywise-llm/3' -> 'deploywise-llm-3'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label.replace("base:", "base-")).strip("-.")


def default_folder(settings, label: str, fmt: str) -> Path:
    return settings.workspace.resolve() / EXPORTS_ARTIFACT / slug(label) / fmt


# --- exporting --------------------------------------------------------------------------------------------------


def export_version(settings, version: str, fmt: str, out_dir: str | Path | None = None, *, on_progress=None) -> Export:
    """Export `version` in `fmt` into `out_dir` (default <workspace>/exports/<version>/<format>), checked, and log it
    to the version's MLflow run. ExportError (one line) on any refusal or failure, with nothing left half-written."""

    require_admin("exporting an LLM version")
    check_format(fmt)
    llm = resolve_version(settings, version)
    target = Path(out_dir).expanduser().resolve() if out_dir else default_folder(settings, llm.label, fmt)
    progress = on_progress or (lambda done, total, message: None)
    started = time.monotonic()
    made = [folder for folder in (target, *target.parents) if not folder.exists()]  # removed again on failure
    staging = _staging_folder(target)
    published = False
    try:
        progress(0, STEPS, f"building {llm.label}: base model with its adapters merged")
        model = build_model(llm).eval()
        if fmt != "safetensors":
            check_supported(model)
        tokenizer = load_tokenizer(llm.base_model)
        if fmt == "safetensors":
            names, check, summary = _write_safetensors(model, tokenizer, staging, progress)
        else:
            names, check, summary = _write_gguf(model, tokenizer, staging, fmt, llm.label, progress)
        if not check.passed:
            raise ExportError(
                f"the {fmt} export of {llm.label} failed its logits check (min cosine {check.min_cosine:.6f}, top-1 "
                f"agreement {check.top1_agreement:.1%}, max |diff| {check.max_abs_diff:.4g}; needs {check.tolerance}); "
                "nothing was published")
        progress(4, STEPS, f"publishing to {target}")
        files = [ExportedFile(name, (staging / name).stat().st_size, _sha256(staging / name)) for name in names]
        export = Export(llm.label, fmt, str(target), files, check, asdict(summary) if summary else None,
                        round(time.monotonic() - started, 1), utc_now(), llm.run_id)
        (staging / MANIFEST).write_text(json.dumps(export.to_dict(), indent=1), encoding="utf-8")
        _publish(staging, target, [*names, MANIFEST])
        published = True
    except (LlmError, GgufError) as error:
        raise ExportError(f"cannot export {llm.label} as {fmt}: {error}") from None
    except OSError as error:
        raise ExportError(f"cannot write the {fmt} export of {llm.label} to {target}: "
                          f"{error.strerror or type(error).__name__}") from None
    except ExportError:
        raise
    except Exception as error:  # the writers' own errors (tokenizers, safetensors: a full disk among them)
        kind = "" if type(error) is Exception else f"{type(error).__name__}: "
        raise ExportError(f"cannot export {llm.label} as {fmt}: {kind}{first_line(error)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made if not published else ():
            with contextlib.suppress(OSError):  # only if still empty
                folder.rmdir()
    if llm.run_id:
        _log_to_mlflow(settings, llm, export, target)
    progress(STEPS, STEPS, f"exported {llm.label} as {fmt} in {export.seconds:g} s")
    return export


def _staging_folder(target: Path) -> Path:
    """A hidden folder inside the destination (same file system, so publishing is a rename)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=target))
    except OSError as error:
        raise ExportError(f"cannot write to {target}: {error.strerror or type(error).__name__}") from None


def _write_safetensors(model, tokenizer, staging: Path, progress):
    import torch
    from transformers import AutoModelForCausalLM

    progress(1, STEPS, "writing the merged model as safetensors")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    names = sorted(path.name for path in staging.iterdir() if path.is_file())
    progress(3, STEPS, "loading the written folder and comparing its logits with the merged model's")
    written = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).eval()
    return names, compare_logits(model, written, tokenizer, TOLERANCES["safetensors"]), None


def _write_gguf(model, tokenizer, staging: Path, fmt: str, label: str, progress):
    import torch
    from transformers import AutoModelForCausalLM

    name = f"{slug(label)}-{fmt.removeprefix('gguf-')}.gguf"
    tokenizer_folder = staging / "tokenizer"  # read by gguf's SpecialVocab; not published
    tokenizer.save_pretrained(tokenizer_folder)
    progress(1, STEPS, f"writing {name}")
    layout = write_gguf(model, tokenizer_folder, staging / name, fmt, label)
    progress(2, STEPS, f"reading {name} back with gguf.GGUFReader")
    summary = check_gguf(staging / name, layout)
    progress(3, STEPS, f"loading {name} with transformers' GGUF loader and comparing its logits with the merged model's")
    quiet_model_loading()
    written = AutoModelForCausalLM.from_pretrained(staging, gguf_file=name, dtype=torch.float32).eval()
    check = compare_logits(model, written, tokenizer, TOLERANCES[fmt])
    (staging / MODELFILE).write_text(
        ollama_modelfile(name, layout.chat_template, stop_tokens(model, tokenizer), SYSTEM_PROMPT), encoding="utf-8")
    return [name, MODELFILE], check, summary


def stop_tokens(model, tokenizer) -> list[str]:
    """The tokens that end a turn: the tokenizer's end-of-sequence token and the generation config's."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    ids = [tokenizer.eos_token_id, *ids]
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None))


def compare_logits(reference, written, tokenizer, tolerance: Tolerance) -> LogitsCheck:
    """Next-token logits of both models at every position of the PROMPTS, each as a user message through the chat
    template (the model's default system message included; the chat's long system prompt would only add compute)."""
    import torch

    max_diff, min_cosine, agree, positions = 0.0, 1.0, 0, 0
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = torch.tensor([fit_prompt(tokenizer, [{"role": "user", "content": prompt}], reference.config.max_position_embeddings)])
            expected = reference(input_ids=ids).logits[0].float()
            found = written(input_ids=ids).logits[0].float()
            max_diff = max(max_diff, (expected - found).abs().max().item())
            min_cosine = min(min_cosine, torch.nn.functional.cosine_similarity(expected, found, dim=-1).min().item())
            agree += int((expected.argmax(-1) == found.argmax(-1)).sum())
            positions += ids.shape[1]
    top1 = agree / positions
    return LogitsCheck(len(PROMPTS), positions, round(max_diff, 6), round(min_cosine, 7), round(top1, 4),
                       tolerance.text(), min_cosine >= tolerance.min_cosine and top1 >= tolerance.min_top1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _publish(staging: Path, target: Path, names: list[str]) -> None:
    """Move the checked files into the destination; if one move fails, the ones moved are taken back out."""
    moved = []
    try:
        for name in names:
            os.replace(staging / name, target / name)
            moved.append(name)
    except OSError:
        for name in moved:
            (target / name).unlink(missing_ok=True)
        raise


def _client(settings, tracking_uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)


def _log_to_mlflow(settings, llm, export: Export, target: Path) -> None:
    """The export's files and manifest under exports/<format>/ of the version's run; figures as metrics, the main
    file's digest as a tag."""
    from mlflow.entities import Metric, RunTag

    client = _client(settings, llm.tracking_uri)
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
    client = _client(settings)
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
        local = Path(_client(settings).download_artifacts(export.run_id, f"{EXPORTS_ARTIFACT}/{export.format}/{name}", str(folder)))
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


# --- exports out of the app's process -----------------------------------------------------------------------------

FINAL_STATES = ("succeeded", "failed")
DIED = "the export process ended without finishing (killed, or the machine restarted); see its log"
@dataclass
class ExportJob:
    id: str
    version: str
    format: str
    state: str  # queued, running, succeeded, failed
    settings: dict
    created_at: str
    created_by: str | None = None
    updated_at: str = ""
    progress: dict = field(default_factory=lambda: {"done": 0, "total": STEPS, "message": "waiting to start"})
    export: dict | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def jobs_folder(settings) -> Path:
    return settings.workspace.resolve() / EXPORTS_ARTIFACT / "jobs"


def start_export_job(settings, version: str, fmt: str, created_by: str | None = None) -> ExportJob:
    """Check the request, then export in a process of its own (it survives page reloads); ExportError before that."""
    require_admin("exporting an LLM version")
    check_format(fmt)
    resolve_version(settings, version)
    job = ExportJob(f"export-{uuid.uuid4().hex[:12]}", str(version), fmt, "queued", worker_settings(settings), utc_now(),
                    created_by)
    folder = jobs_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job.id}.json"
    status = StatusFile(path, ExportJob)
    status.write(job)
    status.start("training.export", python_options=("-X", "faulthandler"))
    return job


def export_jobs(settings, version: str | None = None) -> list[ExportJob]:
    """Exports started from the app, newest first; one whose worker died without saying so is marked failed."""
    folder = jobs_folder(settings)
    jobs = []
    for path in folder.glob("export-*.json") if folder.is_dir() else ():
        try:
            status = StatusFile(path, ExportJob)
            job = status.read()
        except (OSError, ValueError, TypeError):
            continue  # being replaced this instant, or foreign
        if version is None or job.version == str(version):
            jobs.append(status.refreshed(job, FINAL_STATES, {"state": "failed", "error": DIED}))
    return sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)


def run_export_job(path: Path) -> int:
    """The worker: run the export a status file describes, keeping the file up to date; the exit code."""
    status = StatusFile(path, ExportJob)
    job = status.read()
    job.state = "running"
    status.write(job)

    def progress(done: int, total: int, message: str) -> None:
        job.progress = {"done": done, "total": total, "message": message}
        status.write(job)
        print(f"[{done}/{total}] {message}", flush=True)

    def export() -> None:
        job.export = export_version(load_settings(**job.settings), job.version, job.format, on_progress=progress).to_dict()

    job.state, job.error = run_work(export, expected=(ExportError,))
    status.write(job)
    print(f"deploywise: {job.id} {job.state}" + (f": {job.error}" if job.error else ""), flush=True)
    return 0 if job.state == "succeeded" else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m training.export <status file>", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_export_job(Path(sys.argv[1])))
