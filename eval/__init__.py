"""Evaluation of LLM versions (issue 5): `golden` (the golden set and its placeholders), `scoring` (deterministic
checks of answers), `perplexity` (held-out domain and replay text), `gate` (GO/NO-GO from configs/gate.yaml),
`harness` (`evaluate_versions`: all of it for several versions in one run), `results` (MLflow runs, the versions'
gate tags, history), `jobs` (evaluations out of the app's process), `views` (what the Evaluation page shows) and
`commands` (`deploywise eval`)."""
