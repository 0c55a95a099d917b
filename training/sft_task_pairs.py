"""SFT pairs of the product's own task: recommendations, refusals and accepted feedback corrections.

- recommendation: questions about each use case of the registry, phrased several ways (fixed templates, each
  paraphrased by the LLM when one is given and the paraphrase still names the use case). The instruction is
  exactly the user message the chat sends its LLM (engine.answering.pipeline.prepare_answer; the SFT recipe adds the
  system prompt), the output the explanation of the decision the chat asks its LLM for, beginning with the
  opening the chat prefills (engine.answering.prompting.explanation_opening): the one composed from the decision
  (engine.answering.composer.compose_explanation), or, when `rewrite_recommendations` is on, the LLM's own explanation
  when the chat would have shown every sentence of it. Either is held to the chat's sentence checks;
- refusal: questions about no known use case, answered with the chat's own refusal text;
plus accepted feedback corrections (style "correction": the question and the corrected answer).

Separate from the knowledge pairs (training.sft_knowledge_pairs) because these are made by the chat's own pipeline
(routing, decision, composed answer, verifier), so that what the model learns is exactly what the chat asks of it.
"""

from __future__ import annotations

import random
import re

from engine.answering.citations import find_markers
from engine.answering.composer import compose_explanation
from engine.answering.pipeline import explanation_run, prepare_answer
from engine.answering.prompting import MAX_EXCERPTS, explanation_opening
from engine.answering.records import load_answer
from engine.llm.backend_contract import LlmError
from training.sft_generation_request import GenerationRequest
from training.sft_pair_checks import PairCandidate

CORRECTION_STYLE = "correction"

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
