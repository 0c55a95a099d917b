"""The LLM that writes the chat's drafts: a transformers model in this process (engine.llm.in_process), llama.cpp on
the version's GGUF file (engine.llm.gguf), or an OpenAI-compatible endpoint (engine.llm.endpoint).

`engine.llm.backends.llm_backend(settings)` returns the configured backend, built once per process and shared by
every Streamlit session.

What every backend takes, promises and raises lives here, apart from the backends, so that the chat, the verifier
and training depend on the contract and not on one runtime.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Protocol

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}

ROLES = ("system", "user", "assistant")


class LlmError(RuntimeError):
    """Any backend failure, as one line a user can act on: no traceback text, never a token."""


class LlmBackend(Protocol):
    version: str  # stored with each answer: "base:SmolLM2-135M-Instruct", "deploywise-llm/3", "openai:<host>/<model>"

    def stream(self, messages: list[Message], *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "",
               grammar: str | None = None) -> Iterator[str]:
        """Text pieces as they are generated, after `prefill` (the start of the reply, written for the model and not
        repeated); `grammar` (GBNF) constrains the rest where the runtime can (llama.cpp), else it is ignored and
        the verifier still checks the text. Raises LlmError."""


def take_model(lock: threading.Lock, wait_s: float) -> None:
    """Acquire an in-process model's lock, waiting at most `wait_s` (DEPLOYWISE_LLM_WAIT_S) while it generates for
    another answer: a busy model makes the chat keep the rules' decision and skip the explanation, instead of holding
    a visitor's question (and its server thread) for as long as the queue is."""
    if not lock.acquire(timeout=wait_s):
        raise LlmError(f"the LLM was busy with other answers for more than {wait_s:g} s, so the explanation was skipped; "
                       "ask again in a moment")


def check_request(messages: list[Message], max_new_tokens: int, temperature: float) -> None:
    """Refuse a malformed request before any model or endpoint is bothered with it."""
    if not isinstance(messages, list) or not messages:
        raise LlmError("the chat request has no messages")
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise LlmError(f"message {number} must be {{'role': one of {', '.join(ROLES)}, 'content': text}}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise LlmError(f"max_new_tokens must be a positive whole number (got {max_new_tokens!r})")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise LlmError(f"temperature must be 0 (greedy) or positive (got {temperature!r})")
