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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoprune.runlog.events import describe
from autoprune.runlog.trace_file import iter_jsonl_lines
from autoprune.errors import LLMError

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
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:24]


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
        journal = read_journal(self.path)
        self._entries: dict[str, dict] = journal.entries
        if journal.problems and trace is not None:
            trace.emit("note", text="; ".join(journal.problems[:5])
                       + (f"; and {len(journal.problems) - 5} more" if len(journal.problems) > 5 else ""))

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
            try:
                reply = self.client.chat(messages, node=node, **{**self.call_options, **options}, **seeded)
            except LLMError as exc:     # not journaled (a resume asks again); the trace records the failure
                if self.trace is not None:
                    self.trace.emit("llm_response", node=node, key=key, text="", prompt_tokens=0,
                                    completion_tokens=0, seconds=round(time.perf_counter() - started, 3),
                                    cached=False, error=str(exc))
                raise
            exchange = reply_to_exchange(reply, time.perf_counter() - started)
            self._record(key, exchange)
        if self.trace is not None:
            self.trace.emit("llm_response", node=node, key=key, **asdict(exchange))
        return exchange

    def _record(self, key: str, exchange: Exchange) -> None:
        entry = {k: v for k, v in asdict(exchange).items() if k != "cached"}
        self._entries[key] = entry
        with self.path.open("a", encoding="utf-8", errors="backslashreplace") as fh:   # lone surrogates stay JSON
            fh.write(json.dumps({"key": key, **entry}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class JournalEntry(BaseModel):
    """One journaled exchange as written by `_record` (the run folder is input: every line is checked)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    key: str = Field(pattern=r"^[0-9a-f]{24}$")
    text: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    seconds: float = Field(ge=0, allow_inf_nan=False)


@dataclass
class JournalRead:
    entries: dict[str, dict]
    problems: list[str]


def read_journal(path: Path) -> JournalRead:
    """Valid entries by key; other lines are skipped (a truncated last line silently: the exchange was in
    flight when the run was killed) and the rest reported."""
    read = JournalRead({}, [])
    if not path.is_file():
        return read
    for number, raw, complete in iter_jsonl_lines(path):
        if not complete or (raw is not None and not raw.strip()):
            continue
        entry, why = parse_entry(raw) if raw is not None else (None, "too long")
        if entry is None:
            read.problems.append(f"{path.name}:{number}: skipped malformed line ({why})")
            continue
        read.entries[entry.key] = entry.model_dump(exclude={"key"})
    return read


def parse_entry(raw: bytes) -> tuple[Optional[JournalEntry], str]:
    try:     # the json module, not pydantic's parser: it reads a lone surrogate escape back as written
        return JournalEntry.model_validate(json.loads(raw.decode("utf-8"))), ""
    except ValidationError as exc:           # first: it is a ValueError too
        return None, describe(exc)
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except (ValueError, RecursionError):
        return None, "not JSON"


def load_journal(path: Path) -> dict[str, dict]:
    return read_journal(path).entries
