"""The transformers backend: an LLM version generating in this process, shared by every Streamlit session.

With `llm_version = champion` the alias is looked up again at most every 30 s; a new champion is loaded in the
background while the old one keeps answering.

Apart from the endpoint and llama.cpp backends because only this one needs torch and transformers, and its threads
(generation, following the champion) are its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

from engine.core.errors import first_line
from engine.llm.backend_contract import LlmError, Message, check_request, take_model
from engine.llm.chat_prompt import fit_prompt
from engine.llm.loading import LoadedLlm, load_llm
from engine.llm.versions import ALIAS_RECHECK_S, CHAMPION, resolve_llm_version, version_label

log = logging.getLogger(__name__)


def _generate(loaded: LoadedLlm, messages: list[Message], max_new_tokens: int, temperature: float,
              timeout_s: float, prefill: str = "", *, wait_s: float) -> Iterator[str]:
    """Generate in a thread while the caller reads the streamer; stopping early (closing) stops generate(). The model
    is waited for at most `wait_s`, then the caller is given LlmError."""
    import torch  # heavy: imported when the first answer is generated, not at start-up
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    model, tokenizer, label = loaded.model, loaded.tokenizer, loaded.version.label
    context = getattr(model.config, "max_position_embeddings", None) or 1_000_000
    if max_new_tokens >= context:
        raise LlmError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {context}-token context of {label}")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout_s)
    stop, failures = threading.Event(), []

    def consumer_gone(input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    def run(prompt):
        try:
            sampling = {"do_sample": True, "temperature": float(temperature)} if temperature > 0 else {"do_sample": False}
            with torch.inference_mode():
                model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                               streamer=streamer, stopping_criteria=StoppingCriteriaList([consumer_gone]),
                               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                               **sampling)
        except Exception as error:  # reported to the consumer, which raises it as LlmError
            failures.append(error)
            streamer.end()
        finally:
            loaded.lock.release()

    take_model(loaded.lock, wait_s)  # the tokenizer is used under the lock too; it is shared with the generation thread
    try:
        opening = tokenizer.encode(prefill, add_special_tokens=False) if prefill else []
        prompt = torch.tensor([fit_prompt(tokenizer, messages, context - max_new_tokens - len(opening)) + opening])
        threading.Thread(target=run, args=(prompt,), name="llm-generate", daemon=True).start()
    except BaseException:
        loaded.lock.release()
        raise
    try:
        for piece in streamer:
            if piece:
                yield piece
    except queue.Empty:
        raise LlmError(f"{label} produced no text for {timeout_s:g} s") from None
    finally:
        stop.set()
    if failures:
        raise LlmError(f"generation with {label} failed: {type(failures[0]).__name__}: {first_line(failures[0])}")


class InProcessLlm:
    """A transformers model in this process, shared by all sessions; with 'champion' it follows the registry alias."""

    def __init__(self, settings, wanted: str | None = None, *, alias_recheck_s: float = ALIAS_RECHECK_S):
        self._settings = settings
        self._wanted = wanted or settings.llm_version
        self._alias_recheck_s = alias_recheck_s
        self._current: LoadedLlm | None = None
        self._checked_at = 0.0
        self._following = False  # a background look-up of the alias is under way
        self._lock = threading.Lock()  # guards the three fields above; held during the first load
        self._used = threading.local()

    @property
    def version(self) -> str:
        """The version that wrote this thread's last stream (each session runs in its own thread), else the current one."""
        return version_label(self._settings, self._wanted, getattr(self._used, "version", None),
                             self._current.version if self._current else None)

    def stream(self, messages: list[Message], *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "",
               grammar: str | None = None) -> Iterator[str]:
        """See LlmBackend.stream; transformers has no grammar support here, so `grammar` is ignored."""
        check_request(messages, max_new_tokens, temperature)
        loaded = self._serving()
        self._used.version = loaded.version.label
        yield from _generate(loaded, messages, max_new_tokens, temperature, self._settings.llm_timeout_s, prefill,
                             wait_s=self._settings.llm_wait_s)

    def _serving(self) -> LoadedLlm:
        with self._lock:
            if self._current is None:
                self._current = load_llm(resolve_llm_version(self._settings, self._wanted))
                self._checked_at = time.monotonic()
                return self._current
            due = (self._wanted == CHAMPION and not self._following
                   and time.monotonic() - self._checked_at >= self._alias_recheck_s)
            self._following = self._following or due
            current = self._current
        if due:
            threading.Thread(target=self._follow_champion, name="llm-follow-champion", daemon=True).start()
        return current

    def _follow_champion(self) -> None:
        """Load the version now holding the alias beside the one answering, then switch to it."""
        try:
            version = resolve_llm_version(self._settings, CHAMPION)
            if version != self._current.version:
                loaded = load_llm(version)
                log.info("LLM champion is now %s (was %s)", version.label, self._current.version.label)
                with self._lock:
                    self._current = loaded
        except LlmError as error:
            log.warning("LLM champion unchanged (%s): %s", self._current.version.label, error)
        finally:
            with self._lock:
                self._following = False
                self._checked_at = time.monotonic()
