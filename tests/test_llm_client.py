"""LLMClient against a real HTTP server on 127.0.0.1 that misbehaves on cue.

The server is the tests' one scripted OpenAI-compatible server (tests/llm_server_support.py,
FaultyLLMServer); each test scripts the sequence of answers (429, 500, 401, garbage, slow) and
checks what the client did: how many requests it sent, what it raised, what it accounted.
"""

from __future__ import annotations

import time

import pytest
from llm_server_support import Fault, FaultyLLMServer

from autoprune.agent.llm import DUMMY_KEY, LLMClient, resolve_api_key
from autoprune.errors import LLMError


@pytest.fixture
def serve():
    """serve(*script, reply=...) -> a FaultyLLMServer answering `reply(body)` (default "W.abs() * X.norm")."""
    servers = []

    def start(*script, reply=lambda body: "W.abs() * X.norm"):
        server = FaultyLLMServer(list(script), reply=reply)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def client(server, **kw) -> LLMClient:
    kw.setdefault("max_retries", 3)
    return LLMClient(server.base_url, "scripted", backoff_base=0.01, backoff_cap=0.05, **kw)


MESSAGES = [{"role": "user", "content": "score?"}]


def test_retries_rate_limit_then_succeeds_and_accounts_tokens(serve):
    server = serve("429", "ok")
    llm = client(server)
    reply = llm.chat(MESSAGES, node="write_code", temperature=0.2, max_tokens=32, seed=7)
    assert reply.text == "W.abs() * X.norm" and reply.model == "scripted"
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 5)
    assert len(server.served) == 2
    body = server.served[-1].body
    assert body["seed"] == 7 and body["max_tokens"] == 32 and body["temperature"] == 0.2
    assert body["messages"] == MESSAGES and body["model"] == "scripted"
    assert llm.usage_by_node()["write_code"]["calls"] == 1
    assert llm.usage_by_node()["write_code"]["completion_tokens"] == 5


def test_server_error_is_retried_then_reported_in_one_line(serve):
    server = serve("500")
    with pytest.raises(LLMError) as err:
        client(server, max_retries=2).chat(MESSAGES, node="analyse")
    assert len(server.served) == 3
    assert "after 3 attempts" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("status,needle", [(401, "API key"), (404, "--llm-base-url"), (400, "400")])
def test_client_errors_fail_at_once_with_actionable_message(serve, status, needle):
    server = serve(str(status))
    with pytest.raises(LLMError) as err:
        client(server).chat(MESSAGES, node="analyse")
    assert len(server.served) == 1, "4xx other than 429 must not be retried"
    assert needle in str(err.value)


def test_garbage_body_is_retried_then_unusable(serve):
    server = serve("garbage")
    with pytest.raises(LLMError):
        client(server, max_retries=1).chat(MESSAGES, node="reflect")
    assert len(server.served) == 2


def test_empty_choices_are_retried(serve):
    server = serve("empty_choices", "ok", reply=lambda body: "ok")
    assert client(server).chat(MESSAGES, node="reflect").text == "ok"
    assert len(server.served) == 2


def test_slow_reply_times_out_and_is_retried(serve):
    server = serve(Fault("ok", delay=2.0), "ok", reply=lambda body: "fast")
    started = time.perf_counter()
    reply = client(server, timeout=0.5).chat(MESSAGES, node="write_code")
    assert reply.text == "fast"
    assert len(server.served) == 2 and time.perf_counter() - started < 2.0


def test_on_call_hook_sees_request_and_response(serve):
    server = serve("ok", reply=lambda body: "traced")
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
    server = serve("ok")
    client(server).chat(MESSAGES, node="analyse")
    assert server.served[0].headers["Authorization"] == "Bearer sk-test-123"


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
    server = serve("503")
    seen = []
    llm = client(server, max_retries=1, on_call=lambda req, resp: seen.append((req, resp)))
    with pytest.raises(LLMError) as err:
        llm.chat(MESSAGES, node="reflect")
    (req, resp), = seen
    assert req["node"] == "reflect" and resp["error"] == str(err.value) and resp["text"] == ""
    assert llm.failures == 1 and llm.usage_by_node() == {}
