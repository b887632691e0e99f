"""The run's record of truth: `trace.jsonl`, one versioned event per line.

Every node entered/left, prompt, response, candidate, verdict, fitness, rating
and insight is one JSON object: `{"v": 1, "seq": n, "ts": unix_seconds,
"type": ..., ...payload}`. Replay, reports and resume read only this file and
the checkpointer. A killed run may leave a half-written last line: readers
skip it and say so (`TraceReadResult.problems`). Every line is validated
(`agent/trace_events.py`): a malformed, oversized or non-UTF-8 line is skipped
and reported the same way, never raised.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from autoprune.agent.trace_events import EVENT_TYPES, MAX_LINE_BYTES, TRACE_VERSION, parse_line
from autoprune.errors import TraceError

TRACE_FILE = "trace.jsonl"


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
            with self.path.open("a", encoding="utf-8", errors="backslashreplace") as fh:  # lone surrogate -> JSON escape
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return event


@dataclass
class TraceReadResult:
    events: list[dict]
    problems: list[str] = field(default_factory=list)   # human-readable notices (skipped lines)


def iter_jsonl_lines(path: Path, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Optional[bytes], bool]]:
    """(line number, bytes without the newline or None when over `limit`, whether a newline ended it).
    Reads in bounded pieces: a huge line is skipped without holding it in memory."""
    with Path(path).open("rb") as fh:
        number = 0
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                return
            number += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):       # drop the rest of the oversized line
                    raw = fh.readline(limit + 1)
                yield number, None, raw.endswith(b"\n")
                continue
            complete = raw.endswith(b"\n")
            yield number, raw.rstrip(b"\r\n") if complete else raw, complete


def line_problem(name: str, number: int, why: str, complete: bool) -> str:
    if not complete:
        return f"{name}:{number}: skipped truncated last line (the run was killed while writing)"
    return f"{name}:{number}: skipped malformed line ({why})"


def read_trace(run_dir_or_file: Path) -> TraceReadResult:
    """All well-formed events; malformed lines (e.g. a half-written last line) become notices."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / TRACE_FILE
    if not path.is_file():
        raise TraceError(f"no trace at {path}")
    result = TraceReadResult(events=[])
    for number, raw, complete in iter_jsonl_lines(path):
        if raw is not None and not raw.strip():
            continue
        event, why = parse_line(raw) if raw is not None else (None, f"longer than {MAX_LINE_BYTES} bytes")
        if event is None:
            result.problems.append(line_problem(path.name, number, why, complete))
            continue
        result.events.append(event)
    return result


def last_sequence_number(path: Path) -> int:
    if not path.is_file():
        return 0
    seq = 0
    for _, raw, _ in iter_jsonl_lines(path):
        event = parse_line(raw)[0] if raw is not None else None
        if event is not None:
            seq = max(seq, event["seq"])
    return seq


def terminate_partial_line(path: Path) -> None:
    """After a kill mid-write, end the half line so the next event starts on its own line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            fh.write(b"\n")
