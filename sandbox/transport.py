"""Reading the supervisor's stdout on the host: one report line, then the output files.

Shared by both backends. Everything read is capped: noise before the report,
the report line itself and the file bytes (the /out tmpfs cap plus nothing).
The report line goes through `worker_output.parse_report`; a line that does not
parse is recorded in `RawRun.report_error` (an invalid-output verdict later),
never raised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from autoprune.sandbox.protocol import SENTINEL
from autoprune.sandbox.worker_output import SupervisorReport, WorkerOutputError, parse_report

_MAX_PREAMBLE = 64 * 1024
_MAX_REPORT_LINE = 64 * 1024


@dataclass
class RawRun:
    """What a backend observed; `outcome.verdict_from_run` turns it into a verdict."""

    report: Optional[SupervisorReport] = None   # the supervisor's report (None if it never came)
    report_error: str = ""                 # why a report line that came was refused
    files: dict[str, bytes] = field(default_factory=dict)
    output_overflow: bool = False          # the listed outputs exceed the cap
    timed_out: bool = False
    killed_oom: bool = False               # the engine says the container was OOM-killed
    exit_code: Optional[int] = None        # of the container / supervisor process
    noise: str = ""                        # anything printed before the report
    timings: dict[str, float] = field(default_factory=dict)


def _split_files(report: SupervisorReport, data: bytes) -> dict[str, bytes]:
    files, offset = {}, 0
    for name, size in report.files:
        files[name] = data[offset: offset + size]
        offset += size
    return files


def _read_report(chunks, run: RawRun) -> bytes:
    """Read up to the report line; fill `run.report` (or `run.report_error`) and `run.noise`.
    Returns what came after the line."""
    marker, buffer = SENTINEL.encode(), b""
    for chunk in chunks:
        buffer += chunk
        at = buffer.find(marker)
        if at < 0:
            buffer = buffer[-(_MAX_PREAMBLE + len(marker)):]
            continue
        end = buffer.find(b"\n", at)
        if end < 0:
            if len(buffer) - at > _MAX_REPORT_LINE:
                run.noise = buffer[:at][-4096:].decode("utf-8", "replace")
                run.report_error = f"the supervisor report line exceeds {_MAX_REPORT_LINE} bytes"
                return b""
            continue
        run.noise = buffer[:at][-4096:].decode("utf-8", "replace")
        try:
            run.report = parse_report(buffer[at + len(marker): end])
        except WorkerOutputError as exc:
            run.report_error = str(exc)
        return buffer[end + 1:]
    run.noise = buffer[-4096:].decode("utf-8", "replace")
    return b""


def read_supervisor_stream(chunks: Iterable[bytes], cap: int, run: RawRun) -> None:
    """Fill `run.report`, `run.files`, `run.noise` from the stream; stop early past caps."""
    iterator = iter(chunks)
    rest = _read_report(iterator, run)
    if run.report is None:
        return
    expected = run.report.total_bytes
    if expected > cap:
        run.output_overflow = True
        return
    started = time.perf_counter()
    parts, received = [rest], len(rest)
    for chunk in iterator:
        if received >= expected:
            break
        parts.append(chunk)
        received += len(chunk)
    run.files = _split_files(run.report, b"".join(parts)[:expected])
    run.timings["transport"] = time.perf_counter() - started
