"""MLflow experiments of the workspace: with the local sqlite store their artifacts live in the workspace too."""

from __future__ import annotations


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
