"""What an SFT generation run is asked to make, checked completely before anything runs, and the LLM that writes it.

The LLM is any OpenAI-compatible endpoint (Ollama, vLLM, OpenRouter: base URL, model, and the name of the
environment variable holding the API key, never the key itself) or an LLM version in this process.

Separate from the run (training.sft_generation) because the page, the CLI and the worker check a request and reach
its LLM before a run starts (a bad request changes nothing), and the request is what the dataset stores as its
configuration; the styles and their prompts are the request's vocabulary.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import asdict, dataclass, field

from pydantic import SecretStr

from engine.llm.backend_contract import LlmError
from engine.llm.backends import llm_backend, runtime_problem, version_settings
from engine.llm.endpoint import EndpointLlm
from engine.llm.versions import resolve_llm_version
from training.sft_data import SftDataError, check_name

KNOWLEDGE_STYLES = ("factual", "conversational", "socratic", "problem-solving", "multiple-choice")
TASK_STYLES = ("recommendation", "refusal")
STYLES = KNOWLEDGE_STYLES + TASK_STYLES
PROMPT_FIELDS = {"chunk", "source_id", "title"}
MAX_PER_SOURCE = 100
MAX_QUESTIONS_PER_USE_CASE = 20
_STYLE_TASKS = {
    "factual": "Write one factual question a data scientist could ask that this excerpt answers, and its answer, "
               "using only facts stated in the excerpt.",
    "conversational": "Write one question a colleague might ask casually in a team chat, and a friendly, "
                      "conversational answer grounded in the excerpt.",
    "socratic": "Write one question a junior data scientist might ask, and an answer that first guides them with "
                "one or two questions of its own, then gives the conclusion the excerpt supports.",
    "problem-solving": "Write one practical problem an ML team could face that this excerpt helps solve, and a "
                       "step-by-step answer based on the excerpt.",
    "multiple-choice": "Write one multiple-choice question with four options on separate lines labelled A) B) C) D), "
                       "exactly one of them correct according to the excerpt, and an answer that starts with the "
                       "correct letter and says why.",
}
_PROMPT = """Here is an excerpt of the ML platform team's knowledge base ({title}), cited as <<SRC:{source_id}>>:
<<<
{chunk}
>>>
{task}
Reply in exactly this format and nothing else:
QUESTION: <the question>
ANSWER: <the answer, ending with <<SRC:{source_id}>>>"""
DEFAULT_PROMPTS = {style: _PROMPT.replace("{task}", task) for style, task in _STYLE_TASKS.items()}


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, as stored with the dataset (no secret: the API key stays in its environment variable)."""
    name: str
    styles: tuple[str, ...]
    per_source: int = 2
    seed: int = 0
    endpoint: str | None = None  # an OpenAI-compatible base URL...
    model: str | None = None
    api_key_env: str | None = None
    llm_version: str | None = None  # ...or an LLM version in this process: 'base', 'champion' or a number
    prompts: dict[str, str] = field(default_factory=dict)  # style -> prompt replacing DEFAULT_PROMPTS
    questions_per_use_case: int = 3
    paraphrase: bool = True
    rewrite_recommendations: bool = False
    include_corrections: bool = True
    temperature: float = 0.7
    max_new_tokens: int = 320

    @property
    def uses_llm(self) -> bool:
        return self.endpoint is not None or self.llm_version is not None

    def prompt(self, style: str) -> str:
        return self.prompts.get(style) or DEFAULT_PROMPTS[style]

    def to_config(self) -> dict:
        config = asdict(self)
        config["styles"] = list(self.styles)
        return config

    @classmethod
    def from_config(cls, config: dict) -> GenerationRequest:
        known = {key: value for key, value in config.items() if key in cls.__dataclass_fields__}
        return cls(**{**known, "styles": tuple(known.get("styles", ()))})


def check_request(settings, request: GenerationRequest) -> None:
    """Every field checked before anything is written or called; SftDataError names the first problem."""
    check_name(request.name)
    if not request.styles:
        raise SftDataError("choose at least one style")
    if unknown := [style for style in request.styles if style not in STYLES]:
        raise SftDataError(f"unknown style {unknown[0]!r}; the styles are {', '.join(STYLES)}")
    for label, value, top in (("per-source count", request.per_source, MAX_PER_SOURCE),
                              ("questions per use case", request.questions_per_use_case, MAX_QUESTIONS_PER_USE_CASE)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise SftDataError(f"the {label} must be a whole number from 1 to {top} (got {value!r})")
    if not isinstance(request.seed, int):
        raise SftDataError(f"the seed must be a whole number (got {request.seed!r})")
    if not 0 <= request.temperature <= 2:
        raise SftDataError(f"the temperature must be from 0 to 2 (got {request.temperature!r})")
    if not 16 <= request.max_new_tokens <= 4096:
        raise SftDataError(f"max new tokens must be from 16 to 4096 (got {request.max_new_tokens!r})")
    for style, prompt in request.prompts.items():
        if style not in KNOWLEDGE_STYLES:
            raise SftDataError(f"a prompt is given for {style!r}, which is not a knowledge style ({', '.join(KNOWLEDGE_STYLES)})")
        _check_prompt(style, prompt)
    if request.endpoint is not None and request.llm_version is not None:
        raise SftDataError("choose either an endpoint or an in-process LLM version, not both")
    if request.endpoint is not None:
        if not re.match(r"^https?://[^\s/]+", request.endpoint):
            raise SftDataError(f"the endpoint {request.endpoint!r} is not an http(s) URL")
        if not (request.model or "").strip():
            raise SftDataError("an endpoint needs a model name")
        if request.api_key_env is not None:
            _check_key_variable(settings, request.api_key_env)
    if request.llm_version is not None and request.llm_version not in ("base", "champion") and not request.llm_version.isdigit():
        raise SftDataError(f"LLM version {request.llm_version!r} must be 'base', 'champion' or a version number")
    if not request.uses_llm:
        if needing := [style for style in request.styles if style in KNOWLEDGE_STYLES]:
            raise SftDataError(f"the {needing[0]} style needs an LLM: give an endpoint or an LLM version")


def _check_key_variable(settings, name: str) -> None:
    """Only a variable the operator listed (DEPLOYWISE_ENDPOINT_KEY_VARS) is sent as a bearer token: any other name,
    set or not, gets the same refusal, so the form can neither send the app's other secrets to a URL nor tell which
    variables exist."""
    if name not in settings.endpoint_key_vars:
        allowed = ", ".join(settings.endpoint_key_vars) or "none"
        raise SftDataError(f"the API key variable must be one that DEPLOYWISE_ENDPOINT_KEY_VARS lists ({allowed})")
    if not os.environ.get(name):
        raise SftDataError(f"the environment variable {name} (the API key) is not set for this process")


def _check_prompt(style: str, prompt: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    except ValueError as error:
        raise SftDataError(f"the {style} prompt is not a valid template ({error}); write braces as {{{{ and }}}}") from None
    if "chunk" not in fields:
        raise SftDataError(f"the {style} prompt must contain {{chunk}}, where the excerpt goes")
    if unknown := fields - PROMPT_FIELDS:
        raise SftDataError(f"the {style} prompt has unknown placeholders: {', '.join(sorted(unknown))} "
                           f"(known: {', '.join(sorted(PROMPT_FIELDS))})")


def make_backend(settings, request: GenerationRequest):
    """The generator: an engine.llm.endpoint backend for the endpoint, or the LLM version on the chat's own runtime
    (engine.llm.backends; transformers in place of the chat's endpoint); None when no LLM is asked for."""
    if request.endpoint is not None:
        if request.api_key_env:
            _check_key_variable(settings, request.api_key_env)
        key = os.environ.get(request.api_key_env) if request.api_key_env else None
        endpoint_settings = settings.model_copy(update={
            "llm_backend": "openai", "llm_endpoint": request.endpoint, "llm_model": request.model,
            "llm_api_key": SecretStr(key) if key else None})
        return EndpointLlm(endpoint_settings)
    if request.llm_version is not None:
        return llm_backend(version_settings(settings, request.llm_version))
    return None


def check_backend(settings, request: GenerationRequest) -> None:
    """Before a run starts: an endpoint answers one tiny request, an LLM version exists and the chat's runtime can
    serve it (nothing is loaded)."""
    try:
        if request.endpoint is not None:
            "".join(make_backend(settings, request).stream(
                [{"role": "user", "content": "Reply with the word ready."}], max_new_tokens=4))
        elif request.llm_version is not None:
            if problem := runtime_problem(settings, resolve_llm_version(settings, request.llm_version)):
                raise SftDataError(f"LLM version {request.llm_version}: {problem}")
    except LlmError as error:
        raise SftDataError(str(error)) from None
