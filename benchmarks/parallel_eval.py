"""Candidates per hour with 1, 2, 4 evaluation workers (local pool of CPU slices) on the embedded model.

One task = what the agent does with a fresh candidate: run it in the sandbox (Docker), verify its
masks on the host, measure its level-0 fitness (validation perplexity on `--windows`×`--seqlen`
windows). Each worker holds its own resident model and gets an equal slice of the CPU cores
(threads and container CPU quota). The same tasks run under every worker count; the results must
be identical (same NLLs, same masks), and the table says whether they were.

    python benchmarks/parallel_eval.py --data ../shared/data/wikitext-2 --workers 1 2 4
writes benchmarks/results/parallel_eval.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table, save_results  # noqa: E402

from autoprune.agent.executors import EvaluationTask, WorkerSpec, make_executor  # noqa: E402

EXPRESSIONS = [
    "W.abs() * X.norm", "W.abs()", "W.abs() * X.max_abs", "W.pow(2) * X.var",
    "torch.log1p(W.abs()) * X.norm", "W.abs() * (X.sq_mean + X.max_abs).sqrt()",
    "(W.abs() / W.abs().sum(dim=1, keepdim=True) + W.abs() / W.abs().sum(dim=0, keepdim=True)) * X.norm.sqrt()",
    "W.abs() * X.norm * (1 + X.var.sqrt())",
]


def candidate_sources() -> dict[str, str]:
    from autoprune.agent.expression import wrap_expression

    return {f"c{i}": wrap_expression(expr) for i, expr in enumerate(EXPRESSIONS)}


def build_spec(args: argparse.Namespace, folder: Path) -> WorkerSpec:
    from autoprune.data import calibration_windows, load_corpus
    from autoprune.models import load_model
    from autoprune.pruning.calibration import collect_activation_stats
    from autoprune.sandbox.bundle import write_scoring_bundle

    loaded = load_model(None)
    corpus = load_corpus(args.data, model=loaded.model, tokenizer=loaded.tokenizer)
    calibration = calibration_windows(loaded.tokenizer, corpus, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    stats = collect_activation_stats(loaded.model, calibration)
    bundle = write_scoring_bundle(loaded.model, stats, folder / "bundle")
    return WorkerSpec(bundle_dir=str(bundle.folder), model=None, data=args.data, seqlen=args.seqlen,
                      levels=(args.windows,), sparsity=0.5, backend=args.sandbox)


def measure(spec: WorkerSpec, workers: int, tasks: list[EvaluationTask]) -> tuple[dict, list]:
    started = time.perf_counter()
    executor = make_executor("local", spec, workers=workers)
    try:
        executor.map(tasks[:workers])                 # start every worker (model load, first container)
        ready = time.perf_counter()
        results = executor.map(tasks)
        done = time.perf_counter()
    finally:
        executor.close()
    seconds = done - ready
    return ({"workers": workers, "startup_s": round(ready - started, 1), "seconds": round(seconds, 1),
             "tasks": len(tasks), "candidates_per_hour": round(len(tasks) / seconds * 3600, 1),
             "statuses": sorted({r.status for r in results})},
            [(r.candidate_id, r.status, r.nlls, r.packed_masks) for r in results])


def markdown(result: dict) -> str:
    m = result["machine"]
    rows = [[r["workers"], r["tasks"], f"{r['seconds']:.1f} s", f"{r['candidates_per_hour']:.0f}",
             f"{r['speedup']:.2f}×", f"{r['startup_s']:.1f} s"] for r in result["runs"]]
    return "\n".join([
        "# Parallel evaluation: candidates per hour vs workers", "",
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), no GPU; torch {m['torch']}; "
        f"commit {m['commit']}.", "",
        f"Protocol: {result['protocol']}", "",
        markdown_table(["workers", "tasks", "time", "candidates/hour", "speedup", "worker start-up"], rows), "",
        f"Results identical to 1 worker (NLLs and masks): {result['identical']}.", "",
        result["notes"], ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--sandbox", default="docker")
    parser.add_argument("--notes", default="")
    args = parser.parse_args()
    sources = candidate_sources()
    tasks = [EvaluationTask(cid, src, level=0) for cid, src in sources.items()]
    with tempfile.TemporaryDirectory(prefix="autoprune-parallel-") as tmp:
        spec = build_spec(args, Path(tmp))
        runs, reference, identical = [], None, True
        for workers in args.workers:
            row, outcome = measure(spec, workers, tasks)
            reference = reference if reference is not None else outcome
            identical &= outcome == reference
            runs.append(row)
            print(row, flush=True)
    base = runs[0]["seconds"]
    for row in runs:
        row["speedup"] = base / row["seconds"]
    result = {"machine": machine(), "runs": runs, "identical": identical, "notes": args.notes,
              "protocol": (f"{len(tasks)} distinct candidate programs (one-line metrics wrapped like the agent's), "
                           f"each: {args.sandbox} sandbox run + host mask verification + fitness on "
                           f"{args.windows}×{args.seqlen} validation windows, 50% unstructured, embedded "
                           f"SmolLM2-135M-Instruct; statistics from {args.nsamples}×{args.seqlen} calibration "
                           "windows. Time = the batch after every worker has started (start-up listed apart).")}
    save_results("parallel_eval", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
