"""The LLM that writes the chat's drafts: a transformers model in this process, llama.cpp on the version's GGUF file
(engine.llm.gguf), or an OpenAI-compatible endpoint.

`engine.llm.backends.llm_backend(settings)` returns the configured backend, built once per process and shared by
every Streamlit session.

LLM versions in the MLflow registry (the CPT and SFT jobs write them this way):
- registered model `settings.llm_registry_name` (default `deploywise-llm`), one model version per trained
  adapter, created with `run_id=` the training run;
- that run holds the artifact folder `adapter/`: a PEFT adapter saved with `save_pretrained`;
- the model version carries the tag `base_model`: 'bundled' or the path of a local Hugging Face folder;
- a version trained on top of another one also carries `parent_version`: its adapter fits the parent merged;
- the alias `champion` marks the version the chat uses; while no version holds it (before any training) the
  base model answers.
A version is loaded as base model + adapter, merged (`merge_and_unload`) so it generates at base-model speed.
With `llm_version = champion` the alias is looked up again at most every 30 s; a new champion is loaded in the
background while the old one keeps answering.

A prompt longer than the model's context minus `max_new_tokens` loses the middle of its longest message
(replaced by " [...] "), so the instructions at its start and the question at its end survive; if even that
cannot make room, `LlmError`.
"""

from __future__ import annotations

import logging
import math
import queue
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from engine.llm import bundled
from engine.llm.bundled import BUNDLED, BUNDLED_LLM_GGUF, load_tokenizer

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}

ROLES = ("system", "user", "assistant")
CHAMPION = "champion"
ADAPTER_ARTIFACT = "adapter"
EXPORTS_ARTIFACT = "exports"  # exports/<format>/ in a version's MLflow run (training.export_artifacts logs them)
BASE_MODEL_TAG = "base_model"
PARENT_VERSION_TAG = "parent_version"
VERSION_STATUS_TAG = "status"  # a version's status: candidate when registered, then deployed, archived
CANDIDATE = "candidate"
MAX_LINEAGE = 32  # parent_version links followed before a registry is taken for corrupt (a loop)
ALIAS_RECHECK_S = 30.0
ELISION = " [...] "

log = logging.getLogger(__name__)


class LlmError(RuntimeError):
    """Any backend failure, as one line a user can act on: no traceback text, never a token."""


class LlmBackend(Protocol):
    version: str  # stored with each answer: "base:SmolLM2-135M-Instruct", "deploywise-llm/3", "openai:<host>/<model>"

    def stream(self, messages: list[Message], *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "",
               grammar: str | None = None) -> Iterator[str]:
        """Text pieces as they are generated, after `prefill` (the start of the reply, written for the model and not
        repeated); `grammar` (GBNF) constrains the rest where the runtime can (llama.cpp), else it is ignored and
        the verifier still checks the text. Raises LlmError."""


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


def first_line(error: object) -> str:
    """An error as the one line a user sees (a traceback's last word is no use to them)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --- which weights ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmVersion:
    """Which weights write the answers: a base model, or a registered adapter on top of one (the cache key)."""

    base_model: str  # 'bundled' or a local Hugging Face folder
    registry_name: str | None = None
    number: str | None = None  # None: the base model itself
    run_id: str | None = None  # the run holding the adapter/ artifact
    tracking_uri: str | None = None
    parent: LlmVersion | None = None  # the version this one's adapter was trained on, merged

    @property
    def label(self) -> str:
        if self.number is not None:
            return f"{self.registry_name}/{self.number}"
        return "base:" + (BUNDLED_LLM_GGUF.split(".")[0] if self.base_model == BUNDLED else Path(self.base_model).name)


def resolve_llm_version(settings, wanted: str | None = None) -> LlmVersion:
    """'base', 'champion' (the base model while no version holds the alias) or a version number of the registry."""
    wanted = wanted or settings.llm_version
    if wanted == "base":
        return LlmVersion(settings.base_model)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = settings.llm_registry_name
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow_registry_uri)
    try:
        number = wanted
        if wanted == CHAMPION:
            try:
                number = client.get_registered_model(name).aliases.get(CHAMPION)
            except MlflowException as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                number = None
            if number is None:
                return LlmVersion(settings.base_model)
    except MlflowException as error:
        raise LlmError(f"cannot read the LLM versions of {name} from the MLflow registry: {first_line(error.message)}") from None
    return registry_version(name, str(number), settings.tracking_uri, settings.mlflow_registry_uri)


def registry_version(name: str, number: str, tracking_uri: str, registry_uri: str | None = None) -> LlmVersion:
    """LLM version `number` of registered model `name`, with the versions it was trained on top of."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    try:
        try:
            found = client.get_model_version(name, number)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise LlmError(f"the MLflow registry has no LLM version {name}/{number}") from None
            raise
        return _version_with_lineage(client, name, found, tracking_uri)
    except MlflowException as error:
        raise LlmError(f"cannot read the LLM versions of {name} from the MLflow registry: {first_line(error.message)}") from None


def _version_with_lineage(client, name: str, found, tracking_uri: str) -> LlmVersion:
    """The found model version as an LlmVersion, with the chain of versions it was trained on top of."""
    from mlflow.exceptions import MlflowException

    chain = [found]
    while parent := chain[-1].tags.get(PARENT_VERSION_TAG):
        if len(chain) > MAX_LINEAGE or parent in {str(v.version) for v in chain}:
            raise LlmError(f"LLM version {name}/{found.version}: its {PARENT_VERSION_TAG} tags form a loop")
        try:
            chain.append(client.get_model_version(name, parent))
        except MlflowException as error:
            raise LlmError(f"LLM version {name}/{chain[-1].version} names parent version {parent}, "
                           f"which cannot be read: {first_line(error)}") from None
    version = None
    for link in reversed(chain):
        base_model = link.tags.get(BASE_MODEL_TAG)
        if not base_model or not link.run_id:
            raise LlmError(f"LLM version {name}/{link.version} needs a run and a '{BASE_MODEL_TAG}' tag to be loaded")
        version = LlmVersion(base_model, name, str(link.version), link.run_id, tracking_uri, version)
    return version


# --- loading --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedLlm:
    """A model ready to generate; its lock keeps generate() to one caller at a time."""

    version: LlmVersion
    model: Any
    tokenizer: Any
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_loaded: weakref.WeakValueDictionary[LlmVersion, LoadedLlm] = weakref.WeakValueDictionary()
_loading = threading.Lock()


def load_llm(version: LlmVersion) -> LoadedLlm:
    """The version's model, loaded once for as long as someone uses it (a replaced champion is freed)."""
    with _loading:
        loaded = _loaded.get(version)
        if loaded is None:
            loaded = LoadedLlm(version, build_model(version).eval(), load_tokenizer(version.base_model))
            _loaded[version] = loaded
        return loaded


def build_model(version: LlmVersion):
    """A fresh float32 model of the version: its base with every adapter of its lineage merged, oldest first."""
    model = load_base_model(version.base_model) if version.parent is None else build_model(version.parent)
    return model if version.number is None else _merge_adapter(model, version)


def load_base_model(base_model: str = BUNDLED):
    """engine.llm.bundled.load_base_model with its failure as an LlmError, which the chat turns into a notice."""
    try:
        return bundled.load_base_model(base_model)
    except bundled.ModelLoadError as error:
        raise LlmError(str(error)) from None


def _merge_adapter(model, version: LlmVersion):
    import mlflow
    from mlflow.exceptions import MlflowException
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="deploywise-adapter-") as folder:
        try:
            adapter = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=ADAPTER_ARTIFACT, dst_path=folder, tracking_uri=version.tracking_uri)
        except (MlflowException, OSError) as error:
            raise LlmError(f"cannot fetch the {ADAPTER_ARTIFACT}/ artifact of {version.label} "
                           f"(run {version.run_id}): {first_line(error)}") from None
        try:
            return PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise LlmError(f"the adapter of {version.label} does not fit its base model {version.base_model}: "
                           f"{first_line(error)}") from None


# --- generating in process --------------------------------------------------------------------------------------


def fit_prompt(tokenizer, messages: list[Message], budget: int) -> list[int]:
    """The chat-templated prompt in at most `budget` tokens; the middle of the longest message gives way."""
    ids = _chat_template(tokenizer, messages)
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
        ids = _chat_template(tokenizer, shortened)
        if len(ids) <= budget:
            log.warning("prompt shortened by %d tokens to fit the model's context", excess)
            return ids
    raise LlmError(f"the prompt does not fit in the {budget} tokens the model's context leaves for it, "
                   f"even with its longest message shortened")


def _chat_template(tokenizer, messages: list[Message]) -> list[int]:
    try:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    except ValueError as error:  # no chat template
        raise LlmError(f"the model's tokenizer cannot format a chat: {first_line(error)}") from None


def _generate(loaded: LoadedLlm, messages: list[Message], max_new_tokens: int, temperature: float,
              timeout_s: float, prefill: str = "") -> Iterator[str]:
    """Generate in a thread while the caller reads the streamer; stopping early (closing) stops generate()."""
    import torch
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

    loaded.lock.acquire()  # the tokenizer is used under the lock too; it is shared with the generation thread
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


def version_label(settings, wanted: str, used: str | None, current: LlmVersion | None) -> str:
    """What an in-process backend reports: the version that wrote the caller's last stream, else the one loaded,
    else the one configured ("base:..." or "<registered model>/<wanted>")."""
    if used:
        return used
    if current is not None:
        return current.label
    if wanted == "base":
        return LlmVersion(settings.base_model).label
    return f"{settings.llm_registry_name}/{wanted}"


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
        yield from _generate(loaded, messages, max_new_tokens, temperature, self._settings.llm_timeout_s, prefill)

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


def _without_restated(text: str, pending: str) -> tuple[str, str]:
    """(what of `text` is new, what of the opening a restating server has still to repeat): a server that ignores the
    unfinished assistant message writes the opening again, which must not be shown twice."""
    common = len(pending) if text.startswith(pending) else len(text) if pending.startswith(text) else 0
    if common == 0:
        return text, ""
    return text[common:], pending[common:]


# --- generating behind an OpenAI-compatible endpoint ------------------------------------------------------------


class EndpointLlm:
    """Any OpenAI-compatible chat endpoint: Ollama, vLLM, llama.cpp server, a Databricks serving endpoint."""

    def __init__(self, settings):
        from openai import OpenAI

        self.endpoint, self.model = settings.llm_endpoint, settings.llm_model
        self._token = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        self._timeout_s, self._attempts = settings.llm_timeout_s, 1 + settings.llm_max_retries
        url = urlsplit(self.endpoint)
        self.version = f"openai:{url.hostname}{f':{url.port}' if url.port else ''}/{self.model}"
        self._client = OpenAI(base_url=self.endpoint, api_key=self._token or "not-needed",
                              timeout=settings.llm_timeout_s, max_retries=settings.llm_max_retries)

    def stream(self, messages: list[Message], *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "",
               grammar: str | None = None) -> Iterator[str]:
        """See LlmBackend.stream. The prefill is sent as a last, unfinished assistant message, which servers that
        continue it (vLLM, llama.cpp server, Ollama) do; a reply that starts over has its restated opening removed.
        `grammar` is not sent: the OpenAI API has no GBNF."""
        import openai

        check_request(messages, max_new_tokens, temperature)
        if prefill:
            messages = [*messages, {"role": "assistant", "content": prefill}]
        started = answered = False  # the client retries only before the stream has started
        pending = prefill  # what a server that starts over repeats first
        try:
            with self._client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_new_tokens,
                                                      temperature=temperature, stream=True) as chunks:
                started = True
                for chunk in chunks:
                    for choice in chunk.choices or ():
                        text = choice.delta.content if choice.delta else None
                        if text and pending:
                            text, pending = _without_restated(text, pending)
                        if text:
                            answered = True
                            yield text
        except openai.APITimeoutError:
            raise self._failure(f"did not answer within {self._timeout_s:g} s{'' if started else self._tries()}") from None
        except openai.APIConnectionError as error:
            raise self._failure(f"cannot be reached ({first_line(error.__cause__ or error)}){'' if started else self._tries()}") from None
        except openai.APIStatusError as error:
            raise self._failure(self._status_problem(error)) from None
        except openai.APIError as error:  # an error event inside a started stream
            raise self._failure(f"reported an error while streaming: {first_line(error.message)}") from None
        except (ValueError, AttributeError, TypeError) as error:  # undecodable or misshapen chunks
            raise self._failure(f"sent a malformed stream ({type(error).__name__}: {first_line(error)})") from None
        if not answered:
            raise self._failure("returned an empty answer")

    def _tries(self) -> str:
        return f" ({self._attempts} attempts)" if self._attempts > 1 else ""

    def _status_problem(self, error) -> str:
        status, body = error.status_code, error.body
        detail = body.get("error", body) if isinstance(body, dict) else body
        detail = detail.get("message") if isinstance(detail, dict) else detail
        detail = first_line(detail)[:200] if detail else error.response.reason_phrase
        if status in (401, 403):
            return (f"refused the token (HTTP {status}: {detail})" if self._token
                    else f"needs a token (HTTP {status}: {detail}); set DEPLOYWISE_LLM_API_KEY")
        retried = status in (408, 409, 429) or status >= 500
        return f"answered HTTP {status}: {detail}{self._tries() if retried else ''}"

    def _failure(self, problem: str) -> LlmError:
        message = f"LLM endpoint {self.endpoint} ({self.model}) {problem}"
        return LlmError(message.replace(self._token, "***") if self._token else message)
