"""A bad flag, value or path: one line on stderr, exit code 2, and no torch imported to say so.

Timing is measured by benchmarks/cli_latency.py; here each case runs the real entry point in a
fresh interpreter and checks what it printed and which heavy modules it had to import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autoprune import __version__

HEAVY = ("torch", "transformers", "langgraph", "docker")
PROBE = """
import json, sys
from autoprune.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def run_cli(*argv: str, cwd=None) -> tuple[dict, str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    *out, probe = done.stdout.strip().splitlines()
    return json.loads(probe), "\n".join(out), done.stderr.strip()


BAD_FLAGS = [
    ("prune", "--bogus"),
    ("eval", "--bogus", "x"),
    ("run", "--bogus"),
    ("search-rates", "--bogus"),
    ("search-rates", "--budget", "x"),
    ("sandbox", "check", "--bogus"),
    ("report",),                                      # a missing argument
    ("prune", "--method", "wanda", "--sparsity", "half"),
]
BAD_VALUES = [
    (("prune", "--method", "wanda", "--sparsity", "0"), "sparsity"),
    (("prune", "--method", "bogus", "--sparsity", "0.5"), "unknown method 'bogus'"),
    (("prune", "--method", "wanda", "--sparsity", "0.5", "--pattern", "5:4"), "pattern '5:4'"),
    (("prune", "--method", "wanda", "--sparsity", "0.5", "--allocation", "nope"), "unknown allocation 'nope'"),
    (("prune", "--method", "wanda", "--sparsity", "0.5", "--reconstruct", "nope"), "unknown reconstruction"),
    (("prune", "--method", "missing.py", "--sparsity", "0.5"), "candidate file not found"),
    (("prune", "--method", "wanda", "--sparsity", "0.5", "--model", "/nonexistent"), "model not found"),
    (("prune", "--method", "wanda", "--sparsity", "0.5", "--data", "/nonexistent"), "data folder not found"),
    (("eval", "/nonexistent"), "model not found"),
    (("run", "--budget", "0"), "budget"),
    (("run", "--sparsity", "1.5"), "sparsity"),
    (("run", "--pattern", "5:4"), "pattern '5:4'"),
    (("run", "--fitness-levels", "a,b"), "--fitness-levels"),
    (("run", "--gpus", "nope"), "--gpus"),
    (("run", "--model", "/nonexistent"), "model not found"),
    (("run", "--data", "/nonexistent"), "data folder not found"),
    (("run", "--resume", "/nonexistent"), "not a run folder"),
    (("search-rates", "--target-params", "1.5"), "--target-params"),
    (("search-rates", "--importance", "nope"), "--importance"),
    (("search-rates", "--device", "tpu"), "is not a device"),
    (("search-rates", "--low", "0.5", "--high", "0.2"), "rate bounds"),
    (("search-rates", "--model", "/nonexistent"), "model not found"),
    (("search-rates", "--data", "/nonexistent"), "data folder not found"),
    (("search-rates", "--resume", "--run-dir", "/nonexistent"), "not a run folder"),
]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=" ".join)
def test_a_bad_flag_is_one_line_and_exit_2(argv):
    probe, out, err = run_cli(*argv)
    assert probe["code"] == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "--help" in err, err
    assert out == ""
    assert probe["heavy"] == [], f"{argv}: imported {probe['heavy']} to reject a flag"


@pytest.mark.parametrize("argv,message", BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_a_bad_value_or_path_is_answered_before_torch(argv, message, tmp_path):
    probe, _, err = run_cli(*argv, cwd=tmp_path)
    assert probe["code"] == 2 and len(err.splitlines()) == 1 and message in err, err
    assert probe["heavy"] == [], f"{argv}: imported {probe['heavy']} to reject a value"
    assert list(tmp_path.iterdir()) == [], f"{argv}: left files behind (a run folder?) while refusing"


def test_version_and_help_import_nothing_heavy():
    probe, out, _ = run_cli("--version")
    assert (probe["code"], out) == (0, f"autoprune-agent {__version__}") and probe["heavy"] == []
    probe, out, _ = run_cli("--help")
    assert probe["code"] == 0 and "prune" in out and "search-rates" in out and probe["heavy"] == []
