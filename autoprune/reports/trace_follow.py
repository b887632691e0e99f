"""Follow a trace.jsonl that may still be growing (tail -f for the replay app).

Only complete lines are consumed: a half-written last line stays unread until
its newline arrives, so a live run is never misread. A run that was killed
mid-write keeps that half line forever; `partial_tail` lets the caller say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autoprune.reports.run_data import RunViewBuilder, check_run_dir, read_config
from autoprune.reports.run_model import RunView
from autoprune.runlog.events import MAX_LINE_BYTES, parse_line
from autoprune.runlog.trace_file import TRACE_FILE


READ_CHUNK = 4 * MAX_LINE_BYTES      # read at a time: memory stays bounded whatever the file holds


@dataclass
class TracePoll:
    events: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class TraceFollower:
    def __init__(self, run_dir_or_file: Path):
        path = Path(run_dir_or_file)
        self.path = path / TRACE_FILE if path.is_dir() else path
        self._offset = 0
        self._line_number = 0
        self._skipping = False           # inside a line longer than MAX_LINE_BYTES: drop up to its newline
        self.partial_tail = b""          # bytes after the last newline (a line being written, or cut)

    def poll(self) -> TracePoll:
        """Events from complete lines written since the previous poll, read READ_CHUNK bytes at a time."""
        result = TracePoll()
        if not self.path.is_file():
            return result
        if self.path.stat().st_size < self._offset:      # file replaced or truncated: start again
            self._offset, self._line_number, self._skipping = 0, 0, False
        with self.path.open("rb") as fh:
            while True:
                fh.seek(self._offset)
                chunk = fh.read(READ_CHUNK)
                self._take_chunk(chunk, result)
                if len(chunk) < READ_CHUNK:
                    return result

    def _take_chunk(self, chunk: bytes, result: TracePoll) -> None:
        end = chunk.rfind(b"\n")
        complete, self.partial_tail = (chunk[: end + 1], chunk[end + 1:]) if end >= 0 else (b"", chunk)
        self._offset += len(complete)
        for raw in complete.split(b"\n")[:-1]:
            self._take(raw, result)
        if len(self.partial_tail) > MAX_LINE_BYTES:       # a line too long to be a real event: skip it
            if not self._skipping:
                self._line_number += 1
                result.problems.append(f"{self.path.name}:{self._line_number}: skipped malformed line "
                                       f"(longer than {MAX_LINE_BYTES} bytes)")
            self._skipping, self._offset, self.partial_tail = True, self._offset + len(self.partial_tail), b""

    def _take(self, raw: bytes, result: TracePoll) -> None:
        if self._skipping:               # the end of an oversized line, already reported
            self._skipping = False
            return
        self._line_number += 1
        if not raw.strip():
            return
        event, why = parse_line(raw) if len(raw) <= MAX_LINE_BYTES else (None, f"longer than {MAX_LINE_BYTES} bytes")
        if event is None:
            result.problems.append(f"{self.path.name}:{self._line_number}: skipped malformed line ({why})")
        else:
            result.events.append(event)

    def tail_notice(self) -> str | None:
        """A notice for a half-written last line, or None when the file ends cleanly."""
        if not self.partial_tail.strip():
            return None
        return (f"{self.path.name}:{self._line_number + 1}: last line is incomplete "
                f"({len(self.partial_tail)} bytes): the run is writing it, or was killed mid-write")


class LiveRun:
    """A RunView kept up to date from a growing trace (the replay app polls `refresh`)."""

    def __init__(self, run_dir: Path):
        self.run_dir = check_run_dir(Path(run_dir))
        self._builder = RunViewBuilder(self.run_dir, read_config(self.run_dir))
        self._follower = TraceFollower(self.run_dir)
        self.refresh()

    @property
    def view(self) -> RunView:
        return self._builder.view

    def refresh(self) -> bool:
        """Fold in events written since the last call; True when anything changed."""
        poll = self._follower.poll()
        for event in poll.events:
            self._builder.add(event)
        self.view.problems.extend(poll.problems)
        return bool(poll.events or poll.problems)

    def notices(self) -> list[str]:
        """Skipped lines, plus a half-written last line while there is one."""
        tail = self._follower.tail_notice()
        return self.view.problems + ([tail] if tail else [])
