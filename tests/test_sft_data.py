"""SFT data on the real demo workspace (knowledge base, sqlite MLflow registry, embedder): generation over real HTTP
from a local OpenAI-compatible server whose replies each test chooses, the in-process tiny Llama, the chat's own
recommendation prompt and verifier, validation and drops by reason, duplicates, corrections, review, a
deterministic export, refused requests that change nothing, the out-of-process worker, and access control."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from openai_server import OpenAIServer, faithful_answer
from streamlit.testing.v1 import AppTest

from cli.main import main as cli_main
from engine.answering.composer import compose_explanation
from engine.answering.explanation import split_sentences
from engine.answering.feedback_review import accept
from engine.answering.golden_set import load_golden
from engine.answering.pipeline import offered_source_ids, prepare_answer
from engine.answering.prompting import MAX_EXCERPTS, SYSTEM_PROMPT, explanation_opening
from engine.answering.records import AnswerRecord, save_answer, save_feedback
from engine.answering.verifier import verify_sentence
from engine.core.settings import load_settings
from engine.knowledge.sources import resolve
from engine.knowledge.workspace import open_knowledge_base
from engine.llm.backends import llm_backend
from training.sft_data import (
    SftDataError,
    accept_all,
    add_pairs,
    create_dataset,
    edit_pair,
    get_dataset,
    list_datasets,
    list_pairs,
    review_pairs,
    update_dataset,
)
from training.sft_export import export_dataset
from training.sft_generation import generate_dataset
from training.sft_generation_request import KNOWLEDGE_STYLES, GenerationRequest, check_backend, make_backend
from training.sft_knowledge_pairs import parse_reply, sample_chunks, source_group, source_groups
from training.sft_pair_checks import PairCandidate
from training.sft_task_pairs import verified_explanation
from training.sft_worker import cancel_generation, refreshed, start_generation


@pytest.fixture(scope="module")
def workspace(demo_copy):
    """This module's copy of the demo workspace; each test makes datasets of its own name in it."""
    return demo_copy()


@pytest.fixture
def settings(workspace):
    return load_settings(workspace=workspace, llm_max_retries=0, llm_timeout_s=10)


@pytest.fixture
def kb(settings):
    knowledge_base = open_knowledge_base(settings)
    yield knowledge_base
    knowledge_base.connection.close()


def sft_rows(connection) -> dict:
    return {table: [tuple(row) for row in connection.execute(f"SELECT * FROM {table} ORDER BY 1")]
            for table in ("sft_datasets", "sft_pairs")}


def endpoint(server: OpenAIServer, name: str, styles=KNOWLEDGE_STYLES, **fields) -> GenerationRequest:
    return GenerationRequest(name=name, styles=tuple(styles), per_source=1, endpoint=server.url, model=server.model,
                             include_corrections=False, **fields)


def _excerpt(prompt: str) -> tuple[str, str, list[str]]:
    """The source id, a short hash and the first words of the excerpt a generation prompt carries."""
    source_id = re.search(r"cited as <<SRC:([^>]+)>>", prompt).group(1)
    excerpt = prompt.split("<<<", 1)[1].split(">>>", 1)[0]
    return source_id, hashlib.sha256(excerpt.encode()).hexdigest()[:6], re.findall(r"[A-Za-z]{4,}", excerpt)[:12]


def styled_reply(messages: list[dict]) -> str:
    """One behaviour per style, each about the excerpt it was given: a good pair, a good pair without its marker, a
    refusal, garbled text, and a well-formed multiple-choice pair citing a source the registry does not know."""
    prompt = messages[-1]["content"]
    if "<<<" not in prompt:  # the check that the endpoint answers, before a run starts
        return "ready"
    source_id, passage, words = _excerpt(prompt)
    about, says = " ".join(words[:6]), " ".join(words)
    if "factual question" in prompt:
        return (f"QUESTION: What does {source_id} say about {about} in passage {passage}?\n"
                f"ANSWER: It says: {says} <<SRC:{source_id}>>.")
    if "casually" in prompt:
        return f"QUESTION: Hey, quick one about passage {passage}: what is meant by {about}?\nANSWER: Sure! In short: {says}."
    if "guides them" in prompt:
        return f"QUESTION: Why does {says} matter?\nANSWER: I cannot help with that request, sorry."
    if "practical problem" in prompt:
        return f"QUESTION: How do we apply {about}?\nANSWER: " + " ".join(["qz#x", "9@@", "%%k", "w!!z"] * 6)
    options = "\n".join(f"{letter}) {word}" for letter, word in zip("ABCD", words, strict=False))
    return (f"QUESTION: Which of these does passage {passage} name first?\n{options}\n"
            f"ANSWER: A) {words[0]}, as the excerpt says: {says} <<SRC:doc:no-such-file>>.")


def test_chunks_are_sampled_evenly_across_sources_and_reproducibly(kb):
    groups = source_groups(kb.connection)
    assert len(groups) == 10  # the ten demo documents
    first, again = sample_chunks(kb, 2, seed=7), sample_chunks(kb, 2, seed=7)
    assert [c.id for c in first] == [c.id for c in again]
    per_group = {}
    for chunk in first:
        key = source_group(chunk.source_id, chunk.document_id)
        per_group[key] = per_group.get(key, 0) + 1
    assert per_group == {key: min(2, len(ids)) for key, ids in groups.items()}
    assert {c.id for c in sample_chunks(kb, 2, seed=8)} != {c.id for c in first}
    # imported table rows are sampled per table, not per row
    assert source_group("uc:main.gold.eval_notes:17", 3) == source_group("uc:main.gold.eval_notes:18", 4) == "uc:main.gold.eval_notes"
    assert source_group("sql:clinic.notes:2", 9) == "sql:clinic.notes"
    assert source_group("criteria:tumor-screening", 5) == "document:5"


def test_knowledge_styles_over_http_keep_their_chunk_and_count_what_they_drop(settings, kb):
    with OpenAIServer(reply=styled_reply) as server:
        dataset = generate_dataset(settings, kb, endpoint(server, "styles-http"))
    sampled = len(source_groups(kb.connection))
    assert len(server.requests) == sampled * len(KNOWLEDGE_STYLES)
    assert dataset.state == "ready"
    assert dataset.styles == {"conversational": sampled, "factual": sampled}
    assert dataset.drops == {"garbled": sampled, "refusal": sampled, "unknown_marker": sampled}
    assert dataset.pending == 2 * sampled and dataset.accepted == 0
    for pair in list_pairs(kb.connection, "styles-http"):
        chunk = kb.chunk(pair.chunk_ids[0])
        assert pair.source_ids == [chunk.source_id]
        assert pair.output.count(f"<<SRC:{chunk.source_id}>>") == 1  # asked for, or added when left out
        assert pair.generator == f"openai:127.0.0.1:{server.url.split(':')[2].split('/')[0]}/tiny-chat"
        assert set(resolve(kb.connection, [chunk.source_id])) == {chunk.source_id}
        assert "<<SRC" not in pair.question
    body = server.requests[0].body
    assert body["model"] == "tiny-chat" and body["stream"] is True and body["max_tokens"] == 320


@pytest.mark.parametrize("reply, factual, multiple_choice", [
    ("QUESTION: What gates a release?\nANSWER: The hard criteria.", ("What gates a release?", "The hard criteria."), None),
    ("**Question:** What gates a release?\n**Answer:** The hard criteria.", ("What gates a release?", "The hard criteria."), None),
    ('The question is: "What gates a release?"\n\nThe answer is: "The hard criteria."',
     ("What gates a release?", "The hard criteria."), None),
    ("Q: What gates a release?\nA: The hard criteria.", ("What gates a release?", "The hard criteria."), None),
    ("Q: What gates a release?\n\nA:", None, None),
    ("QUESTION: Which gates?\nA) soft\nB) hard\nC) none\nD) all\nANSWER: B) hard",
     ("Which gates?\nA) soft\nB) hard\nC) none\nD) all", "B) hard"), ("Which gates?\nA) soft\nB) hard\nC) none\nD) all", "B) hard")),
    ("QUESTION: Which gates?\nA) soft\nB) hard\nANSWER: B) hard", ("Which gates?\nA) soft\nB) hard", "B) hard"), None),
    ("QUESTION: Which gates?\nA) soft\nB) hard\nC) none\nD) all\nANSWER: E, none of them", ..., None),
    ("The excerpt is about a platform that predicts diabetes progression.", None, None),
], ids=["asked", "bold", "the-question-is", "q-a", "no-answer", "choices", "two-options", "bad-letter", "prose"])
def test_replies_are_parsed_in_the_asked_format_and_its_common_variants(reply, factual, multiple_choice):
    if factual is not ...:
        assert parse_reply("factual", reply) == factual
    assert parse_reply("multiple-choice", reply) == multiple_choice


@pytest.mark.parametrize("reply, failure, reason", [
    ("Here is a nice question about the excerpt, and its answer.", None, "unparsable"),
    ("QUESTION: What is the capital of France?\nANSWER: Paris is the capital and largest city of France.", None, "ungrounded"),
    ("unused", "empty", "generation_failed"),
    ("unused", "garbled", "generation_failed"),
    ("unused", "http_500", "generation_failed"),
], ids=["unformatted", "off-topic", "empty-stream", "garbled-stream", "http-500"])
def test_bad_generations_are_dropped_and_counted(settings, kb, reply, failure, reason):
    with OpenAIServer(reply=reply) as server:
        server.failure = failure
        dataset = generate_dataset(settings, kb, endpoint(server, f"bad-{reason}-{failure or 'none'}", styles=["factual"]))
    assert dataset.state == "ready" and dataset.pairs == 0
    assert dataset.drops == {reason: len(source_groups(kb.connection))}


def test_the_same_question_twice_is_kept_once(settings, kb):
    def same(messages):  # one question whatever the excerpt, answered from it
        prompt = messages[-1]["content"]
        return "ready" if "<<<" not in prompt else (
            f"QUESTION: Who signs off a change to the selection rules?\nANSWER: {' '.join(_excerpt(prompt)[2])}.")

    with OpenAIServer(reply=same) as server:
        dataset = generate_dataset(settings, kb, endpoint(server, "dedup", styles=["factual"]))
    assert (dataset.pending, dataset.drops) == (1, {"duplicate": len(source_groups(kb.connection)) - 1})
    create_dataset(kb.connection, "near-dupes", {})
    outcome = add_pairs(kb.connection, "near-dupes", [
        PairCandidate("factual", "Which hard latency budget applies to the tumour screening plug-in at p95?",
                      "Ten milliseconds <<SRC:criteria:tumor-screening>>.", "test"),
        PairCandidate("factual", "which hard latency budget applies to the TUMOR screening plug-in at p95",
                      "10 ms <<SRC:criteria:tumor-screening>>.", "test"),
        PairCandidate("factual", "Which hard latency budget applies to the tumour screening plug-in at p95 today?",
                      "Ten milliseconds <<SRC:criteria:tumor-screening>>.", "test"),
        PairCandidate("factual", "Who approved the MLP rejection for digit recognition?",
                      "J.P. and M.K. approved it <<SRC:decisions:log>>.", "test"),
        PairCandidate("factual", "Which model should I deploy for tumour screening??",
                      "The logistic regression <<SRC:criteria:tumor-screening>>.", "test"),
    ], reserved_questions=[item.question for item in load_golden().items])
    assert outcome.added == 2
    assert outcome.drops == {"duplicate": 2, "golden_overlap": 1}


@pytest.mark.parametrize("candidate, reason", [
    (PairCandidate("factual", "   ", "An answer <<SRC:decisions:log>>.", "t"), "empty"),
    (PairCandidate("factual", "Why?", "Because of the log <<SRC:decisions:log>>.", "t"), "too_short"),
    (PairCandidate("factual", "What does the log say?", "word " * 1000 + "<<SRC:decisions:log>>", "t"), "too_long"),
    (PairCandidate("factual", "What does the log say?", "As an AI, I have no opinion <<SRC:decisions:log>>.", "t"), "refusal"),
    (PairCandidate("factual", "What does the log say?", "the log says " * 6 + "<<SRC:decisions:log>>", "t"), "garbled"),
    (PairCandidate("factual", "What does the log say?", "It records every champion move.", "t"), "unknown_marker"),
    (PairCandidate("factual", "What does the log say?", "It records moves <<SRC:decisions:nowhere>>.", "t"), "unknown_marker"),
], ids=["empty", "short", "long", "refusal", "loop", "no-marker", "unknown-marker"])
def test_invalid_pairs_are_dropped_with_their_reason(kb, candidate, reason):
    name = f"invalid-{reason}-{len(candidate.output)}"
    create_dataset(kb.connection, name, {})
    assert add_pairs(kb.connection, name, [candidate]).drops == {reason: 1}
    assert get_dataset(kb.connection, name).drops == {reason: 1} and not list_pairs(kb.connection, name)


def sentences(text: str) -> list[str]:
    complete, rest = split_sentences(text, final=True)
    assert not rest, rest
    return complete


def test_recommendation_pairs_are_the_chats_prompt_and_an_explanation_of_its_decision(settings, kb):
    request = GenerationRequest(name="task-templates", styles=("recommendation", "refusal"), questions_per_use_case=2,
                                include_corrections=False)
    dataset = generate_dataset(settings, kb, request)
    assert dataset.styles == {"recommendation": 6, "refusal": 6} and not dataset.drops
    golden = {item.question for item in load_golden().items}
    for pair in list_pairs(kb.connection, "task-templates"):
        assert pair.question not in golden
        prepared = prepare_answer(settings, kb, pair.question)
        if pair.style == "refusal":
            assert prepared.match.use_case is None
            assert pair.instruction == pair.question and pair.output == prepared.fallback_text and not pair.source_ids
            continue
        assert prepared.messages[0]["content"] == SYSTEM_PROMPT
        assert pair.instruction == prepared.messages[1]["content"]  # exactly what the chat sends the LLM
        # the explanation the chat asks for, beginning with the opening it prefills: not the composed answer
        assert pair.output == compose_explanation(prepared.decision) != prepared.fallback_text
        assert pair.output.startswith(explanation_opening(prepared.decision) + " ") and pair.generator == "composer"
        known = offered_source_ids(prepared) | set(resolve(kb.connection, pair.source_ids))
        checked = sentences(pair.output)
        assert len(checked) >= 2 and "".join(checked) == pair.output
        for sentence in checked:
            assert verify_sentence(sentence, prepared.decision, prepared.candidates, known).ok, sentence
        assert set(pair.source_ids) >= {f"registry:{prepared.decision.recommended.name}", f"criteria:{prepared.decision.use_case}"}
        assert pair.chunk_ids == [hit.chunk_id for hit in prepared.hits[:MAX_EXCERPTS]]


def test_an_llm_paraphrases_questions_and_its_explanation_is_kept_only_when_every_sentence_is_verified(settings, kb):
    def reply(messages):
        if messages[0]["content"] == SYSTEM_PROMPT:  # the chat's own prompt, with the prefilled opening last
            decided = re.search(r"^Recommend (\S+) <<SRC:(\S+)>>", messages[1]["content"], re.M)
            recommended = SimpleNamespace(recommended=SimpleNamespace(name=decided[1], source_id=decided[2]))
            assert messages[-1] == {"role": "assistant", "content": explanation_opening(recommended)}
            if "USE CASE: diabetes-progression" in messages[1]["content"]:
                return faithful_answer(messages)
            if "USE CASE: tumor-screening" in messages[1]["content"]:  # a first sentence citing an unknown source
                return " it is the best model of all <<SRC:doc:nowhere>>."
            return faithful_answer(messages) + " It has an F1 of 0.123 <<SRC:criteria:digit-recognition>>."  # invented
        use_case = next(words for words in ("tumor screening", "digit recognition", "diabetes progression")
                        if words in messages[-1]["content"])
        return f"Could you tell me, for {use_case}, which model we should ship?"

    with OpenAIServer(reply=reply) as server:
        request = endpoint(server, "task-llm", styles=["recommendation"], questions_per_use_case=1,
                           rewrite_recommendations=True)
        dataset = generate_dataset(settings, kb, request)
    pairs = list_pairs(kb.connection, "task-llm")
    assert dataset.styles == {"recommendation": 3} and not dataset.drops
    assert all(pair.question.startswith("Could you tell me") for pair in pairs)
    [llm] = [pair for pair in pairs if pair.generator.startswith("openai:")]
    assert "diabetes" in llm.question
    prepared = prepare_answer(settings, kb, llm.question)
    # the LLM's explanation after the prefilled opening, every sentence of it verified
    assert llm.output == explanation_opening(prepared.decision) + faithful_answer(prepared.messages)
    composed = [pair for pair in pairs if pair.generator == "composer"]  # the partly or wholly unverified ones
    assert len(composed) == 2
    for pair in composed:
        assert pair.output == compose_explanation(prepare_answer(settings, kb, pair.question).decision)


def test_an_explanation_is_held_to_the_chats_sentence_checks(settings, kb):
    prepared = prepare_answer(settings, kb, "Which model should go into production for digit recognition?")
    opening, composed = explanation_opening(prepared.decision), compose_explanation(prepared.decision)
    marker = "<<SRC:criteria:digit-recognition>>"
    other = next(c.name for c in prepared.candidates if c.name != prepared.decision.recommended.name)
    assert verified_explanation(kb, prepared, composed)
    assert verified_explanation(kb, prepared, f"{opening} it passes every hard criterion {marker}.")
    for text in (composed.removeprefix(opening),  # no prefilled opening
                 f"{opening} it passes every hard criterion {marker}. It has an accuracy of 0.123 {marker}.",  # invented
                 f"{opening} it passes every hard criterion <<SRC:doc:nowhere>>.",  # unknown source
                 f"{opening} it passes every hard criterion {marker}. It is the simplest one.",  # no marker
                 f"{opening} it passes every hard criterion {marker}. Then it",  # unfinished
                 f"{opening} it passes every hard criterion {marker}. {other} is the one to deploy {marker}.",  # another
                 f"{opening} volcanic penguins orbit saturnine marmalade {marker}.",  # not from its input
                 opening):
        assert not verified_explanation(kb, prepared, text), text


def test_accepted_corrections_join_as_pairs(settings, kb):
    record = AnswerRecord(id=None, asked_at="2026-01-05T10:00:00+00:00", question="Which tumour model is safe to ship?",
                          use_case="tumor-screening", answer="Deploy the forest.", answer_origin="llm", llm_version="base:x",
                          recommended_model="tumor-screening-random-forest")
    answer_id = save_answer(kb.connection, record)
    correction = "Not the forest: it breaks the 10 ms latency budget <<SRC:criteria:tumor-screening>>."
    save_feedback(kb.connection, answer_id, 0, "wrong model", correction)
    accept(kb.connection, answer_id)
    dataset = generate_dataset(settings, kb, GenerationRequest(name="corrections", styles=("refusal",)))
    corrections = list_pairs(kb.connection, "corrections", style="correction")
    assert dataset.styles["correction"] == 1
    assert [(p.instruction, p.output, p.source_ids, p.generator) for p in corrections] == [
        ("Which tumour model is safe to ship?", correction, [f"correction:answer-{answer_id}", "criteria:tumor-screening"],
         "feedback-review")]


def test_review_edit_and_a_deterministic_export_of_accepted_pairs_only(settings, kb, tmp_path):
    create_dataset(kb.connection, "export-me", {})
    texts = [("What budget does the tumour plug-in have?", "Ten milliseconds at p95 <<SRC:criteria:tumor-screening>>."),
             ("Why was the MLP rejected for digits?", "Its artefact broke the size budget <<SRC:decisions:log>>."),
             ("Which family wins a near-best tie?", "The simplest family wins <<SRC:guideline:model-selection>>.")]
    add_pairs(kb.connection, "export-me", [PairCandidate("factual", q, a, "test", (1,), ("x:y",)) for q, a in texts])
    first, second, third = list_pairs(kb.connection, "export-me")
    with pytest.raises(SftDataError, match="no accepted pair"):
        export_dataset(settings, kb.connection, "export-me", tmp_path / "a")
    assert review_pairs(kb.connection, "export-me", [third.id, first.id], "accepted") == 2
    assert review_pairs(kb.connection, "export-me", [second.id], "rejected") == 1
    one = export_dataset(settings, kb.connection, "export-me", tmp_path / "a")
    two = export_dataset(settings, kb.connection, "export-me", tmp_path / "b")
    assert one.path.read_bytes() == two.path.read_bytes() and one.dataset_hash == two.dataset_hash
    assert one.dataset_hash == hashlib.sha256(one.path.read_bytes()).hexdigest()[:16]
    assert one.path == tmp_path / "a" / "export-me.jsonl" and (one.pair_count, one.styles) == (2, {"factual": 2})
    lines = [json.loads(line) for line in one.path.read_text().splitlines()]
    assert {line["instruction"] for line in lines} == {texts[0][0], texts[2][0]}
    assert all(set(line) == {"instruction", "output", "source_ids", "style"} for line in lines)
    assert get_dataset(kb.connection, "export-me").exported_hash == one.dataset_hash

    with pytest.raises(SftDataError, match="unknown to|does not know"):
        edit_pair(kb.connection, first.id, output="Ten ms <<SRC:criteria:nowhere>>.")
    edited = edit_pair(kb.connection, first.id, output="Ten milliseconds, measured at p95 <<SRC:criteria:tumor-screening>>.")
    assert edited.edited and edited.state == "accepted"
    three = export_dataset(settings, kb.connection, "export-me", tmp_path / "c")
    assert three.dataset_hash != one.dataset_hash and "measured at p95" in three.path.read_text()
    assert accept_all(kb.connection, "export-me") == 0  # nothing pending; the rejected pair stays rejected
    with pytest.raises(SftDataError, match="no SFT dataset named nope"):
        export_dataset(settings, kb.connection, "nope", tmp_path / "d")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--styles", "factual,limericks", "--llm-version", "base"], "unknown style 'limericks'"),
    (["--styles", "factual", "--per-source", "0", "--llm-version", "base"], "per-source count must be a whole number from 1"),
    (["--styles", "factual"], "the factual style needs an LLM"),
    (["--styles", "factual", "--endpoint", "ftp://models.example.com", "--model", "m"], "is not an http(s) URL"),
    (["--styles", "factual", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m"], "cannot be reached"),
    (["--styles", "factual", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "NO_SUCH_KEY_VAR"],
     "the API key variable must be one that DEPLOYWISE_ENDPOINT_KEY_VARS lists"),
    (["--styles", "factual", "--llm-version", "77"], "no LLM version deploywise-llm/77"),
    (["--styles", "recommendation", "--name", "Bad Name!"], "dataset name 'Bad Name!' must be"),
], ids=["style", "zero-count", "no-llm", "endpoint-scheme", "endpoint-dead", "api-key", "version", "name"])
def test_malformed_requests_are_refused_in_one_line_and_change_nothing(workspace, kb, monkeypatch, capsys, arguments, message):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    monkeypatch.setenv("DEPLOYWISE_LLM_MAX_RETRIES", "0")
    before = sft_rows(kb.connection)
    name = [] if "--name" in arguments else ["--name", "refused"]
    assert cli_main(["sft", "generate", *name, *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert sft_rows(kb.connection) == before


def test_a_bad_prompt_and_a_taken_name_are_refused(settings, kb):
    with pytest.raises(SftDataError, match=r"must contain \{chunk\}"):
        generate_dataset(settings, kb, GenerationRequest("p1", ("factual",), llm_version="base", prompts={"factual": "Write a pair."}))
    with pytest.raises(SftDataError, match="unknown placeholders: excerpt"):
        generate_dataset(settings, kb, GenerationRequest("p2", ("factual",), llm_version="base", prompts={"factual": "{chunk} {excerpt}"}))
    create_dataset(kb.connection, "taken", {})
    before = sft_rows(kb.connection)
    with pytest.raises(SftDataError, match="named taken already exists"):
        generate_dataset(settings, kb, GenerationRequest("taken", ("refusal",)))
    assert sft_rows(kb.connection) == before


def test_the_in_process_llm_generates_and_its_gibberish_is_dropped(workspace, tiny_llama_folder):
    llama = load_settings(workspace=workspace, base_model=str(tiny_llama_folder))  # the chat's runtime: llama.cpp
    with pytest.raises(SftDataError, match=r"^LLM version base: the base model .* has no GGUF file; export it or use "
                                           "DEPLOYWISE_LLM_BACKEND=transformers$"):
        check_backend(llama, GenerationRequest("tiny-gguf", ("factual",), llm_version="base"))
    settings = load_settings(workspace=workspace, base_model=str(tiny_llama_folder), llm_backend="transformers")
    check_backend(settings, GenerationRequest("tiny-llama", ("factual",), llm_version="base"))
    assert make_backend(settings, GenerationRequest("tiny-llama", ("factual",), llm_version="base")) is llm_backend(
        settings.model_copy(update={"llm_version": "base"}))  # the chat's backend for that version, loaded once
    kb = open_knowledge_base(settings)
    try:
        request = GenerationRequest("tiny-llama", ("factual",), per_source=1, llm_version="base", max_new_tokens=16,
                                    include_corrections=False)
        dataset = generate_dataset(settings, kb, request)
    finally:
        kb.connection.close()
    assert dataset.state == "ready" and dataset.pairs == 0
    assert sum(dataset.drops.values()) == 10 and set(dataset.drops) <= {"unparsable", "ungrounded", "garbled"}
    assert dataset.config["llm_version"] == "base" and dataset.config["api_key_env"] is None


def test_the_worker_runs_out_of_process_with_progress_and_can_be_cancelled(settings, kb, monkeypatch):
    monkeypatch.setenv("SFT_TEST_KEY", "sk-local")
    with OpenAIServer(reply=styled_reply, token="sk-local") as server:
        request = endpoint(server, "worker", styles=["factual"], api_key_env="SFT_TEST_KEY")
        queued = start_generation(settings.model_copy(update={"endpoint_key_vars": ["SFT_TEST_KEY"]}), kb.connection, request)
        assert queued.state == "queued" and queued.pid
        assert "sk-local" not in json.dumps(queued.config)  # only the variable's name is kept
        finished = wait_for(kb.connection, "worker", lambda d: d.state not in ("queued", "generating"))
        assert finished.state == "ready", finished.error
        assert finished.pending == len(source_groups(kb.connection)) and finished.progress["done"] == finished.progress["total"]
        assert all(r.authorization == "Bearer sk-local" for r in server.requests)
    with OpenAIServer(reply=styled_reply, failure="slow", slow_s=0.5) as slow:
        start_generation(settings, kb.connection, endpoint(slow, "cancelled", styles=["factual"]))
        wait_for(kb.connection, "cancelled", lambda d: d.progress.get("done", 0) >= 1)
        cancel_generation(kb.connection, "cancelled")
        stopped = wait_for(kb.connection, "cancelled", lambda d: d.state != "generating")
    assert stopped.state == "cancelled" and stopped.pending >= 1  # what it made stays, pending review
    with pytest.raises(SftDataError, match="is not being generated"):
        cancel_generation(kb.connection, "cancelled")


def wait_for(connection, name: str, condition, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dataset = refreshed(connection, get_dataset(connection, name))
        if condition(dataset):
            return dataset
        time.sleep(0.3)
    raise AssertionError(f"{name}: {get_dataset(connection, name)}")


def test_a_worker_that_died_is_marked_failed(kb):
    create_dataset(kb.connection, "orphan", {}, state="generating")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    update_dataset(kb.connection, "orphan", pid=gone.pid)
    dataset = refreshed(kb.connection, get_dataset(kb.connection, "orphan"))
    assert dataset.state == "failed" and "ended without finishing" in dataset.error
    assert "orphan" in {d.name for d in list_datasets(kb.connection)}


def visitor_script(workspace: str, url: str):
    """Runs as a Streamlit session of a visitor: tries every SFT data action and records the outcome of each."""
    import streamlit as st

    from engine.access import roles
    from engine.core.settings import load_settings
    from engine.knowledge.workspace import open_knowledge_base
    from training import sft_data, sft_export, sft_generation, sft_generation_request, sft_worker

    settings = load_settings(workspace=workspace)
    kb = open_knowledge_base(settings)
    pair_id = kb.connection.execute("SELECT id FROM sft_pairs WHERE dataset = 'guarded'").fetchone()[0]
    request = sft_generation_request.GenerationRequest("by-visitor", ("factual",), endpoint=url, model="tiny-chat")
    actions = {
        "start a generation": lambda: sft_worker.start_generation(settings, kb.connection, request),
        "generate": lambda: sft_generation.generate_dataset(settings, kb, request),
        "accept": lambda: sft_data.review_pairs(kb.connection, "guarded", [pair_id], "accepted"),
        "accept all": lambda: sft_data.accept_all(kb.connection, "guarded"),
        "edit": lambda: sft_data.edit_pair(kb.connection, pair_id, output="Changed <<SRC:decisions:log>>."),
        "export": lambda: sft_export.export_dataset(settings, kb.connection, "guarded", settings.workspace / "visitor"),
        "cancel": lambda: sft_worker.cancel_generation(kb.connection, "guarded"),
        "delete": lambda: sft_data.delete_dataset(kb.connection, "guarded"),
    }
    outcomes = {}
    for name, action in actions.items():
        try:
            action()
            outcomes[name] = "done"
        except roles.AccessDenied:
            outcomes[name] = "refused"
    kb.connection.close()
    st.session_state["outcomes"] = outcomes


@pytest.mark.usefixtures("real_access")
def test_a_visitor_cannot_generate_review_or_export(workspace, kb):
    create_dataset(kb.connection, "guarded", {})
    add_pairs(kb.connection, "guarded", [PairCandidate("factual", "Who keeps the decision log?",
                                                       "The ML platform team <<SRC:decisions:log>>.", "test")])
    before = sft_rows(kb.connection)
    with OpenAIServer() as server:
        at = AppTest.from_function(visitor_script, args=(str(workspace), server.url), default_timeout=120)
        at.run()
    assert not at.exception, at.exception
    assert set(at.session_state["outcomes"].values()) == {"refused"}, at.session_state["outcomes"]
    assert not server.requests and sft_rows(kb.connection) == before
    assert not (workspace / "visitor").exists()
