"""The end of a rate search: test perplexity (the only use of the test split), parameters,
measured speed of pruned vs dense, optional zero-shot, and the exported pruned model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from autoprune.agent.rates.config import RatesConfig
from autoprune.agent.rates.evolution import rank
from autoprune.agent.rates.services import RatesServices
from autoprune.data import test_windows
from autoprune.evaluators.latency import tokens_per_second
from autoprune.evaluators.perplexity import perplexity
from autoprune.pruning.structured import STRUCTURE_KEY, LayerStructure, decoder_parameter_count, save_structure_summary


def measure(model, tokenizer, windows, config: RatesConfig) -> dict:
    started = time.perf_counter()
    result = {"test_ppl": perplexity(model, windows),
              "decoder_params": decoder_parameter_count(model),
              "total_params": sum(p.numel() for p in model.parameters())}
    speed = tokens_per_second(model, seqlen=config.eval_seqlen, repeats=config.speed_repeats)
    result["tokens_per_s"] = round(speed["tokens_per_s"], 2)
    result["device"] = speed["device"]
    if config.zeroshot_tasks:
        from autoprune.evaluators.zeroshot import zeroshot_accuracy

        result["zeroshot"] = zeroshot_accuracy(model, tokenizer, config.zeroshot_tasks,
                                               data_dir=Path(config.zeroshot_data) if config.zeroshot_data else None,
                                               limit=config.zeroshot_limit)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def export_model(model, tokenizer, folder: Path, summary: dict) -> str:
    """save_pretrained (its config carries the structure; `load_structured_model` reloads it)
    plus structure.json and summary.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_structure_summary([LayerStructure(**d) for d in getattr(model.config, STRUCTURE_KEY)], folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return str(folder)


def make_finalizer(config: RatesConfig, corpus):
    def finalize(state: dict, s: RatesServices) -> dict:
        windows = test_windows(s.tokenizer, corpus, nwindows=config.eval_windows, seqlen=config.eval_seqlen)
        best = rank(state["population"])[0]
        uniform = next(m for m in state["history"] if m["origin"] == "uniform")
        variants = {"dense": measure(s.model, s.tokenizer, windows, config)}
        for label, member in (("uniform", uniform), ("searched", best)):
            pruned = s.pruned(member["rates"])
            variants[label] = {**measure(pruned, s.tokenizer, windows, config), "id": member["id"],
                               "rates": [round(r, 5) for r in member["rates"]],
                               "ppl_validation": member["fitness"],
                               "params_fraction": round(member["params_fraction"], 5)}
            if label != "searched":
                del pruned
        dense_tps = variants["dense"]["tokens_per_s"]
        for label in ("uniform", "searched"):
            variants[label]["speedup"] = round(variants[label]["tokens_per_s"] / dense_tps, 3)
        llm_members = [m for m in state["history"] if m["origin"] == "llm"]
        final = {"winner": {"id": best["id"], "origin": best["origin"], "ppl_validation": best["fitness"]},
                 "best_llm": rank(llm_members)[0]["id"] if llm_members else None,
                 "test_protocol": windows.description, "test": variants,
                 "outcomes": state.get("outcomes", {}), "evaluated": state.get("evaluated", 0)}
        if s.reconstruct:       # what the refit bought: the uniform vector pruned without it
            final["without_refit"] = {"uniform": {"test_ppl": perplexity(
                s.pruned(uniform["rates"], reconstruct=False), windows)}}
        if config.export:
            final["export"] = export_model(pruned, s.tokenizer, config.run_dir / "model", final)
        return final

    return finalize
