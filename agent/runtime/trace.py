"""`RunTrace`: the run's TraceWriter plus at-most-once events across resumes (docs/trace.md).

A node re-run after a kill announces, judges and scores a candidate again; the events that
name one result (a candidate, its verdict, a fitness at a level, ...) are written once: a
second emit with the same key is skipped. Each mode may add keys (`SearchMode.once_keys`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from autoprune.agent.trace import TraceWriter
from autoprune.runlog.trace_file import read_trace

ONCE_KEYS = {"candidate": ("id",), "verdict": ("id",), "fitness": ("id", "level"), "hypothesis": ("name",),
             "baseline": ("name", "level")}


class RunTrace:
    ONCE_KEYS = ONCE_KEYS

    def __init__(self, run_dir: Path, once_keys: Optional[dict[str, tuple[str, ...]]] = None):
        self.writer = TraceWriter(run_dir)
        self.once_keys = {**self.ONCE_KEYS, **(once_keys or {})}
        self._seen: set[tuple] = set()
        if self.writer.path.is_file():
            for event in read_trace(self.writer.path).events:
                key = self._key(event["type"], event)
                if key is not None:
                    self._seen.add(key)

    def _key(self, type: str, payload: dict) -> Optional[tuple]:
        fields = self.once_keys.get(type)
        return None if fields is None else (type, *(payload.get(f) for f in fields))

    @property
    def path(self) -> Path:
        return self.writer.path

    @property
    def last_seq(self) -> int:
        return self.writer._seq

    def emit(self, type: str, **payload: Any) -> Optional[dict]:
        """Write one event; an at-most-once event already in the trace is skipped (returns None)."""
        key = self._key(type, payload)
        if key is not None:
            if key in self._seen:
                return None
            self._seen.add(key)
        return self.writer.emit(type, **payload)
