"""The workspace's MLflow: one client for its tracking store and registry, and its experiments (with the local
sqlite store their artifacts live in the workspace too)."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient


def registry_client(settings, tracking_uri: str | None = None) -> MlflowClient:
    """The MLflow client of the workspace's tracking store (or the given one, where a version's run lives) and its
    model registry."""
    return MlflowClient(tracking_uri=tracking_uri or settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)


def ensure_experiment(client, settings, name: str) -> str:
    """The id of experiment `name`, created if needed. A local sqlite store keeps artifacts in
    `<workspace>/mlartifacts` (MLflow's default would be `./mlruns` in whatever folder the process started in);
    a tracking server or Databricks chooses its own location."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.tracking_uri.startswith("sqlite:"):
        location = (settings.workspace / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def store_missing(settings, *, registry: bool = True) -> bool:
    """True for the workspace's local sqlite store before it is created: opening it would create it (seconds of
    migrations), and it holds nothing yet. A separate registry (`registry=True`) is not local, so not missing."""
    uri = settings.tracking_uri
    return (uri.startswith("sqlite:///") and not (registry and settings.mlflow_registry_uri)
            and not Path(uri.removeprefix("sqlite:///")).exists())
