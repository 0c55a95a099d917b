"""LLM backends: the real openai client against a local OpenAI-compatible server; transformers on a tiny random
Llama, with LLM versions in a real sqlite MLflow registry; once on the real bundled SmolLM2."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import torch
from mlflow import MlflowClient
from openai_server import OpenAIServer
from peft import LoraConfig, get_peft_model
from tiny_models import save_tiny_llama

from engine.core.settings import load_settings
from engine.llm.backend_contract import LlmError
from engine.llm.backends import llm_backend
from engine.llm.bundled import load_tokenizer
from engine.llm.chat_prompt import fit_prompt
from engine.llm.in_process import InProcessLlm
from engine.llm.loading import load_base_model, load_llm
from engine.llm.versions import LlmVersion, resolve_llm_version

QUESTION = [
    {"role": "system", "content": "You recommend machine learning models for deployment."},
    {"role": "user", "content": "Which model should I deploy for tumour screening?"},
]


def endpoint_settings(server: OpenAIServer, **overrides):
    return load_settings(**{"llm_backend": "openai", "llm_endpoint": server.url, "llm_model": server.model, **overrides})


# --- OpenAI-compatible endpoint -----------------------------------------------------------------------------------


def test_streamed_pieces_join_to_the_served_reply():
    with OpenAIServer(reply=lambda messages: f"Deploy tumor_rf_v3, asked: {messages[-1]['content']}") as server:
        backend = llm_backend(endpoint_settings(server))
        pieces = list(backend.stream(QUESTION, max_new_tokens=64))
        cut = list(backend.stream(QUESTION, max_new_tokens=2))
    assert len(pieces) > 5 and "".join(pieces) == "Deploy tumor_rf_v3, asked: Which model should I deploy for tumour screening?"
    assert cut == ["Deploy", " tumor_rf_v3,"]
    sent = server.requests[0].body
    assert (sent["messages"], sent["model"], sent["stream"], sent["max_tokens"], sent["temperature"]) == (
        QUESTION, "tiny-chat", True, 64, 0)
    assert backend.version == f"openai:127.0.0.1:{urlsplit(server.url).port}/tiny-chat"
    assert llm_backend(endpoint_settings(server)) is backend  # one client per configuration
    assert llm_backend(endpoint_settings(server, llm_model="other")) is not backend


def test_server_errors_are_retried_then_reported_in_one_line():
    with OpenAIServer(failure="http_500") as server:
        with pytest.raises(LlmError) as failure:
            list(llm_backend(endpoint_settings(server, llm_max_retries=2)).stream(QUESTION, max_new_tokens=8))
    assert len(server.requests) == 3
    message = str(failure.value)
    assert server.url in message and "HTTP 500" in message and "The model crashed." in message and "\n" not in message


def test_a_slow_endpoint_fails_at_the_timeout():
    with OpenAIServer(failure="slow", slow_s=20) as server:
        backend = llm_backend(endpoint_settings(server, llm_timeout_s=0.5, llm_max_retries=0))
        started = time.perf_counter()
        with pytest.raises(LlmError, match=r"did not answer within 0\.5 s"):
            list(backend.stream(QUESTION, max_new_tokens=8))
        assert time.perf_counter() - started < 3
        assert len(server.requests) == 1


def test_the_token_is_sent_as_bearer_and_never_shown():
    token = "dapi-very-secret-0123"
    with OpenAIServer(reply="Use the random forest.", token=token) as server:
        assert "".join(llm_backend(endpoint_settings(server, llm_api_key=token)).stream(QUESTION, max_new_tokens=8)) \
            == "Use the random forest."
        assert server.requests[-1].authorization == f"Bearer {token}"
        with pytest.raises(LlmError, match="refused the token") as wrong:
            list(llm_backend(endpoint_settings(server, llm_api_key=token + "-old")).stream(QUESTION, max_new_tokens=8))
        with pytest.raises(LlmError, match="needs a token") as missing:
            list(llm_backend(endpoint_settings(server)).stream(QUESTION, max_new_tokens=8))
        server.failure = "http_500"
        with pytest.raises(LlmError, match="HTTP 500") as crashed:
            list(llm_backend(endpoint_settings(server, llm_api_key=token, llm_max_retries=0)).stream(QUESTION, max_new_tokens=8))
    for error in (wrong, missing, crashed):
        assert token not in str(error.value)
    assert server.requests[-2].authorization == "Bearer not-needed"  # no token configured: a placeholder, as Ollama expects


@pytest.mark.parametrize("failure, problem", [("garbled", "malformed stream"), ("empty", "empty answer")])
def test_a_broken_stream_is_an_error(failure, problem):
    with OpenAIServer(failure=failure) as server:
        with pytest.raises(LlmError, match=problem):
            list(llm_backend(endpoint_settings(server)).stream(QUESTION, max_new_tokens=8))


def test_an_endpoint_that_is_not_listening_is_named():
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    settings = load_settings(llm_backend="openai", llm_endpoint=endpoint, llm_model="tiny-chat", llm_max_retries=0)
    with pytest.raises(LlmError, match="cannot be reached") as failure:
        list(llm_backend(settings).stream(QUESTION, max_new_tokens=8))
    assert endpoint in str(failure.value)


@pytest.mark.parametrize("messages, max_new_tokens, temperature", [
    ([], 8, 0.0),
    ([{"role": "robot", "content": "hi"}], 8, 0.0),
    ([{"role": "user", "content": None}], 8, 0.0),
    (QUESTION, 0, 0.0),
    (QUESTION, 8, -1.0),
])
def test_a_malformed_request_is_refused_before_it_is_sent(messages, max_new_tokens, temperature):
    with OpenAIServer() as server:
        with pytest.raises(LlmError):
            list(llm_backend(endpoint_settings(server)).stream(messages, max_new_tokens=max_new_tokens, temperature=temperature))
    assert server.requests == []


# --- transformers in process, tiny random Llama -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", context_tokens=256)


def tiny_settings(tmp_path, tiny_llama, **overrides):
    return load_settings(workspace=tmp_path / "workspace", base_model=str(tiny_llama),
                         **{"llm_version": "base", "llm_backend": "transformers", **overrides})


def test_tiny_llama_streams_exactly_what_generate_writes(tmp_path, tiny_llama):
    backend = llm_backend(tiny_settings(tmp_path, tiny_llama))
    pieces = list(backend.stream(QUESTION, max_new_tokens=10))
    assert backend.version == "base:tiny-llama"
    assert len(pieces) > 1 and all(isinstance(piece, str) and piece for piece in pieces)
    loaded = load_llm(LlmVersion(str(tiny_llama)))
    prompt = torch.tensor([fit_prompt(loaded.tokenizer, QUESTION, 10_000)])
    written = loaded.model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert written.shape[1] - prompt.shape[1] == 10
    assert "".join(pieces) == loaded.tokenizer.decode(written[0, prompt.shape[1]:], skip_special_tokens=True)
    assert len("".join(backend.stream(QUESTION, max_new_tokens=3))) < len("".join(pieces))


def test_two_sessions_generate_at_once(tmp_path, tiny_llama):
    backend = llm_backend(tiny_settings(tmp_path, tiny_llama))
    answers, errors = [None, None], []

    def session(index):
        try:
            answers[index] = "".join(backend.stream(QUESTION, max_new_tokens=24))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=session, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and answers[0] and answers[0] == answers[1]  # greedy: the same text for both


def test_a_failing_generation_is_an_error_and_frees_the_model(tmp_path, tiny_llama, monkeypatch):
    backend = llm_backend(tiny_settings(tmp_path, tiny_llama))
    loaded = load_llm(LlmVersion(str(tiny_llama)))

    def broken_forward(*args, **kwargs):
        raise RuntimeError("matrix shapes do not match")

    monkeypatch.setattr(loaded.model, "forward", broken_forward)
    with pytest.raises(LlmError, match="generation with base:tiny-llama failed: RuntimeError: matrix shapes do not match"):
        list(backend.stream(QUESTION, max_new_tokens=8))
    monkeypatch.undo()
    assert "".join(backend.stream(QUESTION, max_new_tokens=4))  # the lock was released


def test_a_stalled_generation_times_out(tmp_path, tiny_llama):
    backend = llm_backend(tiny_settings(tmp_path, tiny_llama, llm_timeout_s=0.0005))
    with pytest.raises(LlmError, match="produced no text for 0.0005 s"):
        list(backend.stream(QUESTION, max_new_tokens=200))
    assert "".join(llm_backend(tiny_settings(tmp_path, tiny_llama)).stream(QUESTION, max_new_tokens=4))


def test_a_long_prompt_loses_the_middle_of_its_longest_message(tmp_path, tiny_llama):
    tokenizer = load_tokenizer(str(tiny_llama))
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Criteria first. " + "metric row " * 1500 + "Which model for tumour screening?"}]
    prompt = tokenizer.decode(fit_prompt(tokenizer, messages, 200))
    assert len(fit_prompt(tokenizer, messages, 200)) <= 200
    assert "Answer briefly." in prompt and "Criteria first." in prompt and "Which model for tumour screening?" in prompt
    assert "[...]" in prompt and prompt.count("metric row") < 100
    assert fit_prompt(tokenizer, QUESTION, 200) == fit_prompt(tokenizer, QUESTION, 10_000)  # short prompts untouched
    with pytest.raises(LlmError, match="does not fit in the 10 tokens"):
        fit_prompt(tokenizer, messages, 10)
    backend = llm_backend(tiny_settings(tmp_path, tiny_llama))
    assert "".join(backend.stream(messages, max_new_tokens=16))  # context 256: shortened, then answered
    with pytest.raises(LlmError, match="no room for a prompt in the 256-token context"):
        list(backend.stream(QUESTION, max_new_tokens=256))


# --- LLM versions in a real sqlite MLflow registry ---------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_llama):
    """Versions 1 and 2: LoRA adapters on the tiny Llama; version 3: a run without an adapter/ artifact."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("deploywise-llm-cpt", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model("deploywise-llm")
    for seed in (1, 2, 3):
        run = client.create_run(experiment)
        if seed < 3:
            model = get_peft_model(load_base_model(str(tiny_llama)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
            torch.manual_seed(seed)
            for name, parameter in model.named_parameters():
                if "lora_B" in name:  # PEFT starts B at zero, which would make the adapter a no-op
                    torch.nn.init.normal_(parameter, std=0.5)
            model.save_pretrained(root / f"adapter-{seed}")
            client.log_artifacts(run.info.run_id, str(root / f"adapter-{seed}"), "adapter")
        client.set_terminated(run.info.run_id)
        client.create_model_version("deploywise-llm", f"{run.info.artifact_uri}/adapter", run_id=run.info.run_id,
                                    tags={"base_model": str(tiny_llama)})
    return uri, client


def registry_settings(tmp_path, tiny_llama, registry, version="champion"):
    return tiny_settings(tmp_path, tiny_llama, mlflow_tracking_uri=registry[0], llm_version=version)


def q_proj(model) -> torch.Tensor:
    return model.model.layers[0].self_attn.q_proj.weight


def test_the_champion_version_is_loaded_with_its_adapter_merged(tmp_path, tiny_llama, registry):
    registry[1].set_registered_model_alias("deploywise-llm", "champion", "1")
    backend = InProcessLlm(registry_settings(tmp_path, tiny_llama, registry))
    assert "".join(backend.stream(QUESTION, max_new_tokens=8))
    assert backend.version == "deploywise-llm/1"
    champion = load_llm(resolve_llm_version(registry_settings(tmp_path, tiny_llama, registry)))
    assert type(champion.model).__name__ == "LlamaForCausalLM"  # merged: no PEFT wrapper left
    assert not torch.equal(q_proj(champion.model), q_proj(load_base_model(str(tiny_llama))))


def test_without_the_champion_alias_the_base_model_answers(tmp_path, tiny_llama, registry):
    registry[1].delete_registered_model_alias("deploywise-llm", "champion")
    backend = InProcessLlm(registry_settings(tmp_path, tiny_llama, registry))
    assert "".join(backend.stream(QUESTION, max_new_tokens=4)) and backend.version == "base:tiny-llama"
    unregistered = tiny_settings(tmp_path, tiny_llama, mlflow_tracking_uri=registry[0], llm_version="champion",
                                 llm_registry_name="never-trained")
    assert resolve_llm_version(unregistered) == LlmVersion(str(tiny_llama))


def test_a_version_number_loads_that_version_or_fails_clearly(tmp_path, tiny_llama, registry):
    backend = InProcessLlm(registry_settings(tmp_path, tiny_llama, registry, "2"))
    assert "".join(backend.stream(QUESTION, max_new_tokens=4)) and backend.version == "deploywise-llm/2"
    with pytest.raises(LlmError, match="no LLM version deploywise-llm/9"):
        list(InProcessLlm(registry_settings(tmp_path, tiny_llama, registry, "9")).stream(QUESTION, max_new_tokens=4))
    with pytest.raises(LlmError, match="cannot fetch the adapter/ artifact of deploywise-llm/3"):
        list(InProcessLlm(registry_settings(tmp_path, tiny_llama, registry, "3")).stream(QUESTION, max_new_tokens=4))


def test_a_new_champion_is_served_without_a_restart(tmp_path, tiny_llama, registry):
    registry[1].set_registered_model_alias("deploywise-llm", "champion", "1")
    backend = InProcessLlm(registry_settings(tmp_path, tiny_llama, registry), alias_recheck_s=0)
    list(backend.stream(QUESTION, max_new_tokens=2))
    registry[1].set_registered_model_alias("deploywise-llm", "champion", "2")
    list(backend.stream(QUESTION, max_new_tokens=2))  # starts loading version 2 in the background...
    assert backend.version == "deploywise-llm/1"  # ...while version 1 keeps answering
    deadline = time.monotonic() + 30
    while backend.version != "deploywise-llm/2" and time.monotonic() < deadline:
        time.sleep(0.05)
        list(backend.stream(QUESTION, max_new_tokens=2))
    assert backend.version == "deploywise-llm/2"


# --- the real bundled model -------------------------------------------------------------------------------------


def test_real_smollm2_answers_in_english(tmp_path):
    """Default settings before any training: 'champion' finds no registered LLM and the bundled SmolLM2 answers."""
    backend = llm_backend(load_settings(workspace=tmp_path / "workspace"))
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    list(backend.stream(messages, max_new_tokens=1))  # loads the model
    started = time.perf_counter()
    answer = "".join(backend.stream(messages, max_new_tokens=32))
    seconds = time.perf_counter() - started
    tokens = len(load_tokenizer().encode(answer, add_special_tokens=False))
    print(f"SmolLM2-135M-Instruct: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s: {answer!r}")
    assert backend.version == "base:SmolLM2-135M-Instruct"
    words = answer.lower().split()
    assert "paris" in answer.lower() and {"the", "is", "of"} & set(words)
    assert sum(character.isascii() for character in answer) / len(answer) > 0.95


@pytest.mark.parametrize("restates", [False, True])
def test_the_prefilled_opening_is_sent_as_the_assistants_turn_and_never_shown_twice(restates):
    opening = "ts-linear <<SRC:registry:ts-linear>> is the one to deploy because"
    reply = (opening if restates else "") + " it is the fastest."
    with OpenAIServer(reply=reply) as server:
        text = "".join(llm_backend(endpoint_settings(server)).stream(QUESTION, max_new_tokens=64, prefill=opening,
                                                                      grammar="root ::= [a-z]*"))
        sent = server.requests[0].body
    assert text == " it is the fastest."
    assert sent["messages"][-1] == {"role": "assistant", "content": opening} and "grammar" not in sent


def test_transformers_continues_after_the_prefill(tmp_path, tiny_llama):
    backend = llm_backend(tiny_settings(tmp_path, tiny_llama))
    plain = "".join(backend.stream(QUESTION, max_new_tokens=6))
    prefilled = "".join(backend.stream(QUESTION, max_new_tokens=6, prefill="Deploy the forest because"))
    assert plain and prefilled and prefilled != plain  # a tiny random model: different text after a different prompt
