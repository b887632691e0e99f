"""Once for real: `autoprune-agent replay` in a tmux terminal, read back with capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from test_report_sample import write_sample_run

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
CLI = Path(sys.executable).parent / "autoprune-agent"


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"], capture_output=True, text=True).stdout


def wait_for(session: str, text: str, timeout: float = 90.0) -> str:   # generous: CI machines are busy
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = capture(session)
        if text in screen:
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared on screen:\n{screen}")


def test_replay_in_a_real_terminal_shows_the_candidate_table(tmp_path):
    run_dir = write_sample_run(tmp_path / "run")
    session = f"autoprune-replay-{uuid.uuid4().hex[:8]}"
    # COLUMNS/LINES (set by pytest's terminal) would override the pane's real size inside the app.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "45",
                    f"{CLI} replay {run_dir}"], check=True, env=env)
    try:
        wait_for(session, "Candidates")
        screen = wait_for(session, "rejected-static")   # the candidate table is drawn
        for text in ("write_code", "rejected-static", "outlier-skew", "37.50", "1580"):
            assert text in screen, text
        subprocess.run(["tmux", "send-keys", "-t", session, "c"], check=True)
        time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", session, "c2", "Enter"], check=True)
        screen = wait_for(session, "max_abs")          # the Code tab shows the candidate's source
        assert "repairs c1" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(["tmux", "has-session", "-t", session],
                                                             capture_output=True).returncode == 0:
            time.sleep(0.2)
        assert subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
