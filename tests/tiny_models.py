"""A tiny random Llama with the bundled SmolLM2 tokenizer, saved as a normal Hugging Face folder.

It loads and generates in milliseconds, so tests of the LLM backends and of training run the real transformers
and PEFT code paths without the real weights. Its text is gibberish: assert on shapes and plumbing, not words.
Weights are drawn wider than the default (initializer_range 0.1) so greedy output varies instead of repeating
one token, and seeded, so the same call saves the same model.
"""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(path: Path | str, *, context_tokens: int = 1024, seed: int = 0) -> Path:
    """Save a 2-layer, 64-wide random Llama (plus the bundled tokenizer and its chat template) to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.llm.bundled import load_tokenizer

    path = Path(path)
    tokenizer = load_tokenizer("bundled")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context_tokens,
        tie_word_embeddings=True, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
