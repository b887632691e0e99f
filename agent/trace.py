"""The run's record of truth: `trace.jsonl`, one versioned event per line.

Every node entered/left, prompt, response, candidate, verdict, fitness, rating
and insight is one JSON object: `{"v": 1, "seq": n, "ts": unix_seconds,
"type": ..., ...payload}`. Replay, reports and resume read only this file and
the checkpointer; they read it through `autoprune.runlog` (the format, below this
writer). A killed run may leave a half-written last line: readers skip it and say so
(`TraceReadResult.problems`). Every line is validated (`autoprune/runlog/events.py`): a malformed, oversized or non-UTF-8 line is skipped
and reported the same way, never raised.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from autoprune.runlog.events import EVENT_TYPES, TRACE_VERSION, parse_line
from autoprune.runlog.trace_file import TRACE_FILE, iter_jsonl_lines


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
