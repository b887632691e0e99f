"""Baseline grid on the embedded model: dense + {magnitude, wanda, sparsegpt, alps, ria, pruner-zero}
× {uniform, owl, sdsa} × {50%, 60%, 70%, 2:4}: WikiText-2 test perplexity, prune time, peak memory.

Protocol: calibration = 16×512 random windows from the first half of validation (dense statistics
collected once, one-shot, shared by every configuration and cached on disk); test perplexity on
the first 16×512 consecutive test windows. Resumable: configurations already in the JSON are
skipped, results are written after each one.

    python benchmarks/prune_baselines.py --data ../shared/data/wikitext-2            # whole grid
    python benchmarks/prune_baselines.py --data ... --sparsities 0.5                  # one row
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from pathlib import Path

import torch

from autoprune.evaluators.perplexity import perplexity
from autoprune.models import cache_root
from autoprune.pruning.apply import restore, snapshot_weights
from autoprune.pruning.calibration import collect_activation_stats, target_linears
from autoprune.pruning.loop import prune_model
from autoprune.pruning.choices import builtin_method
from autoprune.pruning.methods import peak_rss_mb
from protocol import add_protocol_args, load_inputs, read_partial, write_atomic

RESULTS = Path(__file__).parent / "results"
METHODS = ("magnitude", "wanda", "sparsegpt", "alps", "ria", "pruner-zero")
ALLOCATIONS = ("uniform", "owl", "sdsa")
SPARSITIES = ("0.5", "0.6", "0.7", "2:4")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p, data_required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS))
    p.add_argument("--sparsities", nargs="+", default=list(SPARSITIES), help="ratios or N:M patterns")
    p.add_argument("--mode", default="one-shot", choices=("one-shot", "sequential"))
    p.add_argument("--out", type=Path, default=RESULTS / "prune_baselines.json")
    return p.parse_args(argv)


def config_key(method: str, allocation: str, sparsity: str, mode: str) -> str:
    return f"{method}|{allocation}|{sparsity}|{mode}"


def environment() -> dict:
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": "cpu", "git_commit": commit}


def save_results(path: Path, results: dict) -> None:
    write_atomic(path, results)
    path.with_suffix(".md").write_text(markdown(results))


def run_one(model, calibration, test, stats, method: str, allocation: str, sparsity: str, mode: str) -> dict:
    structured = ":" in sparsity
    pruner = builtin_method(method)
    result = prune_model(model, calibration, method=pruner, sparsity=0.5 if structured else float(sparsity),
                         pattern=sparsity if structured else "unstructured", allocation=allocation, mode=mode,
                         dense_stats=stats, progress=False)
    started = time.perf_counter()
    ppl = perplexity(model, test)
    return {"method": method, "allocation": allocation, "sparsity": sparsity, "mode": mode, "perplexity": ppl,
            "overall_sparsity": result.overall_sparsity, "block_sparsity": result.block_sparsity,
            "prune_s": result.timings["pruning_s"], "eval_s": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    args = parse_args(argv)
    results = read_partial(args.out)
    inputs = load_inputs(args)
    loaded, model, calibration, test = inputs.loaded, inputs.model, inputs.calibration, inputs.test
    results["protocol"] = {"model": loaded.name, "calibration": calibration.description, "test": test.description,
                           "statistics": "per row (mode column): one-shot = dense statistics collected once and "
                                         "shared by every configuration; sequential = collected block by block "
                                         "through the already-pruned earlier blocks (Wanda/SparseGPT style)"}
    results["environment"] = environment()
    if "dense" not in results["runs"]:
        results["runs"]["dense"] = {"method": "dense", "perplexity": perplexity(model, test)}
        save_results(args.out, results)
    print(f"dense: {results['runs']['dense']['perplexity']:.2f}", flush=True)
    started = time.perf_counter()
    # Gradients cost a backward pass per window: only Pruner-Zero needs them.
    stats = collect_activation_stats(model, calibration, with_gram=True, with_grad="pruner-zero" in args.methods,
                                     cache_dir=cache_root() / "calibration", progress=True)
    results["stats_s"] = results.get("stats_s") or time.perf_counter() - started
    dense = snapshot_weights(model, target_linears(model))
    for sparsity in args.sparsities:
        for method in args.methods:
            for allocation in args.allocations:
                key = config_key(method, allocation, sparsity, args.mode)
                if key in results["runs"]:
                    continue
                if ":" in sparsity and allocation != "uniform":
                    results["runs"][key] = {"method": method, "allocation": allocation, "sparsity": sparsity,
                                            "mode": args.mode, "skipped": "N:M fixes every layer's sparsity"}
                    continue
                results["runs"][key] = run_one(model, calibration, test, stats, method, allocation, sparsity, args.mode)
                restore(model, dense)
                save_results(args.out, results)
                print(f"{key}: {results['runs'][key]['perplexity']:.2f}", flush=True)
    save_results(args.out, results)


def markdown(results: dict) -> str:
    env, protocol = results.get("environment", {}), results.get("protocol", {})
    runs = results["runs"]
    lines = ["# Baselines on the embedded model (WikiText-2 test perplexity)", "",
             f"- model: {protocol.get('model')}", f"- calibration: {protocol.get('calibration')}",
             f"- statistics: {protocol.get('statistics')}", f"- test: {protocol.get('test')}",
             f"- machine: {env.get('processor')} ({env.get('cpu_count')} threads), {env.get('device')}; "
             f"python {env.get('python')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"commit {env.get('git_commit')}", ""]
    if "dense" in runs:
        lines += [f"Dense: **{runs['dense']['perplexity']:.2f}**", ""]
    lines += ["| sparsity | method | allocation | mode | perplexity | measured sparsity | prune s | peak RSS MiB |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for key, run in runs.items():
        if key == "dense":
            continue
        if "skipped" in run:
            continue
        lines.append(f"| {run['sparsity']} | {run['method']} | {run['allocation']} | {run['mode']} | "
                     f"{run['perplexity']:.2f} | {run['overall_sparsity']:.4f} | {run['prune_s']:.1f} | "
                     f"{run['peak_rss_mb']:.0f} |")
    skipped = sorted({f"{r['sparsity']} × {r['allocation']}" for r in runs.values() if "skipped" in r})
    if skipped:
        lines += ["", f"Not applicable (N:M fixes every layer's sparsity): {', '.join(skipped)}."]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
