"""A scripted OpenAI-compatible model provider, for tests only.

It stands in for what lies outside this machine (OpenRouter, OpenAI, a vLLM box): the tests
never reach a real provider. Standard library only, so it runs as-is on a bare VM with
`python3 scripted_provider.py --host 172.17.0.1 --port 18080 --key-file <file> --log <file>`.

It refuses a wrong key the way a real provider does (401 unless `Authorization: Bearer
<expected key>`), so a test can tell a gateway that sends the right key from one that sends
`no-key-required`. Answers are deterministic: `pong: <last user message>`, as one JSON
completion or, for `stream: true` (Hermes always streams to its provider), as SSE chunks.
Ollama's `/api/show` (which Hermes probes for a context length) answers 404, as on any server
that is not Ollama. Every request appends one JSON line to the log: method, path and whether
the key matched (never the key itself).
"""
from __future__ import annotations

import argparse
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "scripted-model"
MAX_BODY = 1 << 20


def last_user_text(body: dict) -> str:
    """The text of the last user message (chat `messages` or a Responses-style `input`)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(part.get("text", "") for part in content
                                if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def answer_for(body: dict) -> str:
    return f"pong: {last_user_text(body)}"


def completion(body: dict, created: int) -> dict:
    text = answer_for(body)
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": created,
            "model": body.get("model") or MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1 + len(text.split())}}


def stream_chunks(body: dict, created: int) -> list[dict]:
    """The SSE events of a streamed completion: role, the text in two pieces, the stop reason
    (with usage, as OpenAI sends when `stream_options.include_usage` is set)."""
    text = answer_for(body)
    head, tail = text[: len(text) // 2], text[len(text) // 2:]
    base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": created,
            "model": body.get("model") or MODEL}
    deltas = [{"role": "assistant", "content": ""}, {"content": head}, {"content": tail}]
    chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()),
                             "total_tokens": 1 + len(text.split())}})
    return chunks


class Provider(BaseHTTPRequestHandler):
    server_version = "scripted-provider/1"
    expected_key = ""
    log_path = ""
    _log_lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        return  # the request log below is the record; stderr stays quiet

    def _key_ok(self) -> bool:
        header = self.headers.get("Authorization", "")
        return hmac.compare_digest(header.encode(), f"Bearer {self.expected_key}".encode())

    def _record(self, key_ok: bool, status: int, stream: bool = False, said: str = "") -> None:
        """`said`: the end of the last user message answered (where a turn's own words are: Hermes
        puts its instructions before a scheduled job's prompt), so a test can tell whose turn it was."""
        if not self.log_path:
            return
        line = json.dumps({"time": round(time.time(), 3), "method": self.command, "path": self.path,
                           "key_ok": key_ok, "status": status, "stream": stream, "said": said[-200:]})
        with self._log_lock, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self) -> None:
        self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}})

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self):  # noqa: N802 - the stdlib's name
        key_ok = self._key_ok()
        route = self._route()
        if route not in ("/v1/models", "/models"):
            self._record(key_ok, 404)
            return self._json(404, {"error": {"message": "not found", "type": "not_found"}})
        if not key_ok:
            self._record(key_ok, 401)
            return self._refuse()
        self._record(key_ok, 200)
        self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                     "owned_by": "scripted", "context_length": 131072}]})

    def do_POST(self):  # noqa: N802
        key_ok = self._key_ok()
        route = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, MAX_BODY)) if length > 0 else b""
        if route not in ("/v1/chat/completions", "/chat/completions"):
            self._record(key_ok, 404)  # /api/show (Ollama), /v1/responses, ...: not this server
            return self._json(404, {"error": {"message": "not found", "type": "not_found"}})
        if not key_ok:
            self._record(key_ok, 401)
            return self._refuse()
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._record(key_ok, 400)
            return self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        if not isinstance(body, dict):
            body = {}
        created = int(time.time())
        said = last_user_text(body)
        if not body.get("stream"):
            self._record(key_ok, 200, said=said)
            return self._json(200, completion(body, created))
        self._record(key_ok, 200, stream=True, said=said)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in stream_chunks(body, created):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def make_server(host: str, port: int, key: str, log_path: str = "") -> ThreadingHTTPServer:
    handler = type("BoundProvider", (Provider,), {"expected_key": key, "log_path": log_path})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--key-file", required=True,
                        help="file holding the expected key (a key on the command line would show in ps)")
    parser.add_argument("--log", default="")
    args = parser.parse_args(argv)
    with open(args.key_file, encoding="utf-8") as handle:
        key = handle.read().strip()
    make_server(args.host, args.port, key, args.log).serve_forever()


if __name__ == "__main__":
    main()
