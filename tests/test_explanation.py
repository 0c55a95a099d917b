"""The LLM's explanation, sentence by sentence (engine.answering.explanation): where sentences end while text streams in, and
which sentences are shown, on replies cut into pieces anywhere (a real stream cuts markers and numbers too)."""

from __future__ import annotations

import pytest

from engine.answering.explanation import MAX_SENTENCE_CHARS, ExplanationRun, split_sentences
from engine.answering.prompting import build_messages, explanation_opening
from engine.registry.candidates import Candidate
from engine.rules.criteria import AcceptanceCriterion, UseCasePolicy
from engine.rules.decision import decide

CRITERIA = [AcceptanceCriterion("ts", "latency_p95_ms", "<=", 10, True, "criteria:ts")]
POLICY = UseCasePolicy("ts", "roc_auc", None, "criteria:ts")
CANDIDATES = [Candidate(name, "1", None, "ts", "binary-classification", family, "", "run",
                        {"roc_auc": auc, "latency_p95_ms": latency}, f"registry:{name}", None)
              for name, family, auc, latency in (("ts-linear", "linear", 0.91, 3.0), ("ts-forest", "random-forest", 0.95, 40.0))]
DECISION = decide("ts", CANDIDATES, CRITERIA, POLICY)
OFFERED = {"registry:ts-linear", "registry:ts-forest", "criteria:ts"}


class ScriptedLlm:
    """An LLM whose reply is given, streamed in pieces of `size` characters (1: every character its own piece)."""

    version = "scripted"

    def __init__(self, reply: str, size: int):
        self.reply, self.size, self.calls = reply, size, []

    def stream(self, messages, *, max_new_tokens, temperature=0.0, prefill="", grammar=None):
        self.calls.append({"prefill": prefill, "grammar": grammar})
        for start in range(0, len(self.reply), self.size):
            yield self.reply[start:start + self.size]


def explain(kb, reply: str, size: int = 1):
    backend = ScriptedLlm(reply, size)
    run = ExplanationRun(kb.connection, DECISION, CANDIDATES, OFFERED, build_messages("Which model for ts?", DECISION, []),
                         backend, 200)
    return list(run), run.result, backend


def test_sentences_end_after_their_marker_and_wait_for_one_that_may_follow():
    assert split_sentences("It is fast <<SRC:a>>. Next one") == (["It is fast <<SRC:a>>."], " Next one")
    assert split_sentences("Its AUC is 0.91. <<SRC:a>> Then") == (["Its AUC is 0.91. <<SRC:a>>"], " Then")
    assert split_sentences("It is fast. ") == ([], "It is fast. ")  # a marker may still come
    assert split_sentences("It is fast. <<SR") == ([], "It is fast. <<SR")
    assert split_sentences("It is fast. ", final=True) == (["It is fast. "], "")
    assert split_sentences("One <<SRC:a>>.\nTwo <<SRC:b>>.\n") == (["One <<SRC:a>>.", "\n", "Two <<SRC:b>>."], "\n")
    assert split_sentences("unfinished", final=True) == ([], "unfinished")


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_a_faithful_reply_is_shown_whole_however_it_is_cut(kb, size):
    reply = (" it passes every hard criterion <<SRC:criteria:ts>>. ts-forest fails latency_p95_ms <= 10 "
             "with 40.00 ms <<SRC:criteria:ts>>.")
    shown, result, backend = explain(kb, reply, size)
    assert backend.calls[0]["prefill"] == explanation_opening(DECISION) and '"criteria:ts"' in backend.calls[0]["grammar"]
    assert (result.state, result.sentences_kept, result.problems) == ("kept", 2, ())
    assert "".join(shown) == result.text == result.draft == explanation_opening(DECISION) + reply


@pytest.mark.parametrize("reply, state, problem", [
    (" it is fast <<SRC:criteria:ts>>. <<SRC:criteria:ts>> is the one to choose.", "partial", "does not start as one"),
    (" it is fast <<SRC:criteria:ts>>. It was trained by researchers at Harvard Medical School on clinical trials "
     "<<SRC:criteria:ts>>.", "partial", "says things its input does not"),
    (" its ROC AUC is 0.99 <<SRC:criteria:ts>>.", "dropped", "0.99"),
    (" it is fast <<SRC:criteria:ts>>. Deploy ts-forest instead <<SRC:registry:ts-forest>>.", "partial", "rules chose ts-linear"),
    (" it is fast <<SRC:criteria:nowhere>>.", "dropped", "unknown sources: criteria:nowhere"),
    (" it is the one to choose because it is the one to choose" * 20, "dropped", f"more than {MAX_SENTENCE_CHARS} characters"),
])
def test_the_first_sentence_that_fails_ends_the_explanation(kb, reply, state, problem):
    shown, result, _ = explain(kb, reply)
    assert result.state == state and any(problem in p for p in result.problems), result.problems
    assert "".join(shown) == result.text and len(shown) == result.sentences_kept == (1 if state == "partial" else 0)
    assert result.draft.startswith(explanation_opening(DECISION))


def test_a_repeated_sentence_ends_the_explanation_without_blame_and_layout_is_not_shown(kb):
    reply = (" it is fast <<SRC:criteria:ts>>.\nWhy:\nIt passes every hard criterion <<SRC:criteria:ts>>.\n"
             "It passes every hard criterion <<SRC:registry:ts-linear>>.")  # the same sentence, citing anew
    shown, result, _ = explain(kb, reply, 4)
    assert (result.state, result.sentences_kept, result.problems) == ("kept", 2, ())
    assert "Why:" not in result.text and len(shown) == 2


def test_an_unfinished_last_sentence_is_not_shown(kb):
    shown, result, _ = explain(kb, " it is fast <<SRC:criteria:ts>>. It also passes every hard")
    assert (result.state, result.sentences_kept) == ("kept", 1) and "also" not in "".join(shown)
