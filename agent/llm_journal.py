"""Every finished LLM exchange of a run, journaled so a resumed run never pays twice.

A node's output is checkpointed when the node returns; a kill between the
reply and that checkpoint would otherwise re-send the same request after
`--resume`. The journal (`llm_journal.jsonl` in the run folder) maps a key
built from the node, the seed and the exact messages to the reply: a repeated
request is answered from it (`cached: true` in the trace) and not billed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

JOURNAL_FILE = "llm_journal.jsonl"


@dataclass
class Exchange:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cached: bool = False


def exchange_key(node: str, messages: list[dict], seed: Optional[int]) -> str:
    blob = json.dumps({"node": node, "seed": seed, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def reply_to_exchange(reply: Any, seconds: float) -> Exchange:
    """Normalise an LLMReply (agent.llm) into the fields the agent accounts for."""
    usage = getattr(reply, "usage", None)
    prompt = getattr(reply, "prompt_tokens", None)
    completion = getattr(reply, "completion_tokens", None)
    if prompt is None and usage is not None:
        prompt = getattr(usage, "prompt_tokens", 0)
        completion = getattr(usage, "completion_tokens", 0)
    text = getattr(reply, "text", None)
    if text is None:
        text = getattr(reply, "content", "") or ""
    return Exchange(text=str(text), prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0),
                    seconds=round(float(getattr(reply, "seconds", None) or seconds), 3))


class JournaledLLM:
    """Wraps an LLM client: looks up the journal first, records every new exchange."""

    def __init__(self, client: Any, run_dir: Path, trace: Any = None, **call_options: Any):
        self.client, self.trace, self.call_options = client, trace, call_options
        self.path = Path(run_dir) / JOURNAL_FILE
        self._entries: dict[str, dict] = load_journal(self.path)

    def chat(self, messages: list[dict], *, node: str, seed: Optional[int] = None, **options: Any) -> Exchange:
        key = exchange_key(node, messages, seed)
        if self.trace is not None:
            self.trace.emit("llm_request", node=node, messages=messages, seed=seed, key=key)
        if key in self._entries:
            entry = dict(self._entries[key])
            exchange = Exchange(**{**entry, "cached": True})
        else:
            started = time.perf_counter()
            seeded = {"seed": seed} if seed is not None else {}
            reply = self.client.chat(messages, node=node, **{**self.call_options, **options}, **seeded)
            exchange = reply_to_exchange(reply, time.perf_counter() - started)
            self._record(key, exchange)
        if self.trace is not None:
            self.trace.emit("llm_response", node=node, key=key, **asdict(exchange))
        return exchange

    def _record(self, key: str, exchange: Exchange) -> None:
        entry = {k: v for k, v in asdict(exchange).items() if k != "cached"}
        self._entries[key] = entry
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, **entry}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def load_journal(path: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            data = json.loads(line)
            key = data.pop("key")
            entries[key] = {k: data[k] for k in ("text", "prompt_tokens", "completion_tokens", "seconds")}
        except (json.JSONDecodeError, KeyError, TypeError):
            continue    # a half-written last line after a kill: that exchange was in flight
    return entries
