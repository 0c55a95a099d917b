"""LLM versions served by llama.cpp (llama-cpp-python) from a GGUF file, in this process.

The base model runs from the bundled GGUF file as it ships; a registered LLM version runs from the checked GGUF
export logged on its MLflow run (`exports/gguf-q8_0/`, else `exports/gguf-f16/`, each with the run tag
`export.<format>.check = passed`), fetched once into the workspace. A version with no checked export is refused
with what to do, and the chat falls back to its composed answer. Each file is loaded once per process and shared
by every session; one generation runs at a time, and a caller waits at most `settings.llm_wait_s` for its turn.

Why: the same 135M model decodes about 5x faster through llama.cpp than through transformers in float32 on these
CPUs (ENVIRONMENT.md, bench/chat.py), and the file served is the file the export check verified.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.errors import first_line
from engine.core.mlflow_client import registry_client
from engine.llm.backend_contract import LlmError, Message, check_request, take_model
from engine.llm.bundled import BUNDLED, BUNDLED_LLM_GGUF, bundled_llm_dir
from engine.llm.versions import ALIAS_RECHECK_S, CHAMPION, EXPORTS_ARTIFACT, LlmVersion, resolve_llm_version, version_label

SERVED_FORMATS = ("gguf-q8_0", "gguf-f16")  # the export formats llama.cpp serves, preferred first
CONTEXT_TOKENS = 8192  # SmolLM2's trained context


@dataclass(frozen=True, eq=False)
class LoadedGguf:
    path: Path
    model: Any  # llama_cpp.Llama
    chat: Any  # llama_cpp.llama_chat_format.Jinja2ChatFormatter of the file's own chat template
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_loaded: weakref.WeakValueDictionary[tuple[Path, int], LoadedGguf] = weakref.WeakValueDictionary()
_loading = threading.Lock()


def load_gguf(path: Path, threads: int | None = None) -> LoadedGguf:
    """The GGUF file loaded by llama.cpp once per thread count (None: every CPU this process may use), for as long as
    someone uses it (a replaced champion, a released backend's version is freed); a file it cannot read is one line
    of LlmError."""
    path = Path(path).resolve()
    threads = threads or max(1, len(os.sched_getaffinity(0)))
    with _loading:
        loaded = _loaded.get((path, threads))
        if loaded is None:
            from llama_cpp import Llama  # a compiled extension: imported when a GGUF is first served
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            if not path.is_file():
                raise LlmError(f"the GGUF file {path} does not exist")
            try:
                model = Llama(model_path=str(path), n_ctx=CONTEXT_TOKENS, n_threads=threads,
                              verbose=False, seed=0)
            except (ValueError, RuntimeError, OSError) as error:
                raise LlmError(f"llama.cpp cannot load {path.name}: {first_line(error)} (is it a complete GGUF file?)") from None
            template = model.metadata.get("tokenizer.chat_template")
            if not template:
                raise LlmError(f"{path.name} holds no chat template (tokenizer.chat_template); re-export the version")
            eos, bos = model.token_eos(), model.token_bos()
            chat = Jinja2ChatFormatter(template, eos_token=model._model.token_get_text(eos) if eos != -1 else "",
                                       bos_token=model._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
            loaded = LoadedGguf(path, model, chat)
            _loaded[path, threads] = loaded
        return loaded


def stream_gguf(loaded: LoadedGguf, messages: list[Message], *, max_new_tokens: int, temperature: float,
                wait_s: float, prefill: str = "", grammar: str | None = None) -> Iterator[str]:
    """The reply after `prefill`, in the file's own chat template, piece by piece; greedy at temperature 0; a
    `grammar` (GBNF) constrains what may be sampled."""
    from llama_cpp import LlamaGrammar

    check_request(messages, max_new_tokens, temperature)
    constraint = LlamaGrammar.from_string(grammar, verbose=False) if grammar else None  # parsed when sampling starts
    take_model(loaded.lock, wait_s)
    try:
        formatted = loaded.chat(messages=messages)
        prompt = loaded.model.tokenize((formatted.prompt + prefill).encode(), add_bos=not formatted.added_special, special=True)
        chunks = loaded.model.create_completion(prompt, max_tokens=max_new_tokens, temperature=float(temperature), seed=0,
                                                stop=formatted.stop or [], grammar=constraint, stream=True)
        for chunk in chunks:
            text = chunk["choices"][0]["text"]
            if text:
                yield text
    except ValueError as error:  # "Requested tokens (...) exceed context window of ..."
        raise LlmError(f"the prompt does not fit {loaded.path.name}: {first_line(error)}") from None
    except RuntimeError as error:
        raise LlmError(f"llama.cpp failed while generating with {loaded.path.name}: {first_line(error)}") from None
    finally:
        loaded.lock.release()


def gguf_file(settings, version: LlmVersion) -> Path:
    """The GGUF file that serves `version`: the bundled one for the bundled base model, else its checked export."""
    if version.number is None:
        return _bundled_gguf(version)
    from mlflow.exceptions import MlflowException

    client = registry_client(settings, version.tracking_uri)
    try:
        fmt = _served_format(client, version)
        [name] = [Path(item.path).name for item in client.list_artifacts(version.run_id, f"{EXPORTS_ARTIFACT}/{fmt}")
                  if item.path.endswith(".gguf")]
        folder = settings.workspace.resolve() / EXPORTS_ARTIFACT / ".downloads" / version.run_id
        local = folder / EXPORTS_ARTIFACT / fmt / name
        if not local.is_file():
            local = Path(client.download_artifacts(version.run_id, f"{EXPORTS_ARTIFACT}/{fmt}/{name}", str(folder)))
        return local
    except (MlflowException, OSError, ValueError) as error:
        raise LlmError(f"cannot fetch the GGUF export of {version.label}: {first_line(error)}") from None


def gguf_problem(settings, version: LlmVersion) -> str | None:
    """Why llama.cpp cannot serve `version`, or None: read from the registry's tags, nothing fetched or loaded (so an
    evaluation or SFT run can refuse before it starts)."""
    from mlflow.exceptions import MlflowException

    try:
        if version.number is None:
            _bundled_gguf(version)
        else:
            _served_format(registry_client(settings, version.tracking_uri), version)
    except LlmError as error:
        return str(error)
    except MlflowException as error:
        return f"cannot read the run of {version.label}: {first_line(error.message)}"
    return None


def _bundled_gguf(version: LlmVersion) -> Path:
    if version.base_model != BUNDLED:
        raise LlmError(f"the base model {version.base_model} has no GGUF file; export it or use "
                       "DEPLOYWISE_LLM_BACKEND=transformers")
    return bundled_llm_dir() / BUNDLED_LLM_GGUF


def _served_format(client, version: LlmVersion) -> str:
    """The export format llama.cpp serves the version from: the first of SERVED_FORMATS whose check passed."""
    tags = client.get_run(version.run_id).data.tags
    for fmt in SERVED_FORMATS:
        if tags.get(f"export.{fmt}.check") == "passed":
            return fmt
    raise LlmError(f"{version.label} has no checked GGUF export (gguf-q8_0 or gguf-f16): export it on the LLM versions "
                   "page or with `deploywise export`, or use DEPLOYWISE_LLM_BACKEND=transformers")


class GgufLlm:
    """The configured LLM version served by llama.cpp; with 'champion' it follows the registry alias."""

    def __init__(self, settings, wanted: str | None = None, *, alias_recheck_s: float = ALIAS_RECHECK_S):
        self._settings = settings
        self._wanted = wanted or settings.llm_version
        self._alias_recheck_s = alias_recheck_s
        self._current: tuple[LlmVersion, LoadedGguf] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._used = threading.local()

    @property
    def version(self) -> str:
        return version_label(self._settings, self._wanted, getattr(self._used, "version", None),
                             self._current[0] if self._current else None)

    def stream(self, messages: list[Message], *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "",
               grammar: str | None = None) -> Iterator[str]:
        check_request(messages, max_new_tokens, temperature)
        version, loaded = self._serving()
        self._used.version = version.label
        yield from stream_gguf(loaded, messages, max_new_tokens=max_new_tokens, temperature=temperature,
                               wait_s=self._settings.llm_wait_s, prefill=prefill, grammar=grammar)

    def _serving(self) -> tuple[LlmVersion, LoadedGguf]:
        with self._lock:
            due = self._wanted == CHAMPION and time.monotonic() - self._checked_at >= self._alias_recheck_s
            if self._current is None or due:  # loading a GGUF takes a fraction of a second: no background switch
                version = resolve_llm_version(self._settings, self._wanted)
                if self._current is None or version != self._current[0]:
                    self._current = (version, load_gguf(gguf_file(self._settings, version), self._settings.llm_threads))
                self._checked_at = time.monotonic()
            return self._current
