"""The run's record of truth: `trace.jsonl`, one versioned event per line.

Every node entered/left, prompt, response, candidate, verdict, fitness, rating
and insight is one JSON object: `{"v": 1, "seq": n, "ts": unix_seconds,
"type": ..., ...payload}`. Replay, reports and resume read only this file and
the checkpointer. A killed run may leave a half-written last line: readers
skip it and say so (`TraceReadResult.problems`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from autoprune.errors import TraceError

TRACE_VERSION = 1
TRACE_FILE = "trace.jsonl"

# The closed set of event types (payload keys are documented in docs/trace.md).
EVENT_TYPES = frozenset({
    "run_started", "run_resumed", "run_finished", "run_failed",
    "node_entered", "node_left",
    "llm_request", "llm_response",
    "candidate", "verdict", "fitness", "rating", "tournament",
    "hypothesis", "insight", "baseline", "final_result", "note",
})


class TraceWriter:
    """Appends events to trace.jsonl, flushing and fsyncing each line (a kill loses at most one)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / TRACE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._seq = last_sequence_number(self.path)
        terminate_partial_line(self.path)

    def emit(self, type: str, **payload: Any) -> dict:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown trace event type {type!r}")
        with self._lock:
            self._seq += 1
            event = {"v": TRACE_VERSION, "seq": self._seq, "ts": round(time.time(), 3), "type": type, **payload}
            line = json.dumps(event, default=str, ensure_ascii=False)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return event


@dataclass
class TraceReadResult:
    events: list[dict]
    problems: list[str] = field(default_factory=list)   # human-readable notices (skipped lines)


def iter_trace_lines(path: Path) -> Iterator[tuple[int, str]]:
    with Path(path).open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            yield number, line


def read_trace(run_dir_or_file: Path) -> TraceReadResult:
    """All well-formed events; malformed lines (e.g. a half-written last line) become notices."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / TRACE_FILE
    if not path.is_file():
        raise TraceError(f"no trace at {path}")
    result = TraceReadResult(events=[])
    for number, line in iter_trace_lines(path):
        if not line.strip():
            continue
        event = parse_event(line)
        if event is None:
            last = not line.endswith("\n")
            why = "truncated last line (the run was killed while writing)" if last else "malformed line"
            result.problems.append(f"{path.name}:{number}: skipped {why}")
            continue
        result.events.append(event)
    return result


def parse_event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("v") != TRACE_VERSION or "type" not in event:
        return None
    return event


def last_sequence_number(path: Path) -> int:
    if not path.is_file():
        return 0
    seq = 0
    for _, line in iter_trace_lines(path):
        event = parse_event(line)
        if event is not None:
            seq = max(seq, int(event.get("seq", 0)))
    return seq


def terminate_partial_line(path: Path) -> None:
    """After a kill mid-write, end the half line so the next event starts on its own line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            fh.write(b"\n")
