"""What one training job carries from the launcher (training.job_launch) to its Ray driver (training.ray_job) and
workers (the recipes' loops): the `JobSpec`, in the environment variable DEPLOYWISE_JOB_SPEC, and the run tags."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.llm.bundled import BUNDLED, bundled_model_folder
from engine.llm.loading import build_model
from engine.llm.versions import registry_version

SPEC_VARIABLE = "DEPLOYWISE_JOB_SPEC"
KINDS = ("cpt", "sft")
LLM_VERSION_TAG = "llm_version"  # set on the run once its version is registered
FAILURE_TAG = "failure"


@dataclass(frozen=True)
class JobSpec:
    job_id: str  # also the Ray Jobs submission id and the Ray Train run name
    kind: str
    config: dict  # the recipe's checked configuration, as a mapping
    config_hash: str
    run_id: str
    tracking_uri: str
    registry_uri: str | None
    registry_name: str
    base_model: str  # 'bundled' or a model folder the workers can read
    start_version: str | None  # LLM version trained on top of, merged; None: the base model
    snapshot_id: str  # the training data's content id: a CPT snapshot's id, an SFT dataset's hash
    storage_path: str  # Ray Train's checkpoints: a local folder here, shared storage (s3://, /dbfs) on a cluster
    dataset: str | None = None  # the SFT dataset's name (SFT jobs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        return cls(**data)


def start_model_folder(spec: JobSpec, work: Path) -> Path:
    """A Hugging Face folder of the model training starts from: the base model, or the start version merged."""
    if spec.start_version is None:
        return bundled_model_folder() if spec.base_model == BUNDLED else Path(spec.base_model)
    folder = work / "start-model"
    version = registry_version(spec.registry_name, spec.start_version, spec.tracking_uri, spec.registry_uri)
    build_model(version).save_pretrained(folder)
    return folder
