"""`prune --dtype bf16` and `eval --dtype fp16` on the command line: the exported model is bf16,
its perplexities are finite, and `eval` in fp16 reads it back to nearly the same perplexity."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]


def run_json(*args: str) -> dict:
    done = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_prune_bf16_then_eval_fp16(tiny_llama_dir, wikitext_dir, tmp_path):
    out = tmp_path / "pruned"
    pruned = run_json("prune", "--model", str(tiny_llama_dir), "--method", "sparsegpt", "--sparsity", "0.5",
                      "--dtype", "bf16", "--data", str(wikitext_dir), "--nsamples", "2", "--seqlen", "64",
                      "--eval-windows", "2", "--out", str(out))
    assert math.isfinite(pruned["perplexity"]["pruned"]) and pruned["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    evaluated = run_json("eval", str(out), "--dtype", "fp16", "--data", str(wikitext_dir), "--seqlen", "64",
                         "--windows", "2")
    assert evaluated["perplexity"] == pytest.approx(pruned["perplexity"]["pruned"], rel=0.02)
    assert evaluated["sparsity"] == pytest.approx(0.5, abs=1e-3)
