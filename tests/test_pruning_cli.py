"""`prune` / `eval` on the command line: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoprune.pruning.config import PruneConfig, make_config
from autoprune.errors import BadInputError, DataError

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,fragment", [
    (["prune", "--method", "wanda", "--sparsity", "1.5"], "sparsity"),
    (["prune", "--method", "wanda", "--sparsity", "0"], "sparsity"),
    (["prune", "--method", "best-metric", "--sparsity", "0.5"], "unknown method"),
    (["prune", "--method", "wanda", "--sparsity", "0.5", "--allocation", "magic"], "unknown allocation"),
    (["prune", "--method", "wanda", "--sparsity", "0.5", "--pattern", "4:2"], "0 < N < M"),
    (["prune", "--method", "missing_candidate.py", "--sparsity", "0.5"], "candidate file not found"),
    (["prune", "--method", "wanda", "--sparsity", "0.5", "--data", "/nonexistent/folder"], "data folder not found"),
    (["prune", "--method", "wanda", "--sparsity", "0.5", "--model", "/nonexistent/model"], "model not found"),
    (["eval", "/nonexistent/model"], "model not found"),
])
def test_bad_inputs_exit_2_with_one_line(args, fragment):
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert fragment in lines[0]
    assert "Traceback" not in done.stderr


def test_pattern_must_divide_every_layer(tmp_path):
    # A tiny local model whose in_features (64) 5:10 cannot divide: rejected before any pruning.
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    from autoprune.models import embedded_model_dir

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "tiny" / name).write_bytes((embedded_model_dir() / name).read_bytes())
    done = run_cli("prune", "--method", "wanda", "--sparsity", "0.5", "--pattern", "5:10",
                   "--model", str(tmp_path / "tiny"))
    assert done.returncode == 2
    assert "does not divide" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_config_validation_in_python(tmp_path):
    with pytest.raises(BadInputError, match="sparsity"):
        make_config(PruneConfig, method="wanda", sparsity=1.0)
    with pytest.raises(DataError):
        make_config(PruneConfig, method="wanda", sparsity=0.5, data=str(tmp_path / "none"))
    candidate = tmp_path / "cand.py"
    candidate.write_text("def score(W, X):\n    return W.abs()\n")
    config = make_config(PruneConfig, method=str(candidate), sparsity=0.5, pattern="2:4")
    assert config.is_candidate_file and config.sparsity_pattern.m == 4


def test_help_lists_the_options():
    done = run_cli("prune", "--help")
    assert done.returncode == 0
    for option in ("--method", "--sparsity", "--pattern", "--allocation", "--reconstruct", "--mode", "--json"):
        assert option in done.stdout
