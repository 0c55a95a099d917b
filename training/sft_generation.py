"""Generating SFT pairs from the knowledge base (seed 002, phase 3) and from the product's own task.

Three kinds of pairs, each kept with the chunk and source ids it came from:
- knowledge styles (factual, conversational, socratic, problem-solving, multiple-choice): chunks sampled evenly
  across sources (each document, and each Unity Catalog or SQL table whose rows were imported, is one source;
  `per_source` chunks of each, drawn with a seed, so a run is reproducible) are sent to an LLM with the style's
  prompt, which asks for a `QUESTION:` / `ANSWER:` reply citing the chunk's `<<SRC:...>>` marker (added when the
  generator leaves it out);
- recommendation: questions about each use case of the registry, phrased several ways (fixed templates, each
  paraphrased by the LLM when one is given and the paraphrase still names the use case). The instruction is
  exactly the user message the chat sends its LLM (engine.answering.pipeline.prepare_answer; the SFT recipe adds the
  system prompt), the output the explanation of the decision the chat asks its LLM for, beginning with the
  opening the chat prefills (engine.answering.prompting.explanation_opening): the one composed from the decision
  (engine.answering.composer.compose_explanation), or, when `rewrite_recommendations` is on, the LLM's own explanation
  when the chat would have shown every sentence of it. Either is held to the chat's sentence checks;
- refusal: questions about no known use case, answered with the chat's own refusal text;
plus accepted feedback corrections (style "correction": the question and the corrected answer).

The LLM is any OpenAI-compatible endpoint (Ollama, vLLM, OpenRouter: base URL, model, and the name of the
environment variable holding the API key, never the key itself) or an LLM version in this process.
Every pair goes through training.sft_data.add_pairs (validation, duplicates, the golden set kept out).
"""

from __future__ import annotations

import os
import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from engine.access.roles import require_admin
from engine.answering.citations import find_markers, strip_markers
from engine.answering.composer import compose_explanation
from engine.answering.golden_set import GoldenError, load_golden
from engine.answering.pipeline import explanation_run, prepare_answer
from engine.answering.prompting import MAX_EXCERPTS, explanation_opening
from engine.answering.records import load_answer
from engine.answering.verifier import grounded
from engine.llm.backends import llm_backend, runtime_problem, version_settings
from engine.llm.runtime import EndpointLlm, LlmError, resolve_llm_version
from engine.registry.candidate_cache import CandidatesUnavailable, fetch_candidates
from training.sft_data import (
    PairCandidate,
    SftDataError,
    SftDataset,
    add_pairs,
    check_name,
    create_dataset,
    get_dataset,
    update_dataset,
)

KNOWLEDGE_STYLES = ("factual", "conversational", "socratic", "problem-solving", "multiple-choice")
TASK_STYLES = ("recommendation", "refusal")
STYLES = KNOWLEDGE_STYLES + TASK_STYLES
CORRECTION_STYLE = "correction"
PROMPT_FIELDS = {"chunk", "source_id", "title"}
MAX_PER_SOURCE = 100
MAX_QUESTIONS_PER_USE_CASE = 20
TABLE_DOMAINS = ("uc", "sql")  # a table's rows are one source each table, not one per row
MIN_GROUNDED_SHARE = 0.4
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
GENERATOR_SYSTEM = "You write training examples for an assistant of an ML platform team. Follow the requested format exactly."

# Ways a user asks for a recommendation; none of them is a golden-set question (those are kept out of training).
QUESTION_TEMPLATES = (
    "Which model do you advise us to ship for {use_case}?",
    "What is the best registered model for {use_case} right now?",
    "We are about to deploy a {task} model for {use_case}. Which one should it be?",
    "Which candidate meets the acceptance criteria for {use_case}?",
    "Our team needs a production model for {use_case}: which one do you recommend?",
    "For {use_case}, which model should go into production?",
    "Pick the model to deploy for {use_case} and explain why.",
    "Which {use_case} model passes our deployment rules?",
)
REFUSAL_QUESTIONS = (
    "Which model should the call centre use to route support tickets?",
    "What model should we put behind the product recommendation widget?",
    "Which model should we deploy to rank search results on the intranet?",
    "Which model should run speech transcription for the meeting notes service?",
    "Which model should translate our user manuals into German?",
    "How do I bake sourdough bread?",
)
PARAPHRASE_PROMPT = ("Rewrite this question in other words, as a colleague would ask it. Keep its meaning and the use "
                     "case it names. Reply with the rewritten question only.\n\nQuestion: {question}")
# The asked format, and the variants small models drift to: "**Question:**", "The question is:", "Q:" / "A:" (the
# one-letter labels not for multiple choice, whose options may be written "A: ...").
_LABEL = r"^[ \t>*_#-]*(?:the\s+)?{}(?:\s+is)?[ \t*_]*:[ \t*_]*"
_QA = re.compile(_LABEL.format("question") + r"(?P<question>.+?)\s*\n" + _LABEL.format("answer") + r"(?P<answer>.+)",
                 re.S | re.I | re.M)
_QA_SHORT = re.compile(_LABEL.format("(?:question|q)") + r"(?P<question>.+?)\s*\n" + _LABEL.format("(?:answer|a)")
                       + r"(?P<answer>.+)", re.S | re.I | re.M)
_OPTION = re.compile(r"^\s*\(?([A-D])[).:]\s+\S", re.M)
_ANSWER_LETTER = re.compile(r"^\W*(?:(?i:answer)\s*(?:(?i:is))?\s*:?\s*)?\(?([A-D])\b")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Progress = Callable[[int, int, str], None]


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


def check_request(request: GenerationRequest) -> None:
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
            if not _ENV_NAME.match(request.api_key_env):
                raise SftDataError(f"{request.api_key_env!r} is not an environment variable name")
            if not os.environ.get(request.api_key_env):
                raise SftDataError(f"the environment variable {request.api_key_env} (the API key) is not set for this process")
    if request.llm_version is not None and request.llm_version not in ("base", "champion") and not request.llm_version.isdigit():
        raise SftDataError(f"LLM version {request.llm_version!r} must be 'base', 'champion' or a version number")
    if not request.uses_llm:
        if needing := [style for style in request.styles if style in KNOWLEDGE_STYLES]:
            raise SftDataError(f"the {needing[0]} style needs an LLM: give an endpoint or an LLM version")


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
    """The generator: an engine.llm.runtime backend for the endpoint, or the LLM version on the chat's own runtime
    (engine.llm.backends; transformers in place of the chat's endpoint); None when no LLM is asked for."""
    from pydantic import SecretStr

    if request.endpoint is not None:
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


# --- sampling -----------------------------------------------------------------------------------------------------


def source_group(source_id: str, document_id: int) -> str:
    """The source a chunk is sampled as part of: its table for imported rows, else its document."""
    parts = source_id.split(":")
    if parts[0] in TABLE_DOMAINS and len(parts) >= 3:
        return ":".join(parts[:2])
    return f"document:{document_id}"


def source_groups(connection) -> dict[str, list[int]]:
    """Chunk ids by source group, in chunk order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for chunk_id, source_id, document_id in connection.execute(
            "SELECT id, source_id, document_id FROM chunks ORDER BY id"):
        groups[source_group(source_id, document_id)].append(chunk_id)
    return dict(groups)


def sample_chunks(kb, per_source: int, seed: int) -> list:
    """`per_source` chunks of every source (all of a smaller one), drawn with `seed`; the same knowledge base, count
    and seed give the same chunks."""
    rng = random.Random(seed)
    chosen = []
    for group, ids in sorted(source_groups(kb.connection).items()):
        chosen += rng.sample(ids, min(per_source, len(ids)))
    return kb.chunks(chunk_ids=chosen, limit=len(chosen)) if chosen else []


# --- knowledge styles ---------------------------------------------------------------------------------------------


def knowledge_messages(request: GenerationRequest, style: str, chunk) -> list[dict]:
    prompt = request.prompt(style).format(chunk=chunk.text, source_id=chunk.source_id, title=chunk.document_title)
    return [{"role": "system", "content": GENERATOR_SYSTEM}, {"role": "user", "content": prompt}]


def parse_reply(style: str, text: str) -> tuple[str, str] | None:
    """(question, answer) from a `QUESTION:`/`ANSWER:` reply, None when it is not in that format (a multiple-choice
    question needs options A) to D) and an answer starting with one of their letters)."""
    found = (_QA if style == "multiple-choice" else _QA_SHORT).search(text or "")
    if not found:
        return None
    question, answer = (found.group(part).strip().strip('"“”').strip() for part in ("question", "answer"))
    if style == "multiple-choice":
        letters = set(_OPTION.findall(question))
        chosen = _ANSWER_LETTER.match(answer)
        if len(letters) < 4 or not chosen or chosen.group(1).upper() not in letters:
            return None
    return question, answer


def knowledge_pair(style: str, chunk, reply: str, generator: str) -> PairCandidate | str:
    """The pair a reply makes, with the chunk's marker added to the answer when the generator left it out; or why
    it makes none: 'unparsable' (not in the asked format), 'ungrounded' (its words are mostly not the excerpt's)."""
    parsed = parse_reply(style, reply)
    if parsed is None:
        return "unparsable"
    question, answer = parsed
    question = strip_markers(question).strip()
    if not grounded(f"{question}\n{answer}", chunk.text, MIN_GROUNDED_SHARE):
        return "ungrounded"
    if chunk.source_id not in find_markers(answer):
        answer = f"{answer.rstrip()} <<SRC:{chunk.source_id}>>"
    return PairCandidate(style, question, answer, generator, (chunk.id,), (chunk.source_id,))


# --- the product's own task -----------------------------------------------------------------------------------------


def template_questions(use_case: str, task: str, count: int, seed: int) -> list[str]:
    words = use_case.replace("-", " ").replace("_", " ")
    chosen = random.Random(f"{seed}:{use_case}").sample(QUESTION_TEMPLATES, min(count, len(QUESTION_TEMPLATES)))
    return [template.format(use_case=words, task=task.replace("-", " ") or "new") for template in chosen]


def paraphrase(backend, question: str, request: GenerationRequest) -> str | None:
    """The LLM's rewording of a question, or None when it fails or gives no usable question."""
    try:
        reply = "".join(backend.stream([{"role": "user", "content": PARAPHRASE_PROMPT.format(question=question)}],
                                       max_new_tokens=64, temperature=request.temperature))
    except LlmError:
        return None
    line = next((line for line in reply.strip().splitlines() if line.strip()), "")
    line = re.sub(r"^(rewritten question|question)\s*:\s*", "", line.strip(), flags=re.I).strip(" \"'")
    return line if 4 <= len(line.split()) <= 60 else None


class _Replay:
    """A backend that 'generates' a given text: runs it through the chat's own sentence-by-sentence verification."""
    version = "replay"

    def __init__(self, text: str):
        self.text = text

    def stream(self, messages, *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "", grammar=None):
        yield self.text


def verified_explanation(kb, prepared, text: str) -> bool:
    """Whether `text` is an explanation the chat would show whole: it begins with the prefilled opening and every
    sentence passes the checks the chat holds the LLM's sentences to (engine.answering.explanation.ExplanationRun: the
    verifier's, known markers, a sentence's start, grounding in the prompt, no repeats), with nothing left over."""
    opening = explanation_opening(prepared.decision)
    if not text.startswith(opening) or not text[len(opening):].strip():
        return False
    run = explanation_run(kb, prepared, _Replay(text[len(opening):]), max_new_tokens=1)
    shown = "".join(run)
    return run.result.state == "kept" and shown.strip() == text.strip()


def recommendation_pair(settings, kb, question: str, use_case: str, backend, request: GenerationRequest):
    """The pair for one question: the chat's prompt and an explanation of its decision (PairCandidate), or a drop
    reason ('use_case_mismatch' when the chat would take the question for another use case or none, or has nothing
    to explain; 'not_verified' should the explanation ever fail the chat's sentence checks)."""
    prepared = prepare_answer(settings, kb, question)
    if prepared.match.use_case != use_case or prepared.messages is None:
        return "use_case_mismatch"
    output, generator = compose_explanation(prepared.decision), "composer"
    if request.rewrite_recommendations and backend is not None:
        run = explanation_run(kb, prepared, backend, request.max_new_tokens)
        for _ in run:  # to the end: the LLM's explanation, stopped at its first failed sentence
            pass
        if run.result.state == "kept":
            output, generator = run.result.text.strip(), backend.version
    if not verified_explanation(kb, prepared, output):
        return "not_verified"
    chunk_ids = tuple(hit.chunk_id for hit in prepared.hits[:MAX_EXCERPTS])  # the excerpts the prompt shows
    return PairCandidate("recommendation", prepared.messages[1]["content"], output, generator, chunk_ids,
                         tuple(find_markers(output)), question=question)


def refusal_pairs(settings, kb) -> tuple[list[PairCandidate], int]:
    """Questions about no known use case with the chat's own refusal; and how many the chat would not refuse."""
    pairs, answered = [], 0
    for question in REFUSAL_QUESTIONS:
        prepared = prepare_answer(settings, kb, question)
        if prepared.match.use_case is not None:
            answered += 1
            continue
        pairs.append(PairCandidate("refusal", question, prepared.fallback_text, "composer"))
    return pairs, answered


def correction_pairs(connection) -> list[PairCandidate]:
    """Accepted corrections of flagged answers: the question asked and the administrator's corrected answer."""
    rows = connection.execute(
        "SELECT answer_id, correction FROM feedback_reviews WHERE state = 'accepted' ORDER BY answer_id").fetchall()
    pairs = []
    for answer_id, correction in rows:
        question = load_answer(connection, answer_id).question
        sources = (f"correction:answer-{answer_id}", *find_markers(correction))
        pairs.append(PairCandidate(CORRECTION_STYLE, question, correction, "feedback-review", (), sources))
    return pairs


def reserved_questions() -> list[str]:
    """The golden set's questions: training on them would leak the evaluation."""
    try:
        return [item.question for item in load_golden().items]
    except GoldenError:
        return []


# --- a run ----------------------------------------------------------------------------------------------------------


def plan_size(kb, request: GenerationRequest, use_cases: int) -> int:
    """The number of steps a run reports progress in."""
    knowledge = [style for style in request.styles if style in KNOWLEDGE_STYLES]
    chunks = sum(min(request.per_source, len(ids)) for ids in source_groups(kb.connection).values())
    steps = chunks * len(knowledge)
    steps += use_cases * request.questions_per_use_case if "recommendation" in request.styles else 0
    steps += 1 if "refusal" in request.styles else 0
    return steps + (1 if request.include_corrections else 0)


def generate_dataset(settings, kb, request: GenerationRequest, *, on_progress: Progress | None = None,
                     backend=None, existing: bool = False) -> SftDataset:
    """Generate the dataset `request.name` (created here unless `existing`, as for a worker whose dataset the app
    made), adding pairs as they come, so an interrupted run keeps what it made. A failure marks the dataset failed
    (with its one-line reason) and is raised again. Returns the finished dataset."""
    require_admin("generating SFT data")
    check_request(request)
    if existing:
        get_dataset(kb.connection, request.name)
    else:
        create_dataset(kb.connection, request.name, request.to_config(), state="generating")
    update_dataset(kb.connection, request.name, state="generating", error=None, pid=os.getpid())
    try:
        _generate(settings, kb, request, on_progress, backend or make_backend(settings, request))
    except Exception as error:
        update_dataset(kb.connection, request.name, state="failed", pid=None,
                       error=(str(error).strip().splitlines() or [type(error).__name__])[0][:300])
        raise
    return get_dataset(kb.connection, request.name)


def _generate(settings, kb, request: GenerationRequest, on_progress: Progress | None, backend) -> None:
    generator = backend.version if backend is not None else "composer"
    reserved = reserved_questions()
    use_cases: list[tuple[str, str]] = []
    if "recommendation" in request.styles:
        try:
            snapshot = fetch_candidates(settings)
        except CandidatesUnavailable as error:
            raise SftDataError(f"recommendation pairs need the model registry, which cannot be read: {error}") from None
        use_cases = [(use_case, snapshot.for_use_case(use_case)[0].task) for use_case in snapshot.use_cases()]
    total, done = plan_size(kb, request, len(use_cases)), 0

    def step(message: str, candidates: list[PairCandidate], drops: Counter | None = None) -> None:
        nonlocal done
        add_pairs(kb.connection, request.name, candidates, drops=dict(drops or {}), reserved_questions=reserved)
        done += 1
        update_dataset(kb.connection, request.name, progress={"done": done, "total": total, "message": message})
        if on_progress:
            on_progress(done, total, message)

    knowledge = [style for style in request.styles if style in KNOWLEDGE_STYLES]
    if knowledge:
        for chunk in sample_chunks(kb, request.per_source, request.seed):
            for style in knowledge:
                drops, candidates = Counter(), []
                try:
                    reply = "".join(backend.stream(knowledge_messages(request, style, chunk),
                                                   max_new_tokens=request.max_new_tokens, temperature=request.temperature))
                except LlmError:
                    drops["generation_failed"] += 1
                else:
                    pair = knowledge_pair(style, chunk, reply, generator)
                    if isinstance(pair, str):
                        drops[pair] += 1
                    else:
                        candidates.append(pair)
                step(f"{style} pair from chunk {chunk.id} ({chunk.source_id})", candidates, drops)
    for use_case, task in use_cases:
        for template in template_questions(use_case, task, request.questions_per_use_case, request.seed):
            drops, candidates = Counter(), []
            reworded = paraphrase(backend, template, request) if request.paraphrase and backend is not None else None
            for question in [reworded] * bool(reworded) + [template]:  # the template when the rewording is unusable
                pair = recommendation_pair(settings, kb, question, use_case, backend, request)
                if not isinstance(pair, str):
                    candidates.append(pair)
                    break
                drops[pair] += 1
            step(f"recommendation for {use_case}: {question}", candidates, drops)
    if "refusal" in request.styles:
        pairs, answered = refusal_pairs(settings, kb)
        step("refusals", pairs, Counter({"use_case_mismatch": answered}))
    if request.include_corrections:
        step("accepted feedback corrections", correction_pairs(kb.connection))
    update_dataset(kb.connection, request.name, state="ready", pid=None,
                   progress={"done": total, "total": total, "message": "finished"})
