"""Evaluation of LLM versions: perplexity, golden set, comparisons, the promotion gate (issue 5)."""
