"""SFT for real: a tiny CPT version (trained in process by the CPT recipe's pieces and registered), an SFT dataset
made through training.sft_data, SFT jobs through the Ray Jobs API on the session's Ray head (HF Trainer + PEFT, LoRA
and QLoRA), the sqlite MLflow store and registry, the Retraining page through AppTest. The loss mask is checked
with the real SmolLM2 tokenizer and its chat template."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from engine.answering.prompting import SYSTEM_PROMPT, explanation_opening
from engine.core import database
from engine.core.mlflow_client import ensure_experiment
from engine.core.settings import load_settings
from engine.lifecycle.training_jobs import list_jobs
from engine.lifecycle.version_catalog import overview
from engine.llm.bundled import load_tokenizer
from engine.llm.chat_prompt import chat_prompt_ids
from engine.llm.loading import build_model
from engine.llm.versions import resolve_llm_version
from tests.rendered_markdown import parse
from training.config import ConfigError, load_cpt_config, load_sft_config
from training.cpt import IGNORE_INDEX, Hardware, collate_blocks, packed_data, trainable_model, training_arguments
from training.dataset_snapshot import SPLITS, read_split, snapshot_workspace
from training.job_following import get_job, job_progress, refresh_jobs
from training.job_launch import EXPERIMENT, submit_sft
from training.job_spec import JobSpec
from training.ray_cluster import JobError
from training.ray_job import register_version
from training.sft import answer_messages, chat_example, chat_rows, split_pairs
from training.sft_data import accept_all, add_pairs, create_dataset, get_dataset
from training.sft_pair_checks import PairCandidate
from ui.retraining_form import widget_key

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "streamlit_app.py"
DATASET = "demo-answers"
TINY_RUN = {"max_seq_length": 384, "batch_size": 2, "learning_rate": 1e-3, "eval_steps": 2, "save_steps": 2,
            "ray": {"cpus_per_worker": 1}}
TOPICS = [("tumour screening", "criteria:tumor-screening"), ("digit recognition", "criteria:digit-recognition"),
          ("diabetes progression", "criteria:diabetes-progression"), ("latency measurement", "guideline:latency-measurement"),
          ("model selection", "guideline:model-selection"), ("the digits dataset", "dataset:digits"),
          ("the breast cancer dataset", "dataset:breast-cancer"), ("the calibration drift incident", "incidents:2026-calibration-drift")]


def pairs_for_test() -> list[PairCandidate]:
    return [PairCandidate("factual", f"What does the team require for {topic}?",
                          f"For {topic} the team follows its written rules and checks every candidate against them "
                          f"before deployment <<SRC:{source}>>.", "test", source_ids=(source,))
            for topic, source in TOPICS]


def wait_for(settings, connection, job_id: str, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while not (job := get_job(connection, job_id)).finished:
        assert refresh_jobs(settings, connection) == []
        assert time.monotonic() < deadline, f"{job.id} still {job.state}"
        time.sleep(1)
    return job, job_progress(settings, job)


def tiny_cpt_version(settings) -> str:
    """A CPT version of the tiny Llama: four real training steps of the CPT recipe on a snapshot, registered as a
    CPT job registers its adapter."""
    from transformers import Trainer

    snapshot = snapshot_workspace(settings)
    config = load_cpt_config(None, max_steps=4, batch_size=2, max_seq_length=64, learning_rate=1e-2, eval_steps=100,
                             save_steps=100)
    tokenizer = load_tokenizer(settings.base_model)
    data = packed_data({split: read_split(snapshot, split) for split in SPLITS}, tokenizer, config.max_seq_length)
    hardware = Hardware.detect()
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run_id = client.create_run(ensure_experiment(client, settings, EXPERIMENT)).info.run_id
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model=trainable_model(settings.base_model, config, hardware),
                          args=training_arguments(config, f"{folder}/trainer", hardware), train_dataset=data.train,
                          eval_dataset=data.evaluation, data_collator=collate_blocks(tokenizer.pad_token_id))
        trainer.train()
        trainer.model.save_pretrained(f"{folder}/adapter")
        client.log_artifacts(run_id, f"{folder}/adapter", "adapter")
    spec = JobSpec("cpt-sft-test", "cpt", config.to_dict(), config.config_hash, run_id, settings.tracking_uri, None,
                   settings.llm_registry_name, str(Path(settings.base_model).resolve()), None, snapshot.id,
                   settings.storage_path)
    number = register_version(spec)
    client.set_terminated(run_id)
    return number


@pytest.fixture(scope="module")
def workspace(demo_template, tmp_path_factory, tiny_llama_folder, ray_head):
    """The demo workspace with the tiny Llama as base model, a tiny CPT version and an accepted SFT dataset."""
    folder = shutil.copytree(demo_template, tmp_path_factory.mktemp("sft") / "workspace")
    values = {"workspace": folder, "base_model": str(tiny_llama_folder), "ray_dashboard_port": ray_head}
    settings = load_settings(**values)
    connection = database.connect(settings.knowledge_db)
    try:
        create_dataset(connection, DATASET, {"source": "tests"})
        assert add_pairs(connection, DATASET, pairs_for_test()).added == len(TOPICS)
        accept_all(connection, DATASET)
    finally:
        connection.close()
    return {**values, "cpt_version": tiny_cpt_version(settings)}


@pytest.fixture
def settings_and_db(workspace):
    settings = load_settings(**{key: value for key, value in workspace.items() if key != "cpt_version"})
    connection = database.connect(settings.knowledge_db)
    yield settings, connection
    connection.close()


@pytest.fixture(scope="module")
def finished_sft(workspace):
    """A LoRA and a QLoRA SFT job on the newest CPT version, submitted together and run side by side."""
    settings = load_settings(**{key: value for key, value in workspace.items() if key != "cpt_version"})
    connection = database.connect(settings.knowledge_db)
    try:
        lora = submit_sft(settings, connection, load_sft_config(ROOT / "configs/sft.yaml", max_steps=4, **TINY_RUN))
        qlora = submit_sft(settings, connection, load_sft_config(None, max_steps=2, quantization="4bit", dataset=DATASET,
                                                                 **TINY_RUN))
        return [wait_for(settings, connection, job.id) for job in (lora, qlora)]
    finally:
        connection.close()


@pytest.mark.slow
def test_sft_jobs_train_on_a_cpt_version_and_register_their_lineage(settings_and_db, workspace, finished_sft):
    settings, connection = settings_and_db
    cpt = workspace["cpt_version"]
    dataset_hash = get_dataset(connection, DATASET).exported_hash  # the hash of the export each launch made
    assert dataset_hash and len(dataset_hash) == 16
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    for (job, progress), (quantization, steps) in zip(finished_sft, (("none", 4), ("4bit", 2)), strict=True):
        assert (job.kind, job.state, job.message) == ("sft", "succeeded", "finished")
        # 'latest' and the dataset were resolved at launch: the record says what was trained
        assert (job.start_from, job.snapshot_id, job.data) == (cpt, dataset_hash, f"dataset {DATASET} ({dataset_hash})")
        assert (job.config["start_from"], job.config["dataset"], job.config["quantization"]) == (cpt, DATASET, quantization)
        version = client.get_model_version("deploywise-llm", job.llm_version)
        assert version.run_id == job.mlflow_run_id
        assert version.tags == {"base_model": str(Path(settings.base_model).resolve()), "training": "sft", "parent_version": cpt,
                                "sft_dataset": DATASET, "sft_dataset_hash": dataset_hash, "config_hash": job.config_hash,
                                "job_id": job.id, "status": "candidate"}
        run = client.get_run(job.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["sft_dataset"] == DATASET and run.data.params["lora.r"] == "16"
        assert run.data.metrics["sft_pairs"] == len(TOPICS) and run.data.metrics["sft_style_factual"] == len(TOPICS)
        assert {item.path for item in client.list_artifacts(job.mlflow_run_id, "sft_dataset")} == {"sft_dataset/pairs.jsonl"}
        assert {"adapter", "tokenizer", "config", "sft_data.json"} <= {item.path for item in client.list_artifacts(job.mlflow_run_id)}
        report = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/sft_data.json")
        assert report["pairs"] == len(TOPICS) and report["dropped"] == 0 and report["held_out_rows"] == 1
        assert report["train_rows"] == len(TOPICS) - 1 and report["answer_tokens"] > 0
        assert [step for step, _ in progress.loss] == list(range(1, steps + 1)) and progress.total_steps == steps
        assert [step for step, _ in progress.eval_perplexity["answers"]] == list(range(0, steps + 1, 2))
        record = overview(settings).version(job.llm_version)  # the LLM versions page names its data
        assert (record.training, record.parent_version, record.data) == ("sft", cpt, f"SFT dataset {DATASET}")


@pytest.mark.slow
def test_an_sft_version_loads_as_base_plus_cpt_plus_sft_adapters_in_a_fresh_process(settings_and_db, workspace, finished_sft):
    settings, _ = settings_and_db
    (job, _), _ = finished_sft
    sft = resolve_llm_version(settings, job.llm_version)
    assert sft.parent is not None and sft.parent.number == workspace["cpt_version"] and sft.parent.parent is None
    ids = torch.tensor([chat_prompt_ids(load_tokenizer(settings.base_model), answer_messages("Which model for tumour screening?"))])
    with torch.no_grad():
        sft_logits = build_model(sft).eval()(ids).logits[0, -1]
        cpt_logits = build_model(sft.parent).eval()(ids).logits[0, -1]
    assert not torch.allclose(sft_logits, cpt_logits, atol=1e-4)  # the SFT adapter changed the CPT model
    script = "\n".join([
        "import json, torch",
        "from engine.llm.loading import build_model",
        "from engine.llm.versions import resolve_llm_version",
        "from engine.core.settings import load_settings",
        f"settings = load_settings(workspace={str(settings.workspace)!r}, base_model={settings.base_model!r})",
        f"model = build_model(resolve_llm_version(settings, {job.llm_version!r})).eval()",
        "with torch.no_grad():",
        f"    print(json.dumps(model(torch.tensor({ids.tolist()})).logits[0, -1].tolist()))",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    assert torch.allclose(fresh, sft_logits, atol=1e-4)  # nothing in this process's caches was needed


def test_the_loss_covers_the_answer_tokens_only_with_the_chat_template():
    tokenizer = load_tokenizer("bundled")  # the real SmolLM2 tokenizer and its chat template
    pair = {"instruction": "Which model should I deploy for tumour screening?",
            "output": "Deploy rf-screening-v3: it meets the recall floor <<SRC:criteria:tumor-screening>>."}
    prompt = chat_prompt_ids(tokenizer, answer_messages(pair["instruction"]))  # what the chat sends at inference
    example, truncated = chat_example(tokenizer, pair, 4096)
    assert not truncated and example["input_ids"][: len(prompt)] == prompt
    assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = example["labels"][len(prompt):]
    assert IGNORE_INDEX not in answer and answer == example["input_ids"][len(prompt):]
    assert tokenizer.decode(answer) == pair["output"] + "<|im_end|>\n"  # the answer and the turn's end, nothing else
    assert "You are deploywise" in tokenizer.decode(prompt) and pair["instruction"] in tokenizer.decode(prompt)

    cut, truncated = chat_example(tokenizer, pair, len(prompt) + 3)
    assert truncated and cut["labels"][len(prompt):] == example["input_ids"][len(prompt): len(prompt) + 3]
    assert chat_example(tokenizer, pair, len(prompt)) == (None, True)  # no answer token would be left

    long_pair = {"instruction": pair["instruction"] + " Consider every detail. " * 40, "output": pair["output"]}
    train, held_out, report = chat_rows([pair, long_pair], [pair], tokenizer, len(prompt) + 8)
    assert (len(train), len(held_out), report.dropped, report.truncated) == (1, 1, 1, 2)
    assert report.answer_tokens == 16 and report.prompt_tokens == 2 * len(prompt)

    batch = collate_blocks(tokenizer.pad_token_id)([example, cut])
    width = len(example["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert batch["attention_mask"][1].tolist() == [1] * len(cut["input_ids"]) + [0] * (width - len(cut["input_ids"]))
    assert batch["labels"][1, len(cut["input_ids"]):].eq(IGNORE_INDEX).all()  # padding is out of the loss
    assert batch["labels"][0].ne(IGNORE_INDEX).sum() == len(answer)


def test_held_out_pairs_are_chosen_by_instruction_whatever_the_order():
    pairs = [{"instruction": f"question {i % 7}", "output": f"answer {i}"} for i in range(20)]
    train, held_out = split_pairs(pairs, 0.3)
    shuffled = random.Random(1).sample(pairs, len(pairs))
    assert sorted(map(str, split_pairs(shuffled, 0.3)[1])) == sorted(map(str, held_out))
    assert len({p["instruction"] for p in held_out}) == 2  # 30% of 7 distinct instructions
    assert not {p["instruction"] for p in held_out} & {p["instruction"] for p in train}
    assert split_pairs(pairs[:1], 0.3) == (pairs[:1], [])  # one instruction: nothing can be held out


def test_a_malformed_sft_config_is_named_key_by_key(tmp_path):
    bad = tmp_path / "sft.yaml"
    bad.write_text("lora:\n  r: many\nvalidation_share: 0.9\ndataset: ''\nstart_from: newest\nsnapshot: new\n")
    with pytest.raises(ConfigError) as error:
        load_sft_config(bad)
    assert "snapshot: unknown key" in str(error.value) and "lora.r: must be a whole number (got 'many')" in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_sft_config(None, validation_share=0.9, dataset="", start_from="newest")
    assert [problem.split(":")[0] for problem in str(error.value).split("; ")] == ["start_from", "dataset", "validation_share"]
    defaults = load_sft_config(ROOT / "configs/sft.yaml")
    assert defaults == load_sft_config(None)  # the file says what the defaults are
    assert (defaults.lora.r, defaults.learning_rate, defaults.epochs, defaults.start_from) == (16, 2e-4, 2.0, "latest")


def test_train_sft_on_the_command_line_refuses_bad_settings_and_unknown_datasets(monkeypatch, tmp_path, capsys):
    from cli.main import main

    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    config = ["--config", str(ROOT / "configs/sft.yaml")]
    assert main(["train", "sft", *config, "--set", "validation_share=0.9"]) == 2
    assert "validation_share: must be above 0 and at most 0.5 (got 0.9)" in capsys.readouterr().err
    assert main(["train", "sft", *config, "--set", "start_from=base", "--set", "dataset=nope"]) == 2
    assert "dataset: no SFT dataset named nope" in capsys.readouterr().err
    assert main(["jobs", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing recorded


@pytest.mark.slow
def test_unknown_datasets_and_wrong_start_versions_are_refused_before_anything_runs(settings_and_db, finished_sft):
    settings, connection = settings_and_db
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    before, runs = list_jobs(connection), len(client.search_runs(experiments))
    sft_version = finished_sft[0][0].llm_version
    refusals = {
        "dataset: no SFT dataset named nope": {"dataset": "nope"},
        "start_from: the MLflow registry has no LLM version deploywise-llm/999": {"start_from": "999"},
        f"start_from: version {sft_version} was made by SFT training; SFT starts from a CPT version": {"start_from": sft_version},
        "max_seq_length: 16 tokens leave no answer token in any pair to train on": {"max_seq_length": 16},
    }
    for message, overrides in refusals.items():
        with pytest.raises(JobError, match=message):
            submit_sft(settings, connection, load_sft_config(None, **overrides))
    create_dataset(connection, "unreviewed", {})
    add_pairs(connection, "unreviewed", pairs_for_test()[:2])
    with pytest.raises(JobError, match="dataset: SFT dataset unreviewed has no accepted pair"):
        submit_sft(settings, connection, load_sft_config(None, dataset="unreviewed"))
    assert list_jobs(connection) == before
    assert len(client.search_runs(experiments)) == runs


@pytest.mark.slow
def test_an_sft_job_launched_from_the_retraining_page(workspace, monkeypatch, finished_sft):
    for key in ("workspace", "base_model", "ray_dashboard_port"):
        monkeypatch.setenv(f"DEPLOYWISE_{key.upper()}", str(workspace[key]))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/retraining.py").run()
    at.radio(key="training_recipe").set_value("sft").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [s.value for s in at.subheader] == ["New SFT job", "Dataset", "Jobs"]
    start = at.selectbox(key="sft_start_from")
    assert start.value == "latest" and f"deploywise-llm/{workspace['cpt_version']}" in start.options[0]
    assert any(f"{DATASET} · {len(TOPICS)} accepted" in option for option in at.selectbox(key="sft_dataset").options)
    assert (at.number_input(key="sft_lora_r").value, at.text_input(key="sft_learning_rate").value) == (16, "0.0002")
    assert any(f"{len(TOPICS)} accepted pair(s) of `{DATASET}`" in caption for caption in (c.value for c in at.caption))
    for key, value in {"max_steps": 2, "max_seq_length": 384, "batch_size": 2, "eval_steps": 2, "save_steps": 2}.items():
        at.number_input(key=widget_key(key, "sft")).set_value(value)
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    settings = load_settings()
    connection = database.connect(settings.knowledge_db)
    try:
        job = list_jobs(connection)[0]
        assert parse(at.success[0].value).visible == f"Job {job.id} launched on {job.data}."
        assert (job.kind, job.start_from, job.config["max_steps"]) == ("sft", workspace["cpt_version"], 2)
        job, _ = wait_for(settings, connection, job.id)
    finally:
        connection.close()
    assert job.state == "succeeded", job.message
    at.run()
    table = next(frame.value for frame in at.dataframe if "job" in frame.value.columns).set_index("job")
    assert (table.loc[job.id, "kind"], table.loc[job.id, "LLM version"]) == ("SFT", f"deploywise-llm/{job.llm_version}")


def test_a_recommendation_pair_trains_the_reply_that_follows_the_prefilled_opening():
    """At inference the chat prefills the reply with the opening (engine.llm.in_process tokenizes it after the prompt); the
    pair's output begins with it, so the training tokens start exactly as the served ones, then go on."""
    tokenizer = load_tokenizer("bundled")
    name = "tumor-screening-linear"
    opening = explanation_opening(SimpleNamespace(recommended=SimpleNamespace(name=name, source_id=f"registry:{name}")))
    pair = {"instruction": "QUESTION: Which model should I deploy for tumour screening?",
            "output": f"{opening} it passes every hard criterion <<SRC:criteria:tumor-screening>>."}
    messages = answer_messages(pair["instruction"])
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    served = chat_prompt_ids(tokenizer, messages) + tokenizer.encode(opening, add_special_tokens=False)  # as engine.llm.in_process
    example, truncated = chat_example(tokenizer, pair, 4096)
    assert not truncated and example["input_ids"][: len(served)] == served
    prompt = len(chat_prompt_ids(tokenizer, messages))
    assert IGNORE_INDEX not in example["labels"][prompt:]  # the opening is learnt too, then the explanation
    assert tokenizer.decode(example["input_ids"][len(served):]).startswith(" it passes every hard criterion")
