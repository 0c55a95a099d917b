"""One evaluation on the real bundled SmolLM2 against a short CPT run of it: the CPT recipe (training.cpt) trains a
LoRA adapter in this process on the demo workspace's snapshot, it is registered as version 1 the way a job registers
it and exported as a checked GGUF file, and base and version 1 are evaluated side by side on a few golden items on
the chat's own runtime (llama.cpp, with the grammar of known markers)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_eval_harness import opening

from engine.core.mlflow_client import ensure_experiment
from engine.core.settings import load_settings
from engine.llm.backends import llm_backend, version_settings
from engine.llm.bundled import bundled_model_folder, load_tokenizer
from eval.harness import evaluate_versions
from eval.plan import EvaluationError, plan_evaluation
from eval.results import load_evaluation
from training.config import load_cpt_config
from training.cpt import Hardware, collate_blocks, packed_data, trainable_model, training_arguments
from training.dataset_snapshot import SPLITS, read_split, snapshot_workspace
from training.export_pipeline import export_version
from training.job_spec import JobSpec
from training.ray_job import register_version

pytestmark = pytest.mark.slow


def short_cpt(settings) -> str:
    """12 steps of CPT (LoRA r=8, 256-token blocks, a higher learning rate than the default), registered; its number."""
    from transformers import Trainer

    snapshot = snapshot_workspace(settings)
    config = load_cpt_config(None, max_steps=12, batch_size=2, max_seq_length=256, learning_rate=3e-4, eval_steps=100,
                             save_steps=100, lora={"r": 8, "alpha": 16})
    tokenizer = load_tokenizer(settings.base_model)
    data = packed_data({split: read_split(snapshot, split) for split in SPLITS}, tokenizer, config.max_seq_length)
    hardware = Hardware.detect()
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model=trainable_model(bundled_model_folder(), config, hardware),
                          args=training_arguments(config, f"{folder}/trainer", hardware), train_dataset=data.train,
                          eval_dataset=data.evaluation, data_collator=collate_blocks(tokenizer.pad_token_id))
        trainer.train()
        trainer.model.save_pretrained(f"{folder}/adapter")
        client = MlflowClient(tracking_uri=settings.tracking_uri)
        run_id = client.create_run(ensure_experiment(client, settings, "deploywise-training")).info.run_id
        client.log_artifacts(run_id, f"{folder}/adapter", "adapter")
    spec = JobSpec("cpt-eval-test", "cpt", config.to_dict(), config.config_hash, run_id, settings.tracking_uri, None,
                   settings.llm_registry_name, "bundled", None, snapshot.id, settings.storage_path)
    number = register_version(spec)
    client.set_terminated(run_id)
    return number


@pytest.mark.timeout(1200)  # CPT (~5 min on 2 CPUs), the GGUF export (~1 min), two versions evaluated
def test_base_and_a_short_cpt_version_of_smollm2_side_by_side(demo_copy):
    settings = load_settings(workspace=Path(demo_copy()))
    assert settings.llm_backend == "llama_cpp"  # the chat's default runtime
    number = short_cpt(settings)
    with pytest.raises(EvaluationError, match=f"LLM version {number}: deploywise-llm/{number} has no checked GGUF export"):
        plan_evaluation(settings, ["base", number])
    export_version(settings, number, "gguf-q8_0")
    result = evaluate_versions(settings, ["base", number], item_ids=["ts-crit-1", "ref-offtopic-1"], max_new_tokens=64)
    base, cpt = result.versions
    summary = {v.planned.label: {k: round(x, 3) for k, x in v.metrics.items()} for v in result.versions}
    print(json.dumps(summary, indent=1))
    assert 5 < base.metrics["domain_perplexity"] < 200 and 5 < base.metrics["general_perplexity"] < 200
    # training on the team's documents makes the held-out one more predictable, and the forgetting check is measured
    assert cpt.metrics["domain_perplexity"] < base.metrics["domain_perplexity"] * 0.98
    assert cpt.metrics["domain_perplexity_change_pct"] < -2
    assert abs(cpt.metrics["general_perplexity_change_pct"]) < 50
    assert any(check.name == "general_perplexity" for check in cpt.verdict.checks)
    for version in (base, cpt):
        llm_item, refusal = version.items
        backend = llm_backend(version_settings(result.plan.settings, version.planned.wanted))
        assert type(backend).__name__ == "GgufLlm" and backend.version == version.llm_label
        assert llm_item.llm_asked and llm_item.attempts[0] and llm_item.latency_ms > 0
        assert llm_item.answer == opening("tumor-screening-linear") + llm_item.attempts[0]
        assert llm_item.explanation_state in ("kept", "partial", "dropped") and llm_item.agrees
        assert llm_item.unknown_cited == []  # the grammar lets it write only the markers its prompt offered
        assert {"explanation_kept_rate", "explanation_shown_rate"} <= set(version.metrics)
        assert refusal.refused and not refusal.llm_asked and refusal.explanation_state == "none"
        assert version.verdict.verdict == "NO-GO"  # two items of eighty: never a GO
    assert [v.llm_version for v in load_evaluation(settings, result.plan.evaluation_id)] == ["base", number]
    tags = MlflowClient(tracking_uri=settings.tracking_uri).get_model_version(settings.llm_registry_name, number).tags
    assert "gate_verdict" not in tags  # two chosen items: logged, but not the version's gate
