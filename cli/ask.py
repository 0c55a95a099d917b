"""`deploywise ask QUESTION [--json]`: the chat's answer in a terminal, the decision first."""

from __future__ import annotations

from cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, print_result
from engine.answering.citations import strip_markers
from engine.answering.explanation import explanation_note
from engine.answering.pipeline import QuestionError, ask
from engine.answering.records import answer_label, answer_times
from engine.knowledge.workspace import open_knowledge_base
from engine.llm.backends import llm_backend


def register(commands) -> None:
    command = commands.add_parser("ask", help="ask which model to deploy; prints the verified recommendation")
    command.add_argument("question")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=_ask)


def _ask(args, settings) -> int:
    """The decision is printed as soon as it is ready, then the LLM's explanation sentence by sentence (--json: all
    at the end)."""
    if not args.question.strip():
        raise UsageError("the question is empty")

    def show_decision(prepared, answer_id) -> None:
        print(strip_markers(prepared.fallback_text) + "\n", flush=True)

    def show_sentence(sentence: str) -> None:
        print(strip_markers(sentence), end="", flush=True)

    kb = open_knowledge_base(settings)
    try:
        answer = ask(settings, kb, llm_backend(settings), args.question,
                     on_decision=None if args.json else show_decision, on_sentence=None if args.json else show_sentence)
    except QuestionError as error:
        raise UsageError(str(error)) from None
    finally:
        kb.connection.close()
    lines = ["", ""] if answer.explanation and answer.explanation.text else [""]
    lines += [f"[{c.number}] {c.display_name}" + (f" <{c.url}>" if c.url else "") + f" ({c.source_id})" for c in answer.citations]
    lines += [f"note: {notice}" for notice in answer.notices]
    state = answer.explanation.state if answer.explanation else "none"
    if note := explanation_note(state, answer.explanation.problems if answer.explanation else ()):
        lines.append(f"note: {note}")
    lines.append(f"({answer_label('deterministic', state, answer.llm_version)}, "
                 f"{answer_times(answer.timings)}, answer #{answer.record_id})")
    print_result(args, answer.to_dict(), "\n".join(lines))
    return EXIT_OK if answer.prepared.decision is not None else EXIT_PARTIAL
