"""Which units structured pruning removes: activation (structured Wanda) vs first-order Taylor
importance, on the embedded model with uniform rates, at 70% and 50% of decoder parameters kept.

Protocol (the rate search's defaults): calibration = `--nsamples`×`--seqlen` random windows from
the first half of WikiText-2 validation, used for the activation statistics, the refit's XᵀX and
the Taylor gradients; validation perplexity on `--fitness-windows`×`--seqlen` windows of the
second half (what the search sees); test perplexity on the first `--eval-windows`×512 test
windows. Both importances are followed by the same least-squares refit (and, for reference,
without it).

    python benchmarks/structured_importance.py --data ../shared/data/wikitext-2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_results, machine, markdown_table, save_results  # noqa: E402

from autoprune.data import calibration_windows, fitness_windows, load_corpus, test_windows  # noqa: E402
from autoprune.evaluators.perplexity import perplexity  # noqa: E402
from autoprune.models import load_model  # noqa: E402
from autoprune.pruning.calibration import collect_activation_stats  # noqa: E402
from autoprune.pruning.param_budget import mean_rate_for_params  # noqa: E402
from autoprune.pruning.structured import attention_geometry, pruned_copy, refit_targets  # noqa: E402
from autoprune.pruning.structured_importance import IMPORTANCE_KINDS, structured_importance  # noqa: E402

NAME = "structured_importance"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="local WikiText-2 folder")
    parser.add_argument("--targets", default="0.7,0.5", help="fractions of decoder parameters kept")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--fitness-windows", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--summarize", action="store_true", help="only re-write the Markdown from the JSON")
    return parser.parse_args(argv)


def measure(args) -> dict:
    loaded = load_model(None)
    model, tokenizer = loaded.model, loaded.tokenizer
    corpus = load_corpus(args.data, model=model, tokenizer=tokenizer)
    calibration = calibration_windows(tokenizer, corpus, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    validation = fitness_windows(tokenizer, corpus, nwindows=args.fitness_windows, seqlen=args.seqlen)
    test = test_windows(tokenizer, corpus, nwindows=args.eval_windows, seqlen=512)
    stats = collect_activation_stats(model, calibration, with_gram=refit_targets(model))
    head_dim, _, group_size = attention_geometry(model)
    importance, seconds = {}, {}
    for kind in IMPORTANCE_KINDS:
        started = time.perf_counter()
        importance[kind] = structured_importance(kind, model, stats, calibration, head_dim, group_size)
        seconds[kind] = round(time.perf_counter() - started, 1)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        rate, _ = mean_rate_for_params(model, target)
        for kind in IMPORTANCE_KINDS:
            for refit in (True, False):
                pruned = pruned_copy(model, [rate] * model.config.num_hidden_layers, stats,
                                     importance=importance[kind], reconstruct=refit)
                rows.append({"target_params": target, "importance": kind, "refit": refit,
                             "val_ppl": perplexity(pruned, validation), "test_ppl": perplexity(pruned, test)})
                print(rows[-1], flush=True)
    return {"machine": machine(), "model": loaded.name, "rows": rows, "importance_seconds": seconds,
            "dense": {"val_ppl": perplexity(model, validation), "test_ppl": perplexity(model, test)},
            "protocol": {"calibration": calibration.description, "validation": validation.description,
                         "test": test.description, "rates": "uniform, mean rate for the target"}}


def markdown(result: dict) -> str:
    m, p = result["machine"], result["protocol"]
    table = markdown_table(
        ["kept", "importance", "refit", "val ppl", "test ppl"],
        [[f"{r['target_params']:.0%}", r["importance"], "yes" if r["refit"] else "no", f"{r['val_ppl']:.2f}",
          f"{r['test_ppl']:.2f}"] for r in result["rows"]])
    return "\n".join([
        "# Structured pruning: activation vs first-order Taylor unit importance", "",
        f"Machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, no GPU. Commit {m['commit']}. "
        f"Model: {result['model']}.", "",
        f"Protocol: calibration {p['calibration']}; validation {p['validation']}; test {p['test']}; "
        f"rates {p['rates']}.", "",
        f"Dense: validation {result['dense']['val_ppl']:.2f}, test {result['dense']['test_ppl']:.2f}. "
        f"Computing the importance: activation {result['importance_seconds']['activation']} s (from the "
        f"statistics), Taylor {result['importance_seconds']['taylor']} s (one backward pass per window).", "",
        table, "", "## Reading", "", reading(result), ""])


def reading(result: dict) -> str:
    """What the rows say, computed from them (a re-run cannot leave a stale sentence)."""
    lines = []
    by = {(r["target_params"], r["importance"], r["refit"]): r["test_ppl"] for r in result["rows"]}
    for target in sorted({r["target_params"] for r in result["rows"]}, reverse=True):
        for refit in (True, False):
            act, tay = by.get((target, "activation", refit)), by.get((target, "taylor", refit))
            if act and tay:
                lines.append(f"- {target:.0%} kept, {'with' if refit else 'without'} the refit: Taylor "
                             f"{tay:.2f} vs activation {act:.2f} test ppl ({tay / act - 1:+.1%}).")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    result = load_results(NAME) if args.summarize else measure(args)
    save_results(NAME, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
