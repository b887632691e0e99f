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


OUT_COMMANDS = [("run",), ("prune", "--method", "wanda", "--sparsity", "0.5")]


@pytest.mark.parametrize("taken", ["non-empty folder", "file"])
@pytest.mark.parametrize("command", OUT_COMMANDS, ids=" ".join)
def test_an_out_that_is_taken_is_refused_before_torch_and_left_alone(command, taken, tmp_path):
    """`run --out DIR` / `prune --out DIR` never write into a folder that holds something, nor over a file."""
    out = tmp_path / "out"
    if taken == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "keep.txt").write_text("keep me")
    probe, _, err = run_cli(*command, "--out", str(out), cwd=tmp_path)
    expected = "exists and is not a folder" if taken == "file" else "exists and is not empty"
    assert probe["code"] == 2 and len(err.splitlines()) == 1 and f"--out {out} {expected}" in err, err
    assert probe["heavy"] == [], f"{command}: imported {probe['heavy']} to refuse --out"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out if taken == "file" else out / "keep.txt").read_text() == "keep me"
    if command == ("run",) and taken != "file":
        assert f"--resume {out}" in err                       # how to continue it instead


def test_an_empty_or_new_out_folder_is_accepted(tmp_path):
    from autoprune.pruning.config import check_output_folder

    (tmp_path / "empty").mkdir()
    for folder in (None, tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert check_output_folder(folder, flag="--out") is None
    assert not (tmp_path / "new").exists()                    # checking creates nothing
