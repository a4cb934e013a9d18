"""A fake OpenAI-compatible LLM server for tests.

Serves ``POST /v1/chat/completions`` (also ``/chat/completions``, with SSE when the
request asks for ``stream: true``), ``POST /v1/embeddings`` and ``GET /v1/models`` on
127.0.0.1. Every completion is deterministic and shaped the way a crewAI agent accepts
a final answer::

    Thought: I now can give a great answer
    Final Answer: FAKE-LLM-ANSWER: <the last user message, one line, truncated>

so a test can assert that the kickoff inputs reached the LLM by looking for them in the
crew's result. A last user message containing ``FAKE-LLM-FAIL`` gets a 500 instead;
setting ``delay`` makes every completion wait that many seconds.

Use it as a context manager::

    with FakeLLM() as llm:
        env = {"OPENAI_BASE_URL": llm.url, "OPENAI_API_KEY": "sk-fake"}
        ...
        assert llm.requests  # every request body, in order

or by hand: ``python -m tests.support.fakellm --port 8999``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER_PREFIX = "FAKE-LLM-ANSWER"
FAIL_MARKER = "FAKE-LLM-FAIL"
ECHO_LIMIT = 600
EMBEDDING_SIZE = 16


def _text_of(content: Any) -> str:
    """The plain text of a message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return _text_of(messages[-1].get("content")) if messages else ""


def answer_for(messages: list[dict[str, Any]]) -> str:
    echo = " ".join(last_user_text(messages).split())[:ECHO_LIMIT]
    return f"Thought: I now can give a great answer\nFinal Answer: {ANSWER_PREFIX}: {echo}"


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _usage(messages: list[dict[str, Any]], answer: str) -> dict[str, int]:
    prompt = sum(_count_tokens(_text_of(m.get("content"))) for m in messages)
    completion = _count_tokens(answer)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:EMBEDDING_SIZE]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``FakeLLM.requests`` instead."""

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            models = [{"id": m, "object": "model", "owned_by": "fake"} for m in ("gpt-4o-mini",)]
            self._send_json(200, {"object": "list", "data": models})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"message": "invalid JSON"}})
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        self.server.record(path, body)
        if path in ("/v1/chat/completions", "/chat/completions"):
            self._chat(body)
        elif path in ("/v1/embeddings", "/embeddings"):
            self._embeddings(body)
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        if self.server.delay:
            time.sleep(self.server.delay)
        if FAIL_MARKER in last_user_text(messages):
            self._send_json(500, {"error": {"message": "fake failure", "type": "server_error"}})
            return
        answer = answer_for(messages)
        usage = _usage(messages, answer)
        model = body.get("model", "gpt-4o-mini")
        ident = f"chatcmpl-fake{self.server.next_id()}"
        if body.get("stream"):
            self._stream(ident, model, answer, usage, body)
            return
        self._send_json(
            200,
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )

    def _stream(
        self, ident: str, model: str, answer: str, usage: dict[str, int], body: dict[str, Any]
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        deltas: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "content": ""}, None),
            ({"content": answer}, None),
            ({}, "stop"),
        ]
        for delta, finish in deltas:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {**base, "choices": [], "usage": usage}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _embeddings(self, body: dict[str, Any]) -> None:
        texts = body.get("input") or []
        if isinstance(texts, str):
            texts = [texts]
        data = [
            {"object": "embedding", "index": i, "embedding": _embedding(str(t))} for i, t in enumerate(texts)
        ]
        tokens = sum(_count_tokens(str(t)) for t in texts)
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "fake-embed"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self.delay = 0.0

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A crew killed mid-call (the chaos suite) resets its connection: not our error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def record(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append({"path": path, "body": body})

    def next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter


class FakeLLM:
    """The fake server in a background thread; ``url`` ends in ``/v1``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakellm", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def delay(self) -> float:
        """Seconds each chat completion waits before answering (to test slow runs)."""
        return self._server.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._server.delay = seconds

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received: ``{"path": ..., "body": <parsed JSON>}``."""
        return self._server.requests

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions")]

    def env(self) -> dict[str, str]:
        """The environment that points crewAI's OpenAI provider at this server."""
        return {
            "OPENAI_API_KEY": "sk-fake-test-key",
            "OPENAI_BASE_URL": self.url,
            "OPENAI_API_BASE": self.url,
            "MODEL": "openai/gpt-4o-mini",
        }

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible LLM server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    args = parser.parse_args(argv)
    server = _Server((args.host, args.port))
    print(f"fake LLM on http://{args.host}:{args.port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
