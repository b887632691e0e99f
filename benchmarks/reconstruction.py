"""Reconstruction for a given mask and the ALPS-class baseline on the embedded model: WikiText-2 test
perplexity and wall time of Wanda (no refit), Wanda + OBS, Wanda + exact refit, SparseGPT,
SparseGPT + exact refit and ALPS at 50 / 60 / 70 % and 2:4.

Protocol: prune_baselines' calibration (16×512 random windows, seed 0, first half of validation) and
test windows (the first 16×512 of test); every configuration runs THE layer loop in sequential mode
(statistics of block i collected through the already pruned and refitted blocks 0..i-1). Resumable:
configurations already in the JSON are skipped; results are written after each one. Several
processes may share the work (each its own --out), then `--report A.json B.json` merges them.

    python benchmarks/reconstruction.py --data ../shared/data/wikitext-2 --sparsities 0.5 0.7
    python benchmarks/reconstruction.py --report a.json b.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from protocol import add_protocol_args, load_inputs, measure_or_report, notes_lines, read_partial, write_atomic

RESULTS = Path(__file__).parent / "results"
SPARSITIES = ("0.5", "0.6", "0.7", "2:4")
# (label, method, reconstruction), in the order they are measured at each sparsity.
CONFIGS = (("sparsegpt", "sparsegpt", "none"), ("alps", "alps", "none"), ("wanda+exact", "wanda", "exact"),
           ("sparsegpt+exact", "sparsegpt", "exact"), ("wanda", "wanda", "none"), ("wanda+obs", "wanda", "obs"))
REFERENCE = {"dense": 35.8, "0.5": {"wanda": 78.4, "sparsegpt": 72.6}, "0.6": {"wanda": 192, "sparsegpt": 178},
             "0.7": {"wanda": "1089-1341", "sparsegpt": 341}, "2:4": {"wanda": 257, "sparsegpt": 146}}
ALPS_ANCHORS = {"0.5": "-2 to -3 %", "0.6": "-6 to -8 %", "0.7": "-24 to -29 %", "2:4": "-7 to -9 %"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sparsities", nargs="+", default=list(SPARSITIES))
    p.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS])
    p.add_argument("--out", type=Path, default=RESULTS / "reconstruction.json")
    p.add_argument("--report", nargs="+", type=Path, help="merge these JSON files into --out (.json + .md)")
    return p.parse_args(argv)


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    return git("rev-parse", "HEAD").strip() + (" + uncommitted changes" if dirty else "")


def environment() -> dict:
    import transformers

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "device": "cpu",
            "commit": commit()}


def run_one(model, calibration, test, method: str, reconstruct: str, sparsity: str) -> dict:
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.pruning.loop import prune_model
    from autoprune.pruning.choices import builtin_method

    structured = ":" in sparsity
    started = time.perf_counter()
    result = prune_model(model, calibration, method=builtin_method(method),
                         sparsity=0.5 if structured else float(sparsity),
                         pattern=sparsity if structured else "unstructured", mode="sequential",
                         reconstruct=reconstruct, progress=False)
    wall = time.perf_counter() - started
    return {"method": method, "reconstruct": reconstruct, "sparsity": sparsity, "perplexity": perplexity(model, test),
            "overall_sparsity": result.overall_sparsity, "prune_wall_s": wall}


def measure(args) -> None:
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.pruning.apply import restore, snapshot_weights
    from autoprune.pruning.calibration import target_linears

    torch.set_num_threads(args.threads)
    results = read_partial(args.out)
    inputs = load_inputs(args)
    loaded, model, calibration, test = inputs.loaded, inputs.model, inputs.calibration, inputs.test
    results["protocol"] = {"model": loaded.name, "calibration": calibration.description, "test": test.description,
                           "mode": "sequential (block i's statistics through the pruned and refitted blocks "
                                   "0..i-1)", "damping": "0.01 x mean diag(XtX) for OBS, exact and ALPS"}
    results["environment"] = environment()
    if "dense" not in results["runs"]:
        results["runs"]["dense"] = {"method": "dense", "perplexity": perplexity(model, test)}
        write_atomic(args.out, results)
    dense = snapshot_weights(model, target_linears(model))
    for sparsity in args.sparsities:
        for label, method, reconstruct in CONFIGS:
            key = f"{label}|{sparsity}"
            if label not in args.configs or key in results["runs"]:
                continue
            results["runs"][key] = {"label": label, **run_one(model, calibration, test, method, reconstruct,
                                                              sparsity)}
            restore(model, dense)
            write_atomic(args.out, results)
            run = results["runs"][key]
            print(f"{key}: {run['perplexity']:.2f} ({run['prune_wall_s']:.0f} s)", flush=True)


def merge(paths: list[Path]) -> dict:
    merged: dict = {"runs": {}}
    for path in paths:
        part = json.loads(path.read_text())
        merged["runs"].update(part.get("runs", {}))
        for key in ("protocol", "environment"):
            merged.setdefault(key, part.get(key))
    merged["reference"] = {"one_shot_grid_and_sequential_70": REFERENCE, "alps_vs_sparsegpt_published": ALPS_ANCHORS}
    return merged


def markdown(results: dict) -> str:
    env, protocol, runs = results.get("environment") or {}, results.get("protocol") or {}, results["runs"]
    lines = ["# Reconstruction for a given mask and the ALPS-class baseline (WikiText-2 test perplexity)", "",
             f"- model: {protocol.get('model')}", f"- calibration: {protocol.get('calibration')}",
             f"- test: {protocol.get('test')}", f"- statistics: {protocol.get('mode')}",
             f"- damping: {protocol.get('damping')}",
             f"- machine: {env.get('processor')} ({env.get('torch_threads')} torch thread(s) per process), "
             f"{env.get('device')}; python {env.get('python')}, torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}", f"- commit: {env.get('commit')}", ""]
    if "dense" in runs:
        lines += [f"Dense: **{runs['dense']['perplexity']:.2f}**", ""]
    labels = [c[0] for c in CONFIGS]
    lines += ["Perplexity (prune wall seconds, sequential, including the block forward passes):", "",
              "| sparsity | " + " | ".join(labels) + " | ALPS vs SparseGPT |",
              "| --- | " + " | ".join("---:" for _ in labels) + " | ---: |"]
    for sparsity in SPARSITIES:
        cells = []
        for label in labels:
            run = runs.get(f"{label}|{sparsity}")
            cells.append("-" if run is None else f"{run['perplexity']:.2f} ({run['prune_wall_s']:.0f} s)")
        alps, sgpt = runs.get(f"alps|{sparsity}"), runs.get(f"sparsegpt|{sparsity}")
        delta = "-" if not (alps and sgpt) else f"{100 * (alps['perplexity'] / sgpt['perplexity'] - 1):+.1f} %"
        lines.append(f"| {sparsity} | " + " | ".join(cells) + f" | {delta} (published {ALPS_ANCHORS[sparsity]}) |")
    return "\n".join(lines + notes_lines(results)) + "\n"


def main(argv=None) -> None:
    measure_or_report(parse_args(argv), measure, merge, markdown)


if __name__ == "__main__":
    main()
