"""A version is loaded as base model + adapter, merged (`merge_and_unload`) so it generates at base-model speed.

Loading is apart from generating because the export, the evaluation's perplexity and training build the same merged
model without any chat backend around it.
"""

from __future__ import annotations

import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from engine.core.errors import first_line
from engine.llm import bundled
from engine.llm.backend_contract import LlmError
from engine.llm.bundled import BUNDLED, load_tokenizer
from engine.llm.versions import ADAPTER_ARTIFACT, LlmVersion


@dataclass(frozen=True, eq=False)
class LoadedLlm:
    """A model ready to generate; its lock keeps generate() to one caller at a time."""

    version: LlmVersion
    model: Any
    tokenizer: Any
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_loaded: weakref.WeakValueDictionary[LlmVersion, LoadedLlm] = weakref.WeakValueDictionary()
_loading = threading.Lock()


def load_llm(version: LlmVersion) -> LoadedLlm:
    """The version's model, loaded once for as long as someone uses it (a replaced champion is freed)."""
    with _loading:
        loaded = _loaded.get(version)
        if loaded is None:
            loaded = LoadedLlm(version, build_model(version).eval(), load_tokenizer(version.base_model))
            _loaded[version] = loaded
        return loaded


def build_model(version: LlmVersion):
    """A fresh float32 model of the version: its base with every adapter of its lineage merged, oldest first."""
    model = load_base_model(version.base_model) if version.parent is None else build_model(version.parent)
    return model if version.number is None else _merge_adapter(model, version)


def load_base_model(base_model: str = BUNDLED):
    """engine.llm.bundled.load_base_model with its failure as an LlmError, which the chat turns into a notice."""
    try:
        return bundled.load_base_model(base_model)
    except bundled.ModelLoadError as error:
        raise LlmError(str(error)) from None


def _merge_adapter(model, version: LlmVersion):
    from peft import PeftModel  # with torch: imported only when an adapter is merged

    with tempfile.TemporaryDirectory(prefix="deploywise-adapter-") as folder:
        try:
            adapter = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=ADAPTER_ARTIFACT, dst_path=folder, tracking_uri=version.tracking_uri)
        except (MlflowException, OSError) as error:
            raise LlmError(f"cannot fetch the {ADAPTER_ARTIFACT}/ artifact of {version.label} "
                           f"(run {version.run_id}): {first_line(error)}") from None
        try:
            return PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise LlmError(f"the adapter of {version.label} does not fit its base model {version.base_model}: "
                           f"{first_line(error)}") from None
