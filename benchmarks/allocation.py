"""Layer-wise sparsity allocation on the embedded model: uniform vs OWL vs SDSA vs ATP, each with its
hyper-parameters chosen on validation windows, under Wanda (one-shot) and SparseGPT (sequential).

Protocol: calibration = prune_baselines' 16×512 random windows (seed 0) from the first half of
WikiText-2 validation; tuning proxy = one-shot Wanda + perplexity on the first --val-windows
512-token consecutive windows of the second half of validation (default 8; the committed results
used 4; disjoint from calibration, never test), the same chosen point is then used by both
pruners; test perplexity on the first 16×512 test windows. Each final configuration also records
its validation perplexity (same windows). Resumable: finished tuning
and configurations are skipped; results are written after each one. Two processes may share the
work (`--pruners wanda` tunes; `--pruners sparsegpt --tuning-from A.json` waits for its tuning),
then `--report A.json B.json` merges them into results/allocation.{json,md}.

    nice python benchmarks/allocation.py --data ../shared/data/wikitext-2 --pruners wanda --out /tmp/a.json
    nice python benchmarks/allocation.py --data ... --pruners sparsegpt --tuning-from /tmp/a.json --out /tmp/b.json
    python benchmarks/allocation.py --report /tmp/a.json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from protocol import add_protocol_args, load_inputs, measure_or_report, notes_lines, read_partial, write_atomic

RESULTS = Path(__file__).parent / "results"
ALLOCATIONS = ("uniform", "owl", "sdsa", "atp")
MODES = {"wanda": "one-shot", "sparsegpt": "sequential"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    p.add_argument("--val-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sparsities", nargs="+", default=["0.7", "0.6", "0.5"])
    p.add_argument("--pruners", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS))
    p.add_argument("--tuning-from", type=Path, help="read the tuning of this result file (wait for it)")
    p.add_argument("--out", type=Path, default=RESULTS / "allocation.json")
    p.add_argument("--report", nargs="+", type=Path, help="merge these JSON files into --out (.json + .md)")
    return p.parse_args(argv)


def tuned_for(args, results: dict, sparsity: str, allocation: str, proxy) -> dict:
    """The tuning of (sparsity, allocation): computed here, or read (and waited for) from --tuning-from."""
    from autoprune.pruning.allocators.tuning import DEFAULT_GRIDS, tune

    table = results.setdefault("tuning", {}).setdefault(sparsity, {})
    while allocation not in table and args.tuning_from is not None:
        theirs = json.loads(args.tuning_from.read_text()) if args.tuning_from.is_file() else {}
        found = theirs.get("tuning", {}).get(sparsity, {}).get(allocation)
        if found is not None:
            table[allocation] = found
            break
        time.sleep(30)
    if allocation not in table:
        started = time.perf_counter()
        table[allocation] = {**tune(allocation, DEFAULT_GRIDS[allocation], proxy).as_dict(),
                             "tuning_s": time.perf_counter() - started}
        print(f"tuned {allocation}@{sparsity}: {table[allocation]['best']} -> "
              f"{table[allocation]['best_score']:.2f}", flush=True)
    return table[allocation]


def measure(args) -> None:
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.models import cache_root
    from autoprune.pruning.allocators.tuning import validation_proxy
    from autoprune.pruning.apply import restore, snapshot_weights
    from autoprune.pruning.calibration import collect_activation_stats, target_linears
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.loop import prune_model

    from common import machine

    torch.set_num_threads(args.threads)
    results = read_partial(args.out)
    inputs = load_inputs(args, validation_windows=args.val_windows)
    loaded, model, calibration, validation, test = (inputs.loaded, inputs.model, inputs.calibration,
                                                    inputs.validation, inputs.test)
    results["protocol"] = {
        "model": loaded.name, "calibration": calibration.description, "validation": validation.description,
        "test": test.description, "tuning_proxy": "one-shot Wanda (dense statistics) + validation perplexity",
        "modes": MODES}
    results["environment"] = {**machine(), "torch_threads": args.threads}
    stats = collect_activation_stats(model, calibration, with_gram=True, with_grad=False,
                                     cache_dir=cache_root() / "calibration", progress=False)
    dense = snapshot_weights(model, target_linears(model))
    if "dense" not in results["runs"]:
        results["runs"]["dense"] = {"method": "dense", "perplexity": perplexity(model, test),
                                    "validation_perplexity": perplexity(model, validation)}
        write_atomic(args.out, results)
    for sparsity in args.sparsities:
        proxy = validation_proxy(model, calibration, validation, method=builtin_method("wanda"),
                                 sparsity=float(sparsity), score=perplexity, dense_stats=stats)
        for allocation in args.allocations:
            tuned = tuned_for(args, results, sparsity, allocation, proxy)
            write_atomic(args.out, results)
            for pruner in args.pruners:
                key = f"{pruner}|{allocation}|{sparsity}"
                if key in results["runs"]:
                    continue
                started = time.perf_counter()
                result = prune_model(model, calibration, method=builtin_method(pruner), sparsity=float(sparsity),
                                     allocation=allocation, allocation_hyper=tuned["best"], mode=MODES[pruner],
                                     dense_stats=stats, progress=False)
                wall = time.perf_counter() - started
                results["runs"][key] = {
                    "pruner": pruner, "allocation": allocation, "sparsity": sparsity, "mode": MODES[pruner],
                    "hyper": tuned["best"], "perplexity": perplexity(model, test),
                    "validation_perplexity": perplexity(model, validation),
                    "overall_sparsity": result.overall_sparsity, "block_sparsity": result.block_sparsity,
                    "prune_wall_s": wall}
                restore(model, dense)
                write_atomic(args.out, results)
                run = results["runs"][key]
                print(f"{key}: test {run['perplexity']:.2f} val {run['validation_perplexity']:.2f} "
                      f"({wall:.0f} s)", flush=True)


def merge(paths: list[Path]) -> dict:
    merged: dict = {"runs": {}, "tuning": {}}
    for path in paths:
        part = json.loads(path.read_text())
        merged["runs"].update(part.get("runs", {}))
        for sparsity, table in part.get("tuning", {}).items():
            merged["tuning"].setdefault(sparsity, {}).update(table)
        for key in ("protocol", "environment"):
            merged.setdefault(key, part.get(key))
    return merged


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: dict) -> str:
    env, protocol, runs = results.get("environment") or {}, results.get("protocol") or {}, results["runs"]
    lines = ["# Layer-wise sparsity allocation (WikiText-2 perplexity)", "",
             f"- model: {protocol.get('model')}", f"- calibration: {protocol.get('calibration')}",
             f"- hyper-parameters chosen on: {protocol.get('validation')} ({protocol.get('tuning_proxy')})",
             f"- test: {protocol.get('test')}", f"- pruners: {protocol.get('modes')}",
             f"- machine: {env.get('cpu')} ({env.get('cores')} cores, {env.get('torch_threads')} torch thread(s) "
             f"per process), GPU {env.get('gpu')}; torch {env.get('torch')}, transformers {env.get('transformers')}",
             f"- commit: {env.get('commit')}", ""]
    if "dense" in runs:
        lines += [f"Dense: test **{runs['dense']['perplexity']:.2f}**, validation "
                  f"{runs['dense']['validation_perplexity']:.2f}", ""]
    lines += ["## Test perplexity (validation perplexity)", "",
              "| sparsity | pruner | " + " | ".join(ALLOCATIONS) + " |", "| --- | --- |" + " ---: |" * len(ALLOCATIONS)]
    sparsities = sorted({r["sparsity"] for k, r in runs.items() if k != "dense"}, reverse=True)
    for sparsity in sparsities:
        for pruner in MODES:
            cells = []
            for allocation in ALLOCATIONS:
                run = runs.get(f"{pruner}|{allocation}|{sparsity}")
                cells.append("-" if run is None else f"{fmt(run['perplexity'])} ({fmt(run['validation_perplexity'])})")
            lines.append(f"| {sparsity} | {pruner} ({MODES[pruner]}) | " + " | ".join(cells) + " |")
    lines += ["", "## Tuning (proxy: validation perplexity, lower is better; chosen point in bold)", "",
              "| sparsity | allocation | grid point | validation ppl |", "| --- | --- | --- | ---: |"]
    for sparsity in sorted(results.get("tuning", {}), reverse=True):
        for allocation, tuned in results["tuning"][sparsity].items():
            for point in tuned["scores"]:
                chosen = point["hyper"] == tuned["best"]
                text = json.dumps(point["hyper"]) if point["hyper"] else "(none)"
                lines.append(f"| {sparsity} | {allocation} | {'**' + text + '**' if chosen else text} | "
                             f"{fmt(point['score'])} |")
    return "\n".join(lines + notes_lines(results)) + "\n"


def main(argv=None) -> None:
    measure_or_report(parse_args(argv), measure, merge, markdown)


if __name__ == "__main__":
    main()
