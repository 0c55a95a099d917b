"""What an export of an LLM version is: its formats and their check tolerances, the record it leaves (`Export`,
`export.json`) and the checks of a request. Separate because every other part shares them: the pipeline writes the
record, the MLflow side logs and reads it back, the background job, the versions page and the CLI show it.

- `safetensors`: a Hugging Face folder of the merged model (base + every adapter of its lineage, float32):
  weights, config, generation config and tokenizer.
- `gguf-f16`, `gguf-q8_0`: `<version>-<type>.gguf` (training.gguf_export) and `Modelfile` (ChatML template, the
  chat's system prompt, the tokenizer's end-of-turn tokens as stops, temperature 0 like the chat).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from engine.llm.backend_contract import LlmError
from engine.llm.versions import EXPORTS_ARTIFACT, resolve_llm_version

FORMATS = ("safetensors", "gguf-f16", "gguf-q8_0")
MANIFEST = "export.json"
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
    # 8-bit blocks of 32 weights: an SFT version of SmolLM2 measured 0.984 at its worst position, 97% top-1
    "gguf-q8_0": Tolerance(0.98, 0.9),
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
