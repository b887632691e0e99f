"""LLMClient against a real HTTP server on 127.0.0.1 that misbehaves on cue.

The server speaks the OpenAI chat-completions wire format; each test scripts
the sequence of answers (429, 500, 401, garbage, slow) and checks what the
client did: how many requests it sent, what it raised, what it accounted.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoprune.agent.llm import DUMMY_KEY, LLMClient, resolve_api_key
from autoprune.errors import LLMError


def completion(text: str = "W.abs() * X.norm", prompt: int = 11, completion_tokens: int = 5) -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                      "total_tokens": prompt + completion_tokens}}


class ScriptedServer:
    """Answers POSTs with the next scripted (status, body, delay); the last entry repeats."""

    def __init__(self, script: list[tuple[int, object, float]]):
        self.script, self.requests = list(script), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                owner.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": json.loads(self.rfile.read(length) or b"{}")})
                status, body, delay = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                time.sleep(delay)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        server = ScriptedServer(list(script))
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def client(server, **kw) -> LLMClient:
    kw.setdefault("max_retries", 3)
    return LLMClient(server.base_url, "test-model", backoff_base=0.01, backoff_cap=0.05, **kw)


MESSAGES = [{"role": "user", "content": "score?"}]


def test_retries_rate_limit_then_succeeds_and_accounts_tokens(serve):
    server = serve((429, {"error": {"message": "slow down"}}, 0), (200, completion(), 0))
    llm = client(server)
    reply = llm.chat(MESSAGES, node="write_code", temperature=0.2, max_tokens=32, seed=7)
    assert reply.text == "W.abs() * X.norm" and reply.model == "test-model"
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 5)
    assert len(server.requests) == 2
    body = server.requests[-1]["body"]
    assert body["seed"] == 7 and body["max_tokens"] == 32 and body["temperature"] == 0.2
    assert body["messages"] == MESSAGES and body["model"] == "test-model"
    assert llm.usage_by_node()["write_code"]["calls"] == 1
    assert llm.usage_by_node()["write_code"]["completion_tokens"] == 5


def test_server_error_is_retried_then_reported_in_one_line(serve):
    server = serve((500, {"error": {"message": "boom"}}, 0))
    with pytest.raises(LLMError) as err:
        client(server, max_retries=2).chat(MESSAGES, node="analyse")
    assert len(server.requests) == 3
    assert "after 3 attempts" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("status,needle", [(401, "API key"), (404, "--llm-base-url"), (400, "400")])
def test_client_errors_fail_at_once_with_actionable_message(serve, status, needle):
    server = serve((status, {"error": {"message": "nope"}}, 0))
    with pytest.raises(LLMError) as err:
        client(server).chat(MESSAGES, node="analyse")
    assert len(server.requests) == 1, "4xx other than 429 must not be retried"
    assert needle in str(err.value)


def test_garbage_body_is_retried_then_unusable(serve):
    server = serve((200, "this is not json {", 0))
    with pytest.raises(LLMError):
        client(server, max_retries=1).chat(MESSAGES, node="reflect")
    assert len(server.requests) == 2


def test_empty_choices_are_retried(serve):
    server = serve((200, {**completion(), "choices": []}, 0), (200, completion("ok"), 0))
    assert client(server).chat(MESSAGES, node="reflect").text == "ok"
    assert len(server.requests) == 2


def test_slow_reply_times_out_and_is_retried(serve):
    server = serve((200, completion("late"), 2.0), (200, completion("fast"), 0))
    started = time.perf_counter()
    reply = client(server, timeout=0.5).chat(MESSAGES, node="write_code")
    assert reply.text == "fast"
    assert len(server.requests) == 2 and time.perf_counter() - started < 2.0


def test_on_call_hook_sees_request_and_response(serve):
    server = serve((200, completion("traced"), 0))
    seen = []
    client(server, on_call=lambda req, resp: seen.append((req, resp))).chat(MESSAGES, node="hypothesise")
    (req, resp), = seen
    assert req["node"] == "hypothesise" and req["messages"] == MESSAGES
    assert resp["text"] == "traced" and resp["completion_tokens"] == 5


def test_unreachable_endpoint_is_one_clear_error():
    llm = LLMClient("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_base=0.01, timeout=2)
    with pytest.raises(LLMError, match="127.0.0.1:9"):
        llm.chat(MESSAGES, node="analyse")


def test_api_key_resolution(monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_api_key("http://127.0.0.1:8000/v1") == DUMMY_KEY
    with pytest.raises(LLMError, match="AUTOPRUNE_LLM_API_KEY"):
        resolve_api_key("https://api.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    assert resolve_api_key("https://api.example.com/v1") == "sk-fallback"
    monkeypatch.setenv("AUTOPRUNE_LLM_API_KEY", "sk-own")
    assert resolve_api_key("https://api.example.com/v1") == "sk-own"


def test_key_is_sent_as_bearer(serve, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_LLM_API_KEY", "sk-test-123")
    server = serve((200, completion(), 0))
    client(server).chat(MESSAGES, node="analyse")
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-test-123"


def rate_limited(**headers):
    import httpx
    import openai

    response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://127.0.0.1/v1"))
    return openai.RateLimitError("slow down", response=response, body=None)


def test_retry_after_forms_and_cap():
    from email.utils import formatdate

    from autoprune.agent.llm import retry_after_seconds, wait_before_retry

    assert retry_after_seconds(rate_limited(**{"retry-after": "2.5"})) == 2.5
    assert retry_after_seconds(rate_limited(**{"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert 8 <= retry_after_seconds(rate_limited(**{"retry-after": formatdate(time.time() + 10, usegmt=True)})) <= 10
    assert retry_after_seconds(rate_limited(**{"retry-after": "-5"})) == 0.0
    assert retry_after_seconds(rate_limited(**{"retry-after": "whenever"})) is None
    assert retry_after_seconds(rate_limited()) is None and retry_after_seconds(ValueError("x")) is None
    assert wait_before_retry(rate_limited(**{"retry-after": "3600"}), 0, base=1.0, cap=30.0) == 30.0
    assert wait_before_retry(rate_limited(**{"retry-after": "2"}), 0, base=1.0, cap=30.0) == 2.0
    assert 0.5 <= wait_before_retry(rate_limited(), 0, base=1.0, cap=30.0) <= 1.0     # the jittered backoff


def test_failed_call_reaches_the_on_call_hook_with_its_error(serve):
    server = serve((503, {"error": {"message": "overloaded"}}, 0))
    seen = []
    llm = client(server, max_retries=1, on_call=lambda req, resp: seen.append((req, resp)))
    with pytest.raises(LLMError) as err:
        llm.chat(MESSAGES, node="reflect")
    (req, resp), = seen
    assert req["node"] == "reflect" and resp["error"] == str(err.value) and resp["text"] == ""
    assert llm.failures == 1 and llm.usage_by_node() == {}
