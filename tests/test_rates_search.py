"""Self-Pruner mode: the rate search graph, its trusted validator and fallback, resume, export.

The model is a tiny random Llama with the embedded tokenizer (so WikiText windows fit);
fitness, pruning, statistics and the checkpointer are the real ones. The fast tests replay
fixed LLM replies (a test double for the endpoint) to steer the validator down each path;
the slow test talks to the real embedded SmolLM2 over HTTP.
"""

from __future__ import annotations

import json

import pytest
import torch

from agent_support import ScriptedLLM
from rates_support import LAYERS, small_wikitext, tiny_config, tiny_loaded, tokenizer  # noqa: F401 (fixtures)
from autoprune.agent.rates.config import RatesConfig
from autoprune.agent.rates.mode import run_rates_search
from autoprune.runlog.trace_file import read_trace
from autoprune.errors import BadInputError
from autoprune.pruning.param_budget import kept_parameter_fraction, mean_rate_for_params
from autoprune.pruning.structured import decoder_parameter_count, load_structured_model, prune_structured


def vector(values) -> str:
    return "Parents #1 and #2. Child: " + json.dumps(values)


def test_parameter_fraction_matches_real_pruning(tokenizer):
    loaded = tiny_loaded(tokenizer)
    model = loaded.model
    dense = decoder_parameter_count(model)
    rates = [0.1, 0.6, 0.3, 0.0]
    predicted = kept_parameter_fraction(model, rates)
    from autoprune.data import WindowSet
    from autoprune.pruning.calibration import collect_activation_stats

    stats = collect_activation_stats(model, WindowSet(torch.randint(0, 1000, (2, 16)), "random"))
    prune_structured(model, rates, stats)
    assert predicted == pytest.approx(decoder_parameter_count(model) / dense)


def test_mean_rate_for_params_lands_near_target(tokenizer):
    model = tiny_loaded(tokenizer).model
    rate, kept = mean_rate_for_params(model, 0.7)
    assert 0.0 < rate < 0.9
    assert abs(kept - 0.7) < 0.1          # KV groups are whole: the step function decides how near
    assert kept == pytest.approx(kept_parameter_fraction(model, [rate] * LAYERS))


def test_search_uses_repairs_and_falls_back(tmp_path, tokenizer, small_wikitext):
    config = tiny_config(tmp_path / "run", small_wikitext)
    target = mean_rate_for_params(tiny_loaded(tokenizer).model, 0.7, high=0.8)[0]
    good = [round(target + d, 4) for d in (-0.1, 0.1, 0.05, -0.05)]
    off_a_little = [round(r + 0.01, 4) for r in (target - 0.2, target + 0.2, target, target)]
    llm = ScriptedLLM({"propose": ["I think [0.5, 0.5]", vector(good),          # bad length, then repaired
                                   "no idea", "still no idea",                   # twice wrong: fallback
                                   vector(off_a_little)]})                       # projected onto the mean
    summary = run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=llm)

    assert summary["evaluated"] == 3
    assert summary["outcomes"] == {"llm_repaired": 1, "fallback": 1, "projected": 1}
    repair_prompt = llm.requests[1][1]
    assert "got 2 rates" in repair_prompt[-1]["content"]            # the validator's reason goes back
    events = read_trace(config.run_dir).events
    candidates = [e for e in events if e["type"] == "candidate"]
    assert {e["origin"] for e in candidates} >= {"uniform", "llm", "fallback"}
    for event in candidates:
        rates = json.loads(event["source"])
        assert len(rates) == LAYERS and sum(rates) / LAYERS == pytest.approx(target, abs=1e-5)
    assert sum(e["type"] == "verdict" and e["status"] == "rejected" for e in events) == 3
    assert any(e["type"] == "note" and "fallback" in e["text"] for e in events)


def test_edit_steps_are_applied_by_trusted_code_and_fed_back(tmp_path, tokenizer, small_wikitext):
    config = tiny_config(tmp_path / "run", small_wikitext, budget=2, proposal="edit", export=False)
    llm = ScriptedLLM({"propose": ["parents #1 #2, cut at layer 2, move 0.05 from layer 0 to layer 3",
                                   "parents #1 #1, cut at layer 2",     # = member #1: a duplicate
                                   "parents #2 #1, cut at layer 1, move 0.1 from layer 3 to layer 1"]})
    summary = run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=llm)

    assert summary["outcomes"] == {"llm_edit": 1, "llm_repaired": 1}
    second = llm.requests[1][1]
    assert "parents #1 #2, cut at layer 2, move 0.05 from layer 0 to layer 3" in [m["content"] for m in second]
    assert any(m["content"].startswith("That child reached perplexity") for m in second)  # its result
    repair = llm.requests[2][1][-1]["content"]
    assert "equals a member already evaluated" in repair
    candidates = [e for e in read_trace(config.run_dir).events if e["type"] == "candidate" and e["origin"] == "llm"]
    for event in candidates:
        rates = json.loads(event["source"])
        assert sum(rates) / LAYERS == pytest.approx(summary["mean_rate"], abs=1e-5)
    assert summary["final"]["without_refit"]["uniform"]["test_ppl"] > 0    # the refit's baseline is reported


def test_final_export_reloads_and_reports_speed(tmp_path, tokenizer, small_wikitext):
    """With first-order Taylor importance (gradients on the calibration windows) end to end."""
    config = tiny_config(tmp_path / "run", small_wikitext, budget=1, importance="taylor")
    llm = ScriptedLLM({"propose": ["garbage"]})
    summary = run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=llm)
    started = next(e for e in read_trace(config.run_dir).events if e["type"] == "run_started")
    assert started["config"]["importance"] == "taylor"

    final = summary["final"]
    searched, dense = final["test"]["searched"], final["test"]["dense"]
    assert searched["decoder_params"] < dense["decoder_params"]
    assert searched["speedup"] > 0 and "test" in final["test_protocol"]
    reloaded = load_structured_model(final["export"])
    assert decoder_parameter_count(reloaded) == searched["decoder_params"]
    assert json.loads((config.run_dir / "model" / "summary.json").read_text())["winner"]["id"] == final["winner"]["id"]


def test_unknown_importance_or_proposal_is_a_clear_error(tmp_path, small_wikitext):
    with pytest.raises(BadInputError, match="--importance must be one of activation, taylor"):
        tiny_config(tmp_path / "run", small_wikitext, importance="fisher")
    with pytest.raises(BadInputError, match="--proposal"):
        tiny_config(tmp_path / "run", small_wikitext, proposal="poem")


def test_a_device_this_machine_lacks_is_a_clear_error(tmp_path, small_wikitext):
    for device, message in (("cuda:99", "--device 'cuda:99'"), ("banana", "is not a device"),
                            ("meta", "only cpu and cuda")):
        with pytest.raises(BadInputError, match=message):
            tiny_config(tmp_path / "run", small_wikitext, device=device)


def test_resume_continues_without_redoing_finished_work(tmp_path, tokenizer, small_wikitext):
    config = tiny_config(tmp_path / "run", small_wikitext, budget=2, export=False)
    first = run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=ScriptedLLM({"propose": ["x"]}))
    again = ScriptedLLM({"propose": ["x"]})
    resumed = run_rates_search(RatesConfig(**{**config.__dict__, "resume": True}), loaded=tiny_loaded(tokenizer),
                               llm=again)
    assert again.requests == []                              # finished: nothing asked again
    assert resumed["final"]["winner"] == first["final"]["winner"]
    with pytest.raises(Exception, match="--resume"):
        run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=again)


def test_rate_search_runs_on_the_agent_runtime(tmp_path, tokenizer, small_wikitext):
    """The runtime's guarantees in rate mode: the run_started header names the mode, every LLM
    exchange goes through the journal, node_left carries seconds, the Budget's stop reason is
    recorded, and the report is written from the trace as for program search."""
    from autoprune.agent.llm_journal import JOURNAL_FILE
    from autoprune.reports.run_data import load_run

    config = tiny_config(tmp_path / "run", small_wikitext, budget=1, export=False, reconstruct=False)
    summary = run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=ScriptedLLM({"propose": ["x"]}))
    events = read_trace(config.run_dir).events
    started = next(e for e in events if e["type"] == "run_started")
    assert started["mode"] == "rates" and started["config"]["budget"] == 1 and started["constraint"]["layers"] == LAYERS
    assert (config.run_dir / JOURNAL_FILE).read_text().count("\n") == 2        # two attempts, both journaled
    assert all("seconds" in e for e in events if e["type"] == "node_left")
    assert summary["stop_reason"] == "candidate budget spent (1 offspring evaluated)"
    child = next(e for e in events if e["type"] == "verdict" and e["id"] == "g1" and e["status"] == "ok")
    assert child["submitted"] == 1
    view = load_run(config.run_dir)
    assert view.status == "finished" and "g1" in view.candidates and not view.problems
    assert "g1" in (config.run_dir / "report" / "report.md").read_text()      # written by the runtime


def test_a_failed_rate_search_records_run_failed_and_a_fresh_run_refuses_the_folder(tmp_path, tokenizer,
                                                                                     small_wikitext):
    data = tmp_path / "vanishing-data"
    data.mkdir()
    config = tiny_config(tmp_path / "run", data, budget=1)
    data.rmdir()                      # there when the flags were checked, gone when the search reads it
    with pytest.raises(Exception) as failure:
        run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=ScriptedLLM({"propose": ["x"]}))
    failed = [e for e in read_trace(config.run_dir).events if e["type"] == "run_failed"]
    assert failed and failed[-1]["kind"] == type(failure.value).__name__
    with pytest.raises(BadInputError, match="--resume"):
        run_rates_search(config, loaded=tiny_loaded(tokenizer), llm=ScriptedLLM({"propose": ["x"]}))
    with pytest.raises(BadInputError, match="not a run folder"):
        run_rates_search(tiny_config(tmp_path / "empty", small_wikitext, resume=True), loaded=tiny_loaded(tokenizer))


@pytest.mark.slow
def test_search_on_the_embedded_model_with_the_embedded_llm(tmp_path, small_wikitext):
    """End to end over HTTP on the embedded default: SmolLM2 proposes edit steps for its own
    30 layers, trusted code applies them, the refitted structured model is exported and reloads."""
    from autoprune.cli import main

    run_dir = tmp_path / "run"
    main(["search-rates", "--budget", "3", "--target-params", "0.7", "--run-dir", str(run_dir),
          "--data", str(small_wikitext), "--seqlen", "128", "--nsamples", "8", "--fitness-windows", "2",
          "--eval-seqlen", "128", "--eval-windows", "2", "--population", "4", "--json"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluated"] == 3 and sum(summary["outcomes"].values()) == 3
    assert summary["outcomes"].get("llm_edit", 0) + summary["outcomes"].get("llm_repaired", 0) >= 1
    events = read_trace(run_dir).events
    started = next(e for e in events if e["type"] == "run_started")
    assert started["llm"]["embedded"] and started["llm"]["proposal"] == "edit"
    assert sum(e["type"] == "llm_response" for e in events) >= 3
    final = summary["final"]
    assert final["test"]["uniform"]["test_ppl"] < final["without_refit"]["uniform"]["test_ppl"]
    reloaded = load_structured_model(final["export"])
    assert decoder_parameter_count(reloaded) == final["test"]["searched"]["decoder_params"]
