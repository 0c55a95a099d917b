"""SFT pairs that teach the knowledge base: its chunks, sampled evenly across sources, asked about in a style.

Knowledge styles (factual, conversational, socratic, problem-solving, multiple-choice): chunks sampled evenly
across sources (each document, and each Unity Catalog or SQL table whose rows were imported, is one source;
`per_source` chunks of each, drawn with a seed, so a run is reproducible) are sent to an LLM with the style's
prompt, which asks for a `QUESTION:` / `ANSWER:` reply citing the chunk's `<<SRC:...>>` marker (added when the
generator leaves it out). Each pair is kept with the chunk and source ids it came from.

Separate from the product's own task pairs (training.sft_task_pairs) because these come from an LLM's free reply,
parsed and held to its excerpt, while those are made by the chat's own pipeline.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from engine.answering.citations import find_markers, strip_markers
from engine.answering.verifier import grounded
from engine.knowledge.sources import TABLE_DOMAINS  # a table's rows are one source each table, not one per row
from training.sft_generation_request import GenerationRequest
from training.sft_pair_checks import PairCandidate

MIN_GROUNDED_SHARE = 0.4
GENERATOR_SYSTEM = "You write training examples for an assistant of an ML platform team. Follow the requested format exactly."
# The asked format, and the variants small models drift to: "**Question:**", "The question is:", "Q:" / "A:" (the
# one-letter labels not for multiple choice, whose options may be written "A: ...").
_LABEL = r"^[ \t>*_#-]*(?:the\s+)?{}(?:\s+is)?[ \t*_]*:[ \t*_]*"
_QA = re.compile(_LABEL.format("question") + r"(?P<question>.+?)\s*\n" + _LABEL.format("answer") + r"(?P<answer>.+)",
                 re.S | re.I | re.M)
_QA_SHORT = re.compile(_LABEL.format("(?:question|q)") + r"(?P<question>.+?)\s*\n" + _LABEL.format("(?:answer|a)")
                       + r"(?P<answer>.+)", re.S | re.I | re.M)
_OPTION = re.compile(r"^\s*\(?([A-D])[).:]\s+\S", re.M)
_ANSWER_LETTER = re.compile(r"^\W*(?:(?i:answer)\s*(?:(?i:is))?\s*:?\s*)?\(?([A-D])\b")


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
