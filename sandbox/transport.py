"""Reading the supervisor's stdout on the host: one report line, then the output files.

Shared by both backends. Everything read is capped: noise before the report,
the report line itself and the file bytes (the /out tmpfs cap plus nothing).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from autoprune.sandbox.protocol import SENTINEL

_MAX_PREAMBLE = 64 * 1024
_MAX_REPORT_LINE = 64 * 1024


@dataclass
class RawRun:
    """What a backend observed; `outcome.verdict_from_run` turns it into a verdict."""

    report: Optional[dict] = None          # the supervisor's report (None if it never came)
    files: dict[str, bytes] = field(default_factory=dict)
    output_overflow: bool = False          # the listed outputs exceed the cap
    timed_out: bool = False
    killed_oom: bool = False               # the engine says the container was OOM-killed
    exit_code: Optional[int] = None        # of the container / supervisor process
    noise: str = ""                        # anything printed before the report
    timings: dict[str, float] = field(default_factory=dict)


def _split_files(report: dict, data: bytes) -> dict[str, bytes]:
    files, offset = {}, 0
    for name, size in report.get("files", []):
        files[str(name)] = data[offset: offset + int(size)]
        offset += int(size)
    return files


def read_supervisor_stream(chunks: Iterable[bytes], cap: int, run: RawRun) -> None:
    """Fill `run.report`, `run.files`, `run.noise` from the stream; stop early past caps."""
    buffer = b""
    iterator = iter(chunks)
    for chunk in iterator:
        buffer += chunk
        at = buffer.find(SENTINEL.encode())
        if at < 0:
            buffer = buffer[-(_MAX_PREAMBLE + len(SENTINEL)):]
            continue
        end = buffer.find(b"\n", at)
        if end < 0:
            if len(buffer) - at > _MAX_REPORT_LINE:
                return
            continue
        run.noise = buffer[:at][-4096:].decode("utf-8", "replace")
        try:
            run.report = json.loads(buffer[at + len(SENTINEL): end])
        except ValueError:
            return
        buffer = buffer[end + 1:]
        break
    if run.report is None:
        run.noise = buffer[-4096:].decode("utf-8", "replace")
        return
    try:
        expected = sum(int(size) for _, size in run.report.get("files", []))
    except (TypeError, ValueError):
        run.report = None
        return
    if expected > cap:
        run.output_overflow = True
        return
    started = time.perf_counter()
    parts = [buffer]
    received = len(buffer)
    for chunk in iterator:
        if received >= expected:
            break
        parts.append(chunk)
        received += len(chunk)
    run.files = _split_files(run.report, b"".join(parts)[:expected])
    run.timings["transport"] = time.perf_counter() - started
