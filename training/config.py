"""Training recipes' configuration: a YAML file checked completely before any job starts.

Every problem is reported with its key (`lora.r: must be a whole number >= 1 (got 'x')`), all of them at once, so
an admin fixes a file in one go. Unknown keys are errors too: a misspelt `learning_rat` silently falling back to
the default would train something else than what the file says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from engine.core.yaml_input import YamlError, load_yaml
from training.dataset_snapshot import DEFAULT_REPLAY_RATIO

LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZATIONS = ("none", "4bit")
AUTO = "auto"
LATEST = "latest"


class ConfigError(ValueError):
    """The configuration cannot run; the message names every bad key."""


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LINEAR_LAYERS


@dataclass(frozen=True)
class RaySettings:
    """How the job is spread over the Ray cluster; `auto` sizes it from the hardware the job finds."""

    num_workers: int | str = AUTO
    cpus_per_worker: int | str = AUTO
    max_failures: int = 2  # a killed worker is restarted from the last checkpoint this many times


@dataclass(frozen=True)
class AdapterTraining:
    """What every recipe sets: where it starts, the adapter, the optimisation and the Ray job; a recipe adds its data."""

    kind: ClassVar[str]
    start_from: str = "base"  # 'base' (the workspace's base model) or an LLM version number of the registry
    quantization: str = "none"
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    epochs: float = 3.0
    max_steps: int = -1  # > 0 caps the run (smoke tests, benchmarks)
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 512
    eval_steps: int = 10
    save_steps: int = 10
    logging_steps: int = 1
    seed: int = 42
    ray: RaySettings = field(default_factory=RaySettings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        return data

    def flat(self) -> dict[str, Any]:
        """Keys as dotted paths (`lora.r`): the form's fields and the MLflow params."""
        def walk(data: dict, prefix: str) -> dict:
            flat = {}
            for key, value in data.items():
                flat.update(walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
            return flat

        return walk(self.to_dict(), "")

    @property
    def config_hash(self) -> str:
        """Same settings, same hash: the lineage tag that says which recipe made a version."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def start_version(self) -> str | None:
        return self.start_from if self.start_from.isdigit() else None


@dataclass(frozen=True)
class CptConfig(AdapterTraining):
    """Continual pretraining: raw-text causal LM training of a LoRA (or QLoRA) adapter on a dataset snapshot."""

    kind: ClassVar[str] = "cpt"
    snapshot: str = "new"  # 'new' (snapshot the knowledge base at launch), 'latest' or a snapshot id
    replay_ratio: float = DEFAULT_REPLAY_RATIO


@dataclass(frozen=True)
class SftConfig(AdapterTraining):
    """Supervised fine-tuning: a LoRA adapter on a CPT version (merged), trained on the answers of an SFT dataset."""

    kind: ClassVar[str] = "sft"
    start_from: str = LATEST  # 'latest' (the newest CPT version), 'base' or an LLM version number
    dataset: str = LATEST  # 'latest' (the newest SFT dataset) or a dataset's name
    validation_share: float = 0.1  # pairs held out (chosen by their instruction's hash) for the evaluation loss
    learning_rate: float = 2e-4
    epochs: float = 2.0
    batch_size: int = 1  # pairs are not packed: one long pair per step wastes no padding...
    gradient_accumulation_steps: int = 4  # ...and 4 of them make the update
    max_seq_length: int = 2560  # a recommendation pair is the chat's whole prompt (~1,500-1,700 tokens) and its answer


def load_cpt_config(source: Path | str | dict | None = None, **overrides: Any) -> CptConfig:
    """A checked CptConfig from a YAML file, its text as a mapping, or nothing (the defaults); `overrides` win
    (a mapping value such as `lora={"r": 8}` changes only the keys it names). Raises ConfigError naming every bad key."""
    return _load(CptConfig, source, overrides)


def load_sft_config(source: Path | str | dict | None = None, **overrides: Any) -> SftConfig:
    """A checked SftConfig, read as load_cpt_config reads a CptConfig."""
    return _load(SftConfig, source, overrides)


def load_config(kind: str, source: Path | str | dict | None = None, **overrides: Any) -> AdapterTraining:
    """The checked configuration of recipe `kind` ('cpt' or 'sft')."""
    return _load(RECIPES[kind], source, overrides)


def _load(cls, source, overrides: dict):
    raw = _merged(read_mapping(source), overrides)
    problems: list[str] = []
    config = _build(cls, raw, "", problems)
    if config is not None:
        _check(config, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def read_mapping(source) -> dict:
    """A YAML file (or a mapping already read) as a mapping; the recipes and the gate are read alike."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration ({error.__class__.__name__}: {error})") from None
    try:
        data = load_yaml(text)
    except YamlError as error:
        raise ConfigError(f"{path}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of keys to values")
    return data


def _merged(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


_NESTED = {"lora": LoraSettings, "ray": RaySettings}
RECIPES = {config.kind: config for config in (CptConfig, SftConfig)}


def _build(cls, raw: Any, prefix: str, problems: list[str]):
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.')}: must be a mapping (got {raw!r})")
        return None
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(known)})")
    values = {}
    for name, spec in known.items():
        if name not in raw:
            continue
        key, value = f"{prefix}{name}", raw[name]
        if name in _NESTED:
            values[name] = _build(_NESTED[name], value, f"{key}.", problems)
            continue
        values[name] = _coerce(key, value, spec.default, problems)
    if any(value is None for value in values.values()):
        return None
    try:
        return cls(**values)
    except TypeError as error:  # pragma: no cover - every field has a default
        problems.append(f"{prefix.rstrip('.') or 'config'}: {error}")
        return None


def _coerce(key: str, value: Any, default: Any, problems: list[str]):
    """The value in the type of the field's default; None (with a problem recorded) when it does not fit."""
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and value and all(isinstance(item, str) and item.strip() for item in value):
            return tuple(item.strip() for item in value)
        expected = "a non-empty list of names"
    elif default == AUTO:
        if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        expected = "'auto' or a whole number >= 1"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "a whole number"
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        expected = "a number"
    else:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value).strip()
        expected = "text"
    problems.append(f"{key}: must be {expected} (got {value!r})")
    return None


def _check(config: AdapterTraining, problems: list[str]) -> None:
    def need(ok: bool, key: str, rule: str, value: Any) -> None:
        if not ok:
            problems.append(f"{key}: must be {rule} (got {value!r})")

    if isinstance(config, CptConfig):
        need(config.start_from == "base" or config.start_from.isdigit(), "start_from", "'base' or an LLM version number",
             config.start_from)
        need(config.snapshot in ("new", LATEST) or _is_snapshot_id(config.snapshot), "snapshot",
             "'new', 'latest' or a snapshot id (16 hex digits)", config.snapshot)
        need(0 <= config.replay_ratio < 1, "replay_ratio", "at least 0 and below 1", config.replay_ratio)
    else:
        need(config.start_from in (LATEST, "base") or config.start_from.isdigit(), "start_from",
             "'latest' (the newest CPT version), 'base' or an LLM version number", config.start_from)
        need(bool(config.dataset), "dataset", "'latest' or the name of an SFT dataset", config.dataset)
        need(0 < config.validation_share <= 0.5, "validation_share", "above 0 and at most 0.5", config.validation_share)
    need(config.quantization in QUANTIZATIONS, "quantization", " or ".join(map(repr, QUANTIZATIONS)), config.quantization)
    need(config.lora.r >= 1, "lora.r", "a whole number >= 1", config.lora.r)
    need(config.lora.alpha >= 1, "lora.alpha", "a whole number >= 1", config.lora.alpha)
    need(0 <= config.lora.dropout < 1, "lora.dropout", "at least 0 and below 1", config.lora.dropout)
    need(0 < config.learning_rate <= 1, "learning_rate", "above 0 and at most 1", config.learning_rate)
    need(0 <= config.warmup_ratio < 1, "warmup_ratio", "at least 0 and below 1", config.warmup_ratio)
    need(config.lr_scheduler in ("cosine", "linear", "constant_with_warmup"), "lr_scheduler",
         "'cosine', 'linear' or 'constant_with_warmup'", config.lr_scheduler)
    need(config.weight_decay >= 0, "weight_decay", "at least 0", config.weight_decay)
    need(config.epochs > 0, "epochs", "above 0", config.epochs)
    need(config.max_steps == -1 or config.max_steps >= 1, "max_steps", "-1 (no cap) or a whole number >= 1", config.max_steps)
    for key in ("batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps", "logging_steps"):
        need(getattr(config, key) >= 1, key, "a whole number >= 1", getattr(config, key))
    need(16 <= config.max_seq_length <= 32_768, "max_seq_length", "between 16 and 32768", config.max_seq_length)
    need(config.save_steps % config.eval_steps == 0, "save_steps",
         f"a multiple of eval_steps ({config.eval_steps}) so every checkpoint carries a fresh eval loss", config.save_steps)
    need(config.ray.max_failures >= 0, "ray.max_failures", "a whole number >= 0", config.ray.max_failures)


def _is_snapshot_id(value: str) -> bool:
    return len(value) == 16 and all(char in "0123456789abcdef" for char in value)
