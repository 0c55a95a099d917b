"""LLM versions in the MLflow registry (the CPT and SFT jobs write them this way):
- registered model `settings.llm_registry_name` (default `deploywise-llm`), one model version per trained
  adapter, created with `run_id=` the training run;
- that run holds the artifact folder `adapter/`: a PEFT adapter saved with `save_pretrained`;
- the model version carries the tag `base_model`: 'bundled' or the path of a local Hugging Face folder;
- a version trained on top of another one also carries `parent_version`: its adapter fits the parent merged;
- the alias `champion` marks the version the chat uses; while no version holds it (before any training) the
  base model answers.

Which weights a version is, and the registry's names for them, are separate from loading and generating: training,
the evaluation and the version lifecycle resolve versions without any model runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from engine.core.errors import first_line
from engine.core.mlflow_client import registry_client
from engine.llm.backend_contract import LlmError
from engine.llm.bundled import BUNDLED, BUNDLED_LLM_GGUF

BASE = "base"  # the base model, served while no version is champion: evaluated, rolled back to, trained on
CHAMPION = "champion"
ADAPTER_ARTIFACT = "adapter"
EXPORTS_ARTIFACT = "exports"  # exports/<format>/ in a version's MLflow run (training.export writes them)
BASE_MODEL_TAG = "base_model"
PARENT_VERSION_TAG = "parent_version"
VERSION_STATUS_TAG = "status"  # a version's status: candidate when registered, then deployed, archived
CANDIDATE = "candidate"
MAX_LINEAGE = 32  # parent_version links followed before a registry is taken for corrupt (a loop)
ALIAS_RECHECK_S = 30.0


@dataclass(frozen=True)
class LlmVersion:
    """Which weights write the answers: a base model, or a registered adapter on top of one (the cache key)."""

    base_model: str  # 'bundled' or a local Hugging Face folder
    registry_name: str | None = None
    number: str | None = None  # None: the base model itself
    run_id: str | None = None  # the run holding the adapter/ artifact
    tracking_uri: str | None = None
    parent: LlmVersion | None = None  # the version this one's adapter was trained on, merged

    @property
    def label(self) -> str:
        if self.number is not None:
            return f"{self.registry_name}/{self.number}"
        return "base:" + (BUNDLED_LLM_GGUF.split(".")[0] if self.base_model == BUNDLED else Path(self.base_model).name)


def resolve_llm_version(settings, wanted: str | None = None) -> LlmVersion:
    """'base', 'champion' (the base model while no version holds the alias) or a version number of the registry."""
    wanted = wanted or settings.llm_version
    if wanted == BASE:
        return LlmVersion(settings.base_model)
    name = settings.llm_registry_name
    client = registry_client(settings)
    try:
        number = wanted
        if wanted == CHAMPION:
            try:
                number = client.get_registered_model(name).aliases.get(CHAMPION)
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                number = None
            if number is None:
                return LlmVersion(settings.base_model)
    except MlflowException as error:
        raise LlmError(f"cannot read the LLM versions of {name} from the MLflow registry: {first_line(error.message)}") from None
    return registry_version(name, str(number), settings.tracking_uri, settings.mlflow_registry_uri)


def registry_version(name: str, number: str, tracking_uri: str, registry_uri: str | None = None) -> LlmVersion:
    """LLM version `number` of registered model `name`, with the versions it was trained on top of."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    try:
        try:
            found = client.get_model_version(name, number)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise LlmError(f"the MLflow registry has no LLM version {name}/{number}") from None
            raise
        return _version_with_lineage(client, name, found, tracking_uri)
    except MlflowException as error:
        raise LlmError(f"cannot read the LLM versions of {name} from the MLflow registry: {first_line(error.message)}") from None


def _version_with_lineage(client, name: str, found, tracking_uri: str) -> LlmVersion:
    """The found model version as an LlmVersion, with the chain of versions it was trained on top of."""
    chain = [found]
    while parent := chain[-1].tags.get(PARENT_VERSION_TAG):
        if len(chain) > MAX_LINEAGE or parent in {str(v.version) for v in chain}:
            raise LlmError(f"LLM version {name}/{found.version}: its {PARENT_VERSION_TAG} tags form a loop")
        try:
            chain.append(client.get_model_version(name, parent))
        except MlflowException as error:
            raise LlmError(f"LLM version {name}/{chain[-1].version} names parent version {parent}, "
                           f"which cannot be read: {first_line(error)}") from None
    version = None
    for link in reversed(chain):
        base_model = link.tags.get(BASE_MODEL_TAG)
        if not base_model or not link.run_id:
            raise LlmError(f"LLM version {name}/{link.version} needs a run and a '{BASE_MODEL_TAG}' tag to be loaded")
        version = LlmVersion(base_model, name, str(link.version), link.run_id, tracking_uri, version)
    return version


def version_label(settings, wanted: str, used: str | None, current: LlmVersion | None) -> str:
    """What an in-process backend reports: the version that wrote the caller's last stream, else the one loaded,
    else the one configured ("base:..." or "<registered model>/<wanted>")."""
    if used:
        return used
    if current is not None:
        return current.label
    if wanted == BASE:
        return LlmVersion(settings.base_model).label
    return f"{settings.llm_registry_name}/{wanted}"
