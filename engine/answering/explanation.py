"""The LLM's explanation of a decision already shown: sentence by sentence, each shown only once it is verified.

Nothing shown is taken back: the LLM's reply is cut into sentences as it streams, and a sentence reaches the
user only after `engine.answering.verifier.verify_sentence` passed it. The first sentence that fails ends the explanation
(generation stops there); what was already shown stays, and one line says why the rest was dropped. A sentence
that repeats an earlier one ends it too, without blame: small models loop. Everything the LLM wrote is kept as the
draft, for admins.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from engine.answering.citations import find_markers, strip_markers
from engine.answering.prompting import explanation_grammar, explanation_opening
from engine.answering.verifier import content_words, verify_sentence
from engine.core.errors import without_credentials
from engine.knowledge.sources import resolve
from engine.llm.backend_contract import LlmError
from engine.rules.decision import Decision

EXPLANATION_STATES = ("none", "pending", "kept", "partial", "dropped", "failed")
STATE_LABELS = {
    "kept": "Explained by the LLM, every sentence verified",
    "partial": "Explained in part by the LLM: the verified sentences are shown, the rest was dropped",
    "dropped": "The LLM's explanation was dropped: it did not pass verification",
    "failed": "The LLM could not explain the decision",
    "pending": "The LLM's explanation was interrupted",
}
MAX_SENTENCE_CHARS = 400  # a longer one is a small model rambling: stopped rather than generated to the token limit
# A sentence may use words its prompt does not (a paraphrase: "fast" for a latency), but not many: a 135M model's
# inventions ("trained at Harvard Medical School on clinical trials") bring several at once.
MAX_INVENTED_WORDS = 2
GROUNDED_SHARE = 0.8  # beyond MAX_INVENTED_WORDS, at least this share of its content words must come from the prompt
_END = re.compile(r"[.!?](?=\s)|\n")  # where a sentence may end (a decimal point has no space after it)
_MARKER_AFTER = re.compile(r"[ \t]*<<SRC:[^<>\s]*>>[.!?]?")  # "... 0.97. <<SRC:x>>": the marker after the full stop


@dataclass
class Explanation:
    state: str = "pending"
    text: str = ""  # what was shown: the verified sentences, the first beginning with the prefilled opening
    draft: str = ""  # the opening and everything the LLM wrote, for admins
    problems: tuple[str, ...] = ()  # why the rest was dropped, or why the LLM failed
    sentences_kept: int = 0
    generation_ms: float | None = None

    def verification(self) -> dict:
        return {"ok": self.state == "kept", "problems": list(self.problems), "sentences_kept": self.sentences_kept,
                "markers": find_markers(self.text)}


def explanation_note(state: str, problems) -> str:
    """The one line under an explanation not kept whole: why the rest was dropped, that it failed or was cut."""
    if state not in ("pending", "partial", "dropped", "failed"):
        return ""
    return STATE_LABELS[state] + (f" ({'; '.join(list(problems)[:2])})." if problems and state != "pending" else ".")


def split_sentences(text: str, *, final: bool = False) -> tuple[list[str], str]:
    """(the complete sentences at the start of `text`, each with its marker and spacing, the unfinished rest).

    A sentence ends at . ! ? before a space, or at a line break; a marker right after the full stop still belongs
    to it, so an end followed only by spaces, or by a marker still being written, waits for more text. With
    `final` (the whole text is there) a last sentence ended by the text's end counts too."""
    sentences, start = [], 0
    while end := _END.search(text, start):
        cut, rest = end.end(), text[end.end():]
        marker = _MARKER_AFTER.match(rest)
        if marker:
            cut += marker.end()
        elif _may_become_marker(rest.lstrip(" \t")):
            break
        sentences.append(text[start:cut])
        start = cut
    rest = text[start:]
    if final and re.search(r"(>>|[.!?])\s*$", rest):
        return [*sentences, rest], ""
    return sentences, rest


def _may_become_marker(rest: str) -> bool:
    return "<<SRC:".startswith(rest) or (rest.startswith("<<SRC:") and ">>" not in rest)


class ExplanationRun:
    """Iterate to get the verified sentences as they come; `result` holds the outcome once iteration ends."""

    def __init__(self, connection, decision: Decision, candidates, offered: set[str], messages: list[dict], backend,
                 max_new_tokens: int):
        self._connection, self._decision, self._candidates = connection, decision, tuple(candidates)
        self._offered, self._messages, self._backend, self._max_new_tokens = offered, messages, backend, max_new_tokens
        self._reference_words = content_words("\n".join(message["content"] for message in messages))
        self.result = Explanation()

    def __iter__(self) -> Iterator[str]:
        result, started = self.result, time.perf_counter()
        opening = explanation_opening(self._decision)
        result.draft, pending, seen = opening, opening, set()
        pieces = self._backend.stream(self._messages, max_new_tokens=self._max_new_tokens, prefill=opening,
                                      grammar=explanation_grammar(self._offered))
        try:
            for piece in pieces:
                result.draft += piece
                complete, pending = split_sentences(pending + piece)
                for sentence in complete:
                    verdict = self._verdict(sentence, seen)
                    if verdict == "stop":
                        return
                    if verdict == "show":
                        yield sentence
                if len(pending) > MAX_SENTENCE_CHARS:
                    result.state = "partial" if result.sentences_kept else "dropped"
                    result.problems = (f"it wrote a sentence of more than {MAX_SENTENCE_CHARS} characters",)
                    return
            for sentence in split_sentences(pending, final=True)[0]:  # ended by the end of the reply; an unfinished one is not shown
                verdict = self._verdict(sentence, seen)
                if verdict == "stop":
                    return
                if verdict == "show":
                    yield sentence
            result.state = "kept" if result.sentences_kept else "dropped"
            if not result.sentences_kept:
                result.problems = ("it wrote no complete sentence",)
        except LlmError as error:
            result.state, result.problems = "failed", (without_credentials(str(error)),)  # shown to every visitor
        finally:
            pieces.close()  # stops the generation of a reply that is no longer read
            result.generation_ms = round((time.perf_counter() - started) * 1000, 1)

    def _verdict(self, sentence: str, seen: set[str]) -> str:
        """'show' a verified sentence, 'skip' layout (a blank line, a bare heading), 'stop' at a failure or a repeat."""
        result, words = self.result, " ".join(strip_markers(sentence).split()).lower()  # a repeat may cite anew
        if not re.search(r"[a-z0-9]", words) or re.fullmatch(r"[\w\s]{1,40}:", words):
            return "skip"
        if words in seen:
            result.state = "kept" if result.sentences_kept else "dropped"
            result.problems = () if result.sentences_kept else ("it repeated itself",)
            return "stop"
        known = self._offered | set(resolve(self._connection, find_markers(sentence)))
        problems = list(verify_sentence(sentence, self._decision, self._candidates, known).problems)
        if not self._starts_a_sentence(sentence.lstrip()):
            problems.append("it writes a sentence that does not start as one (a marker or a lowercase word first)")
        content = content_words(sentence)
        invented = content - self._reference_words
        if len(invented) > MAX_INVENTED_WORDS and len(invented) > (1 - GROUNDED_SHARE) * len(content):
            problems.append(f"it says things its input does not ({', '.join(sorted(invented)[:4])}...)")
        if problems:
            result.state = "partial" if result.sentences_kept else "dropped"
            result.problems = tuple(problems)
            return "stop"
        seen.add(words)
        result.text += sentence
        result.sentences_kept += 1
        return "show"

    def _starts_a_sentence(self, sentence: str) -> bool:
        """A capital, a digit or a candidate's name first: small models continue after a marker as if it were the
        subject ("... model. <<SRC:x>> is the one to choose ...")."""
        return bool(re.match(r"[A-Z0-9]", sentence)) or any(sentence.startswith(c.name) for c in self._candidates)
