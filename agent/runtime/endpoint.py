"""The run's LLM endpoint: the user's, or the embedded server started and stopped with the run.

The embedded server's pid is written to the run folder while it lives: a run killed with -9
cannot stop it, so the next run in that folder (the resume) stops it first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

SERVER_PID_FILE = "embedded_llm_server.pid"


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    embedded: bool

    def describe(self) -> str:
        return f"{self.model} at {self.base_url}"

    def to_dict(self) -> dict:
        return {"base_url": self.base_url, "model": self.model, "embedded": self.embedded}


@contextlib.contextmanager
def llm_endpoint(base_url: Optional[str], model: Optional[str], run_dir: Path) -> Iterator[Endpoint]:
    """The user's endpoint, or the embedded server for the run's duration (stopped on any exit)."""
    if base_url:
        yield Endpoint(base_url, model or "default", False)
        return
    from autoprune.agent.embedded_server import embedded_llm_server

    stop_stale_server(run_dir)
    with embedded_llm_server(log_dir=run_dir) as server:
        (run_dir / SERVER_PID_FILE).write_text(str(server.pid))
        try:
            yield Endpoint(server.base_url, server.model, True)
        finally:
            (run_dir / SERVER_PID_FILE).unlink(missing_ok=True)


def stop_stale_server(run_dir: Path) -> None:
    """A run killed with -9 cannot stop its embedded server: the resumed run does it."""
    path = run_dir / SERVER_PID_FILE
    if not path.is_file():
        return
    try:
        pid = int(path.read_text(encoding="ascii", errors="replace")[:20].strip())
    except (OSError, ValueError):
        pid = 0
    if pid > 1 and is_embedded_server(pid):     # still ours (the folder may name any pid): stop its group
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if wait_gone(pid, grace):
                break
    path.unlink(missing_ok=True)


def is_embedded_server(pid: int) -> bool:
    """`pid` leads its own process group and runs an embedded LLM server on loopback (agent/embedded_server.py)."""
    from autoprune.agent.embedded_server import is_server_command

    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leads_group = os.getpgid(pid) == pid
    except (OSError, ProcessLookupError):
        return False
    return leads_group and is_server_command(args)


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower():
                return True
        except OSError:
            return True     # gone
        time.sleep(0.2)
    return False
