"""The continual pretraining recipe: a LoRA or QLoRA adapter trained by Hugging Face's Trainer on packed raw text,
and the adapter training both recipes share (`fit_adapter`; the SFT recipe, training.sft, brings other data).

`train_loop_per_worker` is what each Ray Train worker runs (`training.ray_job` starts it in a `TorchTrainer`). The
worker fetches its data (the dataset snapshot here) from the job's MLflow run, so it runs the same on this machine
and on any node of a cluster. Checkpoints go to Ray's storage through `RayTrainReportCallback` every
`save_steps`; a restarted worker finds the last one with `ray.train.get_checkpoint()` and the Trainer resumes at
that step (weights, optimizer, scheduler and data order), logging into the same MLflow run.

Precision follows the hardware: bf16 on GPUs that have it, else fp16 on GPUs, float32 on the CPU. QLoRA loads
the base weights as bitsandbytes NF4, which also runs on the CPU (slowly: it is there to be tested and measured).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.llm.bundled import load_tokenizer, quiet_model_loading
from engine.llm.versions import ADAPTER_ARTIFACT  # where a version's adapter is logged, and loaded from
from training.config import AdapterTraining, load_config
from training.dataset_snapshot import SPLITS
from training.job_spec import JobSpec, start_model_folder
from training.packing import PackingReport, pack

SNAPSHOT_ARTIFACT = "snapshot"
EVAL_SETS = ("domain", "replay")  # held-out team text; held-out general text (the forgetting check)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Hardware:
    gpus: int
    bf16: bool

    @classmethod
    def detect(cls) -> Hardware:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(gpus, bool(gpus) and torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class PackedData:
    train: list[dict]
    evaluation: dict[str, list[dict]]  # EVAL_SETS that have text
    reports: dict[str, PackingReport]


def packed_data(records: dict[str, list[dict]], tokenizer, max_seq_length: int) -> PackedData:
    """Training blocks from the train split; one evaluation set per kind of held-out text."""
    texts = {"train": [record["text"] for record in records["train"]]}
    for kind in EVAL_SETS:
        texts[kind] = [record["text"] for record in records["validation"] if record["kind"] == kind]
    blocks, reports = {}, {}
    for name, group in texts.items():
        blocks[name], reports[name] = pack(group, tokenizer, max_seq_length)
    return PackedData(
        train=[{"input_ids": block} for block in blocks["train"]],
        evaluation={kind: [{"input_ids": block} for block in blocks[kind]] for kind in EVAL_SETS if blocks[kind]},
        reports=reports,
    )


def collate_blocks(pad_token_id: int):
    """Batch rows of token ids, padded on the right; the padding is masked out of attention and loss. A row's
    `labels` (SFT: its prompt masked) default to its ids (CPT: a packed block, of which only the stream's last is
    short; DataCollatorForLanguageModeling would also mask every real EOS when pad and EOS are the same token)."""
    import torch

    def collate(rows: list[dict]) -> dict:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            input_ids[i, :length] = torch.tensor(row["input_ids"], dtype=torch.long)
            labels[i, :length] = torch.tensor(row.get("labels", row["input_ids"]), dtype=torch.long)
            attention_mask[i, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    return collate


def trainable_model(model_folder: str | Path, config: AdapterTraining, hardware: Hardware):
    """The model in `model_folder` with a fresh LoRA adapter; base weights in NF4 when quantization is 4bit."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quiet_model_loading()
    dtype = torch.bfloat16 if hardware.bf16 else torch.float32
    if config.quantization == "4bit":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if hardware.bf16 or not hardware.gpus else torch.float16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_folder, quantization_config=quantization, dtype=dtype, device_map="auto" if hardware.gpus else "cpu")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=dtype)
    lora = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as error:  # target modules the architecture does not have
        raise ValueError(f"lora.target_modules: {str(error).splitlines()[0]}") from None


def training_arguments(config: AdapterTraining, output_dir: str, hardware: Hardware):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=hardware.bf16,
        fp16=bool(hardware.gpus) and not hardware.bf16,
        use_cpu=not hardware.gpus,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=True,
    )


def make_mlflow_callback(run_id: str, tracking_uri: str):
    """Every logged step's loss, learning rate and token throughput, and each evaluation set's loss and perplexity,
    into the job's MLflow run (rank 0 only). After a restart the resumed steps log again: the console keeps the
    last value of each step."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from transformers import TrainerCallback

    client = MlflowClient(tracking_uri=tracking_uri)

    class MlflowCallback(TrainerCallback):
        def __init__(self):
            self.clock: tuple[float, int] | None = None

        def _log(self, step: int, values: dict[str, float]) -> None:
            now = int(time.time() * 1000)
            metrics = [Metric(key, float(value), now, step) for key, value in values.items() if _finite(value)]
            if metrics:
                client.log_batch(run_id, metrics=metrics)

        def on_train_begin(self, args, state, control, **kwargs):
            self.clock = (time.monotonic(), state.num_input_tokens_seen)
            self._log(state.global_step, {"total_steps": state.max_steps})

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            values = {key: logs[key] for key in ("loss", "learning_rate", "grad_norm", "epoch") if key in logs}
            if self.clock is not None and "loss" in logs:
                started, tokens = self.clock
                elapsed = time.monotonic() - started
                if elapsed > 0:
                    values["train_tokens_per_s"] = (state.num_input_tokens_seen - tokens) / elapsed
                self.clock = (time.monotonic(), state.num_input_tokens_seen)
                values["train_tokens"] = state.num_input_tokens_seen
            self._log(state.global_step, values)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            values = {}
            for key, loss in (metrics or {}).items():
                if found := _EVAL_LOSS.fullmatch(key):
                    values[key] = loss
                    values[f"eval_{found[1]}_perplexity"] = math.exp(min(loss, 50.0))
            self._log(state.global_step, values)
            if self.clock is not None:  # evaluation time is not training throughput
                self.clock = (time.monotonic(), state.num_input_tokens_seen)

    return MlflowCallback()


_EVAL_LOSS = re.compile(r"eval_(\w+)_loss")  # the Trainer's name for the loss on evaluation set \1


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class TrainingData:
    """A recipe's data ready for the Trainer: training rows, evaluation sets by name, the collator that batches
    them, and a report of how they were made (logged to the run as `report_name`)."""

    train: list[dict]
    evaluation: dict[str, list[dict]]
    collate: Callable[[list[dict]], dict]
    report_name: str
    report: dict


def train_loop_per_worker(loop: dict) -> None:
    """One Ray Train worker's part of a CPT job. `loop` holds the job spec (see training.job_spec.JobSpec)."""
    fit_adapter(loop, _packed_snapshot)


def _packed_snapshot(spec, config, tokenizer, work: Path) -> TrainingData:
    """The snapshot of the job's run, packed into blocks: the training split, and the held-out text by kind."""
    import mlflow

    snapshot = Path(mlflow.artifacts.download_artifacts(
        run_id=spec.run_id, artifact_path=SNAPSHOT_ARTIFACT, dst_path=str(work), tracking_uri=spec.tracking_uri))
    records = {split: _read_jsonl(snapshot / f"{split}.jsonl") for split in SPLITS}
    data = packed_data(records, tokenizer, config.max_seq_length)
    return TrainingData(data.train, data.evaluation, collate_blocks(pad_token_id(tokenizer)), "packing.json",
                        {name: report.__dict__ for name, report in data.reports.items()})


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def fit_adapter(loop: dict, prepare: Callable[..., TrainingData]) -> None:
    """Train a fresh LoRA adapter on the job's start model, the same for every recipe: `prepare(spec, config,
    tokenizer, work)` gives the recipe's data. Evaluates at step 0, every `eval_steps` and at the end; checkpoints
    through Ray Train every `save_steps` and resumes from the last one after a restart; rank 0 logs into the job's
    MLflow run and leaves the adapter, tokenizer and config there as artifacts."""
    import mlflow
    import ray.train
    import torch
    from mlflow import MlflowClient
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import Trainer

    spec = JobSpec.from_dict(loop["spec"])
    config = load_config(spec.kind, spec.config)
    torch.set_num_threads(loop["threads"])
    hardware = Hardware.detect()
    rank = ray.train.get_context().get_world_rank()
    client = MlflowClient(tracking_uri=spec.tracking_uri)
    mlflow.set_tracking_uri(spec.tracking_uri)  # the system metrics monitor logs through the fluent API
    work = Path(tempfile.mkdtemp(prefix=f"deploywise-{spec.job_id}-"))

    tokenizer = load_tokenizer(spec.base_model)
    data = prepare(spec, config, tokenizer, work)
    if not data.train or not data.evaluation:
        raise ValueError(f"nothing to {'train' if not data.train else 'evaluate'} on: see {data.report_name} in the run")
    model = trainable_model(start_model_folder(spec, work), config, hardware)

    callbacks = [RayTrainReportCallback()]
    if rank == 0:
        callbacks.insert(0, make_mlflow_callback(spec.run_id, spec.tracking_uri))
        client.set_tag(spec.run_id, "ray.worker_pid", str(os.getpid()))
        client.log_dict(spec.run_id, data.report, data.report_name)
    trainer = prepare_trainer(Trainer(
        model=model,
        args=training_arguments(config, str(work / "trainer"), hardware),
        train_dataset=data.train,
        eval_dataset=data.evaluation,
        data_collator=data.collate,
        callbacks=callbacks,
    ))
    monitor = SystemMetricsMonitor(spec.run_id, sampling_interval=5, samples_before_logging=1) if rank == 0 else None
    if monitor is not None:
        monitor.start()
    try:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            trainer.evaluate()  # step 0: the starting model's losses, the curves' first point
            trainer.train()
        else:
            with checkpoint.as_directory() as folder:
                resumed = Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME
                if rank == 0:
                    step = _checkpoint_step(resumed)
                    client.log_metric(spec.run_id, "resumed_from_step", step, step=step)
                trainer.train(resume_from_checkpoint=str(resumed))
        if trainer.state.global_step % config.eval_steps:
            trainer.evaluate()  # the final weights' losses
        if rank == 0:
            adapter = work / ADAPTER_ARTIFACT
            trainer.model.save_pretrained(adapter)
            tokenizer.save_pretrained(work / "tokenizer")
            client.log_artifacts(spec.run_id, str(adapter), ADAPTER_ARTIFACT)
            client.log_artifacts(spec.run_id, str(work / "tokenizer"), "tokenizer")
            client.log_dict(spec.run_id, config.to_dict(), f"config/{spec.kind}.json")
    finally:
        if monitor is not None:
            monitor.finish()


def _read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _checkpoint_step(folder: Path) -> int:
    import json

    return int(json.loads((folder / "trainer_state.json").read_text())["global_step"])
