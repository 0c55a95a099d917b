"""The Retraining page's CPT and SFT forms, as plain functions: which settings each recipe's form shows, their
widget keys and values, the configuration YAML (the file, an upload, the editor) and the problems a check found.

Separate from the data a job learns from (`ui.retraining_inputs`) and the jobs table (`ui.retraining_jobs`): only
the form turns widget values into a checked configuration and back. The page keeps only widgets and layout;
everything here runs (and is tested) without a browser or Streamlit. The configs themselves are `training.config`'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from engine.core.markdown import escape_markdown
from engine.core.paths import CONFIGS_DIR
from engine.core.yaml_input import YamlError, load_yaml
from training.config import AdapterTraining, ConfigError, load_config

CONFIG_FOLDER = CONFIGS_DIR
RECIPES = {"cpt": "CPT: continual pretraining on the knowledge base", "sft": "SFT: fine-tuning a CPT version on an SFT dataset"}

# The settings each recipe's form shows, in its order; the other keys come from the YAML (file, upload or edit).
TRAINING_KEYS = (
    "quantization", "lora.r", "lora.alpha", "lora.dropout",
    "learning_rate", "epochs", "max_steps", "batch_size",
    "gradient_accumulation_steps", "max_seq_length", "eval_steps", "save_steps",
)
FORM_KEYS = {"cpt": ("start_from", "snapshot", "replay_ratio", *TRAINING_KEYS),
             "sft": ("start_from", "dataset", "validation_share", *TRAINING_KEYS)}
TEXT_KEYS = ("learning_rate",)  # typed as text so that 2e-5 can be written as such


def widget_key(config_key: str, kind: str = "cpt") -> str:
    """The Streamlit key of a config key's widget in a recipe's form: `lora.r` -> `cpt_lora_r`, `sft_lora_r`."""
    return f"{kind}_" + config_key.replace(".", "_")


def config_path(kind: str) -> Path:
    return CONFIG_FOLDER / f"{kind}.yaml"


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
        data = load_yaml(text)
    except YamlError as error:
        raise ConfigError(str(error)) from None
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
    problems = [escape_markdown(problem) for problem in config_problems(error)]  # they quote the uploaded YAML
    if len(problems) == 1:
        return f"{intro}: {problems[0]}"
    return f"{intro}:\n\n" + "\n".join(f"- {problem}" for problem in problems)
