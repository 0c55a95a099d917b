"""The endpoint backend: any OpenAI-compatible chat endpoint answers, nothing is loaded in this process.

Apart from the in-process backends because it shares nothing with them but the contract: no weights, no versions,
and its failures are HTTP ones, said in one line without the token or the URL's credentials (the chat shows it).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from engine.core.errors import first_line, without_credentials
from engine.llm.backend_contract import LlmError, Message, check_request


def _without_restated(text: str, pending: str) -> tuple[str, str]:
    """(what of `text` is new, what of the opening a restating server has still to repeat): a server that ignores the
    unfinished assistant message writes the opening again, which must not be shown twice."""
    common = len(pending) if text.startswith(pending) else len(text) if pending.startswith(text) else 0
    if common == 0:
        return text, ""
    return text[common:], pending[common:]


class EndpointLlm:
    """Any OpenAI-compatible chat endpoint: Ollama, vLLM, llama.cpp server, a Databricks serving endpoint."""

    def __init__(self, settings):
        from openai import OpenAI  # about 0.5 s of imports: only when the endpoint backend is configured

        self.endpoint, self.model = settings.llm_endpoint, settings.llm_model
        self._token = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        self._timeout_s, self._attempts = settings.llm_timeout_s, 1 + settings.llm_max_retries
        url = urlsplit(self.endpoint)
        self.version = f"openai:{url.hostname}{f':{url.port}' if url.port else ''}/{self.model}"
        self._client = OpenAI(base_url=self.endpoint, api_key=self._token or "not-needed",
                              timeout=settings.llm_timeout_s, max_retries=settings.llm_max_retries)

    def stream(self, messages: list[Message], *, max_new_tokens: int, temperature: float = 0.0, prefill: str = "",
               grammar: str | None = None) -> Iterator[str]:
        """See LlmBackend.stream. The prefill is sent as a last, unfinished assistant message, which servers that
        continue it (vLLM, llama.cpp server, Ollama) do; a reply that starts over has its restated opening removed.
        `grammar` is not sent: the OpenAI API has no GBNF."""
        import openai  # see __init__

        check_request(messages, max_new_tokens, temperature)
        if prefill:
            messages = [*messages, {"role": "assistant", "content": prefill}]
        started = answered = False  # the client retries only before the stream has started
        pending = prefill  # what a server that starts over repeats first
        try:
            with self._client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_new_tokens,
                                                      temperature=temperature, stream=True) as chunks:
                started = True
                for chunk in chunks:
                    for choice in chunk.choices or ():
                        text = choice.delta.content if choice.delta else None
                        if text and pending:
                            text, pending = _without_restated(text, pending)
                        if text:
                            answered = True
                            yield text
        except openai.APITimeoutError:
            raise self._failure(f"did not answer within {self._timeout_s:g} s{'' if started else self._tries()}") from None
        except openai.APIConnectionError as error:
            raise self._failure(f"cannot be reached ({first_line(error.__cause__ or error)}){'' if started else self._tries()}") from None
        except openai.APIStatusError as error:
            raise self._failure(self._status_problem(error)) from None
        except openai.APIError as error:  # an error event inside a started stream
            raise self._failure(f"reported an error while streaming: {first_line(error.message)}") from None
        except (ValueError, AttributeError, TypeError) as error:  # undecodable or misshapen chunks
            raise self._failure(f"sent a malformed stream ({type(error).__name__}: {first_line(error)})") from None
        if not answered:
            raise self._failure("returned an empty answer")

    def _tries(self) -> str:
        return f" ({self._attempts} attempts)" if self._attempts > 1 else ""

    def _status_problem(self, error) -> str:
        status, body = error.status_code, error.body
        detail = body.get("error", body) if isinstance(body, dict) else body
        detail = detail.get("message") if isinstance(detail, dict) else detail
        detail = first_line(detail)[:200] if detail else error.response.reason_phrase
        if status in (401, 403):
            return (f"refused the token (HTTP {status}: {detail})" if self._token
                    else f"needs a token (HTTP {status}: {detail}); set DEPLOYWISE_LLM_API_KEY")
        retried = status in (408, 409, 429) or status >= 500
        return f"answered HTTP {status}: {detail}{self._tries() if retried else ''}"

    def _failure(self, problem: str) -> LlmError:
        message = f"LLM endpoint {self.endpoint} ({self.model}) {problem}"
        return LlmError(without_credentials(message.replace(self._token, "***") if self._token else message))
