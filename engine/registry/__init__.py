"""The candidate models as MLflow holds them: metrics, what a logged key means, which use case a question is about."""
