"""The Ray job of one training run: `python -m training.ray_job`, started by `training.job_launch` through Ray Jobs.

It runs the recipe's worker loop in a Ray Train `TorchTrainer` sized from the cluster's hardware, with
checkpoints under the storage path and a `FailureConfig`, so a killed worker restarts from its last checkpoint.
The trainer's run name is the job id: a driver started again for the same job resumes from the same checkpoints
(Ray Train V2 has no `restore`). On success it registers the adapter as a new LLM version with its lineage and
ends the job's MLflow run; on failure or cancellation the run ends FAILED or KILLED with the reason as a tag.

Both recipes run this way: `kind` picks the worker loop (training.cpt, training.sft); everything else, from the
TorchTrainer to the registration, is the same code. Everything the job needs travels in the `JobSpec` (environment
variable DEPLOYWISE_JOB_SPEC) and the MLflow run (snapshot or SFT dataset, config), so the same job runs on the app's
local Ray head and on a remote cluster.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict

from engine.core.errors import one_line
from engine.llm.versions import ADAPTER_ARTIFACT, BASE_MODEL_TAG, CANDIDATE, PARENT_VERSION_TAG, VERSION_STATUS_TAG
from training import cpt, sft
from training.config import RaySettings, load_config
from training.job_spec import FAILURE_TAG, LLM_VERSION_TAG, SPEC_VARIABLE, JobSpec


def scaling_config(settings: RaySettings, resources: dict):
    """Workers and CPUs from the cluster's resources: one worker per GPU, else one CPU worker with the CPUs."""
    from ray.train import ScalingConfig

    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    workers = settings.num_workers if settings.num_workers != "auto" else max(1, gpus)
    per_worker = settings.cpus_per_worker if settings.cpus_per_worker != "auto" else max(1, cpus // workers)
    return ScalingConfig(num_workers=workers, use_gpu=bool(gpus), resources_per_worker={"CPU": per_worker})


def run_job(spec: JobSpec) -> str:
    """Train and register (Ray is initialised); the new LLM version's number."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    config = load_config(spec.kind, spec.config)
    train_loop_per_worker = {"cpt": cpt.train_loop_per_worker, "sft": sft.train_loop_per_worker}[spec.kind]
    scaling = scaling_config(config.ray, ray.cluster_resources())
    print(f"deploywise: job {spec.job_id}: {scaling.num_workers} worker(s) x {scaling.resources_per_worker}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": asdict(spec), "threads": int(scaling.resources_per_worker["CPU"])},
        scaling_config=scaling,
        run_config=RunConfig(
            name=spec.job_id,
            storage_path=spec.storage_path,
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()
    return register_version(spec)


def register_version(spec: JobSpec) -> str:
    """The run's adapter as a new version of the LLM, tagged with its lineage (its data: the snapshot, or the SFT
    dataset's name and hash) and status `candidate`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=spec.tracking_uri, registry_uri=spec.registry_uri)
    try:
        client.create_registered_model(spec.registry_name, description="LLM versions trained by deploywise")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run = client.get_run(spec.run_id)
    data = ({"sft_dataset": spec.dataset, "sft_dataset_hash": spec.snapshot_id} if spec.kind == "sft"
            else {"snapshot_id": spec.snapshot_id})
    tags = {
        BASE_MODEL_TAG: spec.base_model,
        **data,
        "config_hash": spec.config_hash,
        "job_id": spec.job_id,
        "training": spec.kind,
        VERSION_STATUS_TAG: CANDIDATE,
    }
    if spec.start_version is not None:
        tags[PARENT_VERSION_TAG] = spec.start_version
    version = client.create_model_version(
        spec.registry_name, f"{run.info.artifact_uri}/{ADAPTER_ARTIFACT}", run_id=spec.run_id, tags=tags,
        description=f"{spec.kind.upper()} job {spec.job_id} on " + (
            f"SFT dataset {spec.dataset} ({spec.snapshot_id})" if spec.kind == "sft" else f"snapshot {spec.snapshot_id}"),
    )
    client.set_tag(spec.run_id, LLM_VERSION_TAG, str(version.version))
    return str(version.version)


class Cancelled(BaseException):
    """SIGTERM from `ray job stop`: the job was cancelled."""


def main() -> int:
    from mlflow import MlflowClient

    spec = JobSpec.from_dict(json.loads(os.environ[SPEC_VARIABLE]))
    client = MlflowClient(tracking_uri=spec.tracking_uri)
    stopped = []

    def cancelled(signum, frame):
        stopped.append(signum)
        raise Cancelled()

    try:
        import ray

        ray.init(log_to_driver=True)  # joins the job's cluster; installs its own SIGTERM handler, so ours goes after
        signal.signal(signal.SIGTERM, cancelled)
        version = run_job(spec)
    except BaseException as error:  # Ray may wrap the Cancelled raised inside fit(): the flag says what happened
        if stopped:
            client.set_tag(spec.run_id, FAILURE_TAG, "cancelled")
            client.set_terminated(spec.run_id, "KILLED")
            print(f"deploywise: job {spec.job_id} cancelled", flush=True)
            return 143
        client.set_tag(spec.run_id, FAILURE_TAG, one_line(error))
        client.set_terminated(spec.run_id, "FAILED")
        raise
    client.set_terminated(spec.run_id, "FINISHED")
    print(f"deploywise: job {spec.job_id} registered {spec.registry_name} version {version}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
