"""Fidelity levels of search-time fitness (agent/fitness.py) on the embedded model: what each level
costs and how well it ranks candidates, against the top level and against the true target.

Candidates: the generation-0 seeds (Wanda, RIA, magnitude, SparseGPT's OBS saliency) and one-line
metrics of the kinds the agent's LLM and mutation operators write (statistic swaps, blends,
powers, Hessian terms), each at 50 % and 70 % (uniform, unstructured). Per (candidate, sparsity),
all on the same validation windows (second half of validation; the test split is never read):

- ``none@K``: the masked model without refit (search-time fitness before issue 15);
- ``obs@k``: the one-shot OBS refit with the dense XᵀX (factors cached once per layer input, as
  FitnessService does), NLL of the first k windows (the fidelity levels);
- ``exact@K``: the one-shot exact refit (CG from OBS);
- ``target``: what the user's model gets: the SEQUENTIAL exact refit (loop.prune_model with
  PrecomputedMasks and reconstruct="exact": block i's XᵀX through the pruned, refitted blocks before).

Cost per level: refit seconds and forward seconds, separately. Ranking: Spearman's rho over the
candidates of each sparsity (and pooled). Resumable: rows already in the JSON are skipped, each row
is written when done; `--max-minutes` stops starting new rows (the Markdown says how many ran).

    python benchmarks/fitness_levels.py --data ../shared/data/wikitext-2 --max-minutes 22
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import RESULTS, machine, markdown_table
from protocol import add_protocol_args, load_inputs, notes_lines, read_partial, write_atomic

OUT = RESULTS / "fitness_levels.json"
# name -> (expression over W and X, mask group). Seeds first (agent/archive.py's SEED_SOURCES).
CANDIDATES = {
    "seed-wanda": ("W.abs() * X.norm", "row"),
    "seed-sparsegpt": ("W**2 / X.hinv_diag", "row"),
    "seed-ria": ("(A / A.sum(1, keepdim=True) + A / A.sum(0, keepdim=True)) * X.norm.sqrt()", "row"),
    "seed-magnitude": ("W.abs()", "layer"),
    "max-abs": ("W.abs() * X.max_abs", "row"),
    "norm^0.5": ("W.abs() * X.norm.sqrt()", "row"),
    "norm^2": ("W.abs() * X.norm**2", "row"),
    "std": ("W.abs() * X.var.sqrt()", "row"),
    "obs/norm": ("W.abs() * X.norm / X.hinv_diag", "row"),
    "hinv-rsqrt": ("W.abs() * X.hinv_diag.rsqrt()", "row"),
    "blend-max": ("W.abs() * (X.norm + 0.5 * X.max_abs)", "row"),
    "mean-abs": ("W.abs() * (X.mean.abs() + 1e-6)", "row"),
    "wanda-layer": ("W.abs() * X.norm", "layer"),
    "rand-ish": ("W.abs() * X.norm * (1 + W.sign())", "row"),
}


def score_of(expression: str, W: torch.Tensor, X) -> torch.Tensor:
    """The benchmark's own fixed expressions (trusted: this file's text, never a run's)."""
    env = {"W": W, "A": W.abs(), "X": _Rowwise(X), "torch": torch}
    return eval(expression, {"__builtins__": {}}, env)  # noqa: S307 - constant expressions above


class _Rowwise:
    """X's per-input-channel vectors shaped (1, in), so they broadcast against W (out, in)."""

    def __init__(self, stats):
        self._stats = stats

    def __getattr__(self, name):
        return getattr(self._stats, name).reshape(1, -1)


def candidate_masks(model, stats, expression: str, group: str, sparsity: float) -> dict[str, torch.Tensor]:
    from autoprune.adapters import linear_weight
    from autoprune.pruning.calibration import target_linears
    from autoprune.pruning.masks import scores_to_mask

    return {name: scores_to_mask(score_of(expression, linear_weight(m).detach().float(), stats[name]),
                                 sparsity, group=group)
            for name, (_, m) in target_linears(model).items()}


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def mean_nll(values) -> float:
    return float(torch.as_tensor(values).mean())


def measure_row(model, calibration, factors, windows, masks: dict, group: str, sparsity: float, args) -> dict:
    """Every level's NLL (mean over its windows) and its refit / forward seconds, and the target."""
    from autoprune.data import WindowSet
    from autoprune.evaluators.perplexity import window_nlls
    from autoprune.pruning.apply import masks_applied, restore, snapshot_weights, weights_applied
    from autoprune.pruning.calibration import target_linears
    from autoprune.pruning.loop import prune_model
    from autoprune.pruning.mask_refit import refit_weights
    from autoprune.pruning.methods import PrecomputedMasks

    small = args.small
    head, rest = WindowSet(windows.ids[:small], "head"), WindowSet(windows.ids[small:], "rest")
    row: dict = {}
    with masks_applied(model, masks):
        nlls, seconds = timed(lambda: window_nlls(model, windows))
    row["none"] = {"nll": mean_nll(nlls), "refit_s": 0.0, "forward_s": seconds}
    for kind in ("obs", "exact") if args.one_shot_exact else ("obs",):
        weights, refit_s = timed(lambda: refit_weights(model, masks, factors, kind))
        with weights_applied(model, weights):
            first, head_s = timed(lambda: window_nlls(model, head))
            more, rest_s = timed(lambda: window_nlls(model, rest))
        if kind == "obs":
            row[f"obs@{small}"] = {"nll": mean_nll(first), "refit_s": refit_s, "forward_s": head_s}
        row[f"{kind}@{len(windows)}"] = {"nll": mean_nll(torch.cat([first, more])), "refit_s": refit_s,
                                         "forward_s": head_s + rest_s}
    dense = snapshot_weights(model, target_linears(model))
    try:
        method = PrecomputedMasks(masks, {n: sparsity for n in masks}, group=group)
        _, refit_s = timed(lambda: prune_model(model, calibration, method=method, sparsity=sparsity,
                                               mode="sequential", reconstruct=args.target, progress=False))
        nlls, seconds = timed(lambda: window_nlls(model, windows))
    finally:
        restore(model, dense)
    row["target"] = {"nll": mean_nll(nlls), "refit_s": refit_s, "forward_s": seconds}
    return row


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else float("nan")


def summarise(results: dict) -> dict:
    rows = results["runs"]
    levels = [k for k in next(iter(rows.values()))["levels"] if k != "target"] if rows else []
    top = next((k for k in levels if k.startswith("obs@") and k != f"obs@{results['protocol']['small']}"), None)
    out = {}
    for sparsity in sorted({r["sparsity"] for r in rows.values()}) + ["pooled"]:
        chosen = [r for r in rows.values() if sparsity == "pooled" or r["sparsity"] == sparsity]
        target = [r["levels"]["target"]["nll"] for r in chosen]
        out[str(sparsity)] = {"n": len(chosen), "levels": {
            k: {"rho_target": spearman([r["levels"][k]["nll"] for r in chosen], target),
                "rho_top": spearman([r["levels"][k]["nll"] for r in chosen], [r["levels"][top]["nll"] for r in chosen]),
                "refit_s": sum(r["levels"][k]["refit_s"] for r in chosen) / len(chosen),
                "forward_s": sum(r["levels"][k]["forward_s"] for r in chosen) / len(chosen)}
            for k in levels + ["target"]}}
    return {"top": top, "by_sparsity": out}


def markdown(results: dict) -> str:
    protocol, env, summary = results["protocol"], results["environment"], results.get("summary") or {}
    lines = ["# Search-time fitness levels: cost and rank correlation (embedded model)", "",
             f"- model: {protocol['model']}; calibration: {protocol['calibration']}",
             f"- validation windows: {protocol['validation']} (the test split is not read)",
             f"- candidates: {protocol['candidates_run']} of {len(CANDIDATES)} metrics x sparsities "
             f"{protocol['sparsities']} = {len(results['runs'])} rows (uniform, unstructured)",
             "- levels: none = masked only; obs@k = one-shot OBS refit (dense XᵀX, factors cached per input), "
             "first k windows; exact = one-shot exact refit; target = "
             f"{protocol.get('target', 'sequential exact refit')} (loop.prune_model, PrecomputedMasks), same windows",
             f"- machine: {env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch thread(s), torch "
             f"{env['torch']}; commit {env['commit']} plus uncommitted changes; {env['date']}", ""]
    top = summary.get("top")
    for sparsity, block in summary.get("by_sparsity", {}).items():
        lines += [f"## sparsity {sparsity} ({block['n']} candidates)", "",
                  markdown_table(["level", "refit s", "forward s", f"Spearman vs top ({top})", "Spearman vs target"],
                                 [[k, f"{v['refit_s']:.1f}", f"{v['forward_s']:.1f}", f"{v['rho_top']:.3f}",
                                   f"{v['rho_target']:.3f}"] for k, v in block["levels"].items()]), ""]
    names = list(next(iter(results["runs"].values()))["levels"]) if results["runs"] else []
    table = [[r["candidate"], r["sparsity"]] + [f"{r['levels'][k]['nll']:.4f}" for k in names]
             for r in results["runs"].values()]
    lines += ["## Mean validation NLL per candidate", "", markdown_table(["candidate", "sparsity"] + names, table)]
    extra = results.get("default_protocol_row")
    if extra:                      # rows measured at another protocol (stated in the notes)
        for key, r in extra["runs"].items():
            lines += ["", f"## {key} at seqlen {extra['protocol'].get('seqlen')}, {extra['protocol'].get('windows')} "
                      "windows", "", markdown_table(["level", "mean NLL", "refit s", "forward s"], [
                          [k, f"{v['nll']:.4f}", f"{v['refit_s']:.1f}", f"{v['forward_s']:.1f}"]
                          for k, v in r["levels"].items()])]
    return "\n".join(lines + notes_lines(results)) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    p.set_defaults(nsamples=4)
    p.add_argument("--windows", type=int, default=8, help="validation windows of the top level")
    p.add_argument("--small", type=int, default=2, help="windows of level 0")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=22.0)
    p.add_argument("--target", choices=["exact", "obs"], default="exact", help="the sequential refit of the target")
    p.add_argument("--one-shot-exact", action="store_true", help="also the one-shot exact refit as a level")
    p.add_argument("--cache-dir", type=Path, default=None, help="calibration cache shared by several processes")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report", nargs="+", type=Path, help="merge these JSON files into --out (.json + .md)")
    return p.parse_args(argv)


def merge(paths: list[Path]) -> dict:
    import json

    parts = [json.loads(path.read_text()) for path in paths]
    merged = {"runs": {k: v for part in parts for k, v in part["runs"].items()},
              "environment": parts[0]["environment"], "protocol": dict(parts[0]["protocol"])}
    merged["protocol"]["sparsities"] = sorted({r["sparsity"] for r in merged["runs"].values()})
    merged["protocol"]["candidates_run"] = len({r["candidate"] for r in merged["runs"].values()})
    merged["summary"] = summarise(merged)
    return merged


def main(argv=None) -> None:
    from autoprune.pruning.calibration import collect_activation_stats
    from autoprune.pruning.mask_refit import HessianFactors

    args = parse_args(argv)
    if args.report:
        from protocol import write_report

        write_report(args.report, args.out, merge, markdown)
        return
    if not args.data:
        raise SystemExit("--data is required")
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    results = read_partial(args.out)
    inputs = load_inputs(args, validation_windows=args.windows)
    model, calibration, windows = inputs.model, inputs.calibration, inputs.validation
    stats = collect_activation_stats(model, calibration, with_gram=True, with_hessian=True, cache_dir=args.cache_dir)
    factors = HessianFactors.from_stats(stats)
    results["environment"] = machine()
    done = {r["candidate"] for r in results["runs"].values()}
    for name in args.candidates:         # one candidate at both sparsities, then the next
        if (time.perf_counter() - started) / 60 > args.max_minutes:
            break
        for sparsity in args.sparsities:
            key = f"{name}|{sparsity}"
            if key in results["runs"]:
                continue
            expression, group = CANDIDATES[name]
            masks = candidate_masks(model, stats, expression, group, sparsity)
            row = measure_row(model, calibration, factors, windows, masks, group, sparsity, args)
            results["runs"][key] = {"candidate": name, "expression": expression, "group": group,
                                    "sparsity": sparsity, "levels": row}
            done.add(name)
            results["protocol"] = {"model": inputs.loaded.name, "calibration": calibration.description,
                                   "validation": windows.description, "small": args.small,
                                   "sparsities": args.sparsities, "candidates_run": len(done),
                                   "target": f"sequential {args.target} refit", "threads": args.threads}
            results["summary"] = summarise(results)
            write_atomic(args.out, results)
            args.out.with_suffix(".md").write_text(markdown(results))
            print(key, {k: round(v["nll"], 4) for k, v in row.items()},
                  {k: round(v["refit_s"], 1) for k, v in row.items()}, flush=True)


if __name__ == "__main__":
    main()
