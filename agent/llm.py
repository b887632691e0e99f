"""The one way the agent talks to an LLM: the official `openai` client, our retries.

Any OpenAI-compatible endpoint works (OpenAI, vLLM, Ollama, llama.cpp,
`transformers serve`, the embedded loopback server). The client's own retries
are switched off (`max_retries=0`) so that one loop here decides what is worth
retrying: rate limits (429, honouring `Retry-After` up to the backoff cap), server
errors (5xx), dropped connections, timeouts and unusable bodies back off
exponentially with jitter; any other 4xx is the user's to fix and fails at once
with one clear line. `timeout` bounds a whole exchange, not only each socket read
(a server that drips bytes, or streams without end, is cut off), a body larger
than `max_reply_bytes` is refused and a reply text is cut to `max_reply_chars`.
Tokens are counted per graph node (the run's caps are the Budget's, agent/budget.py,
judged on the checkpointed state). `on_call` sees every call, a failed one too (its response has an `error` and empty text), so the trace records it.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

import httpx
import openai

from autoprune.errors import LLMError

API_KEY_ENV = "AUTOPRUNE_LLM_API_KEY"
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# A local server (embedded, Ollama, llama.cpp, vLLM) needs no key, but the client insists on one.
DUMMY_KEY = "sk-local-no-key-needed"
MAX_REPLY_BYTES = 8 * 1024 * 1024     # a chat completion of a few thousand tokens is a few KB
MAX_REPLY_CHARS = 64 * 1024           # what any node reads of a reply (a one-line expression, a program)


class LLMUnusableReply(LLMError):
    """The endpoint answered, but not with a chat completion (garbage, empty choices)."""


class LLMRequestRefused(LLMError):
    """The endpoint refused the caller, not one request (bad key 401, no access 403, unknown model or
    route 404): asking again cannot help, so a run stops with this line instead of falling back."""


class ReplyTooLarge(openai.OpenAIError):
    """The body ran past `max_reply_bytes` (raised while reading; openai passes its own errors through)."""


class BoundedBody(httpx.SyncByteStream):
    """A response body read against a wall-clock deadline and a size cap."""

    def __init__(self, inner: httpx.SyncByteStream, request: httpx.Request, deadline: float, total_s: float,
                 max_bytes: int):
        self.inner, self.request, self.deadline, self.total_s, self.max_bytes = (
            inner, request, deadline, total_s, max_bytes)

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        for chunk in self.inner:
            received += len(chunk)
            if received > self.max_bytes:
                raise ReplyTooLarge(f"reply body larger than {self.max_bytes} bytes")
            if time.monotonic() > self.deadline:
                raise httpx.ReadTimeout(f"reply not complete within {self.total_s:g} s", request=self.request)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class BoundedTransport(httpx.HTTPTransport):
    """httpx's timeout bounds each read; this bounds the whole exchange and the body's size."""

    def __init__(self, total_s: float, max_bytes: int, **kwargs):
        super().__init__(**kwargs)
        self.total_s, self.max_bytes = total_s, max_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.total_s
        response = super().handle_request(request)
        response.stream = BoundedBody(response.stream, request, deadline, self.total_s, self.max_bytes)
        return response


@dataclass(frozen=True)
class LLMReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    model: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def resolve_api_key(base_url: str, api_key_env: str = API_KEY_ENV) -> str:
    """The key from the environment; a dummy one for loopback endpoints; else a clear error."""
    key = os.environ.get(api_key_env) or os.environ.get(FALLBACK_KEY_ENV)
    if key:
        return key
    if (urlparse(base_url).hostname or "") in LOOPBACK_HOSTS:
        return DUMMY_KEY
    raise LLMError(f"no API key for {base_url}: set {api_key_env} (or {FALLBACK_KEY_ENV})")


def is_retryable(exc: Exception) -> bool:
    """Transient failures worth another try: 429, 5xx, connection drops, timeouts, garbage bodies."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True   # APITimeoutError is a subclass of APIConnectionError; both transient
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    # A body that is not a completion (truncated JSON, an HTML error page from a proxy) is
    # usually a hiccup of the server or something in front of it: worth another try.
    return isinstance(exc, (LLMUnusableReply, json.JSONDecodeError, openai.APIResponseValidationError))


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (attempt 0 -> up to `base`)."""
    return random.uniform(0.5, 1.0) * min(cap, base * (2 ** attempt))


def retry_after_seconds(exc: Exception) -> Optional[float]:
    """The wait a 429/503 asks for (`retry-after-ms`, `retry-after` in seconds or as a date), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None     # an unreadable header: the ordinary backoff applies


def wait_before_retry(exc: Exception, attempt: int, base: float, cap: float) -> float:
    """Seconds to sleep before the next attempt: the server's Retry-After (capped), else backoff."""
    asked = retry_after_seconds(exc)
    return min(cap, asked) if asked is not None else backoff_seconds(attempt, base, cap)


class LLMClient:
    """Chat completions with retries and per-node token accounting."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = API_KEY_ENV,
                 timeout: float = 120.0, max_retries: int = 4, backoff_base: float = 1.0, backoff_cap: float = 30.0,
                 max_reply_bytes: int = MAX_REPLY_BYTES, max_reply_chars: int = MAX_REPLY_CHARS,
                 on_call: Optional[Callable[[dict, dict], None]] = None):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.max_retries = max_retries
        self.backoff_base, self.backoff_cap, self.on_call = backoff_base, backoff_cap, on_call
        self.max_reply_chars = max_reply_chars
        http_client = openai.DefaultHttpxClient(transport=BoundedTransport(timeout, max_reply_bytes))
        self._client = openai.OpenAI(base_url=self.base_url, api_key=resolve_api_key(base_url, api_key_env),
                                     timeout=timeout, max_retries=0, http_client=http_client)
        self.calls = 0
        self.failures = 0       # calls that failed after every retry
        self._usage: dict[str, dict[str, float]] = {}

    # ---- accounting ----
    def usage_by_node(self) -> dict[str, dict[str, float]]:
        """node -> {calls, prompt_tokens, completion_tokens, seconds} (a copy)."""
        return {node: dict(u) for node, u in self._usage.items()}

    @property
    def total_tokens(self) -> int:
        return int(sum(u["prompt_tokens"] + u["completion_tokens"] for u in self._usage.values()))

    def _account(self, node: str, reply: LLMReply) -> None:
        u = self._usage.setdefault(node, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                          "seconds": 0.0})
        u["calls"] += 1
        u["prompt_tokens"] += reply.prompt_tokens
        u["completion_tokens"] += reply.completion_tokens
        u["seconds"] = round(u["seconds"] + reply.seconds, 3)

    # ---- the call ----
    def chat(self, messages: list[dict], *, node: str, temperature: float = 0.7, max_tokens: int = 512,
             seed: Optional[int] = None) -> LLMReply:
        """One chat completion; retries transient failures; raises LLMError subclasses."""
        request = {"model": self.model, "messages": sendable(messages), "temperature": temperature,
                   "max_tokens": max_tokens}
        if seed is not None:
            request["seed"] = seed
        started = time.perf_counter()
        try:
            reply = self._with_retries(request, started)
        except LLMError as exc:
            self.failures += 1
            self._report({"node": node, **request},
                         {"text": "", "prompt_tokens": 0, "completion_tokens": 0, "model": self.model,
                          "seconds": round(time.perf_counter() - started, 3), "error": str(exc)})
            raise
        self.calls += 1
        self._account(node, reply)
        self._report({"node": node, **request},
                     {"text": reply.text, "prompt_tokens": reply.prompt_tokens,
                      "completion_tokens": reply.completion_tokens, "seconds": reply.seconds, "model": reply.model})
        return reply

    def _report(self, request: dict, response: dict) -> None:
        if self.on_call is not None:
            self.on_call(request, response)

    def _with_retries(self, request: dict, started: float) -> LLMReply:
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(request, started)
            except Exception as exc:  # classified below: transient -> retry, else one clear line
                if not is_retryable(exc):
                    raise self._actionable(exc) from exc
                if attempt == self.max_retries:
                    raise LLMError(f"LLM endpoint {self.base_url} still failing after "
                                   f"{attempt + 1} attempts: {describe(exc)}") from exc
                time.sleep(wait_before_retry(exc, attempt, self.backoff_base, self.backoff_cap))
        raise AssertionError("unreachable")

    def _once(self, request: dict, started: float) -> LLMReply:
        response = self._client.chat.completions.create(**request)
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise LLMUnusableReply(f"LLM endpoint {self.base_url} returned no choices")
        text = str(choices[0].message.content or "")[: self.max_reply_chars]
        usage = getattr(response, "usage", None)
        return LLMReply(text=text, prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                        seconds=round(time.perf_counter() - started, 3),
                        model=str(getattr(response, "model", None) or self.model))

    def _actionable(self, exc: Exception) -> LLMError:
        if isinstance(exc, LLMError):
            return exc
        if isinstance(exc, openai.AuthenticationError):
            return LLMRequestRefused(f"LLM endpoint {self.base_url} rejected the API key (401): "
                                     f"check {API_KEY_ENV}")
        if isinstance(exc, openai.PermissionDeniedError):
            return LLMRequestRefused(f"LLM endpoint {self.base_url} denied access (403): {describe(exc)}")
        if isinstance(exc, openai.NotFoundError):
            return LLMRequestRefused(f"LLM endpoint {self.base_url} has no such route or model "
                                     f"'{self.model}' (404): check --llm-base-url (usually ends in /v1) "
                                     "and --llm-model")
        if isinstance(exc, openai.APIStatusError):
            return LLMError(f"LLM endpoint {self.base_url} refused the request "     # e.g. a prompt too long:
                            f"({exc.status_code}): {describe(exc)}")                  # this node falls back
        if isinstance(exc, openai.APIResponseValidationError):
            return LLMUnusableReply(f"LLM endpoint {self.base_url} sent an invalid reply: {describe(exc)}")
        if isinstance(exc, ReplyTooLarge):
            return LLMUnusableReply(f"LLM endpoint {self.base_url} sent an oversized reply: {exc}")
        return LLMError(f"LLM call to {self.base_url} failed: {describe(exc)}")


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def sendable(messages: list[dict]) -> list[dict]:
    """The messages with every lone surrogate as U+FFFD: JSON from an endpoint may decode to one, a
    later prompt may quote that reply, and UTF-8 (the request body) cannot encode it."""
    return [{**m, "content": LONE_SURROGATE.sub("\ufffd", m["content"])} if isinstance(m.get("content"), str)
            else m for m in messages]


def describe(exc: Exception) -> str:
    """One line, no traceback, bounded length."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"
