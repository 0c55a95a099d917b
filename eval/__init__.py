"""Evaluation of LLM versions (issue 5): `golden` (the golden set and its placeholders), `scoring` (deterministic
checks of answers), `perplexity` (held-out domain and replay text), `gate` (GO/NO-GO from configs/gate.yaml),
`plan` (`plan_evaluation`: every check of a request before anything loads), `harness` (`evaluate_versions`: all of
it for several versions in one run), `results` (MLflow runs, the versions' gate tags, history) and `worker`
(evaluations out of the app's process). What the Evaluation page shows is `ui.evaluation_views`; `deploywise eval`
is `cli.evaluation`."""
