"""The configured LLM backend: one per distinct configuration in this process, shared by every Streamlit session.

Building one loads and contacts nothing, so a missing model or a dead endpoint surfaces as an `LlmError` while
streaming, where the chat falls back to its composed answer. The backends themselves live in engine.llm.in_process
(transformers in process), engine.llm.endpoint (an OpenAI-compatible endpoint) and engine.llm.gguf (llama.cpp on GGUF
files).
"""

from __future__ import annotations

import threading

from engine.llm.backend_contract import LlmBackend
from engine.llm.endpoint import EndpointLlm
from engine.llm.gguf import GgufLlm, gguf_problem
from engine.llm.in_process import InProcessLlm
from engine.llm.versions import LlmVersion

_backends: dict[tuple, LlmBackend] = {}
_backends_lock = threading.Lock()


def llm_backend(settings) -> LlmBackend:
    """The configured backend, one per distinct configuration in this process; nothing is loaded or called yet."""
    key, build = _configuration(settings)
    with _backends_lock:
        if key not in _backends:
            _backends[key] = build(settings)
        return _backends[key]


def release_backend(settings) -> None:
    """Forget the backend of this configuration: its model is freed once no caller holds it (an evaluation is done
    with a version; the chat's own backend is never released)."""
    with _backends_lock:
        _backends.pop(_configuration(settings)[0], None)


def _configuration(settings) -> tuple[tuple, type]:
    """What tells two backends apart, and how to build one."""
    if settings.llm_backend == "openai":
        token = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        key = ("openai", settings.llm_endpoint, settings.llm_model, token, settings.llm_timeout_s, settings.llm_max_retries)
        build = EndpointLlm
    elif settings.llm_backend == "llama_cpp":
        key = ("llama_cpp", settings.base_model, settings.llm_version, settings.llm_registry_name, settings.tracking_uri,
               settings.mlflow_registry_uri, settings.llm_timeout_s, settings.llm_wait_s, settings.llm_threads,
               str(settings.workspace))
        build = GgufLlm
    else:
        key = ("transformers", settings.base_model, settings.llm_version, settings.llm_registry_name,
               settings.tracking_uri, settings.mlflow_registry_uri, settings.llm_timeout_s, settings.llm_wait_s)
        build = InProcessLlm
    return key, build


def version_settings(settings, wanted: str):
    """The settings the chat would serve version `wanted` ("base", "champion" or a number) with, on its own runtime:
    llama.cpp or transformers in process, and transformers in place of an endpoint, which cannot serve a chosen
    version. The golden-set evaluation and SFT data generation run versions so: what is evaluated is what is served."""
    update = {"llm_version": wanted}
    if settings.llm_backend == "openai":
        update["llm_backend"] = "transformers"
    return settings.model_copy(update=update)


def runtime_problem(settings, version: LlmVersion) -> str | None:
    """Why the chat's runtime cannot serve `version`, or None (on llama.cpp, a version needs its GGUF file)."""
    if version_settings(settings, "base").llm_backend != "llama_cpp":
        return None
    return gguf_problem(settings, version)
