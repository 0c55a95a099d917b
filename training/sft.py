"""The supervised fine-tuning recipe: a LoRA (or QLoRA) adapter that teaches a CPT version how to answer.

Seed 002's phase 4. The job starts from a CPT version merged into its unquantized base (training.ray_job's start model;
with `quantization: 4bit` that merged model is then loaded as NF4), puts a fresh LoRA on top and trains it on the
accepted pairs of an SFT dataset (training.sft_export exports them as JSONL `{"instruction", "output", ...}`). Each
pair is the conversation the chat has at inference — the chat's system prompt, the instruction as the user's
message, the output as the assistant's answer — through the tokenizer's chat template, and the loss counts the
answer's tokens only: the model learns to answer, not to write prompts. The prompt is tokenized exactly as the chat
tokenizes it (engine.llm.chat_prompt), so training and inference see the same tokens. A recommendation pair's output is the
explanation of the decision, beginning with the opening the chat prefills at inference
(engine.answering.prompting.explanation_opening): the model learns that opening too, and what follows it.

A pair longer than `max_seq_length` loses the end of its answer; one that would keep no answer token is dropped,
counted in the run's `sft_data.json` and said in the job's log. A deterministic share of the pairs (by their
instruction's hash) is held out: its answer loss is the evaluation curve. Everything else — Ray Train, checkpoints
and resume, MLflow logging, the adapter artifact — is the CPT recipe's `fit_adapter`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.answering.prompting import SYSTEM_PROMPT
from engine.llm.chat_prompt import chat_prompt_ids
from training.cpt import IGNORE_INDEX, TrainingData, collate_blocks, fit_adapter, pad_token_id

SFT_DATASET_ARTIFACT = "sft_dataset"  # the job run's copy of the exported dataset
DATASET_FILE = "pairs.jsonl"
EVAL_SET = "answers"  # the held-out pairs' answer loss: eval_answers_loss / eval_answers_perplexity
REPORT = "sft_data.json"


@dataclass(frozen=True)
class SftReport:
    """How the pairs became training rows."""
    pairs: int
    train_rows: int
    held_out_rows: int
    dropped: int  # no answer token left within max_seq_length
    truncated: int  # the answer lost its end
    prompt_tokens: int
    answer_tokens: int


def read_pairs(path: Path) -> list[dict]:
    """The pairs of an exported dataset; ValueError naming the first line that is not a pair."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            pair = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name} line {number}: not JSON ({error.msg})") from None
        if not (isinstance(pair, dict) and all(isinstance(pair.get(key), str) and pair[key].strip()
                                               for key in ("instruction", "output"))):
            raise ValueError(f"{path.name} line {number}: a pair needs a non-empty 'instruction' and 'output'")
        pairs.append(pair)
    return pairs


def split_pairs(pairs: list[dict], share: float) -> tuple[list[dict], list[dict]]:
    """(train, held out): the `share` of distinct instructions whose hash is lowest is held out (at least one, and
    at least one left to train on). The same pairs whatever the file's order; an instruction never on both sides."""
    keys = sorted({_instruction_key(pair) for pair in pairs})
    count = min(len(keys) - 1, max(1, round(share * len(keys))))
    held = set(keys[:count])
    train = [pair for pair in pairs if _instruction_key(pair) not in held]
    return train, [pair for pair in pairs if _instruction_key(pair) in held]


def _instruction_key(pair: dict) -> str:
    return hashlib.sha256(pair["instruction"].strip().encode()).hexdigest()


def answer_messages(instruction: str) -> list[dict]:
    """The conversation the chat sends the model, with the pair's instruction as the user's message."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": instruction}]


def chat_example(tokenizer, pair: dict, max_seq_length: int) -> tuple[dict | None, bool]:
    """Token ids and labels of one pair: the prompt as the chat tokenizes it (labels IGNORE_INDEX), then the answer
    as the template ends the assistant's turn (labels = ids), cut at `max_seq_length`; with whether the cut took
    answer tokens. None when no answer token is left."""

    messages = answer_messages(pair["instruction"])
    prompt_ids = chat_prompt_ids(tokenizer, messages)
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": pair["output"]}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the tokenizer's chat template does not render a conversation as its prompt followed by the answer")
    answer_ids = tokenizer.encode(full_text[len(prompt_text):], add_special_tokens=False)
    ids = (prompt_ids + answer_ids)[:max_seq_length]
    truncated = len(ids) < len(prompt_ids) + len(answer_ids)
    if len(ids) <= len(prompt_ids):
        return None, truncated
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]}, truncated


def chat_rows(pairs: list[dict], held_out: list[dict], tokenizer, max_seq_length: int) -> tuple[list[dict], list[dict], SftReport]:
    """Training and held-out rows of the pairs, and the report of what was truncated or dropped."""
    rows: dict[str, list[dict]] = {"train": [], "held_out": []}
    dropped = truncated = prompt_tokens = answer_tokens = 0
    for name, group in (("train", pairs), ("held_out", held_out)):
        for pair in group:
            example, cut = chat_example(tokenizer, pair, max_seq_length)
            if example is None:
                dropped += 1
                continue
            answer = sum(label != IGNORE_INDEX for label in example["labels"])
            truncated += cut
            prompt_tokens += len(example["labels"]) - answer
            answer_tokens += answer
            rows[name].append(example)
    report = SftReport(len(pairs) + len(held_out), len(rows["train"]), len(rows["held_out"]), dropped, truncated,
                       prompt_tokens, answer_tokens)
    return rows["train"], rows["held_out"], report


def train_loop_per_worker(loop: dict) -> None:
    """One Ray Train worker's part of an SFT job. `loop` holds the job spec (see training.job_spec.JobSpec)."""
    fit_adapter(loop, _chat_dataset)


def _chat_dataset(spec, config, tokenizer, work: Path) -> TrainingData:
    """The job run's dataset as chat rows: the training pairs, and the held-out ones as the `answers` set."""
    import mlflow

    folder = Path(mlflow.artifacts.download_artifacts(
        run_id=spec.run_id, artifact_path=SFT_DATASET_ARTIFACT, dst_path=str(work), tracking_uri=spec.tracking_uri))
    train, held_out = split_pairs(read_pairs(folder / DATASET_FILE), config.validation_share)
    train_rows, held_rows, report = chat_rows(train, held_out, tokenizer, config.max_seq_length)
    if report.dropped or report.truncated:
        print(f"deploywise: SFT dataset {spec.dataset}: {report.dropped} pair(s) dropped (no answer token within "
              f"max_seq_length {config.max_seq_length}), {report.truncated} answer(s) truncated", flush=True)
    return TrainingData(train_rows, {EVAL_SET: held_rows} if held_rows else {}, collate_blocks(pad_token_id(tokenizer)),
                        REPORT, asdict(report))
