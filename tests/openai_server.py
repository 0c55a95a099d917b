"""A local OpenAI-compatible chat server, so tests drive the real `openai` client over real HTTP.

    with OpenAIServer(reply="Deploy tumor_rf_v3.", token="sk-test") as server:
        settings = load_settings(llm_backend="openai", llm_endpoint=server.url, llm_model=server.model,
                                 llm_api_key="sk-test")
        ...
        server.requests[-1].body["messages"]   # what the client sent

API:
- `url`: base URL to give the client (`http://127.0.0.1:<port>/v1`); `model`: the name it reports.
- `reply`: the answer, a string or a function of the request's messages returning one. The streamed answer is
  cut into word pieces (one piece per "token"); `max_tokens` in the request cuts it to that many pieces with
  `finish_reason: "length"`.
- `token`: when set, requests without `Authorization: Bearer <token>` get HTTP 401.
- `failure`: None, or one of FAILURES: "http_500" (every request), "slow" (waits `slow_s` before answering),
  "garbled" (a valid first chunk, then a line that is not JSON), "empty" (a stream without any content),
  "unauthorized" (HTTP 401 whatever the token). Change it at any time; it applies to the next request.
- `requests`: every POST received, in order, as `ReceivedRequest(path, authorization, body)`.
Only POST /v1/chat/completions exists (with and without `"stream": true`); anything else is a 404.

`faithful_answer` is a reply function that explains the decision the product's prompt carries, as a good LLM would:
the continuation of the opening the product prefilled (the request's last, assistant message).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAILURES = ("http_500", "slow", "garbled", "empty", "unauthorized")


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    authorization: str | None
    body: dict


class OpenAIServer:
    def __init__(self, reply: str | Callable[[list[dict]], str] = "Deploy the champion model.", *,
                 token: str | None = None, model: str = "tiny-chat", failure: str | None = None, slow_s: float = 5.0):
        self.reply, self.token, self.model, self.slow_s = reply, token, model, slow_s
        self.failure = failure
        self.requests: list[ReceivedRequest] = []
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"

    def __enter__(self) -> OpenAIServer:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()  # ends a "slow" wait at once
        self._server.shutdown()
        self._server.server_close()

    @property
    def failure(self) -> str | None:
        return self._failure

    @failure.setter
    def failure(self, value: str | None) -> None:
        if value is not None and value not in FAILURES:
            raise ValueError(f"unknown failure {value!r}; expected one of {', '.join(FAILURES)}")
        self._failure = value

    def _answer_pieces(self, messages: list[dict], max_tokens: int | None) -> tuple[list[str], str]:
        """The reply's pieces for these messages and the finish reason ('stop' or 'length')."""
        text = self.reply(messages) if callable(self.reply) else self.reply
        pieces = re.findall(r"\s*\S+", text)
        if max_tokens is not None and len(pieces) > max_tokens:
            return pieces[:max_tokens], "length"
        return pieces, "stop"

    # --- one request --------------------------------------------------------------------------------------------

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        try:
            body = json.loads(handler.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        authorization = handler.headers.get("Authorization")
        self.requests.append(ReceivedRequest(handler.path, authorization, body if isinstance(body, dict) else {}))
        failure = self.failure
        if handler.path.rstrip("/") != "/v1/chat/completions":
            return _send_json(handler, 404, _error(f"no route POST {handler.path}", "not_found"))
        if failure == "unauthorized" or (self.token and authorization != f"Bearer {self.token}"):
            return _send_json(handler, 401, _error("Invalid bearer token.", "invalid_api_key"))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _send_json(handler, 400, _error("the body must be JSON with a 'messages' list", "invalid_request_error"))
        if failure == "http_500":
            return _send_json(handler, 500, _error("The model crashed.", "server_error"))
        if failure == "slow":
            self._closing.wait(self.slow_s)
        pieces, finish = self._answer_pieces(body["messages"], body.get("max_tokens") or body.get("max_completion_tokens"))
        if failure == "empty":
            pieces = []
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(pieces)}
            return _send_json(handler, 200, {
                "id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 0, "completion_tokens": len(pieces), "total_tokens": len(pieces)},
            })
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        events = [self._chunk({"role": "assistant", "content": ""}, None)]
        events += [self._chunk({"content": piece}, None) for piece in pieces]
        if failure == "garbled":
            events = events[:2] + ['{"id": "chatcmpl-local", "choices": [{"delta": {"content": "unfinished']
        events += [self._chunk({}, finish), "[DONE]"]
        for event in events:
            handler.wfile.write(f"data: {event}\n\n".encode())
            handler.wfile.flush()

    def _chunk(self, delta: dict, finish: str | None) -> str:
        return json.dumps({
            "id": "chatcmpl-local", "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the stream ends when the connection closes, as many servers do

            def do_POST(self):
                try:
                    server._respond(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def do_GET(self):
                _send_json(self, 404, _error(f"no route GET {self.path}", "not_found"))

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler


def decided_model(messages: list[dict]) -> str:
    """What the rules decided, read back from the prompt the product sent (engine.answering.prompting.decision_text)."""
    return re.search(r"Recommend (\S+) <<SRC:", messages[1]["content"]).group(1)


def faithful_answer(messages: list[dict]) -> str:
    """The rest of a short explanation of the decided model, citing only markers the prompt offered."""
    use_case = re.search(r"^USE CASE: (\S+)", messages[1]["content"], re.M).group(1)
    return (f" it passes every hard criterion of the use case <<SRC:criteria:{use_case}>>. "
            f"It ranks first on the priority metric among the candidates that pass <<SRC:criteria:{use_case}>>.")


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": kind}}


def _send_json(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
