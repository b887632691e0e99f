"""Evaluators: local zero-shot data, lm-eval on the real model, latency, the registry."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from autoprune.errors import BadInputError, DataError
from autoprune.evaluators.base import EvalRequest
from autoprune.evaluators.latency import (convert_linears_to_2to4, decode_tokens_per_second, follows_2to4,
                                          tokens_per_second)
from autoprune.evaluators.registry import get_evaluator
from autoprune.evaluators.zeroshot_data import LOCAL_TASKS, write_local_task_file

ZEROSHOT = Path(os.environ.get("AUTOPRUNE_TEST_ZEROSHOT",
                               Path(__file__).resolve().parents[2] / "shared" / "data" / "zeroshot"))
# Official split sizes (shared/data/zeroshot/PROVENANCE.md).
EXPECTED_COUNTS = {"boolq": 3270, "rte": 277, "hellaswag": 10042, "winogrande": 1267,
                   "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500, "piqa": 1838}

needs_data = pytest.mark.skipif(not ZEROSHOT.is_dir(), reason="shared zero-shot data not present")


@needs_data
@pytest.mark.parametrize("task", sorted(LOCAL_TASKS))
def test_local_task_files_have_the_official_sizes(task, tmp_path):
    path, count = write_local_task_file(task, ZEROSHOT, tmp_path)
    assert count == EXPECTED_COUNTS[task]
    assert path.read_text().count("\n") == count


def test_unknown_task_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown zero-shot task"):
        write_local_task_file("mmlu", tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="no local data for boolq"):
        write_local_task_file("boolq", tmp_path, tmp_path / "out")


@needs_data
@pytest.mark.slow
def test_zeroshot_through_lm_eval_on_the_embedded_model(embedded_model):
    evaluator = get_evaluator("zeroshot")
    request = EvalRequest(corpus=None, batch_size=8,
                          options={"tasks": ["arc_easy", "piqa"], "data_dir": str(ZEROSHOT), "limit": 12})
    first = evaluator.evaluate(embedded_model.model, embedded_model.tokenizer, request)
    assert first.protocol["examples"] == {"arc_easy": 12, "piqa": 12}
    for key in ("arc_easy/acc", "arc_easy/acc_norm", "piqa/acc"):
        assert 0.0 <= first.metrics[key] <= 1.0
    # Deterministic: the same model and examples give the same accuracies.
    again = evaluator.evaluate(embedded_model.model, embedded_model.tokenizer, request)
    assert again.metrics == first.metrics


def test_latency_measures_a_real_forward(tiny_llama):
    result = tokens_per_second(tiny_llama, seqlen=32, repeats=3)
    assert result["tokens_per_s"] > 0 and math.isfinite(result["tokens_per_s"])
    assert result["device"] == "cpu"


def test_decode_speed_times_real_greedy_generation(tiny_llama):
    result = decode_tokens_per_second(tiny_llama, prompt_len=8, new_tokens=6, repeats=2)
    assert result["tokens_per_s"] > 0 and result["new_tokens"] == 6
    assert result["tokens_per_s"] == pytest.approx(6 / result["median_s"])


def test_2to4_conversion_refuses_weights_that_are_not_2to4(tiny_llama):
    """Converting a dense weight would prune it silently: it is a clear error instead."""
    weight = torch.tensor([[1.0, 0.0, 0.0, 2.0, 0.0, 3.0, 4.0, 0.0]])
    assert follows_2to4(weight)
    assert not follows_2to4(torch.ones(1, 8)) and not follows_2to4(torch.zeros(1, 6))
    with pytest.raises(BadInputError, match="not 2:4 sparse"):
        convert_linears_to_2to4(tiny_llama)


def test_registry_finds_builtins_and_rejects_unknown():
    assert get_evaluator("perplexity").name == "perplexity"
    assert get_evaluator("latency").name == "latency"
    with pytest.raises(BadInputError, match="unknown evaluator"):
        get_evaluator("no-such-evaluator")


@needs_data
def test_eval_command_reports_perplexity_and_zeroshot(tiny_llama_dir, wikitext_dir):
    import json
    import subprocess
    import sys

    command = [sys.executable, "-c", "from autoprune.cli import main; main()", "eval", str(tiny_llama_dir),
               "--data", str(wikitext_dir), "--seqlen", "64", "--windows", "2", "--tasks",
               "wikitext2,arc_easy,rte,latency", "--zeroshot-data", str(ZEROSHOT), "--limit", "4", "--json"]
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert result["perplexity"] > 1 and result["protocol"]["test_windows"] == 2
    assert set(result["zeroshot"]) == {"arc_easy", "rte"}
    assert result["evaluators"]["latency"]["metrics"]["tokens_per_s"] > 0    # an evaluator plugin, by name
    assert all(row["n"] == 4 and 0 <= row["acc"] <= 1 for row in result["zeroshot"].values())
    bad = subprocess.run(command[:3] + ["eval", str(tiny_llama_dir), "--tasks", "mmlu", "--zeroshot-data",
                                        str(ZEROSHOT)], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown zero-shot task" in bad.stderr and "Traceback" not in bad.stderr


@needs_data
def test_finale_zeroshot_reports_winner_wanda_and_dense(tiny_llama_dir):
    """`run --final-tasks`: the finale scores each variant with lm-eval; the report shows the table."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprune.agent.finale import Finale
    from autoprune.reports.render_markdown import render_block
    from autoprune.reports.sections import zeroshot_blocks

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    name = "model.layers.0.mlp.down_proj"
    half = torch.ones_like(model.get_submodule(name).weight, dtype=torch.bool)
    half[:, ::2] = False
    config = SimpleNamespace(final_tasks=["arc_easy"], zeroshot_data=str(ZEROSHOT), zeroshot_limit=4)
    finale = Finale(model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_llama_dir), calibration=None,
                    stats=None, runner=None, fitness=None, test_windows_fn=None, config=config, run_dir=Path("."))
    out = finale.zeroshot({"winner": {name: half}, "wanda_uniform": {name: half}, "dense": None})
    assert out["tasks"] == ["arc_easy"] and set(out["results"]) == {"winner", "wanda_uniform", "dense"}
    assert all(r["arc_easy"]["n"] == 4 and 0 <= r["arc_easy"]["acc"] <= 1 for r in out["results"].values())
    assert bool((model.get_submodule(name).weight != 0).all())          # dense weights restored
    table = render_block(zeroshot_blocks(out)[0], {})
    assert "arc_easy (n=4)" in table and "winner" in table and "dense" in table
