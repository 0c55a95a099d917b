"""The chat's messages as the token ids a model reads, fitted into its context.

A prompt longer than the model's context minus `max_new_tokens` loses the middle of its longest message
(replaced by " [...] "), so the instructions at its start and the question at its end survive; if even that
cannot make room, `LlmError`.

Apart from the in-process backend because SFT training and the export's logits check tokenize prompts exactly as the
chat does, so that training and inference see the same tokens.
"""

from __future__ import annotations

import logging

from engine.core.errors import first_line
from engine.llm.backend_contract import LlmError, Message

ELISION = " [...] "

log = logging.getLogger(__name__)


def fit_prompt(tokenizer, messages: list[Message], budget: int) -> list[int]:
    """The chat-templated prompt in at most `budget` tokens; the middle of the longest message gives way."""
    ids = chat_prompt_ids(tokenizer, messages)
    excess = len(ids) - budget
    if excess <= 0:
        return ids
    longest = max(range(len(messages)), key=lambda index: len(messages[index]["content"]))
    tokens = tokenizer.encode(messages[longest]["content"], add_special_tokens=False)
    keep = len(tokens) - excess - len(tokenizer.encode(ELISION, add_special_tokens=False)) - 4  # 4: merges at the cuts
    if keep > 0:
        head, tail = tokens[: keep - keep // 2], tokens[len(tokens) - keep // 2:]
        shortened = list(messages)
        shortened[longest] = {**messages[longest], "content": tokenizer.decode(head) + ELISION + tokenizer.decode(tail)}
        ids = chat_prompt_ids(tokenizer, shortened)
        if len(ids) <= budget:
            log.warning("prompt shortened by %d tokens to fit the model's context", excess)
            return ids
    raise LlmError(f"the prompt does not fit in the {budget} tokens the model's context leaves for it, "
                   f"even with its longest message shortened")


def chat_prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    """The chat-templated prompt as token ids, ending where the assistant's reply starts."""
    try:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    except ValueError as error:  # no chat template
        raise LlmError(f"the model's tokenizer cannot format a chat: {first_line(error)}") from None
