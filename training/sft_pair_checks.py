"""Whether a generated SFT pair may train a model: its lengths, a refusal, garbled text, its markers, near-duplicates.

Separate from the datasets that store pairs (training.sft_data) because every pair is held to the same checks
wherever it comes from (a generator, an accepted correction, an administrator's edit), and the reasons a pair is
dropped are counted and shown by name; these rules change on their own, the storage does not.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from engine.answering.citations import find_markers
from engine.knowledge.sources import resolve

MIN_INSTRUCTION_CHARS, MAX_INSTRUCTION_CHARS = 10, 16_000  # a recommendation instruction is the chat's whole prompt
MIN_OUTPUT_CHARS, MAX_OUTPUT_CHARS = 20, 4_000
MIN_WORD_SHARE = 0.6  # below this share of word-like tokens a text is garbled
MAX_TRIGRAM_REPEATS = 4  # a word trigram repeated this often is a generation loop
NEAR_DUPLICATE = 0.85  # Jaccard similarity of question word sets from which two questions are the same
STYLES_WITHOUT_MARKERS = ("refusal",)  # the chat's refusal cites nothing

# Why a generation is dropped; the dataset counts each.
DROP_REASONS = {
    "generation_failed": "the LLM call failed (HTTP error, broken or empty stream)",
    "unparsable": "the reply is not in the requested format",
    "ungrounded": "most of the pair's words are not the excerpt's (a question about something else)",
    "empty": "empty instruction or output",
    "too_short": "instruction or output too short",
    "too_long": "instruction or output too long",
    "refusal": "the generator refused",
    "garbled": "mostly non-words or a repetition loop",
    "unknown_marker": "a <<SRC>> marker the source registry does not know",
    "duplicate": "same or nearly the same question as a pair already in the dataset",
    "golden_overlap": "same or nearly the same question as an evaluation (golden set) question",
    "use_case_mismatch": "the chat would take the question for another use case (or, for a refusal, for a use case)",
    "not_verified": "the answer does not pass the chat's verifier",
}

_REFUSAL = re.compile(r"^\W*(i cannot|i can't|i can not|i'm sorry|i am sorry|as an ai|i am unable|i'm unable|"
                      r"i do not have access|i don't have access|sorry, but)", re.I)
_WORD = re.compile(r"^[(\"'\[]*[^\W_][\w.:'’/-]*?[)\]\"'.,;:!?%]*$")  # words, numbers, ids (latency_p95_ms), J.P.
_PUNCTUATION = re.compile(r"^[^\w]+$")
_MARKER_TEXT = re.compile(r"<<[^<>\n]*>>")


@dataclass(frozen=True)
class PairCandidate:
    """A generated pair before validation. `question` is what duplicates are judged on (for a recommendation pair,
    whose instruction is the chat's whole prompt, the user's question); it defaults to the instruction."""

    style: str
    instruction: str
    output: str
    generator: str
    chunk_ids: tuple[int, ...] = ()
    source_ids: tuple[str, ...] = ()
    question: str | None = None

    @property
    def judged_question(self) -> str:
        return self.question if self.question is not None else self.instruction


def normalized(text: str) -> str:
    """Text as duplicates are judged: markers removed, lowercase, words only, single spaces."""
    text = _MARKER_TEXT.sub(" ", text or "").lower()
    return " ".join(re.findall(r"[a-z0-9]+", text.replace("tumour", "tumor")))


def normalized_words(text: str) -> frozenset[str]:
    """The words of a text as near-duplicates are judged (those of `normalized`)."""
    return frozenset(normalized(text).split())


def similar(a: frozenset[str], b: frozenset[str]) -> bool:
    """Near-duplicate questions: Jaccard similarity of their word sets of at least NEAR_DUPLICATE."""
    if not a or not b:
        return a == b
    return len(a & b) / len(a | b) >= NEAR_DUPLICATE


def garbled(text: str) -> bool:
    """Mostly non-words (a broken model, a wrong tokenizer) or a generation loop (one word trigram again and again)."""
    tokens = [token for token in _MARKER_TEXT.sub(" ", text).split() if not _PUNCTUATION.match(token)]
    if not tokens:
        return False
    if sum(1 for token in tokens if _WORD.match(token)) / len(tokens) < MIN_WORD_SHARE:
        return True
    words = [token.lower().strip(".,;:!?") for token in tokens]
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(trigrams) and trigrams.most_common(1)[0][1] >= MAX_TRIGRAM_REPEATS


def pair_problem(connection, candidate: PairCandidate) -> str | None:
    """Why this pair must not train a model (a DROP_REASONS key), or None. Its markers must all be known to the
    source registry; knowledge and recommendation outputs must carry at least one."""
    instruction, output = (candidate.instruction or "").strip(), (candidate.output or "").strip()
    if not instruction or not output:
        return "empty"
    if len(instruction) < MIN_INSTRUCTION_CHARS or len(output) < MIN_OUTPUT_CHARS:
        return "too_short"
    if len(instruction) > MAX_INSTRUCTION_CHARS or len(output) > MAX_OUTPUT_CHARS:
        return "too_long"
    if _REFUSAL.match(output) and candidate.style != "refusal":
        return "refusal"
    if garbled(output) or garbled(candidate.judged_question):
        return "garbled"
    markers = find_markers(output)
    if candidate.style not in STYLES_WITHOUT_MARKERS and not markers:
        return "unknown_marker"
    if set(markers) - set(resolve(connection, markers)):
        return "unknown_marker"
    return None
