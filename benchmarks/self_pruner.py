"""Self-Pruner mode on the embedded model: uniform structured pruning vs the LLM-searched
layer-wise rates, at 70% and 50% of decoder parameters kept.

Protocol: calibration = `--nsamples`×`--seqlen` random windows from the first half of
WikiText-2 validation; search fitness = `--fitness-windows`×`--seqlen` windows of the second
half; final test perplexity on the first `--eval-windows`×512 test windows (the test split is
read only there). Speed = median tokens/s of one 512-token forward pass on this CPU,
pruned vs dense, measured back to back. The proposing LLM is the embedded SmolLM2-135M-Instruct
(one loopback server shared by both targets).

    python benchmarks/self_pruner.py --data ../shared/data/wikitext-2
    python benchmarks/self_pruner.py --data ... --targets 0.7 --budget 6 --eval-windows 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table, save_results  # noqa: E402

from autoprune.agent.embedded_server import embedded_llm_server  # noqa: E402
from autoprune.agent.rates.config import RatesConfig  # noqa: E402
from autoprune.agent.rates.mode import run_rates_search  # noqa: E402
from autoprune.agent.rates.state import OUTCOMES  # noqa: E402
from autoprune.models import load_model  # noqa: E402

NAME = "self_pruner"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="local WikiText-2 folder")
    parser.add_argument("--targets", default="0.7,0.5", help="fractions of decoder parameters kept")
    parser.add_argument("--budget", type=int, default=8, help="offspring per search")
    parser.add_argument("--population", type=int, default=6)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--fitness-windows", type=int, default=8)
    parser.add_argument("--proposal", default="edit", choices=["edit", "vector"],
                        help="how the embedded LLM proposes (auto would see a plain endpoint: say it)")
    parser.add_argument("--no-reconstruct", action="store_true", help="search without the least-squares refit")
    parser.add_argument("--importance", default="taylor", choices=["taylor", "activation"],
                        help="how channels and KV groups are ranked")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--speed-repeats", type=int, default=5)
    parser.add_argument("--speed-rounds", type=int, default=3, help="interleaved speed rounds at the end")
    parser.add_argument("--max-repairs", type=int, default=1, help="LLM repair turns before the trusted fallback")
    parser.add_argument("--llm-max-tokens", type=int, default=256)
    parser.add_argument("--run-root", default=None, help="where run folders go (default: a temp folder)")
    return parser.parse_args(argv)


def run_target(target: float, args, loaded, endpoint, root: Path) -> dict:
    """One search; a finished run folder (summary.json) is reused, so a killed benchmark resumes."""
    run_dir = root / f"keep{int(round(target * 100))}"
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    config = RatesConfig(run_dir=run_dir, target_params=target,
                         budget=args.budget, population=args.population, data=args.data, seqlen=args.seqlen,
                         nsamples=args.nsamples, fitness_windows=args.fitness_windows, eval_seqlen=512,
                         eval_windows=args.eval_windows, speed_repeats=args.speed_repeats, export=False,
                         max_repairs=args.max_repairs, llm_max_tokens=args.llm_max_tokens,
                         proposal=args.proposal, reconstruct=not args.no_reconstruct, importance=args.importance,
                         llm_base_url=endpoint.base_url, llm_model=endpoint.model,
                         resume=(run_dir / "checkpoints.sqlite").is_file())   # a killed search goes on
    started = time.perf_counter()
    summary = run_rates_search(config, loaded=loaded)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def rows_for(summary: dict) -> list[list]:
    test = summary["final"]["test"]
    rows = []
    for label in ("dense", "uniform", "searched"):
        v = test[label]
        rows.append([f"{summary['target_params']:.0%}", label, v.get("id", "-"),
                     f"{v['decoder_params'] / 1e6:.2f}M", f"{v.get('params_fraction', 1.0):.3f}",
                     f"{v['ppl_validation']:.2f}" if v.get("ppl_validation") else "-", f"{v['test_ppl']:.2f}",
                     f"{v['tokens_per_s']:.0f}", f"{v.get('speedup', 1.0):.2f}x"])
    plain = summary["final"].get("without_refit", {}).get("uniform")
    if plain:
        u = test["uniform"]
        rows.append([f"{summary['target_params']:.0%}", "uniform, no refit", u["id"], f"{u['decoder_params'] / 1e6:.2f}M",
                     f"{u['params_fraction']:.3f}", "-", f"{plain['test_ppl']:.2f}", "-", "-"])
    return rows


def markdown(results: dict) -> str:
    rows = [row for s in results["runs"] for row in rows_for(s)]
    table = markdown_table(["kept (target)", "variant", "id", "decoder params", "kept fraction", "val ppl",
                            "test ppl", "tokens/s", "speedup"], rows)
    outcome_rows = [[f"{s['target_params']:.0%}", round(s["mean_rate"], 4), s["budget"]]
                    + [s["outcomes"].get(k, 0) for k in OUTCOMES]
                    + [s["final"]["winner"]["origin"], s.get("wall_s", s["seconds"])] for s in results["runs"]]
    outcomes = markdown_table(["kept", "mean rate", "budget", "LLM vector as is", "LLM vector projected",
                               "LLM edit step", "LLM after repair", "trusted fallback", "winner origin", "wall s"],
                              outcome_rows)
    speed = results.get("speed_interleaved", {})
    speed_table = markdown_table(["variant", "tokens/s", "speedup vs dense"],
                                 [[k, v["tokens_per_s"], f"{v['speedup']:.2f}x"] for k, v in speed.items()])
    seeds = [[f"{s['target_params']:.0%}", m["id"], m["origin"], f"{m['fitness']:.2f}", f"{m['params_fraction']:.3f}"]
             for s in results["runs"] for m in s["population"]]
    p = results["protocol"]
    return "\n\n".join([
        "# Self-Pruner mode: LLM-searched layer-wise structured rates vs uniform (embedded SmolLM2-135M)",
        f"Protocol: {p['calibration']}; search fitness {p['fitness']}; final: {p['test']}. "
        f"Budget {p['budget']} offspring per target, population {p['population']}, proposing LLM: embedded "
        f"SmolLM2-135M-Instruct ({p.get('proposal', 'vector')} proposals), least-squares refit of o_proj/down_proj: "
        f"{'on' if p.get('reconstruct') else 'off'}; unit importance: {p.get('importance', 'activation')}. Per-run tokens/s: median of a 512-token forward pass in each "
        "run's finale; the interleaved table below is the one to quote.",
        table, "## Speed, measured interleaved after the searches (best of rounds, each the median of repeats; 512 tokens, batch 1)",
        speed_table if speed else "(not measured)",
        f"Load average while measuring speed (1/5/15 min): {results.get('speed_load', '-')}.", "## Where the offspring came from", outcomes, "## Final population (validation)",
        markdown_table(["kept", "id", "origin", "val ppl", "kept fraction"], seeds),
        "## Reading", reading(results),
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"torch {results['machine']['torch']}."])


def reading(results: dict) -> str:
    """What the numbers say, computed from them (so a re-run cannot leave a stale sentence)."""
    lines = []
    for s in results["runs"]:
        test = s["final"]["test"]
        plain = s["final"].get("without_refit", {}).get("uniform", {}).get("test_ppl")
        kept = f"{s['target_params']:.0%} kept"
        if plain:
            lines.append(f"- {kept}: the least-squares refit takes uniform test perplexity from {plain:.2f} to "
                         f"{test['uniform']['test_ppl']:.2f}.")
        gain = 1 - test["searched"]["test_ppl"] / test["uniform"]["test_ppl"]
        winner = s["final"]["winner"]
        lines.append(f"- {kept}: the search's winner is {winner['id']} ({winner['origin']}); test perplexity "
                     f"{test['searched']['test_ppl']:.2f} vs uniform {test['uniform']['test_ppl']:.2f} "
                     f"({gain:+.1%}).")
    lines.append("- Speed depends only on the layer sizes; the interleaved table was measured with nothing but "
                 "the benchmark running (its own two threads make the load average ≈ 2).")
    return "\n".join(lines)


def interleaved_speed(loaded, runs: list[dict], rounds: int, repeats: int) -> dict:
    """tokens/s of dense and every pruned variant, measured in alternation after the searches:
    on a shared CPU the load drifts, and alternating keeps the ratios fair. Speed depends only
    on the layer sizes, so each variant is rebuilt from its rates with `resize_to_structure`."""
    import copy
    from dataclasses import asdict

    from autoprune.evaluators.latency import tokens_per_second
    from autoprune.pruning.structured import resize_to_structure, structure_for_rates

    dense = loaded.model
    models = {"dense": dense}
    for run in runs:
        for label in ("uniform", "searched"):
            rates = run["final"]["test"][label]["rates"]
            model = copy.deepcopy(dense)
            resize_to_structure(model, [asdict(x) for x in structure_for_rates(dense, rates)])
            models[f"{run['target_params']:.0%} {label}"] = model.eval()
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(tokens_per_second(model, seqlen=512, repeats=repeats)["tokens_per_s"])
    # Best round, not median: other processes only ever slow a round down, so the fastest round
    # is the least disturbed estimate of what the model itself costs.
    speed = {name: max(values) for name, values in samples.items()}
    return {name: {"tokens_per_s": round(v, 1), "speedup": round(v / speed["dense"], 3)} for name, v in speed.items()}


def results_for(args, runs: list[dict], root: Path) -> dict:
    protocol = {"calibration": f"{args.nsamples}x{args.seqlen} random windows, first half of validation",
                "fitness": f"{args.fitness_windows}x{args.seqlen} windows, second half of validation",
                "test": runs[0]["final"]["test_protocol"], "budget": args.budget, "population": args.population,
                "proposal": args.proposal, "reconstruct": not args.no_reconstruct, "importance": args.importance}
    return {"machine": machine(), "protocol": protocol, "runs": runs, "run_root": str(root)}


def main(argv=None) -> None:
    args = parse_args(argv)
    root = Path(args.run_root) if args.run_root else Path(tempfile.mkdtemp(prefix="self_pruner_"))
    root.mkdir(parents=True, exist_ok=True)
    loaded = load_model()
    runs = []
    targets = [float(t) for t in args.targets.split(",")]
    finished = all((root / f"keep{int(round(t * 100))}" / "summary.json").is_file() for t in targets)
    # Only start the proposing LLM when some search is left to run (re-assembling is free).
    with contextlib.nullcontext() if finished else embedded_llm_server(log_dir=root) as endpoint:
        for target in targets:
            runs.append(run_target(target, args, loaded, endpoint, root))
            save_results(NAME, results_for(args, runs, root), markdown(results_for(args, runs, root)))
            print(f"keep {target:.0%}: {runs[-1]['final']['test']['searched']['test_ppl']:.2f} searched, "
                  f"{runs[-1]['final']['test']['uniform']['test_ppl']:.2f} uniform", flush=True)
    results = results_for(args, runs, root)
    results["speed_interleaved"] = interleaved_speed(loaded, runs, args.speed_rounds, args.speed_repeats)
    results["speed_load"] = [round(x, 2) for x in os.getloadavg()]
    save_results(NAME, results, markdown(results))


if __name__ == "__main__":
    main()
