"""Does a `run` beat SparseGPT? One `autoprune-agent run` per setting, then the same test windows for all.

For each setting (50 / 60 / 70 % unstructured, 2:4) this runs the real CLI
(`autoprune-agent run --budget 50`: embedded SmolLM2-135M-Instruct as the LLM, Docker sandbox,
the embedded model pruned), then, on the run's calibration protocol (64×512 windows, seed 0) and the
first `--test-windows`×512 test windows:

* the test perplexity of the run's exported model (loaded from its folder and evaluated here),
* SparseGPT, the ALPS-class baseline and Wanda (`prune --method`, uniform, sequential) and dense,
  through the cross-run baseline cache (the run's finale has just computed them on the same windows),
* the run's wall time and its LLM / sandbox / fitness / finale split (the run's summary),
* what bought what: the winner's masks alone (uniform), at the chosen allocation, refitted,
* at 50 %: mean zero-shot accuracy (lm-eval, seven tasks, `--zeroshot-limit` examples each) of the
  winner, SparseGPT and dense.

Results (`benchmarks/results/<name>.{json,md}`) are written after every setting; a setting already in
the file is skipped, and a run folder left by a killed run is resumed.

    python benchmarks/beat_sparsegpt.py --data ../shared/data/wikitext-2                  # all four settings
    python benchmarks/beat_sparsegpt.py --settings 0.5 --budget 2 --test-windows 4 --name beat_trial
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, git_commit, machine, markdown_table  # noqa: E402
from protocol import read_partial, write_atomic  # noqa: E402

SETTINGS = ("0.5", "0.6", "0.7", "2:4")
# The targets: the winner's test perplexity at most this fraction of SparseGPT's.
TARGETS = {"0.5": 0.93, "0.6": 0.85, "0.7": 0.70, "2:4": 0.85}
# The seven zero-shot tasks of the Wanda / AutoPrune tables (local copies in shared/data/zeroshot).
ZEROSHOT_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
BASELINES = ("sparsegpt", "alps", "wanda")


def setting_flags(setting: str) -> list[str]:
    return ["--pattern", setting] if ":" in setting else ["--sparsity", setting]


def run_cli(args: argparse.Namespace, setting: str, run_dir: Path) -> float:
    """The agent run of one setting (resumed when its folder exists); its wall seconds."""
    cli = str(Path(sys.executable).with_name("autoprune-agent"))
    if (run_dir / "config.json").is_file():
        command = [cli, "run", "--resume", str(run_dir), "--json"]
    else:
        command = [cli, "run", "--budget", str(args.budget), *setting_flags(setting), "--data", args.data,
                   "--test-windows", str(args.test_windows), "--nsamples", str(args.nsamples),
                   "--seqlen", str(args.seqlen), "--seed", str(args.seed), "--out", str(run_dir), "--json",
                   *(["--model", args.model] if args.model else []), *args.run_flag]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def finished_run(run_dir: Path) -> tuple[dict, dict]:
    """(the run's summary, its final_result event), read from the trace."""
    from autoprune.runlog.trace_file import read_trace

    events = read_trace(run_dir).events
    finished = [e for e in events if e["type"] == "run_finished"]
    final = [e for e in events if e["type"] == "final_result"]
    if not finished or not final:
        raise SystemExit(f"{run_dir} has not finished (no run_finished / final_result event)")
    return finished[-1]["summary"], final[-1]


def protocol_inputs(args: argparse.Namespace):
    """The embedded model with the run's calibration windows and the first --test-windows test windows."""
    from autoprune.data import calibration_windows, load_corpus, test_windows
    from autoprune.models import load_model

    loaded = load_model(args.model)
    corpus = load_corpus(args.data)
    calibration = calibration_windows(loaded.tokenizer, corpus, nsamples=args.nsamples, seqlen=args.seqlen,
                                      seed=args.seed)
    test = test_windows(loaded.tokenizer, corpus, nwindows=args.test_windows, seqlen=args.seqlen)
    return loaded, calibration, test


def what_bought_what(final: dict) -> dict:
    """The winner's test perplexity at each step: masks alone (uniform), at the chosen allocation, refitted."""
    test, chosen, refit = final["test"], final["chosen_allocation"], final.get("refit", "none")
    allocation = chosen.split("(")[0]
    alone = test["uniform"]
    allocated = test.get(allocation, alone)
    refitted = test.get(f"{allocation}+{refit}", allocated)
    return {"masks_alone_uniform": alone, "with_allocation": allocated, "with_allocation_and_refit": refitted,
            "chosen_allocation": chosen, "refit": refit}


def zeroshot_mean(model, tokenizer, args: argparse.Namespace) -> dict:
    from autoprune.evaluators.zeroshot import zeroshot_accuracy

    scores = zeroshot_accuracy(model, tokenizer, list(args.zeroshot_tasks), data_dir=Path(args.zeroshot_data),
                               limit=args.zeroshot_limit)
    accs = [s["acc"] for s in scores.values()]
    return {"mean_acc": sum(accs) / len(accs), "tasks": scores}


def zeroshot_table(loaded, calibration, exported: Path, args: argparse.Namespace) -> dict:
    """Mean zero-shot accuracy of the winner (exported model), SparseGPT (pruned here) and dense."""
    from autoprune.models import load_model
    from autoprune.pruning.apply import restore, snapshot_weights
    from autoprune.pruning.calibration import target_linears
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.loop import prune_model

    model = loaded.model
    out = {"dense": zeroshot_mean(model, loaded.tokenizer, args)}
    winner = load_model(str(exported))
    out["winner"] = zeroshot_mean(winner.model, winner.tokenizer, args)
    del winner
    snapshot = snapshot_weights(model, list(target_linears(model)))
    try:
        prune_model(model, calibration, method=builtin_method("sparsegpt"), sparsity=0.5, progress=False)
        out["sparsegpt"] = zeroshot_mean(model, loaded.tokenizer, args)
    finally:
        restore(model, snapshot)
    return out


def measure_setting(args: argparse.Namespace, setting: str, inputs) -> dict:
    from autoprune.evaluators.baselines import BaselineEvaluator, BaselineSpec
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.models import load_model

    run_dir = args.runs / f"run-{setting.replace(':', 'of')}"
    wall_s = run_cli(args, setting, run_dir)
    summary, final = finished_run(run_dir)
    loaded, calibration, test = inputs
    if final.get("test_windows") != len(test):
        raise SystemExit(f"{run_dir}: its finale used {final.get('test_windows')} test windows, not {len(test)}")
    exported = load_model(final["export"])
    winner = perplexity(exported.model, test)
    del exported
    evaluator = BaselineEvaluator(loaded.model, calibration, test, notes={"commit": git_commit()})
    sparsity = 0.5 if ":" in setting else float(setting)
    result = {"winner": winner, "dense": evaluator.dense().perplexity}
    for method in BASELINES:
        result[method] = evaluator.baseline(BaselineSpec(method, sparsity, setting if ":" in setting
                                                         else "unstructured")).perplexity
    result.update(wall_s=round(wall_s, 1), run_dir=str(run_dir), winner_id=(summary.get("best") or {}).get("id"),
                  winner_reported_by_run=final["test"].get(f"{final['chosen_allocation'].split('(')[0]}+"
                                                           f"{final.get('refit', 'none')}"),
                  bought=what_bought_what(final), split=summary.get("timings", {}),
                  finale_split=final.get("timings", {}), llm_calls=summary.get("llm_calls"),
                  tokens=summary.get("tokens"), budget_used=summary.get("budget_used"),
                  baselines_served_from_cache=evaluator.cache.hits, target_vs_sparsegpt=TARGETS[setting],
                  winner_vs_sparsegpt=winner / result["sparsegpt"], winner_vs_alps=winner / result["alps"])
    if setting == "0.5" and args.zeroshot_limit:
        result["zeroshot"] = zeroshot_table(loaded, calibration, Path(final["export"]), args)
    return result


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(results: dict) -> str:
    p, settings = results["protocol"], results["settings"]
    lines = [f"# Does a run beat SparseGPT? (WikiText-2 test perplexity, {p['model']})", "",
             f"- commit: {results['commit']}", f"- machine: {p['machine']}",
             f"- run: `autoprune-agent run --budget {p['budget']}` per setting ({p['llm']}, {p['sandbox']})",
             f"- calibration: {p['calibration']}", f"- test: {p['test']}",
             f"- baselines: {p['baselines']}", ""]
    rows = [[s, fmt(r["winner"]), fmt(r["sparsegpt"]), fmt(r["alps"]), fmt(r["wanda"]), fmt(r["dense"]),
             f"{r['winner_vs_sparsegpt']:.3f}× (target ≤ {r['target_vs_sparsegpt']:.2f}×)",
             f"{r['winner_vs_alps']:.3f}×", f"{r['wall_s']:.0f} s"] for s, r in settings.items()]
    lines += [markdown_table(["setting", "winner", "sparsegpt", "alps", "wanda", "dense", "winner / SparseGPT",
                              "winner / ALPS", "run wall"], rows), "", "## What bought what (winner, test ppl)", ""]
    rows = [[s, fmt(r["bought"]["masks_alone_uniform"]), f"{fmt(r['bought']['with_allocation'])} "
             f"({r['bought']['chosen_allocation']})", f"{fmt(r['bought']['with_allocation_and_refit'])} "
             f"({r['bought']['refit']})"] for s, r in settings.items()]
    lines += [markdown_table(["setting", "masks alone (uniform)", "+ allocation (chosen on validation)",
                              "+ refit (exported)"], rows), "", "## Where the run's time went (s)", ""]
    rows = [[s] + [fmt(r["split"].get(k), 0) for k in ("wall", "llm", "sandbox", "fitness", "finale")]
            + [fmt(r["finale_split"].get(k), 0) for k in ("refit", "baselines", "sandbox")] for s, r in settings.items()]
    lines += [markdown_table(["setting", "wall", "LLM", "sandbox", "fitness", "finale", "finale: refit",
                              "finale: baselines", "finale: sandbox"], rows), ""]
    zeroshot = {s: r["zeroshot"] for s, r in settings.items() if r.get("zeroshot")}
    for s, z in zeroshot.items():
        lines += [f"## Zero-shot accuracy at {s} (lm-eval, {p['zeroshot']})", "",
                  markdown_table(["model", "mean acc"] + list(z["dense"]["tasks"]),
                                 [[name, f"{v['mean_acc']:.4f}"] + [f"{t['acc']:.4f}" for t in v["tasks"].values()]
                                  for name, v in z.items()]), ""]
    notes = ["## Notes", ""] + [f"- {note}" for note in p.get("notes", [])] if p.get("notes") else []
    return "\n".join(lines + notes) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: 0.5,0.6,0.7,2:4")
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--data", default="../shared/data/wikitext-2")
    parser.add_argument("--model", default=None, help="model to prune (default: the embedded one)")
    parser.add_argument("--test-windows", type=int, default=64)
    parser.add_argument("--nsamples", type=int, default=64, help="calibration windows (the run's default)")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zeroshot-data", default="../shared/data/zeroshot")
    parser.add_argument("--zeroshot-limit", type=int, default=500, help="examples per task (0: no zero-shot)")
    parser.add_argument("--zeroshot-tasks", default=",".join(ZEROSHOT_TASKS))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/autoprune-bench-beat-sparsegpt"))
    parser.add_argument("--name", default="beat_sparsegpt", help="results file name")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--run-flag", action="append", default=[], help="extra flag for `run` (repeatable)")
    parser.add_argument("--note", action="append", default=[], help="a line for the Markdown notes")
    args = parser.parse_args()
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    args.zeroshot_tasks = [t.strip() for t in args.zeroshot_tasks.split(",") if t.strip()]
    return args


def main() -> None:
    args = parse_args()
    path = args.results_dir / f"{args.name}.json"
    results = read_partial(path)
    results.pop("runs", None)
    commit = head_commit() + (" plus uncommitted changes" if dirty() else "")
    if results.get("settings") and results.get("commit") != commit:
        print(f"note: {path} was started at {results.get('commit')}, continuing at {commit}", flush=True)
    notes = args.note or results.get("protocol", {}).get("notes", [])
    results["commit"] = commit
    results.setdefault("settings", {})
    inputs = protocol_inputs(args)
    results["protocol"] = {
        "budget": args.budget, "llm": "embedded SmolLM2-135M-Instruct (llama.cpp on loopback)", "sandbox": "docker",
        "model": inputs[0].name, "calibration": inputs[1].description, "test": inputs[2].description,
        "test_windows": len(inputs[2]), "seqlen": args.seqlen,
        "baselines": "prune --method sparsegpt | alps | wanda: uniform allocation, sequential statistics, "
                     "their own weight updates; dense and baselines from the cross-run cache",
        "zeroshot": f"{', '.join(args.zeroshot_tasks)}; first {args.zeroshot_limit} examples per task",
        "machine": machine_line(), "notes": notes}
    for setting in args.settings:
        if setting in results["settings"]:
            print(f"{setting}: already measured, skipped", flush=True)
            continue
        results["settings"][setting] = measure_setting(args, setting, inputs)
        write_atomic(path, results)
        path.with_suffix(".md").write_text(markdown(results))
        r = results["settings"][setting]
        print(f"{setting}: winner {r['winner']:.2f}, sparsegpt {r['sparsegpt']:.2f}, alps {r['alps']:.2f}, "
              f"wanda {r['wanda']:.2f}, dense {r['dense']:.2f} ({r['wall_s']:.0f} s)", flush=True)


def head_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return done.stdout.strip() or git_commit()


def dirty() -> bool:
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    return bool(done.stdout.strip())


def machine_line() -> str:
    m = machine()
    return (f"{m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), GPU {m['gpu']}, torch {m['torch']}, "
            f"transformers {m['transformers']}")


if __name__ == "__main__":
    main()
