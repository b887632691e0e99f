"""What the LLM buys at a given budget: the same search with three proposers (`--proposer`).

Arms, at equal budget (programs sent to the sandbox; seeds excluded, counted the same way in every arm):
  llm       the LLM writes candidates, trusted mutation rewrites its repeats (the default run);
  mutation  trusted mutation only, of parents drawn MAP-Elites style from the population (no LLM call,
            no LLM server);
  random    random expressions of the same grammar (agent/random_search.py).

Each (sparsity, arm, seed) is one real `autoprune-agent run` (embedded model, Docker sandbox) in its own
folder; a killed benchmark resumes the unfinished runs. Read from each run's trace:
  * best validation perplexity so far after each budgeted candidate, on the FIRST fidelity level's
    windows (every evaluated candidate has them, so the curve compares like with like);
  * the winner's test perplexity (the finale, same test windows for every arm);
  * distinct ranking signatures among the budgeted candidates (agent/rank_equivalence.py);
  * the measured insights at the end of the search (agent/evidence.py: paired effects with 95 % CIs);
  * whether the best-so-far still fell in the second half of the budget.

    python benchmarks/search_ablation.py --data ../shared/data/wikitext-2            # 2 settings x 3 arms x 3 seeds
    python benchmarks/search_ablation.py --data ... --budget 3 --sparsities 0.5 --arms mutation --seeds 0 \\
        --name search_ablation_smoke                                                    # a quick try
    python benchmarks/search_ablation.py --summarize                                    # re-read finished runs
writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table, save_results  # noqa: E402

from autoprune.agent.archive import metric_fingerprint  # noqa: E402
from autoprune.runlog.trace_file import read_trace  # noqa: E402

ARMS = ("llm", "mutation", "random")


def run_dir_of(args: argparse.Namespace, sparsity: float, arm: str, seed: int) -> Path:
    return args.out_dir / f"s{round(sparsity * 100)}-{arm}-seed{seed}-b{args.budget}"


def finished(run_dir: Path) -> bool:
    return (run_dir / "trace.jsonl").is_file() and any(
        e["type"] == "run_finished" for e in read_trace(run_dir).events)


def run_cli(args: argparse.Namespace, run_dir: Path, sparsity: float, arm: str, seed: int) -> float:
    cli = str(Path(sys.executable).with_name("autoprune-agent"))
    command = [cli, "run", "--budget", str(args.budget), "--sparsity", str(sparsity), "--proposer", arm,
               "--seed", str(seed), "--data", args.data, "--test-windows", str(args.test_windows),
               "--fitness-levels", args.fitness_levels, "--out", str(run_dir), "--json"] + args.run_args
    if run_dir.exists():
        command = [cli, "run", "--resume", str(run_dir), "--json"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def perplexity(nlls: list[float]) -> float:
    mean = sum(nlls) / len(nlls)
    return math.exp(mean) if mean < 700 else float("inf")


def summarize_run(run_dir: Path) -> dict:
    events = read_trace(run_dir).events
    summary = next(e for e in reversed(events) if e["type"] == "run_finished")["summary"]
    searched = [e for e in events if e["type"] == "candidate" and e.get("origin") in ARMS]
    sent = {e["id"] for e in events if e["type"] == "verdict" and e.get("submitted") is not None}
    first_level = {e["id"]: e["nlls"] for e in events if e["type"] == "fitness" and e.get("level") == 0}
    seeds = [perplexity(v) for cid, v in first_level.items() if cid.startswith("seed-")]
    order = list(dict.fromkeys(e["id"] for e in searched if e["id"] in sent))
    best, curve = min(seeds, default=float("inf")), []
    for cid in order:
        if cid in first_level:
            best = min(best, perplexity(first_level[cid]))
        curve.append(round(best, 3))
    sources = {e["id"]: e.get("source", "") for e in searched}
    insight = next((e for e in reversed(events) if e["type"] == "insight"), {})
    findings = [f for f in (insight.get("graph") or {}).get("findings", []) if f.get("relation") != "inconclusive"]
    half = len(curve) // 2
    return {"run_dir": str(run_dir), "curve": curve, "seed_best": round(min(seeds, default=float("nan")), 3),
            "first_level_windows": len(next(iter(first_level.values()), [])),
            "signatures": len({metric_fingerprint(sources[cid]) for cid in order if sources.get(cid)}),
            "improved_second_half": bool(curve) and half > 0 and curve[-1] < curve[half - 1],
            "origins": {o: sum(1 for e in searched if e["id"] in sent and e.get("origin") == o) for o in ARMS},
            "winner": (summary.get("best") or {}).get("id"), "test": summary.get("test") or {},
            "llm_calls": summary.get("llm_calls"), "wall_s": (summary.get("timings") or {}).get("wall"),
            "findings": findings}


def aggregate(runs: dict) -> dict:
    """Per (sparsity, arm): mean and spread over seeds of the curve at checkpoints and of the test ppl."""
    groups: dict[str, list[dict]] = {}
    for key, run in runs.items():
        groups.setdefault(key.rsplit("-seed", 1)[0], []).append(run)
    out = {}
    for key, members in sorted(groups.items()):
        length = min(len(r["curve"]) for r in members)
        checkpoints = sorted({k for k in (10, 20, 30, 40, 50) if k <= length} | ({length} if length else set()))
        winner_test = [r["test"].get("sdsa") or r["test"].get("uniform") for r in members]
        winner_test = [v for v in winner_test if isinstance(v, (int, float))]
        out[key] = {"seeds": len(members), "checkpoints": {str(k): mean_sd([r["curve"][k - 1] for r in members])
                                                           for k in checkpoints},
                    "winner_test": mean_sd(winner_test), "signatures": mean_sd([r["signatures"] for r in members]),
                    "improved_second_half": sum(r["improved_second_half"] for r in members),
                    "llm_calls": mean_sd([r["llm_calls"] or 0 for r in members])}
    return out


def mean_sd(values: list[float]) -> list[float]:
    if not values:
        return [float("nan"), float("nan")]
    return [round(statistics.fmean(values), 3), round(statistics.stdev(values), 3) if len(values) > 1 else 0.0]


def fmt(pair: list[float]) -> str:
    mean, sd = pair
    return "–" if mean != mean else f"{mean:.2f} ± {sd:.2f}"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Search ablation: what the LLM buys at budget {result['budget']}", "",
             f"Machine: {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), torch {m['torch']}, no GPU; "
             "shared with other jobs while it ran (times are not comparable across rows). "
             f"Commit {result['commit']}.", "",
             f"Protocol: the embedded default (SmolLM2-135M-Instruct pruned; the same model as the LLM in arm "
             f"`llm`), Docker sandbox, fitness levels {result['fitness_levels']} windows of 512 (second half of "
             f"WikiText-2 validation), final test perplexity on the first {result['test_windows']}×512 test "
             "windows. Best-so-far = lowest validation perplexity on the first fidelity level's "
             f"{result.get('first_level_windows', '?')} windows (shared by every candidate), seeds included "
             "as the starting point. Mean ± sd over seeds.", ""]
    agg = result["aggregate"]
    if agg:
        checkpoints = sorted({k for row in agg.values() for k in row["checkpoints"]}, key=int)
        header = ["sparsity / arm", "seeds"] + [f"best @ {k}" for k in checkpoints] + [
            "winner test ppl", "distinct signatures", "still improving in 2nd half", "LLM calls"]
        rows = [[key, row["seeds"]] + [fmt(row["checkpoints"].get(k, [float("nan")] * 2)) for k in checkpoints]
                + [fmt(row["winner_test"]), fmt(row["signatures"]), f"{row['improved_second_half']}/{row['seeds']}",
                   fmt(row["llm_calls"])] for key, row in agg.items()]
        lines += ["## Best validation perplexity vs budget", "", markdown_table(header, rows), ""]
    lines += ["## Measured insights (paired NLL on common windows; 95% bootstrap CI)", ""]
    for key, run in sorted(result["runs"].items()):
        for f in run["findings"][:5]:
            lines.append(f"- {key}: **{f['name']}** {f['relation']} 'it lowers NLL': {f['mean_nll_diff']:+.4f} "
                         f"(CI {f['ci_low']:+.4f} to {f['ci_high']:+.4f}; ppl {f['ppl_change_pct']:+.1f}%), "
                         f"{f['pairs']} pairs / {f['windows']} windows")
    if not any(run["findings"] for run in result["runs"].values()):
        lines.append("- no single-ingredient comparison had an interval excluding zero")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--test-windows", type=int, default=64)
    parser.add_argument("--fitness-levels", default="8,32", help="first level's windows = the curve's windows")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/autoprune-bench-search-ablation"))
    parser.add_argument("--name", default="search_ablation", help="results file name under benchmarks/results/")
    parser.add_argument("--summarize", action="store_true", help="only re-read finished runs")
    parser.add_argument("--note", action="append", default=[], help="what limits the result (repeatable)")
    parser.add_argument("--run-args", nargs=argparse.REMAINDER, default=[], help="more `run` flags, last")
    args = parser.parse_args()
    runs, walls = {}, {}
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        for arm in args.arms.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                run_dir = run_dir_of(args, sparsity, arm, seed)
                if not args.summarize and not finished(run_dir):
                    walls[run_dir.name] = round(run_cli(args, run_dir, sparsity, arm, seed), 1)
                if finished(run_dir):
                    runs[f"{round(sparsity * 100)}% {arm}-seed{seed}"] = summarize_run(run_dir)
    from common import git_commit

    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    result = {"machine": machine(), "commit": git_commit() + (" plus uncommitted changes" if dirty else ""),
              "budget": args.budget, "test_windows": args.test_windows, "fitness_levels": args.fitness_levels,
              "first_level_windows": next((r["first_level_windows"] for r in runs.values()), None),
              "runs": runs, "aggregate": aggregate(runs), "walls_s": walls, "notes": args.note}
    save_results(args.name, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
