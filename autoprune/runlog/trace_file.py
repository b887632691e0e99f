"""Reading `trace.jsonl`, one versioned event per line (docs/trace.md).

A killed run may leave a half-written last line: readers skip it and say so
(`TraceReadResult.problems`). Every line is validated (`autoprune.runlog.events`):
a malformed, oversized or non-UTF-8 line is skipped and reported the same way, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from autoprune.errors import TraceError
from autoprune.runlog.events import MAX_LINE_BYTES, parse_line

TRACE_FILE = "trace.jsonl"


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
