"""`prune --method FILE.py`: every cheap check (the static gate, the file, the flags) runs before the
model is loaded, so a rejected candidate costs a second, not a dense evaluation of the test split.

`--model` names a folder that looks like a model on disk (it passes the flag checks, which only
look at the file system) but cannot be loaded: whichever message wins shows what ran first.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]
GOOD = "def score(W, X):\n    return W.abs() * X.norm\n"


LOAD_FAILED = "could not load model"


def prune(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    unloadable = tmp_path / "unloadable-model"
    unloadable.mkdir(exist_ok=True)
    (unloadable / "config.json").write_text("{not json")
    started = time.perf_counter()
    done = subprocess.run([*CLI, "prune", "--model", str(unloadable), *args], capture_output=True, text=True,
                          timeout=120)
    return done, time.perf_counter() - started


@pytest.mark.parametrize("source,fragment", [
    ("import os\ndef score(W, X):\n    return W.abs()\n", "import of 'os' is not allowed"),
    ("def score(W):\n    return W.abs()\n", "no top-level 'def score(W, X)'"),
])
def test_a_rejected_candidate_exits_2_with_the_gate_message_before_any_model_load(tmp_path, source, fragment):
    candidate = tmp_path / "cand.py"
    candidate.write_text(source)
    done, seconds = prune(tmp_path, "--method", str(candidate), "--sparsity", "0.5", "--sandbox", "process")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "rejected-static" in lines[0] and fragment in lines[0], lines[0]
    assert LOAD_FAILED not in done.stderr                # the gate ran before the model load
    assert seconds < 20, f"a rejection took {seconds:.1f} s"


@pytest.mark.parametrize("args,fragment", [
    (["--method", "{missing}", "--sparsity", "0.5"], "candidate file not found"),
    (["--method", "{good}", "--sparsity", "1.5"], "sparsity"),
    (["--method", "{good}", "--sparsity", "0.5"], LOAD_FAILED),   # a good file passes on to the load
])
def test_other_cheap_checks_also_come_before_the_model_load(tmp_path, args, fragment):
    good = tmp_path / "good.py"
    good.write_text(GOOD)
    filled = [a.format(good=good, missing=tmp_path / "missing.py") for a in args]
    done, _ = prune(tmp_path, *filled)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in done.stderr, done.stderr
