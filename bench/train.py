"""Continual pretraining benchmark: packed against padded training throughput, model-FLOPs utilisation, LoRA and QLoRA memory.

Run from the repo root: `.venv/bin/python bench/train.py [--steps 3] [--max-seq-length 512] [--quick] [--tiny]`.
Everything happens in a temporary folder (never ./workspace); the last line printed is JSON with every figure.

The data and the model are the product's: the committed demo corpus (demo/knowledge) is ingested into a fresh
workspace with `engine.knowledge.workspace.ingest_paths` (the real 500/50 chunker), `training.dataset_snapshot.snapshot_workspace`
makes the dataset snapshot a CPT job trains on (documents joined from their chunks, plus 20% replay text), and the
model is the bundled SmolLM2-135M-Instruct as its float32 folder (`engine.llm.bundled.bundled_model_folder`), or with
`--tiny` the 2-layer random Llama of tests/tiny_models.py (a smoke test of the plumbing, figures meaningless).

What is measured
1. Packed against padded, with the LoRA recipe. The same train-split records become (a) packed blocks from
   `training.cpt.packed_data` (the recipe's `training.packing.pack`: EOS-joined stream cut into max_seq_length
   blocks), batched by the recipe's `collate_blocks`, and (b) one record per row, truncated to max_seq_length and
   padded to it (padding masked out of attention and loss): the seeds' batches. Both are batch_size x
   max_seq_length (the CptConfig defaults: 4 x 512). A fresh process builds the model with
   `training.cpt.trainable_model` and a Hugging Face Trainer with the recipe's `training_arguments`; each step is
   the Trainer's own inner step: `Trainer.training_step` (forward and backward), gradient clipping at
   max_grad_norm, the Trainer's AdamW step, its learning-rate schedule, zero_grad. Steps of the two kinds
   alternate (packed/padded, then padded/packed, ...) so that both see the same machine load; one warm-up step
   of each kind (the first step pays allocation and kernel set-up, two to three times a later one) is left out.
   Rows are dealt into batches by length (each batch holds the data's mix of long and short records) and taken
   in rotation, so that a few timed steps see the whole data set's share of padding. Useful tokens are the batch's
   non-padding label tokens (labels != -100; the loss predicts all but the first of each row). The figure is
   the mean useful tokens per timed step over the fastest timed step's seconds: on a shared machine the fastest
   step is the one least slowed by other processes (the matmul peak below is a best-of too). Total useful
   tokens over total time is printed beside it. The target is packed >= 1.5x padded. Also printed: the packing
   report's efficiencies (real tokens / row capacity) and how many tokens the padded rows truncate away, and,
   projected from the padded rows/s, what one knowledge-base chunk per row would give (the seeds' chunks).
2. Model-FLOPs utilisation. Achieved training FLOPs/s = 6 x N x useful tokens/s of the packed run, N the base
   model's parameters (LoRA adapters not counted; the tied embedding counted once: its LM-head matmul is real
   compute). 6N (2N forward, 4N backward) is the conventional MFU numerator; with LoRA the frozen weights get no
   weight gradients, so the work really done is about 4N (forward 2N, input gradients 2N): both are printed.
   Attention scores (12 x layers x hidden x seq per token) are not counted. The peak is this CPU's, measured in
   the same run with the same threads: the best of 40 torch.mm of 2048x2048 float32 (2 x 2048^3 FLOPs each),
   before the training runs, in each training process before its model loads, and after; MFU = achieved / the
   best of those. A bfloat16 matmul (QLoRA's compute dtype) is timed too.
3. LoRA against QLoRA memory. The run above (quantization none) and the same steps with quantization 4bit
   (bitsandbytes NF4 on the CPU, compute in bfloat16, as `trainable_model` builds it) each run in their own fresh
   process, so the peak resident memory (ru_maxrss) is that configuration's. Reported: the model's weights
   (`get_memory_footprint`, adapters included), resident memory before and after the model load, peak resident
   memory after the first step (a packed one), after both warm-up steps and at the end, and the packed tokens/s.

Other processes on the 2 cores slow every figure. Besides the load average at the start and end, every step and
every matmul measurement records the share of the CPU that other processes took while it ran (from /proc/stat:
the machine's busy CPU seconds minus this process's, over the cores' seconds); the report warns when the fastest
steps were disturbed (above 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads would spin against torch
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))  # for bench/knowledge.py's report helpers

import torch  # noqa: E402
from knowledge import finish_report, start_report, timed  # noqa: E402

from engine.core import database  # noqa: E402
from engine.core.settings import load_settings  # noqa: E402
from engine.demo.workspace import DEMO_CORPUS  # noqa: E402
from engine.knowledge.knowledge_base import KnowledgeBase  # noqa: E402
from engine.knowledge.workspace import ingest_paths  # noqa: E402
from engine.llm.bundled import bundled_model_folder, load_tokenizer  # noqa: E402
from training.config import load_cpt_config  # noqa: E402
from training.cpt import IGNORE_INDEX, Hardware, collate_blocks, packed_data, trainable_model, training_arguments  # noqa: E402
from training.dataset_snapshot import SPLITS, load_snapshot, read_split, snapshot_workspace  # noqa: E402
from training.packing import pack  # noqa: E402

PACKING_TARGET = 1.5  # useful tokens/s, packed / padded (issue 4, item 10)
KINDS = ("packed", "padded")
LABELS = {"packed": "packed blocks (product)", "padded": "one record per padded row (seeds, baseline)"}
ROW_LENGTHS = (256, 512, 1024, 2048)  # the data figures are also given at these lengths (no training: cheap)
MATMUL_SIZE = 2048
MATMUL_REPEATS = 40  # short samples: on a shared machine some of them land in a quiet moment
DISTURBED_SHARE = 0.1  # a step during which other processes took more of the CPU than this is not a clean measurement
RESULT = "RESULT "  # the line a training process ends with


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), 0 where there is no /proc."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class Interference:
    """How much of the machine other processes took while a step ran: their CPU seconds (everything busy minus this
    process) over the cores' seconds. The load average lags by a minute; this is per step."""

    def __enter__(self):
        self.wall, self.own, self.busy = time.perf_counter(), sum(os.times()[:2]), busy_cpu_s()
        return self

    def __exit__(self, *_):
        self.seconds = time.perf_counter() - self.wall
        self.own = sum(os.times()[:2]) - self.own
        others = busy_cpu_s() - self.busy - self.own
        self.share = max(0.0, others) / (cores() * self.seconds) if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------------
# Data: the demo knowledge base, its snapshot, and the two ways of batching it
# ---------------------------------------------------------------------------------------------------------


def build_snapshot(root: Path) -> dict:
    """Ingest the demo corpus into a fresh workspace and snapshot it as a CPT job would."""
    settings = load_settings(workspace=root / "workspace")
    outcomes, ingest_s = timed(ingest_paths, settings, [DEMO_CORPUS])
    failed = [outcome.name for outcome in outcomes if outcome.status == "failed"]
    if failed:
        raise RuntimeError(f"demo files failed to ingest: {failed}")
    snapshot, snapshot_s = timed(snapshot_workspace, settings)
    return {"workspace": str(settings.workspace), "snapshot_id": snapshot.id, "files": len(outcomes),
            "ingest_s": round(ingest_s, 1), "snapshot_s": round(snapshot_s, 2), "splits": snapshot.manifest["splits"]}


def padded_rows(texts: list[str], tokenizer, max_seq_length: int) -> list[dict]:
    """The seeds' rows: one text each, cut at max_seq_length (the rest is never trained on)."""
    return [{"input_ids": ids[:max_seq_length]} for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def collate_padded(pad_token_id: int, max_seq_length: int):
    """The recipe's collator, then padded out to max_seq_length: every padded batch is batch_size x max_seq_length."""
    collate = collate_blocks(pad_token_id)

    def padded(rows: list[dict]) -> dict:
        batch = collate(rows)
        missing = max_seq_length - batch["input_ids"].shape[1]
        if missing > 0:
            fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
            batch = {key: torch.nn.functional.pad(value, (0, missing), value=fill[key]) for key, value in batch.items()}
        return batch

    return padded


def data_figures(workspace: Path, snapshot_id: str, max_seq_length: int) -> dict:
    """The packing report of the train split, and the padded efficiency of one knowledge-base chunk per row."""
    tokenizer = load_tokenizer("bundled")
    snapshot = load_snapshot(workspace, snapshot_id)
    records = read_split(snapshot, "train")
    lengths = sorted(len(ids) for ids in tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"])
    _, report = pack([record["text"] for record in records], tokenizer, max_seq_length)
    train_documents = {doc["origin"] for doc in snapshot.manifest["documents"] if doc["split"] == "train"}
    kb = KnowledgeBase(database.connect(workspace / "knowledge.sqlite"), embedder=None)
    try:
        ids = {doc.id for doc in kb.documents() if doc.origin in train_documents}
        chunks = [chunk.text for chunk in kb.chunks(limit=1_000_000) if chunk.document_id in ids]
    finally:
        kb.connection.close()
    # the seeds' rows of the same train split: each chunk of its documents, and each replay record, in a row
    row_texts = chunks + [record["text"] for record in records if record["kind"] == "replay"]
    row_lengths = [len(ids) for ids in tokenizer(row_texts, add_special_tokens=False)["input_ids"]]
    by_length = {}
    for length in sorted({*ROW_LENGTHS, max_seq_length}):
        _, packed = pack([record["text"] for record in records], tokenizer, length)
        rows = chunk_rows(row_lengths, length)
        by_length[length] = {"packed_efficiency": packed.efficiency, "record_rows_efficiency": packed.padded_efficiency,
                             "record_rows_dropped_share": round(packed.padded_dropped_tokens / packed.text_tokens, 4),
                             "chunk_rows_efficiency": rows["efficiency"],
                             "chunk_rows_dropped_share": round(rows["dropped_tokens"] / sum(row_lengths), 4)}
    return {
        "records": len(records),
        "records_by_kind": {kind: sum(r["kind"] == kind for r in records) for kind in sorted({r["kind"] for r in records})},
        "record_tokens_min": lengths[0], "record_tokens_p50": lengths[len(lengths) // 2], "record_tokens_max": lengths[-1],
        "packing": report.__dict__,
        "padded_dropped_share": round(report.padded_dropped_tokens / report.text_tokens, 4),
        "chunk_rows": {"chunks": len(chunks), **chunk_rows(row_lengths, max_seq_length)},
        "by_length": by_length,
    }


def chunk_rows(lengths: list[int], max_seq_length: int) -> dict:
    useful = sum(min(n, max_seq_length) for n in lengths)
    return {"rows": len(lengths), "useful_tokens_per_row": round(useful / len(lengths), 1),
            "efficiency": round(useful / (len(lengths) * max_seq_length), 4),
            "dropped_tokens": sum(max(0, n - max_seq_length) for n in lengths)}


# ---------------------------------------------------------------------------------------------------------
# Peak FLOPs of this CPU
# ---------------------------------------------------------------------------------------------------------


def matmul_peak(dtype=torch.float32, size: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> dict:
    """FLOP/s of a square torch.mm: best and median of `repeats` after three warm-ups."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    seconds = []
    with Interference() as whole:
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds.append(time.perf_counter() - start)
    flops = 2 * size**3
    return {"dtype": str(dtype).removeprefix("torch."), "size": size, "repeats": repeats,
            "best_gflops": round(flops / min(seconds) / 1e9, 1), "median_gflops": round(flops / statistics.median(seconds) / 1e9, 1),
            "others_cpu_share": round(whole.share, 3)}


# ---------------------------------------------------------------------------------------------------------
# One training configuration, in its own process
# ---------------------------------------------------------------------------------------------------------


def dealt(rows: list[dict], batch_size: int) -> list[dict]:
    """The rows reordered so that every run of `batch_size` holds the data's mix of lengths: sorted longest first and
    dealt like cards over the batches. A few timed steps then see the data set's share of padding, not a sample's."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    batches = -(-len(rows) // batch_size)
    return [rows[i] for start in range(batches) for i in order[start::batches]]


def rotation(rows: list[dict], batch_size: int, collate):
    """Batch k holds rows k*batch_size ... in rotation over the (dealt) data, so that timed steps cover it evenly."""
    rows = dealt(rows, batch_size)

    def batch(k: int) -> dict:
        return collate([rows[(k * batch_size + j) % len(rows)] for j in range(batch_size)])

    return batch


def train_worker(spec: dict) -> dict:
    """Time the recipe's training steps on packed and padded batches; memory of this process. Runs in a fresh process."""
    from transformers import Trainer

    torch.set_num_threads(spec["threads"])
    peak = matmul_peak()  # in this process too, just before its steps: the run's peak is the best of every measurement
    rss_start = rss_mb()
    config = load_cpt_config(None, quantization=spec["quantization"], max_seq_length=spec["max_seq_length"],
                             batch_size=spec["batch_size"])
    hardware = Hardware.detect()
    tokenizer = load_tokenizer("bundled")
    snapshot = load_snapshot(Path(spec["workspace"]), spec["snapshot_id"])
    records = {split: read_split(snapshot, split) for split in SPLITS}
    data = packed_data(records, tokenizer, config.max_seq_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = {
        "packed": rotation(data.train, config.batch_size, collate_blocks(pad_id)),
        "padded": rotation(padded_rows([r["text"] for r in records["train"]], tokenizer, config.max_seq_length),
                           config.batch_size, collate_padded(pad_id, config.max_seq_length)),
    }
    torch.manual_seed(config.seed)
    model, load_s = timed(trainable_model, spec["model_folder"], config, hardware)
    loaded = {"load_s": round(load_s, 1), "weights_mb": round(model.get_memory_footprint() / 2**20, 1),
              "rss_before_load_mb": round(rss_start), "rss_after_load_mb": round(rss_mb()),
              "peak_rss_after_load_mb": round(peak_rss_mb())}
    base_parameters = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan = [(kind, 0, True) for kind in KINDS]
    for k in range(spec["steps"]):
        plan += [(kind, k, False) for kind in (KINDS if k % 2 else KINDS[::-1])]
    with tempfile.TemporaryDirectory(prefix="deploywise-bench-trainer-") as output:
        trainer = Trainer(model=model, args=training_arguments(config, output, hardware), train_dataset=data.train,
                          eval_dataset=data.evaluation or None, data_collator=collate_blocks(pad_id))
        trainer.create_optimizer_and_scheduler(num_training_steps=len(plan))
        steps = []
        for kind, k, warm_up in plan:
            batch = batches[kind](k)
            useful = int((batch["labels"] != IGNORE_INDEX).sum())
            predicted = int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())  # what the loss averages over
            with Interference() as step:
                loss = trainer.training_step(model, batch, predicted)
                trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
                trainer.optimizer.step()
                trainer.lr_scheduler.step()
                model.zero_grad()
            seconds = step.seconds
            steps.append({"kind": kind, "warm_up": warm_up, "seconds": round(seconds, 3), "cpu_s": round(step.own, 2),
                          "others_cpu_share": round(step.share, 3), "load_average": round(os.getloadavg()[0], 2),
                          "useful_tokens": useful,
                          "tokens": batch["input_ids"].numel(), "loss": round(float(loss), 4),
                          "peak_rss_mb": round(peak_rss_mb())})
            print(f"    {spec['quantization']:>4} {kind:<6} {'warm-up' if warm_up else f'step {k + 1}':<8}{seconds:7.1f} s"
                  f"{useful:>7,} useful tokens  loss {float(loss):.3f}  peak RSS {peak_rss_mb():,.0f} MB  "
                  f"other processes {step.share:.0%} of the CPU", flush=True)
    figures = {}
    for kind in KINDS:
        timed_steps = [step for step in steps if step["kind"] == kind and not step["warm_up"]]
        seconds = sum(step["seconds"] for step in timed_steps)
        useful = sum(step["useful_tokens"] for step in timed_steps)
        tokens = sum(step["tokens"] for step in timed_steps)
        fastest = min(timed_steps, key=lambda step: step["seconds"])
        best = fastest["seconds"]
        per_step = useful / len(timed_steps)
        figures[kind] = {
            "steps": len(timed_steps), "seconds": round(seconds, 2), "best_step_s": round(best, 2),
            "median_step_s": round(statistics.median(step["seconds"] for step in timed_steps), 2),
            "warm_up_s": next(step["seconds"] for step in steps if step["kind"] == kind and step["warm_up"]),
            "useful_tokens_per_step": round(per_step, 1), "useful_share": round(useful / tokens, 4),
            # the fastest timed step is the one least slowed by other processes (the same rule as the matmul peak)
            "rows_per_s": round(config.batch_size / best, 4), "tokens_per_s": round(tokens / len(timed_steps) / best, 1),
            "useful_tokens_per_s": round(per_step / best, 1),
            "useful_tokens_per_s_all_steps": round(useful / seconds, 1),
            "others_cpu_share_best_step": fastest["others_cpu_share"],
            "others_cpu_share_mean": round(statistics.fmean(step["others_cpu_share"] for step in timed_steps), 3),
        }
    warm_ups = [step for step in steps if step["warm_up"]]  # the process's first steps: packed, then padded
    return {
        "quantization": config.quantization, "threads": torch.get_num_threads(), "matmul_peak": peak,
        "batch_size": config.batch_size, "max_seq_length": config.max_seq_length, "base_parameters": base_parameters,
        "trainable_parameters": trainable, "layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
        **loaded, "peak_rss_after_first_step_mb": warm_ups[0]["peak_rss_mb"],
        "peak_rss_after_warm_up_mb": warm_ups[-1]["peak_rss_mb"], "peak_rss_mb": round(peak_rss_mb()),
        "load_average_during": round(os.getloadavg()[0], 2), **figures, "steps_log": steps,
    }


def run_worker(spec: dict) -> dict:
    """`train_worker` in a fresh Python process: its progress lines are shown, its result returned."""
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                                   stderr=errors, text=True, cwd=ROOT)
        result = None
        for line in process.stdout:
            if line.startswith(RESULT):
                result = json.loads(line[len(RESULT):])
            elif line.strip():
                print(line.rstrip(), flush=True)
        process.wait()
        errors.seek(0)
        stderr = errors.read()
    if process.returncode or result is None:
        raise RuntimeError(f"the {spec['quantization']} training process failed (exit {process.returncode}):\n{stderr[-3000:]}")
    if spec["quantization"] == "4bit" and "gemm_4bit_forward" in stderr:  # bitsandbytes' optional CPU kernel is missing
        result["note"] = "bitsandbytes used its fallback CPU 4-bit matmul (the optional `kernels` package is not installed)"
    return result


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def compare_packing(lora: dict, data: dict) -> dict:
    """Packed against padded, from the LoRA run; one chunk per padded row is projected from the padded rows/s (same shape)."""
    chunk_rows_tps = lora["padded"]["rows_per_s"] * data["chunk_rows"]["useful_tokens_per_row"]
    return {
        "ratio": round(lora["packed"]["useful_tokens_per_s"] / lora["padded"]["useful_tokens_per_s"], 3),
        "ratio_all_steps": round(lora["packed"]["useful_tokens_per_s_all_steps"] / lora["padded"]["useful_tokens_per_s_all_steps"], 3),
        "efficiency_ratio": round(data["packing"]["efficiency"] / data["packing"]["padded_efficiency"], 3),
        "step_time_ratio": round(lora["padded"]["best_step_s"] / lora["packed"]["best_step_s"], 3),
        "chunk_rows_useful_tokens_per_s": round(chunk_rows_tps, 1),
        "ratio_vs_chunk_rows": round(lora["packed"]["useful_tokens_per_s"] / chunk_rows_tps, 3),
    }


def utilisation(run: dict, peak_gflops: float) -> dict:
    n = run["base_parameters"]
    tokens_per_s = run["packed"]["useful_tokens_per_s"]
    attention_per_token = 12 * run["layers"] * run["hidden_size"] * run["max_seq_length"]
    return {
        "formula": "achieved FLOP/s = 6 x N x useful tokens/s (N = base parameters); MFU = achieved / measured matmul peak",
        "parameters": n, "tokens_per_s": tokens_per_s, "peak_gflops": peak_gflops,
        "achieved_gflops_6n": round(6 * n * tokens_per_s / 1e9, 1), "mfu_6n": round(6 * n * tokens_per_s / 1e9 / peak_gflops, 4),
        "achieved_gflops_4n": round(4 * n * tokens_per_s / 1e9, 1), "mfu_4n": round(4 * n * tokens_per_s / 1e9 / peak_gflops, 4),
        "mfu_6n_all_steps": round(6 * n * run["packed"]["useful_tokens_per_s_all_steps"] / 1e9 / peak_gflops, 4),
        "padded_mfu_6n_useful": round(6 * n * run["padded"]["useful_tokens_per_s"] / 1e9 / peak_gflops, 4),
        "padded_mfu_6n_all_tokens": round(6 * n * run["padded"]["tokens_per_s"] / 1e9 / peak_gflops, 4),
        "attention_flops_per_token": attention_per_token, "attention_share_of_6n": round(attention_per_token / (6 * n), 4),
    }


def print_data(report: dict) -> None:
    setup, data = report["setup"], report["data"]
    packing, rows, length = data["packing"], data["chunk_rows"], report["max_seq_length"]
    print(f"\nDATA  demo corpus: {setup['files']} files ingested in {setup['ingest_s']} s, snapshot {setup['snapshot_id']} "
          f"in {setup['snapshot_s']} s; train split: {data['records']} records {data['records_by_kind']}, "
          f"{packing['text_tokens']:,} tokens (per record: min {data['record_tokens_min']}, p50 {data['record_tokens_p50']}, "
          f"max {data['record_tokens_max']})")
    print(f"  packed at {length}: {packing['blocks']} blocks, efficiency {packing['efficiency']:.1%} (every token kept)")
    print(f"  padded, one record per row: {packing['texts']} rows, efficiency {packing['padded_efficiency']:.1%}, "
          f"truncates {packing['padded_dropped_tokens']:,} tokens away ({data['padded_dropped_share']:.1%} of the text)")
    print(f"  padded, one chunk per row (the seeds' rows; not timed): {rows['rows']} rows ({rows['chunks']} chunks + replay records), "
          f"efficiency {rows['efficiency']:.1%}, truncates {rows['dropped_tokens']:,} tokens")
    print("  at other lengths (real tokens / row capacity, and the share of the text truncated away; packing keeps all):")
    print(f"  {'length':>8}{'packed':>9}{'record rows':>13}{'dropped':>9}{'chunk rows':>12}{'dropped':>9}"
          f"{'packed / record rows':>22}{'packed / chunk rows':>21}")
    for size, row in data["by_length"].items():
        print(f"  {size:>8}{row['packed_efficiency']:>9.1%}{row['record_rows_efficiency']:>13.1%}{row['record_rows_dropped_share']:>9.1%}"
              f"{row['chunk_rows_efficiency']:>12.1%}{row['chunk_rows_dropped_share']:>9.1%}"
              f"{row['packed_efficiency'] / row['record_rows_efficiency']:>21.2f}x"
              f"{row['packed_efficiency'] / row['chunk_rows_efficiency']:>20.2f}x")


def print_peak(report: dict) -> None:
    peak = report["peak"]
    before, after, bf16 = peak["float32_before"], peak["float32_after"], peak["bfloat16"]
    def shown(measured: dict) -> str:
        return f"{measured['best_gflops']} ({measured['median_gflops']}; others {measured['others_cpu_share']:.0%})"

    workers = ", ".join(f"{shown(report[key]['matmul_peak'])} in the {label} process"
                        for key, label in (("lora", "LoRA"), ("qlora", "QLoRA")) if key in report)
    print(f"\nPEAK  torch.mm {MATMUL_SIZE}x{MATMUL_SIZE}, {peak['threads']} threads, GFLOP/s best of {MATMUL_REPEATS} (median; CPU "
          f"share of other processes): float32 {shown(before)} before the training runs, {workers}, {shown(after)} after "
          f"-> peak {peak['best_gflops']}; bfloat16 {shown(bf16)}")


def print_comparison(report: dict) -> None:
    run, compare, packing = report["lora"], report["packing"], report["data"]["packing"]
    print(f"\nPACKED VS PADDED  LoRA recipe (quantization none), batch {run['batch_size']} x {run['max_seq_length']}, "
          f"{run['threads']} threads; {run['packed']['steps']} timed steps of each kind, alternating, after one warm-up step each")
    print(f"  {'batches':<46}{'warm-up s':>10}{'best s':>8}{'median s':>10}{'useful':>8}{'tokens/s':>10}"
          f"{'useful tok/s':>14}{'all steps':>11}{'others':>8}")
    for kind in KINDS:
        row = run[kind]
        print(f"  {LABELS[kind]:<46}{row['warm_up_s']:>10.1f}{row['best_step_s']:>8.1f}{row['median_step_s']:>10.1f}"
              f"{row['useful_share']:>8.1%}{row['tokens_per_s']:>10.1f}{row['useful_tokens_per_s']:>14.1f}"
              f"{row['useful_tokens_per_s_all_steps']:>11.1f}{row['others_cpu_share_mean']:>8.0%}")
    print(f"  (tokens/s and useful tok/s: the fastest timed step; all steps: total useful tokens / total time; others: the CPU "
          f"share other processes took during the timed steps. The whole train split's useful share: packed "
          f"{packing['efficiency']:.1%}, padded {packing['padded_efficiency']:.1%})")
    disturbed = max(run[kind]["others_cpu_share_best_step"] for kind in KINDS)
    if disturbed > DISTURBED_SHARE:
        print(f"  WARNING: other processes took up to {disturbed:.0%} of the CPU during the fastest steps: the ratio below is "
              "noise more than measurement; run again on a quiet machine")
    print(f"  useful tokens/s, packed / padded: {compare['ratio']:.2f}x (target >= {PACKING_TARGET}x); over all steps "
          f"{compare['ratio_all_steps']:.2f}x; from the efficiencies alone {compare['efficiency_ratio']:.2f}x; "
          f"fastest step, padded / packed {compare['step_time_ratio']:.2f}")
    print(f"  projected for one chunk per padded row (padded rows/s x {report['data']['chunk_rows']['useful_tokens_per_row']} "
          f"useful tokens per row): {compare['chunk_rows_useful_tokens_per_s']:.1f} useful tokens/s, packed / that "
          f"{compare['ratio_vs_chunk_rows']:.2f}x")


def print_utilisation(mfu: dict) -> None:
    print(f"\nMFU  {mfu['formula']}")
    print(f"  N = {mfu['parameters']:,}; packed {mfu['tokens_per_s']} useful tokens/s -> 6N: {mfu['achieved_gflops_6n']} GFLOP/s "
          f"= {mfu['mfu_6n']:.1%} of {mfu['peak_gflops']} GFLOP/s; 4N (LoRA: no weight gradients for frozen weights): "
          f"{mfu['achieved_gflops_4n']} GFLOP/s = {mfu['mfu_4n']:.1%}; 6N over all timed steps {mfu['mfu_6n_all_steps']:.1%}")
    print(f"  padded run: {mfu['padded_mfu_6n_useful']:.1%} on useful tokens, {mfu['padded_mfu_6n_all_tokens']:.1%} counting padding; "
          f"attention scores would add {mfu['attention_flops_per_token'] / 1e6:.1f} MFLOP per token "
          f"({mfu['attention_share_of_6n']:.0%} of 6N), not counted")


def print_memory(report: dict) -> None:
    print("\nMEMORY  the same steps in a fresh process per configuration; resident memory in MB (peak: after the first step, a packed"
          " one; after both warm-up steps; at the end)")
    print(f"  {'quantization':<20}{'weights':>9}{'load s':>8}{'before load':>13}{'after load':>12}{'peak: 1st step':>16}"
          f"{'warm-ups':>10}{'end':>8}{'best s':>8}{'tokens/s':>10}  (packed steps)")
    for key, label in (("lora", "none (LoRA)"), ("qlora", "4bit NF4 (QLoRA)")):
        run = report.get(key)
        if run:
            print(f"  {label:<20}{run['weights_mb']:>9,.0f}{run['load_s']:>8.1f}{run['rss_before_load_mb']:>13,}"
                  f"{run['rss_after_load_mb']:>12,}{run['peak_rss_after_first_step_mb']:>16,}{run['peak_rss_after_warm_up_mb']:>10,}"
                  f"{run['peak_rss_mb']:>8,}"
                  f"{run['packed']['best_step_s']:>8.1f}{run['packed']['useful_tokens_per_s']:>10.1f}")
    if "memory" in report:
        memory = report["memory"]
        print(f"  QLoRA / LoRA: weights {memory['weights_ratio']:.2f}x, peak resident memory {memory['peak_rss_ratio']:.2f}x, "
              f"packed tokens/s {memory['tokens_per_s_ratio']:.2f}x")
        if report["qlora"].get("note"):
            print(f"  note: {report['qlora']['note']}")


def verdicts(report: dict) -> list[dict]:
    shape = f"batch {report['batch_size']} x {report['max_seq_length']}"
    timed_ratio, projected = report["packing"]["ratio"], report["packing"]["ratio_vs_chunk_rows"]
    return [{"target": f"useful tokens/s, packed / one record per padded row (timed), {shape}",
             "value": timed_ratio, "goal": f">= {PACKING_TARGET}", "pass": timed_ratio >= PACKING_TARGET},
            {"target": f"useful tokens/s, packed / one chunk per padded row (projected from the padded rows/s), {shape}",
             "value": projected, "goal": f">= {PACKING_TARGET}", "pass": projected >= PACKING_TARGET}]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up step each)")
    parser.add_argument("--max-seq-length", type=int, default=None, help="block and row length (default: the recipe's, 512)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the recipe's, 4)")
    parser.add_argument("--no-qlora", action="store_true", help="skip the QLoRA run (the slowest part)")
    parser.add_argument("--quick", action="store_true", help="256-token rows and 2 timed steps of each kind: about 3 minutes")
    parser.add_argument("--tiny", action="store_true", help="the tiny random Llama of tests/tiny_models.py: a smoke test")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = load_cpt_config(None)
    if args.quick:
        args.steps = min(args.steps, 2)
        args.max_seq_length = args.max_seq_length or 256
    args.max_seq_length = args.max_seq_length or defaults.max_seq_length
    args.batch_size = args.batch_size or defaults.batch_size
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        print(RESULT + json.dumps(train_worker(json.loads(args.worker))), flush=True)
        return
    threads = cores()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    report = start_report(steps=args.steps, max_seq_length=args.max_seq_length, batch_size=args.batch_size,
                          quick=args.quick, tiny=args.tiny)
    with tempfile.TemporaryDirectory(prefix="deploywise-bench-") as folder:
        root = Path(folder)
        report["setup"] = build_snapshot(root)
        report["data"] = data_figures(Path(report["setup"]["workspace"]), report["setup"]["snapshot_id"], args.max_seq_length)
        print_data(report)
        if args.tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_models import save_tiny_llama

            model_folder = save_tiny_llama(root / "tiny-llama", context_tokens=max(1024, args.max_seq_length))
        else:
            model_folder = bundled_model_folder()
        report["model"] = "tiny random Llama (tests/tiny_models.py)" if args.tiny else "bundled SmolLM2-135M-Instruct, float32"
        report["peak"] = {"threads": threads, "float32_before": matmul_peak()}
        spec = {"workspace": report["setup"]["workspace"], "snapshot_id": report["setup"]["snapshot_id"],
                "model_folder": str(model_folder), "max_seq_length": args.max_seq_length, "batch_size": args.batch_size,
                "steps": args.steps, "threads": threads}
        print(f"\nTRAINING  {report['model']}: LoRA, then QLoRA, each in a fresh process")
        report["lora"] = run_worker({**spec, "quantization": "none"})
        if not args.no_qlora:
            report["qlora"] = run_worker({**spec, "quantization": "4bit"})
        report["peak"]["float32_after"] = matmul_peak()
        report["peak"]["bfloat16"] = matmul_peak(torch.bfloat16)
    report["packing"] = compare_packing(report["lora"], report["data"])
    print_comparison(report)
    peaks = [report["peak"]["float32_before"], report["peak"]["float32_after"],
             *(report[key]["matmul_peak"] for key in ("lora", "qlora") if key in report)]
    peak = report["peak"]["best_gflops"] = max(measured["best_gflops"] for measured in peaks)
    lora = report["lora"]
    report["mfu"] = utilisation(lora, peak)
    print_peak(report)
    print_utilisation(report["mfu"])
    if "qlora" in report:
        qlora = report["qlora"]
        report["memory"] = {"weights_ratio": round(qlora["weights_mb"] / lora["weights_mb"], 3),
                            "peak_rss_ratio": round(qlora["peak_rss_mb"] / lora["peak_rss_mb"], 3),
                            "tokens_per_s_ratio": round(qlora["packed"]["useful_tokens_per_s"] / lora["packed"]["useful_tokens_per_s"], 3)}
    print_memory(report)
    finish_report(report, verdicts(report), started)


if __name__ == "__main__":
    main()
