"""Settings, the workspace database, detached workers and the MLflow client: what every other part uses."""
