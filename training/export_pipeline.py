"""Exporting an LLM version: build the merged model, write it in a staging folder, check the written model
against it, publish. The one place that loads torch and transformers for an export; the formats, the records and
the MLflow side are separate so that listing and downloading exports do not go through it.

Nothing is published unchecked. The files are written in a staging folder inside the destination; a GGUF file is
read back with `gguf.GGUFReader`; then the written model is loaded again (the folder with AutoModelForCausalLM,
the GGUF file with transformers' GGUF loader) and its next-token logits at every position of a fixed set of chat
prompts are compared with the merged model's. Only when they agree within the format's tolerance are the files
moved into the destination; otherwise, or on any failure (a full disk...), the staging folder is removed and an
`ExportError` says why in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from engine.access.roles import require_admin
from engine.answering.prompting import SYSTEM_PROMPT
from engine.core.database import utc_now
from engine.core.errors import first_line
from engine.llm.backend_contract import LlmError
from engine.llm.bundled import load_tokenizer, quiet_model_loading
from engine.llm.chat_prompt import fit_prompt
from engine.llm.loading import build_model
from training.export_artifacts import log_export
from training.export_formats import (
    MANIFEST,
    STEPS,
    TOLERANCES,
    Export,
    ExportedFile,
    ExportError,
    LogitsCheck,
    Tolerance,
    check_format,
    default_folder,
    resolve_version,
    slug,
)
from training.gguf_export import GgufError, check_gguf, check_supported, ollama_modelfile, write_gguf

MODELFILE = "Modelfile"
# The check's prompts: short questions of the chat's kind.
PROMPTS = (
    "Which model should I deploy for fraud detection?",
    "Is ts-boosting within the latency budget of the churn use case?",
    "Summarise the acceptance criteria for tumor screening.",
    "Why not the baseline?",
    "Hello",
)


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
        log_export(settings, llm, export, target)
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
    import torch  # torch and transformers: heavy, loaded only when a model is exported
    from transformers import AutoModelForCausalLM

    progress(1, STEPS, "writing the merged model as safetensors")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    names = sorted(path.name for path in staging.iterdir() if path.is_file())
    progress(3, STEPS, "loading the written folder and comparing its logits with the merged model's")
    written = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).eval()
    return names, compare_logits(model, written, tokenizer, TOLERANCES["safetensors"]), None


def _write_gguf(model, tokenizer, staging: Path, fmt: str, label: str, progress):
    import torch  # torch and transformers: heavy, loaded only when a model is exported
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
    import torch  # heavy, loaded only when a model is exported

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

