"""Shared by the hostile-run-folder tests (a run folder is input: `--resume`, `report` and `replay` read it
as an attacker may have written it): the real CLI with a user's API key in its environment, the check
that a refusal is one clean line, and an 'attacker' endpoint on loopback that records what reaches it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]
ATTACKER = "http://127.0.0.1:{port}/v1"
HOSTILE_TEXT = "W[/] \x1b]52;c;cHduZWQ=\x07\x1b[2J\x1b[31mFAKE OK\u202e"


def cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": "sk-user-secret", **(env_extra or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_clean_refusal(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "\x1b" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    for word in words:
        assert word in last, last


class Recorder(BaseHTTPRequestHandler):
    """An 'attacker' endpoint on loopback: it only records what reaches it."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *_args):
        pass


@pytest.fixture
def attacker():
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ATTACKER.format(port=server.server_address[1]), Recorder.seen
    server.shutdown()
