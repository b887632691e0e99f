"""The agent's pure parts: config, budget, tournament, insight graph, parsing, masks, fitness, journal."""

from __future__ import annotations

import math

import pytest
import torch

from autoprune.agent.budget import Budget
from autoprune.agent.config import make_config
from autoprune.agent.fitness import FitnessService
from autoprune.pruning.apply import masks_applied
from autoprune.agent.insights import Evidence, InsightGraph
from autoprune.agent.llm_journal import JournaledLLM
from autoprune.agent.mask_files import load_masks, save_masks
from autoprune.agent.nodes.hypothesise import parse_hypothesis
from autoprune.agent.nodes.reflect import evidence_for, parse_lessons
from autoprune.agent.tournament import bradley_terry, leaderboard, paired_wins, successive_halving
from autoprune.errors import BadInputError

from agent_support import ScriptedLLM, random_windows


def test_config_rejects_bad_values_with_one_line():
    with pytest.raises(BadInputError, match="sparsity"):
        make_config(sparsity=1.5)
    with pytest.raises(BadInputError, match="pattern"):
        make_config(pattern="4:2")
    with pytest.raises(BadInputError, match="llm-base-url"):
        make_config(llm_model="gpt")
    with pytest.raises(BadInputError, match="fitness_levels"):
        make_config(fitness_levels=[8, 2])
    assert make_config(budget=3, pattern="2:4").pattern == "2:4"


def test_config_round_trips_through_the_run_folder(tmp_path):
    from autoprune.agent.config import load_config

    config = make_config(budget=7, seed=3, fitness_levels=[2, 4])
    config.save(tmp_path)
    assert load_config(tmp_path) == config


def test_budget_stops_on_each_cap():
    budget = Budget(candidates=3, llm_calls=5, tokens=100)
    assert budget.stop_reason({"budget_used": 2, "llm_calls": 1, "tokens": {"prompt": 10}}) is None
    assert "candidate budget" in budget.stop_reason({"budget_used": 3})
    assert "LLM call cap" in budget.stop_reason({"budget_used": 0, "llm_calls": 5})
    assert "token cap" in budget.stop_reason({"tokens": {"prompt": 60, "completion": 40}})


def test_paired_comparison_counts_windows_not_means():
    a = [1.0, 1.0, 1.0, 9.0]          # lower on 3 of 4 windows, but a worse mean
    b = [2.0, 2.0, 2.0, 2.0]
    assert paired_wins(a, b) == 3.0 and paired_wins(b, a) == 1.0
    ratings = bradley_terry({"a": a, "b": b})
    assert ratings["a"] > ratings["b"]
    assert math.isclose(sum(ratings.values()) / 2, 1500.0, abs_tol=1e-6)


def test_bradley_terry_orders_a_transitive_field():
    field = {"best": [1.0] * 6, "mid": [2.0] * 6, "worst": [3.0] * 6}
    ratings = bradley_terry(field)
    assert ratings["best"] > ratings["mid"] > ratings["worst"]


def test_successive_halving_promotes_top_half_and_the_reference():
    level0 = {f"c{i}": [float(i)] * 2 for i in range(6)}
    results = successive_halving({0: level0}, num_levels=2, always_promote=["c5"])
    assert set(results[0].promoted) == {"c0", "c1", "c2", "c5"}
    # at the last level nobody is promoted; already-promoted candidates are not promoted twice
    level1 = {c: [float(c[1:])] * 4 for c in ("c0", "c1", "c2", "c5")}
    results = successive_halving({0: level0, 1: level1}, num_levels=2, always_promote=["c5"])
    assert results[0].promoted == [] and results[1].promoted == []
    ratings = {r.level: r.ratings for r in results}
    assert leaderboard({0: level0, 1: level1}, ratings)[:2] == ["c0", "c1"]


def test_insight_graph_tallies_evidence_and_renders_lessons():
    graph = InsightGraph()
    graph.add_hypothesis("rms", "inputs with large RMS matter")
    graph.add_evidence(Evidence("g1", "rms", "ok", "supports", 20.0))
    graph.add_evidence(Evidence("g2", "rms", "crashed", "inconclusive"))
    graph.add_lesson("rms", "RMS  behaves like the norm")
    again = InsightGraph.from_dict(graph.to_dict())
    assert again.tally("rms") == {"supports": 1, "refutes": 0, "inconclusive": 1}
    text = again.render()
    assert "rms: inputs with large RMS matter" in text and "better 1x" in text
    assert "lesson: RMS behaves like the norm" in text


def test_parsers_for_hypotheses_and_lessons():
    h = parse_hypothesis("Sure!\nHYPOTHESIS: Outlier Guard: protect channels with huge max_abs\n", 4)
    assert h == {"name": "outlier-guard", "statement": "protect channels with huge max_abs", "generation": 4}
    fallback = parse_hypothesis("weights near outliers matter more", 2)
    assert fallback["name"] == "h2" and "outliers" in fallback["statement"]
    assert parse_lessons("LESSON: a\nLESSON: norms help here") == ["a", "norms help here"]


def test_evidence_against_wanda_uses_the_common_windows():
    rec = {"id": "c", "status": "ok", "nll": {"0": [1.0, 1.0], "1": [1.0, 1.0, 3.0, 3.0]}}
    wanda = {"nll": {"0": [2.0, 2.0], "1": [2.0, 2.0, 2.0, 2.0]}}
    ev = evidence_for(rec, wanda)          # mean paired difference 0 over 4 windows: no direction
    assert ev.relation == "inconclusive" and "+0.0000" in ev.detail and "4 common windows" in ev.detail


def test_mask_files_round_trip(tmp_path):
    masks = {"a": torch.rand(5, 16) > 0.5, "b": torch.rand(3, 7) > 0.5}
    loaded = load_masks(save_masks(tmp_path / "m.safetensors", masks))
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)


def test_fitness_masks_restore_dense_weights_and_cache(tiny_llama):
    name = "model.layers.0.mlp.down_proj"
    dense = tiny_llama.get_submodule(name).weight.detach().clone()
    fitness = FitnessService(tiny_llama, random_windows(4), [2, 4])
    zero = {name: torch.zeros_like(dense, dtype=torch.bool)}
    with masks_applied(tiny_llama, zero):
        assert tiny_llama.get_submodule(name).weight.abs().sum() == 0
    assert torch.equal(tiny_llama.get_submodule(name).weight, dense)
    base = fitness.evaluate("dense", None, 0)
    pruned = fitness.evaluate("zeroed", lambda: zero, 1)
    assert len(base) == 2 and len(pruned) == 4 and pruned[:2] != base
    assert torch.equal(tiny_llama.get_submodule(name).weight, dense)
    calls = []
    assert fitness.evaluate("zeroed", lambda: calls.append(1) or zero, 1) == pruned and not calls


def test_journal_answers_a_repeated_request_without_calling_the_llm(tmp_path):
    llm = ScriptedLLM({"reflect": ["LESSON: first"]})
    messages = [{"role": "user", "content": "why?"}]
    first = JournaledLLM(llm, tmp_path).chat(messages, node="reflect", seed=1)
    again = JournaledLLM(llm, tmp_path).chat(messages, node="reflect", seed=1)   # a resumed run
    assert len(llm.requests) == 1 and again.cached and again.text == first.text == "LESSON: first"
    assert again.prompt_tokens == first.prompt_tokens
    JournaledLLM(llm, tmp_path).chat(messages, node="reflect", seed=2)
    assert len(llm.requests) == 2


@pytest.mark.parametrize("args, message", [
    (["run", "--sparsity", "2"], "sparsity"),
    (["run", "--gpus", "first"], "--gpus"),
    (["run", "--resume", "/nonexistent/run"], "not a run folder"),
    (["run", "--executor", "ray"], "--ray-address"),
    (["run", "--executor", "slurm"], "executor"),
    (["run", "--workers", "0"], "workers"),
])
def test_cli_run_rejects_bad_input_with_one_line_and_exit_2(args, message, capsys):
    from autoprune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_live_status_shows_budget_verdicts_best_and_wanda():
    from rich.console import Console

    from autoprune.agent.live import status_table

    state = {"generation": 2, "budget_used": 3, "llm_calls": 7, "verdicts": {"ok": 4, "crashed": 2},
             "leaderboard": ["g002-a0", "seed-wanda"], "tokens": {"prompt": 900, "completion": 80},
             "candidates": {"g002-a0": {"fitness": 21.5, "level": 1}, "seed-wanda": {"fitness": 22.25, "level": 1}}}
    console = Console(record=True, width=120)
    console.print(status_table(state, "evaluate", Budget(5, 40, 10_000)))
    text = console.export_text()
    for expected in ("evaluate", "3/5 candidates", "crashed 2, ok 4", "g002-a0 ppl 21.50", "ppl 22.25", "900 prompt"):
        assert expected in text


def test_run_config_checks_the_prompt_set_is_installed():
    from autoprune.agent.config import make_config
    from autoprune.errors import BadInputError

    assert make_config(budget=1).prompts == "gcot"
    with pytest.raises(BadInputError, match="unknown prompt set 'no-such-set'"):
        make_config(budget=1, prompts="no-such-set")
