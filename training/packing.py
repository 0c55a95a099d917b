"""Packing: documents tokenized, joined with EOS and cut into fixed-size blocks, so no compute goes to padding.

Every token is kept, in order: a document longer than a block continues into the next block, and the stream's
short tail becomes a shorter last block instead of being dropped (LLaMA-Factory issues #7985 and #4570 show
users losing data to silent truncation). The report sets packing against the padded baseline, one text per
padded row, which is how the seeds batched chunks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackingReport:
    texts: int
    text_tokens: int  # tokens of the texts themselves
    tokens_in: int  # text tokens plus one EOS after each text
    tokens_in_blocks: int
    blocks: int
    block_size: int
    efficiency: float  # real tokens / (blocks * block size)
    padded_efficiency: float  # the baseline's real tokens / (rows * block size)
    padded_dropped_tokens: int  # tokens the baseline truncates away: texts longer than a row


def pack(texts: list[str], tokenizer, max_seq_length: int) -> tuple[list[list[int]], PackingReport]:
    """Blocks of `max_seq_length` token ids (the last may be shorter) and the report of how full they are."""
    if max_seq_length <= 0:
        raise ValueError(f"max_seq_length must be positive (got {max_seq_length})")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to separate documents with")
    tokenized = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    stream = [token for ids in tokenized for token in (*ids, tokenizer.eos_token_id)]
    blocks = [stream[start:start + max_seq_length] for start in range(0, len(stream), max_seq_length)]
    text_tokens = sum(len(ids) for ids in tokenized)
    padded_real = sum(min(len(ids), max_seq_length) for ids in tokenized)
    report = PackingReport(
        texts=len(texts),
        text_tokens=text_tokens,
        tokens_in=len(stream),
        tokens_in_blocks=sum(len(block) for block in blocks),
        blocks=len(blocks),
        block_size=max_seq_length,
        efficiency=_share(len(stream), len(blocks) * max_seq_length),
        padded_efficiency=_share(padded_real, len(tokenized) * max_seq_length),
        padded_dropped_tokens=text_tokens - padded_real,
    )
    return blocks, report


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
