"""llama.cpp on GGUF files (engine.llm.gguf): the bundled base model as it ships, a registered version from its checked
export, refusals as one line, and two sessions answered at once by one loaded model."""

from __future__ import annotations

import gc
import re
import threading
import weakref

import pytest
from test_export import settings  # noqa: F401 - the fixture: a copy of the tiny-Llama registry of test_llm_versions
from test_llm_versions import evaluate, registry_state, registry_template  # noqa: F401 - the fixture behind it

from engine.answering.citations import find_markers, strip_markers
from engine.answering.explanation import split_sentences
from engine.answering.prompting import SYSTEM_PROMPT, explanation_grammar
from engine.core.settings import SettingsError, load_settings
from engine.lifecycle.version_actions import promote
from engine.lifecycle.version_records import VersionError
from engine.llm.backend_contract import LlmError
from engine.llm.backends import llm_backend, release_backend
from engine.llm.gguf import GgufLlm, gguf_file, load_gguf, stream_gguf
from engine.llm.versions import resolve_llm_version
from training.export_pipeline import export_version

pytestmark = pytest.mark.slow
QUESTION = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("DEPLOYWISE_LLM_BACKEND", "llama_cpp")
    monkeypatch.setenv("DEPLOYWISE_LLM_VERSION", "base")
    return load_settings()


def test_the_bundled_gguf_answers_greedily_within_its_token_budget(base):
    backend = llm_backend(base)
    assert isinstance(backend, GgufLlm) and backend.version == "base:SmolLM2-135M-Instruct"
    first = "".join(backend.stream(QUESTION, max_new_tokens=24))
    assert "Paris" in first
    assert "".join(backend.stream(QUESTION, max_new_tokens=24)) == first  # temperature 0 is deterministic
    short = list(backend.stream(QUESTION, max_new_tokens=3))
    loaded = load_gguf(gguf_file(base, resolve_llm_version(base, "base")))
    assert 1 <= len(loaded.model.tokenize("".join(short).encode(), add_bos=False)) <= 4  # 3 tokens, re-tokenized


def test_two_sessions_asking_at_once_both_get_answers(base):
    backend, answers = llm_backend(base), {}

    def ask(name: str) -> None:
        answers[name] = "".join(backend.stream(QUESTION, max_new_tokens=8))

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers["one"] and answers["one"] == answers["two"]


def test_a_busy_model_refuses_after_the_wait_and_a_bad_request_before_any_work(base):
    loaded = load_gguf(gguf_file(base, resolve_llm_version(base, "base")))
    with loaded.lock:  # another session is generating
        with pytest.raises(LlmError, match=r"^the LLM was busy with other answers for more than 0.1 s"):
            list(stream_gguf(loaded, QUESTION, max_new_tokens=4, temperature=0.0, wait_s=0.1))
    with pytest.raises(LlmError, match="max_new_tokens must be a positive whole number"):
        list(stream_gguf(loaded, QUESTION, max_new_tokens=0, temperature=0.0, wait_s=1))


def test_a_corrupt_or_missing_gguf_is_one_line(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LlmError) as refused:
        load_gguf(broken)
    assert str(refused.value).startswith("llama.cpp cannot load broken.gguf") and "\n" not in str(refused.value)
    with pytest.raises(LlmError, match="does not exist"):
        load_gguf(tmp_path / "missing.gguf")


def test_a_registered_version_runs_from_its_checked_export_and_one_without_is_refused(settings, monkeypatch):  # noqa: F811
    with pytest.raises(LlmError, match=r"deploywise-llm/2 has no checked GGUF export \(gguf-q8_0 or gguf-f16\)"):
        list(GgufLlm(settings, "2").stream(QUESTION, max_new_tokens=4))
    export_version(settings, "2", "gguf-q8_0")
    backend = GgufLlm(settings, "2")
    text = "".join(backend.stream(QUESTION, max_new_tokens=6))
    assert text and backend.version == "deploywise-llm/2"  # a tiny random model: some text, not sense
    path = gguf_file(settings, resolve_llm_version(settings, "2"))
    assert path.name == "deploywise-llm-2-q8_0.gguf" and path.is_relative_to(settings.workspace.resolve() / "exports")


def test_a_version_llama_cpp_cannot_serve_is_not_promoted_while_the_chat_runs_llama_cpp(settings):  # noqa: F811
    """Promoting a version without a checked GGUF export would leave every chat explanation failing: refused with
    what to do, the registry untouched; once exported, the same promotion goes through."""
    llama = settings.model_copy(update={"llm_backend": "llama_cpp"})
    evaluate(llama, "1", "GO", [])
    before = registry_state(llama)
    with pytest.raises(VersionError, match=r"the chat runs llama.cpp and cannot serve it: deploywise-llm/1 has no checked "
                                           r"GGUF export .* `deploywise export`"):
        promote(llama, "1", actor="ana@example.com")
    assert registry_state(llama) == before
    export_version(llama, "1", "gguf-q8_0")
    assert promote(llama, "1", actor="ana@example.com").status == "deployed"


def test_the_reply_continues_the_prefilled_opening_and_the_grammar_binds_its_markers(base):
    """The chat's explanation on llama.cpp: the opening is not repeated, and whatever the model writes after it ends
    each sentence with one of the offered markers (the bundled 135M model, greedy)."""
    backend = llm_backend(base)
    opening = "tumor-screening-linear <<SRC:registry:tumor-screening-linear>> is the one to deploy because"
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "DECISION: Recommend tumor-screening-linear <<SRC:registry:tumor-screening-linear>>: "
                                            "it passes every hard criterion <<SRC:criteria:tumor-screening>>."}]
    offered = {"registry:tumor-screening-linear", "criteria:tumor-screening"}
    free = "".join(backend.stream(messages, max_new_tokens=40, prefill=opening))
    bound = "".join(backend.stream(messages, max_new_tokens=120, prefill=opening, grammar=explanation_grammar(offered)))
    assert not free.lstrip().startswith("tumor-screening-linear <<SRC") and free != bound
    assert find_markers(bound) and set(find_markers(bound)) <= offered
    assert "<" not in re.sub(r" <<SRC:[^>]*>>", "", bound)  # no other marker, nothing marker-like
    sentences, _ = split_sentences(opening + bound, final=True)
    assert sentences and all(find_markers(sentence) for sentence in sentences if sentence.strip())


def test_the_grammar_ends_a_sentence_at_its_length_bound(base):
    """A small model lists metric values for hundreds of characters when nothing stops it: the grammar makes it close
    the sentence with a marker once the bound is reached (a bound of 40 characters here, to see it bite)."""
    backend = llm_backend(base)
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "List every metric value of every candidate in one long sentence, joined by semicolons: "
                                            "roc_auc 0.991; recall 0.972; precision 0.954; latency_p95_ms 3.10; size_mb 0.4."}]
    reply = "".join(backend.stream(messages, max_new_tokens=160, grammar=explanation_grammar({"criteria:ts"}, sentence_chars=40)))
    sentences, _ = split_sentences(reply, final=True)
    assert sentences and all(find_markers(sentence) == ["criteria:ts"] for sentence in sentences)
    assert all(len(strip_markers(sentence).strip().rstrip(".")) <= 2 * 40 for sentence in sentences), sentences  # "." [0-9] is one



def test_the_thread_count_setting_reaches_llama_cpp(base):
    """DEPLOYWISE_LLM_THREADS: on cores other work shares, fewer llama.cpp threads wait less for each other."""
    one_thread = load_settings(workspace=base.workspace, llm_backend="llama_cpp", llm_version="base", llm_threads=1)
    backend = llm_backend(one_thread)
    reply = "".join(backend.stream([{"role": "user", "content": "Say hello."}], max_new_tokens=4))
    assert reply.strip()
    assert backend._serving()[1].model.n_threads == 1  # the model it served the reply with
    with pytest.raises(SettingsError, match="DEPLOYWISE_LLM_THREADS"):
        load_settings(llm_threads=0)


def test_a_released_backends_model_is_freed_and_a_kept_one_is_shared(base):
    """The evaluation worker releases each version's backend once done with it, so versions do not pile up in memory;
    the chat's backend, never released, keeps its model loaded for every session."""
    alone = base.model_copy(update={"llm_threads": 3})  # a thread count no other test's backend loads the file with
    backend = llm_backend(alone)
    "".join(backend.stream([{"role": "user", "content": "Say hello."}], max_new_tokens=2))
    served = weakref.ref(backend._serving()[1])
    assert llm_backend(alone) is backend and load_gguf(served().path, 3) is served()  # one model, shared
    del backend
    release_backend(alone)
    gc.collect()
    assert served() is None
