"""Perplexity of a model on held-out text: the team's documents (domain) and general text (replay, the forgetting check).

The text is a dataset snapshot's validation split, packed exactly as CPT packs it (`training.cpt.packed_data`:
documents joined with EOS, cut into blocks) and batched by the same collator, so the figures are comparable with
the training curves. Perplexity is exp of the mean negative log-likelihood per predicted token over all blocks
(token-weighted; the Trainer's eval loss averages per batch, which differs slightly when the last block is short).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.cpt import EVAL_SETS, IGNORE_INDEX, collate_blocks, packed_data

SEQUENCE_LENGTH = 512  # configs/cpt.yaml's max_seq_length
MAX_BLOCKS = 64  # per text set: 32k tokens bound the time a large knowledge base takes on a CPU
NAMES = {"domain": "domain_perplexity", "replay": "general_perplexity"}


@dataclass(frozen=True)
class Perplexity:
    value: float
    tokens: int  # predicted tokens
    blocks: int


def held_out_blocks(records: list[dict], tokenizer, sequence_length: int = SEQUENCE_LENGTH,
                    max_blocks: int = MAX_BLOCKS) -> dict[str, list[dict]]:
    """Packed blocks per kind of held-out text (domain, replay) of a snapshot's validation records."""
    data = packed_data({"train": [], "validation": records}, tokenizer, sequence_length)
    return {kind: blocks[:max_blocks] for kind, blocks in data.evaluation.items() if kind in EVAL_SETS}


def perplexity(model, tokenizer, blocks: list[dict], on_block=None) -> Perplexity:
    """exp(mean NLL per predicted token) of the model over the blocks, one block at a time."""
    import torch
    import torch.nn.functional as F

    collate = collate_blocks(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    total, count = 0.0, 0
    with torch.inference_mode():
        for index, block in enumerate(blocks):
            batch = collate([block])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            total += F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((labels != IGNORE_INDEX).sum())
            if on_block:
                on_block(index + 1, len(blocks))
    if count == 0:
        raise ValueError("no token to predict in the held-out text")
    return Perplexity(math.exp(min(total / count, 50.0)), count, len(blocks))
