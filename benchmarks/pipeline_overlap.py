"""What the evaluation pipeline buys: the same small run with `--pipeline-depth 0` and `1`.

Runs the real CLI (embedded SmolLM2-135M-Instruct as the LLM, served by the run's own
llama.cpp server with 1 thread; Docker sandbox; the embedded model as the model to prune) with
a fixed seed, small calibration and fitness levels, arms interleaved A B B A so that a load
that drifts over the hour hits both arms alike. From each run folder's trace:

* wall time of the whole command, of the search (run start to the finale) and of the finale,
* LLM seconds (sum of the exchanges), evaluation seconds (sandbox + level-0 fitness, from each
  verdict's `started`/`finished`, plus the graph's promotions from `fitness` events),
* overlap: seconds in which an LLM exchange and an evaluation ran at once,
* idle: search seconds in which neither the LLM nor the evaluator worked (the graph's own work),
  and the seconds each side waited,
* candidates sent, verdicts, the best validation perplexity of an LLM candidate.

    python benchmarks/pipeline_overlap.py --data ../shared/data/wikitext-2 --budget 6 --repeats 1
    python benchmarks/pipeline_overlap.py --summarize --runs DIR   # re-read finished run folders only
writes benchmarks/results/pipeline_overlap.{json,md}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table, save_results  # noqa: E402

from autoprune.runlog.trace_file import read_trace  # noqa: E402

NAME = "pipeline_overlap"


def command(args: argparse.Namespace, depth: int, run_dir: Path) -> list[str]:
    cli = str(Path(sys.executable).with_name("autoprune-agent"))
    return [cli, "run", "--budget", str(args.budget), "--data", args.data, "--seed", str(args.seed),
            "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--fitness-levels", args.levels,
            "--test-windows", str(args.test_windows), "--reconstruct", "none", "--search-refit", args.search_refit,
            "--pipeline-depth", str(depth),
            "--out", str(run_dir), "--json"]


def union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def length(spans: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in spans)


def intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def llm_spans(events: list[dict]) -> list[tuple[float, float]]:
    """Each paid exchange: its request's ts to its response's ts."""
    asked = {}
    spans = []
    for e in events:
        if e["type"] == "llm_request":
            asked[e["key"]] = e["ts"]
        elif e["type"] == "llm_response" and not e.get("cached") and e.get("key") in asked:
            spans.append((asked[e["key"]], e["ts"]))
    return spans


def evaluation_spans(events: list[dict]) -> list[tuple[float, float]]:
    """The pipeline's evaluations (verdict started..finished) and the graph's promotions (fitness events
    of level > 0 end at their ts and took `seconds`)."""
    spans = [(e["started"], e["finished"]) for e in events if e["type"] == "verdict" and e.get("finished")]
    spans += [(e["ts"] - e["seconds"], e["ts"]) for e in events
              if e["type"] == "fitness" and int(e.get("level", 0)) > 0 and e.get("seconds")]
    return spans


def searched(run_dir: Path) -> bool:
    """The run's search is over (its finale started): what this benchmark compares."""
    return (run_dir / "trace.jsonl").is_file() and any(
        e["type"] == "node_entered" and e.get("node") == "finalize" for e in read_trace(run_dir).events)


def summarize(run_dir: Path, wall_s: Optional[float], depth: int) -> dict:
    """One run folder's numbers; `wall_s` None (re-read later): run_started to run_finished (without set-up)."""
    events = read_trace(run_dir).events
    started = next(e["ts"] for e in events if e["type"] == "run_started")
    finale = next(e["ts"] for e in events if e["type"] == "node_entered" and e["node"] == "finalize")
    ended = next((e["ts"] for e in events if e["type"] == "run_finished"), None)    # None: finale still running
    wall_s = (ended - started if ended else None) if wall_s is None else wall_s
    search = [(started, finale)]
    llm = union([(max(a, started), min(b, finale)) for a, b in llm_spans(events)])
    evaluation = union([(max(a, started), min(b, finale)) for a, b in evaluation_spans(events)])
    busy = union(llm + evaluation)
    search_s = finale - started
    verdicts = Counter(e["status"] for e in events if e["type"] == "verdict" and str(e["id"]).startswith("g"))
    llm_ppl = [e["ppl"] for e in events if e["type"] == "fitness" and str(e["id"]).startswith("g")]
    return {"depth": depth, "wall_s": round(wall_s, 1) if wall_s else None, "search_s": round(search_s, 1),
            "finale_s": round(ended - finale, 1) if ended else None, "llm_s": round(length(llm), 1),
            "evaluation_s": round(length(evaluation), 1), "overlap_s": round(intersection(llm, evaluation), 1),
            "idle_s": round(search_s - length(busy), 1), "llm_waits_s": round(search_s - length(llm), 1),
            "evaluator_waits_s": round(search_s - length(evaluation), 1),
            "llm_calls": sum(1 for _ in llm_spans(events)), "sent": sum(1 for e in events if e["type"] == "verdict"
                                                                      and e.get("submitted")),
            "verdicts": dict(verdicts), "best_llm_val_ppl": round(min(llm_ppl), 3) if llm_ppl else None,
            "run_dir": str(run_dir), "window": [round(a, 3) for a in search[0]]}


def measure(args: argparse.Namespace) -> list[dict]:
    """A B B A blocks one run at a time; or, with --concurrent, each block's two arms side by side
    (the same load on both at every moment, but each also loads the other)."""
    order = [0, 1] * args.repeats if args.concurrent else [0, 1, 1, 0] * args.repeats
    runs = []
    step = 2 if args.concurrent else 1
    for i in range(0, len(order), step):
        arms = [(depth, args.runs / f"depth{depth}-{i + j}") for j, depth in enumerate(order[i:i + step])]
        started = time.perf_counter()
        procs = [(depth, run_dir, subprocess.Popen(command(args, depth, run_dir), stdout=subprocess.DEVNULL))
                 for depth, run_dir in arms]
        for depth, run_dir, proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"the run in {run_dir} failed")
            runs.append(summarize(run_dir, time.perf_counter() - started if not args.concurrent else None, depth))
            print(runs[-1], flush=True)
    return runs


def mean(rows: list[dict], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r[key] is not None]
    return round(sum(values) / len(values), 1) if values else None


KEYS = ["wall_s", "search_s", "finale_s", "llm_s", "evaluation_s", "overlap_s", "idle_s", "llm_waits_s",
        "evaluator_waits_s"]


def markdown(results: dict) -> str:
    p = results["protocol"]
    lines = ["# Pipeline overlap: the LLM writes while the sandbox and fitness evaluate", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"commit {results['machine']['commit']} plus uncommitted changes. **The machine was shared with "
             "other jobs (other engineers' tests and runs) the whole time: absolute seconds are inflated and "
             "noisy; the arms ran interleaved (A B B A) so that the load hits both alike.**", "",
             f"Protocol: `autoprune-agent run --budget {p['budget']} --seed {p['seed']} --nsamples {p['nsamples']} "
             f"--seqlen {p['seqlen']} --fitness-levels {p['levels']} --test-windows {p['test_windows']} "
             f"--reconstruct none --search-refit {p.get('search_refit', 'obs')} --pipeline-depth D`"
             + (" (both arms at the same time)" if p.get("concurrent") else "")
             + ", embedded LLM (llama.cpp, 1 thread), Docker sandbox, "
             "embedded model pruned at 50 %. Search = run start to the finale. LLM seconds = union of the "
             "exchanges; evaluation = union of the pipeline's candidate evaluations (sandbox + level-0 fitness) "
             "and the graph's promotions; overlap = both at once; idle = neither.", "",
             markdown_table(["depth", "runs"] + KEYS, [[d, len(rows)] + [mean(rows, k) for k in KEYS]
                                                       for d, rows in sorted(group(results["runs"]).items())]),
             "", "Every run:", "",
             markdown_table(["depth"] + KEYS + ["LLM calls", "sent", "verdicts", "best LLM val ppl"],
                            [[r["depth"]] + [r[k] for k in KEYS] + [r["llm_calls"], r["sent"], r["verdicts"],
                                                                   r["best_llm_val_ppl"]]
                             for r in results["runs"]])]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def group(runs: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in runs:
        out.setdefault(r["depth"], []).append(r)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/wikitext-2")
    p.add_argument("--budget", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--levels", default="2,4,8")
    p.add_argument("--test-windows", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1, help="A B B A blocks (A B with --concurrent)")
    p.add_argument("--concurrent", action="store_true", help="run each block's arms at the same time")
    p.add_argument("--search-refit", default="obs", help="the run's --search-refit")
    p.add_argument("--runs", type=Path, default=Path("runs/pipeline_overlap"))
    p.add_argument("--summarize", action="store_true",
                   help="only re-read the run folders under --runs whose search is over")
    p.add_argument("--note", action="append", default=[])
    args = p.parse_args()
    protocol = {k: getattr(args, k) for k in ("budget", "seed", "nsamples", "seqlen", "levels", "test_windows",
                                              "search_refit", "concurrent")}
    if args.summarize:
        runs = [summarize(run_dir, None, int(run_dir.name[5:].split("-")[0]))
                for run_dir in sorted(args.runs.glob("depth*-*"), key=lambda d: int(d.name.split("-")[1]))
                if searched(run_dir)]
        notes = args.note
    else:
        runs, notes = measure(args), args.note
    depth0, depth1 = group(runs).get(0, []), group(runs).get(1, [])
    results = {"machine": machine(), "protocol": protocol, "runs": runs, "notes": notes,
               "wall_s": {str(d): mean(rows, "wall_s") for d, rows in group(runs).items()},
               "commit": machine()["commit"] + " plus uncommitted changes"}
    if depth0 and depth1:
        results["search_speedup"] = round(mean(depth0, "search_s") / mean(depth1, "search_s"), 3)
    save_results(NAME, results, markdown(results))


if __name__ == "__main__":
    main()
