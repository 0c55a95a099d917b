"""Packing with the real tokenizer: every token kept in order, long documents continue, the tail is kept."""

from __future__ import annotations

import pytest

from engine.llm.bundled import load_tokenizer
from training.packing import pack

BLOCK = 16


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bundled")


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_blocks_hold_every_token_in_order_with_eos_between_documents(tokenizer):
    long_document = " ".join(f"Model {n} passed the latency criterion on the staging cluster." for n in range(8))
    texts = ["Champion: gradient boosting.", long_document, "Calibration drift was found in January."]
    expected = [token for text in texts for token in (*token_ids(tokenizer, text), tokenizer.eos_token_id)]
    assert len(token_ids(tokenizer, long_document)) > 3 * BLOCK

    blocks, report = pack(texts, tokenizer, BLOCK)

    assert [token for block in blocks for token in block] == expected
    assert all(len(block) == BLOCK for block in blocks[:-1])
    assert 0 < len(blocks[-1]) < BLOCK  # the short tail is a shorter last block, not dropped
    assert report.tokens_in == report.tokens_in_blocks == len(expected)
    assert report.text_tokens == len(expected) - len(texts)
    assert report.blocks == len(blocks) == -(-len(expected) // BLOCK)
    assert report.efficiency == round(len(expected) / (len(blocks) * BLOCK), 4)


def test_report_sets_packing_against_one_padded_row_per_text(tokenizer):
    texts = ["Short note.", "Another short note about the diabetes model.", " ".join(["word"] * 40)]
    lengths = [len(token_ids(tokenizer, text)) for text in texts]

    _, report = pack(texts, tokenizer, BLOCK)

    assert report.padded_efficiency == round(sum(min(n, BLOCK) for n in lengths) / (len(texts) * BLOCK), 4)
    assert report.padded_dropped_tokens == sum(max(0, n - BLOCK) for n in lengths) > 0
    assert report.efficiency > report.padded_efficiency


def test_a_stream_that_fills_whole_blocks_has_no_tail(tokenizer):
    text = "The tumour screening model"
    length = len(token_ids(tokenizer, text)) + 1
    blocks, report = pack([text] * BLOCK, tokenizer, length)
    assert report.blocks == BLOCK and all(len(block) == length for block in blocks)
    assert report.efficiency == 1.0


def test_nothing_to_pack_gives_no_blocks(tokenizer):
    blocks, report = pack([], tokenizer, BLOCK)
    assert blocks == [] and report.blocks == 0 and report.efficiency == 0.0


def test_a_block_size_must_be_positive(tokenizer):
    with pytest.raises(ValueError, match="max_seq_length"):
        pack(["text"], tokenizer, 0)
