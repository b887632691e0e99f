"""A real OpenAI-compatible HTTP server on 127.0.0.1 that answers, or misbehaves, on cue.

Each POST takes the next entry of a script (the last one repeats): a fault name, or "ok".
The reply text comes from `reply(body)` (the parsed request), so a scripted agent run gets
answers its nodes can read, the same answer for the same request (a resumed run that asks
again is told the same thing). Every loop is bounded in time and stops by itself.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

HANG_LIMIT_S = 10.0      # a "hang" answers nothing for this long at most (or until close())
DRIP_EVERY_S = 0.05      # one byte this often: each read is fast, the whole reply is not
ENDLESS_LIMIT_S = 10.0   # an "endless" body stops after this long (the client should leave much earlier)

ERROR_STATUSES = ("400", "401", "404", "500", "503")
FAULTS = ("ok", *ERROR_STATUSES, "429", "hang", "drip", "garbage", "truncated", "cut", "endless", "empty_choices",
          "null_content", "huge_body", "long_content")


def completion(text: Optional[str], *, prompt: int = 11, completion_tokens: int = 5) -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "scripted",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                      "total_tokens": prompt + completion_tokens}}


@dataclass
class Fault:
    kind: str = "ok"
    retry_after: Optional[str] = None         # for "429": the header's value
    size: int = 2 * 1024 * 1024               # for "huge_body" / "long_content": bytes of content
    delay: float = 0.0                        # seconds before answering (a slow but honest server)

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r} (known: {', '.join(FAULTS)})")


@dataclass
class Served:
    """What the server saw: one entry per request, with the fault it answered with and when."""

    kind: str
    body: dict
    at: float
    done: float = 0.0
    headers: dict = field(default_factory=dict)


class FaultyLLMServer:
    def __init__(self, script: list, reply: Callable[[dict], str] = lambda body: "W.abs() * X.norm"):
        self.script = [s if isinstance(s, Fault) else Fault(s) for s in script] or [Fault()]
        self.reply, self.served, self.errors = reply, [], []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fault = owner.next_fault()
                record = Served(fault.kind, body, time.monotonic(), headers=dict(self.headers))
                owner.served.append(record)
                try:
                    owner.answer(self, fault, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass    # the client gave up, as it should
                except Exception as exc:  # noqa: BLE001 - a bug in a test's reply(): make it visible
                    owner.errors.append(f"{type(exc).__name__}: {exc}")
                    raise
                finally:
                    record.done = time.monotonic()
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def next_fault(self) -> Fault:
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def kinds(self) -> list[str]:
        return [s.kind for s in self.served]

    # ---- the answers ----
    def answer(self, h: BaseHTTPRequestHandler, fault: Fault, body: dict) -> None:
        kind = fault.kind
        if fault.delay and self.stopping.wait(fault.delay):
            return
        if kind == "hang":
            self.stopping.wait(HANG_LIMIT_S)
            return
        if kind in ERROR_STATUSES:
            return send(h, int(kind), json.dumps({"error": {"message": f"error {kind}"}}).encode())
        if kind == "429":
            headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
            return send(h, 429, json.dumps({"error": {"message": "slow down"}}).encode(), headers)
        if kind == "garbage":
            return send(h, 200, b"<html>502 bad gateway, this is not json {")
        if kind == "empty_choices":
            return send(h, 200, json.dumps({**completion("x"), "choices": []}).encode())
        if kind == "null_content":
            return send(h, 200, json.dumps(completion(None)).encode())
        if kind == "long_content":
            return send(h, 200, json.dumps(completion("W" * fault.size)).encode())
        data = json.dumps(completion(self.reply(body))).encode()
        if kind == "ok":
            return send(h, 200, data)
        if kind == "truncated":                 # a complete HTTP body holding half a JSON document
            return send(h, 200, data[: len(data) // 2])
        if kind == "cut":                       # the connection drops before the promised length
            head(h, 200, len(data))
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            return
        if kind == "drip":
            head(h, 200, len(data))
            for byte in data:
                if self.stopping.wait(DRIP_EVERY_S):
                    return
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            return
        if kind == "endless":
            self.endless(h)
            return
        if kind == "huge_body":
            huge = json.dumps(completion("W" * fault.size)).encode()
            return send(h, 200, huge)
        raise ValueError(f"unknown fault {kind!r}")

    def endless(self, h: BaseHTTPRequestHandler) -> None:
        """A chunked body that never ends: a JSON prefix, then whitespace, until the client hangs up."""
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        started = time.monotonic()
        chunk = b'{"id": "c1", "choices": ['
        while time.monotonic() - started < ENDLESS_LIMIT_S and not self.stopping.is_set():
            h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.flush()
            chunk = b" " * 64
            time.sleep(0.01)

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def head(h: BaseHTTPRequestHandler, status: int, length: int, headers: Optional[dict] = None) -> None:
    h.send_response(status)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(length))
    h.send_header("connection", "close")
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.end_headers()


def send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: Optional[dict] = None) -> None:
    head(h, status, len(data), headers)
    h.wfile.write(data)
    h.wfile.flush()


UNIVERSAL_EXPRESSIONS = ("W.abs() * X.max_abs", "W.abs() * X.norm.sqrt()", "W.pow(2) * X.norm",
                         "W.abs() * (X.norm + X.max_abs)")


def agent_reply(body: dict) -> str:
    """One reply every GCoT node can read (bullets, a HYPOTHESIS line, a LESSON line, one expression),
    the same for the same request; the expression varies with the request so candidates differ."""
    digest = sum(json.dumps(body.get("messages"), sort_keys=True).encode()) + int(body.get("seed") or 0)
    expression = UNIVERSAL_EXPRESSIONS[digest % len(UNIVERSAL_EXPRESSIONS)]
    return ("- down_proj inputs have outliers\n"
            "HYPOTHESIS: input-scale: weights feeding inputs with large values matter\n"
            "LESSON: the input scale behaves like the norm\n"
            f"```python\n{expression}\n```")


# ---- which graph node sent a request: read from the prompt itself ----
SCRIPTED_SERVERS: list[FaultyLLMServer] = []     # servers behind the tests' ScriptedLLMs; conftest closes them
MIN_FRAGMENT_CHARS = 12                          # shorter literal text ("```python") says nothing about the node


def node_of(messages: list[dict], scripted: tuple[str, ...] = ()) -> Optional[str]:
    """The node whose prompt template rendered `messages`: the one whose literal template text (what
    no placeholder fills in) the prompt contains most of. A prompt from no template (a unit test's own
    messages) belongs to the only scripted node, if there is one."""
    text = "\n".join(str(m.get("content", "")) for m in messages)
    scores = {node: sum(len(f) for f in fragments if f in text) for node, fragments in template_fragments().items()}
    best = max(scores, key=scores.get)
    if scores[best] > 0:
        return best
    return scripted[0] if len(scripted) == 1 else None


@functools.lru_cache(maxsize=1)
def template_fragments() -> dict[str, frozenset[str]]:
    """node -> the literal lines of its templates (built-in GCoT and rate-search sets) that no other
    node's templates share; read from the installed templates, so edits to them need nothing here."""
    import jinja2

    lexer = jinja2.Environment()
    lines: dict[str, set[str]] = {}
    for name, source, node in node_templates():
        data = "".join(value for _, kind, value in lexer.lex(source) if kind == "data")
        lines.setdefault(node, set()).update(
            line.strip() for line in data.splitlines()
            if len(line.strip()) >= MIN_FRAGMENT_CHARS and not line.strip().startswith("@@ "))
    shared = {line for node, own in lines.items() for line in own
              if any(line in other for o, other in lines.items() if o != node)}
    return {node: frozenset(own - shared) for node, own in lines.items()}


def node_templates() -> list[tuple[str, str, str]]:
    """(template name, source, node) for every node template; the shared system and contract text is left out."""
    from importlib.resources import files

    from autoprune.prompts.registry import CODE_STYLES, get_prompt_set, load_folder

    found = []
    for name, source in get_prompt_set("gcot").templates.items():
        base = next((name[: -len(style) - 1] for style in CODE_STYLES if name.endswith(f"_{style}")), name)
        if base not in ("system", "contract"):
            found.append((name, source, "write_code" if base == "repair" else base))
    rates = load_folder(files("autoprune.prompts") / "templates" / "rates", "rates").templates
    found += [(name, source, "propose") for name, source in rates.items() if name != "system"]
    return found
