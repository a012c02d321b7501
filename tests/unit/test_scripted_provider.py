"""The scripted provider the e2e chat test runs on the VM: it refuses a wrong key, answers
deterministically as JSON and as SSE chunks, 404s the probes of other servers, and logs paths
and whether the key matched (never the key)."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.e2e import scripted_provider

KEY = "provider-key-0123456789abcdef"


@pytest.fixture()
def provider(tmp_path):
    log = tmp_path / "provider.log"
    server = scripted_provider.make_server("127.0.0.1", 0, KEY, str(log))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def _call(url: str, path: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, str, str]:
    request = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


CHAT = {"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                                   {"role": "assistant", "content": "x"}, {"role": "user", "content": "ping"}]}


@pytest.mark.parametrize("key", [None, "no-key-required", KEY + "x", KEY[:-1]])
def test_a_wrong_or_missing_key_is_refused_with_401(provider, key):
    url, log = provider
    for path, body in (("/v1/models", None), ("/v1/chat/completions", CHAT)):
        status, _, text = _call(url, path, body, key)
        assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"
    assert all(not entry["key_ok"] for entry in map(json.loads, log.read_text().splitlines()))


def test_the_right_key_gets_the_model_list_and_a_deterministic_answer(provider):
    url, log = provider
    status, _, text = _call(url, "/v1/models")
    assert status == 200 and json.loads(text)["data"][0]["id"] == scripted_provider.MODEL
    status, kind, text = _call(url, "/v1/chat/completions", CHAT)
    body = json.loads(text)
    assert status == 200 and kind == "application/json"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "pong: ping"}
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["path"], e["key_ok"], e["status"]) for e in entries] == [
        ("/v1/models", True, 200), ("/v1/chat/completions", True, 200)]
    assert KEY not in log.read_text()


def test_streaming_sends_sse_chunks_that_add_up_to_the_answer_and_end_with_done(provider):
    url, log = provider
    status, kind, text = _call(url, "/v1/chat/completions", {**CHAT, "stream": True})
    assert status == 200 and kind == "text/event-stream"
    events = [block[len("data: "):] for block in text.split("\n\n") if block]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == "pong: ping"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    logged = json.loads(log.read_text().splitlines()[-1])
    assert logged["stream"] is True and logged["said"] == "ping"  # whose turn it was, for the e2e tests


def test_content_parts_are_read_as_text(provider):
    url, _ = provider
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert json.loads(_call(url, "/v1/chat/completions", body)[2])["choices"][0]["message"]["content"] == "pong: a b"


@pytest.mark.parametrize("path, body", [("/api/show", {"model": "m"}), ("/api/tags", None), ("/v1/props", None),
                                        ("/v1/responses", {"input": "x"})])
def test_probes_for_other_servers_get_404(provider, path, body):
    url, _ = provider
    assert _call(url, path, body)[0] == 404
