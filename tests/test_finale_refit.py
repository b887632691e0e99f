"""The finale through the real agent graph on a tiny Llama: the winner with and without the sequential
exact refit, next to the `prune --method` baselines and dense, on the same test windows; allocations
chosen on validation; the test split read only for what is reported; baselines from the cache.

Only the LLM is scripted (the real client against a loopback server); sandbox, fitness, layer loop,
refit, baselines, cache, export and report are the real ones. Test evaluations are counted with a
forward hook on the model (a test window going through it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.agent.archive import write_seeds
from autoprune.agent.graph import build_graph
from autoprune.agent.state import initial_state

from agent_support import ScriptedLLM, default_replies, random_windows, tiny_services
from conftest import tiny_llama_model
from forward_counter_support import ForwardCounter

TEST_WINDOWS = random_windows(3, seed=4)          # what agent_support's finale reads as its test split


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finale-run")
    model = tiny_llama_model()
    replies = {**default_replies(), "write_code": [default_replies()["write_code"][1]]}
    services = tiny_services(model, run_dir, ScriptedLLM(replies), budget=1)
    forwards = ForwardCounter(model, TEST_WINDOWS)
    seed_ids, records = write_seeds(services.run_dir)
    state = build_graph(services).invoke(initial_state("f", seed_ids, records), {"recursion_limit": 500})
    return state, services, forwards.count


def rows_by(final: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["variant"], r["refit"], r["allocation"]): r for r in final["table"]}


def test_winner_is_reported_with_and_without_the_exact_refit_next_to_the_baselines(finished):
    state, services, _ = finished
    final = state["final"]
    chosen, rows = final["chosen_allocation"], rows_by(final)
    assert final["refit"] == "exact"
    assert ("winner", "none", "uniform") in rows and ("winner", "exact", chosen) in rows
    assert ("winner", "none", chosen) in rows or chosen == "uniform"
    for method, refit in (("sparsegpt", "obs"), ("alps", "exact"), ("wanda", "none")):
        assert rows[(method, refit, "uniform")]["test_ppl"] == final["test"][method] > 1
    assert rows[("dense", "-", "-")]["test_ppl"] == final["test"]["dense"]
    exported = [r for r in final["table"] if r.get("exported")]
    assert exported == [rows[("winner", "exact", chosen)]]
    refitted = rows[("winner", "exact", chosen)]["test_ppl"]
    assert 1 < refitted <= rows[("winner", "none", chosen if chosen != "uniform" else "uniform")]["test_ppl"] * 1.05
    assert "validation" in final["test_policy"] and "only for the variants reported" in final["test_policy"]


def test_allocation_is_chosen_on_validation_among_uniform_owl_sdsa_atp(finished):
    state, _, _ = finished
    final = state["final"]
    tuned = {t["allocation"] for t in final["tuning"]}
    assert tuned == {"uniform", "owl", "sdsa", "atp"}
    finalists = {name: ppl for name, ppl in final["validation"].items() if "+" not in name}
    assert len(finalists) == 4 and final["chosen_allocation"] == min(finalists, key=finalists.get)
    sdsa = [t for t in final["tuning"] if t["allocation"] == "sdsa"]
    assert all(t["hyper"]["source"] == "weight" and t["hyper"]["transform"] == "log" for t in sdsa)
    for name, blocks in final["allocations"].items():       # every allocation meets the target exactly
        assert sum(blocks) / len(blocks) == pytest.approx(0.5, abs=1e-3)        # two blocks of equal size


def test_test_split_is_read_only_for_the_reported_variants(finished):
    state, _, test_forwards = finished
    computed = [r for r in state["final"]["table"] if not r.get("cached")]
    assert test_forwards == len(computed) * len(TEST_WINDOWS)


def test_a_second_finale_serves_dense_and_baselines_from_the_cache(finished):
    state, services, _ = finished
    finale = services.finale
    forwards = ForwardCounter(finale.model, TEST_WINDOWS)
    try:
        again = finale.baselines(TEST_WINDOWS)          # what the next run's finale asks on the same windows
    finally:
        forwards.remove()
    assert forwards.count == 0 and all(b["cached"] for b in again.values())
    assert set(again) == {"dense", "wanda", "sparsegpt", "alps"}
    assert {name: b["test_ppl"] for name, b in again.items()} == {name: state["final"]["test"][name] for name in again}


def test_exported_model_is_the_refitted_winner(finished):
    from transformers import LlamaForCausalLM

    from autoprune.evaluators.perplexity import perplexity

    state, _, _ = finished
    final = state["final"]
    exported = LlamaForCausalLM.from_pretrained(final["export"]).eval()
    assert perplexity(exported, TEST_WINDOWS) == pytest.approx(
        final["test"][f"{final['chosen_allocation'].split('(')[0]}+exact"], rel=1e-4)
    summary = json.loads((Path(final["export"]) / "summary.json").read_text())
    assert summary["reconstruct"] == "exact" and summary["allocation"] == final["chosen_allocation"]
    down = exported.model.layers[0].mlp.down_proj.weight
    assert 0.3 < float((down == 0).float().mean()) < 0.7


def test_report_shows_the_table_against_sparsegpt_and_alps(finished):
    from autoprune.reports import build_report

    state, services, _ = finished
    report = build_report(services.run_dir).markdown.read_text()
    assert "| variant | refit | allocation | test ppl | vs SparseGPT | vs ALPS |" in report
    sparsegpt = next(line for line in report.splitlines() if line.startswith("| sparsegpt"))
    assert "| obs | uniform |" in sparsegpt and "| 1.000× |" in sparsegpt
    assert "winner (exported) | exact" in report
    assert "chosen on validation" in report


def test_reconstruct_setting_is_a_choice_and_old_bool_configs_still_load(tmp_path):
    from autoprune.agent.config import RunConfig, load_config, make_config
    from autoprune.errors import BadInputError

    assert make_config(sandbox="process").reconstruct == "exact"
    with pytest.raises(BadInputError, match="unknown reconstruction 'nope'"):
        make_config(reconstruct="nope")
    for stored, expected in ((False, "none"), (True, "obs"), ("obs", "obs")):
        config = json.loads(RunConfig(sandbox="process").model_dump_json())
        (tmp_path / "config.json").write_text(json.dumps({**config, "reconstruct": stored}))
        assert load_config(tmp_path).reconstruct == expected
    (tmp_path / "config.json").write_text(json.dumps({**config, "reconstruct": "lstsq"}))
    with pytest.raises(BadInputError, match="is corrupt: reconstruct: unknown reconstruction"):
        load_config(tmp_path)


def test_cli_refuses_a_bad_reconstruct_value_with_exit_2():
    cli = [sys.executable, "-c", "from autoprune.cli import main; main()"]
    done = subprocess.run(cli + ["run", "--reconstruct", "nope", "--budget", "1"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "unknown reconstruction 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
