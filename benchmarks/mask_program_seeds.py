"""Cost and quality of the mask-program seeds (agent/mask_seeds.py) on the embedded model's layers.

Protocol: the embedded model's first `--blocks` decoder blocks, their dense calibration statistics
with XᵀX (`--nsamples` × `--seqlen` windows of WikiText-2 validation); every linear pruned at 50 %,
70 % and 2:4 by

  seed-sparsegpt-mask   SparseGPT's mask selection written as a mask program
  seed-alps-mask        the ALPS-class (ADMM, bounded schedule) mask program
  trusted sparsegpt     autoprune/pruning/sparsegpt.py (its mask selection and OBS update)

The seeds run exactly as the sandbox worker runs them (compiled with the policy, guarded globals,
one torch thread: `load_program` + `checked_mask`), in this process, so the seconds are the
candidate's own compute without container start. Quality: the layer's output error ‖WX − ŴX‖²
after the trusted OBS refit of each mask (`--reconstruct obs`), summed over the layers. (The
seeds against the trusted ALPS selection, with the exact refit: tests/test_mask_program_seeds.py.)

    python benchmarks/mask_program_seeds.py --data ../shared/data/wikitext-2 --blocks 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save_results  # noqa: E402
from protocol import add_protocol_args, load_inputs  # noqa: E402

SETTINGS = {"0.5": (0.5, "unstructured"), "0.7": (0.7, "unstructured"), "2:4": (0.5, "2:4")}
METHODS = ("seed-sparsegpt-mask", "seed-alps-mask", "trusted-sparsegpt")


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    return head + (" plus uncommitted changes" if dirty else "")


def layer_masks(W, X, sparsity, pattern) -> dict[str, tuple[torch.Tensor, float]]:
    from autoprune.agent.mask_seeds import ALPS_MASK, SPARSEGPT_MASK
    from autoprune.pruning.sparsegpt import sparsegpt_prune
    from autoprune.sandbox.worker import checked_mask, load_program

    out = {}
    for name, source in (("seed-sparsegpt-mask", SPARSEGPT_MASK), ("seed-alps-mask", ALPS_MASK)):
        program = load_program(source, raw=False)
        started = time.perf_counter()
        mask = checked_mask(program.fresh(), W, X, sparsity, pattern, program.group, name)
        out[name] = (mask, time.perf_counter() - started)
    started = time.perf_counter()
    mask, _ = sparsegpt_prune(W, X.gram, sparsity, pattern)
    out["trusted-sparsegpt"] = (mask, time.perf_counter() - started)
    return out


def measure(args: argparse.Namespace) -> dict:
    from autoprune.adapters import linear_weight
    from autoprune.pruning.calibration import collect_activation_stats, target_linears
    from autoprune.pruning.masks import SparsityPattern
    from autoprune.pruning.reconstruct import layer_error, obs_reconstruction

    torch.set_grad_enabled(False)
    inputs = load_inputs(args)
    layers = {name: module for name, (block, module) in target_linears(inputs.model).items() if block < args.blocks}
    started = time.perf_counter()        # XᵀX only for the measured layers (name endings select them)
    stats = collect_activation_stats(inputs.model, inputs.calibration,
                                     with_gram=tuple(name.split(".", 1)[1] for name in layers))
    calibration_s = time.perf_counter() - started
    torch.set_num_threads(1)                   # the sandbox's default (SandboxLimits.threads)
    settings = {}
    for key, (sparsity, pattern_text) in SETTINGS.items():
        pattern = SparsityPattern.parse(pattern_text)
        seconds = dict.fromkeys(METHODS, 0.0)
        error = dict.fromkeys(METHODS, 0.0)
        agree, total = 0, 0
        for name in layers:
            W, X = linear_weight(layers[name]).detach().float(), stats[name]
            masks = layer_masks(W, X, sparsity, pattern)
            for method, (mask, spent) in masks.items():
                seconds[method] += spent
                error[method] += layer_error(W, obs_reconstruction(W, mask, X, None), X.gram)
            agree += int((masks["seed-sparsegpt-mask"][0] == masks["trusted-sparsegpt"][0]).sum())
            total += W.numel()
        settings[key] = {"seconds": {m: round(v, 2) for m, v in seconds.items()},
                         "refit_error": {m: round(v, 4) for m, v in error.items()},
                         "sparsegpt_seed_agreement": round(agree / total, 6),
                         "alps_seed_over_sparsegpt_seed_time": round(seconds["seed-alps-mask"]
                                                                     / seconds["seed-sparsegpt-mask"], 2)}
        print(key, settings[key], flush=True)
    return {"commit": commit(), "machine": machine(),
            "protocol": {"model": inputs.loaded.name, "blocks": args.blocks, "layers": len(layers),
                         "calibration": f"{args.nsamples}x{args.seqlen} validation windows, dense statistics",
                         "calibration_s": round(calibration_s, 1), "torch_threads": 1},
            "settings": settings}


def markdown(results: dict) -> str:
    p = results["protocol"]
    lines = ["# Mask-program seeds: cost and quality", "",
             f"Commit {results['commit']}. Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             "shared with other jobs during the run (load average above 10 on 2 cores), so seconds are noisy; "
             "the ratios between methods measured side by side are what to read.", "",
             f"Protocol: {p['model']}, first {p['blocks']} decoder block(s) ({p['layers']} linears), "
             f"{p['calibration']}; one torch thread (the sandbox's). Seeds run under the sandbox policy in-process "
             "(no container start). Error: Σ‖WX − ŴX‖² over the layers after the trusted OBS refit of each mask.",
             "", "Limits: one block of 30 (its 7 linears carry every shape of the model: 576×576, 192×576, "
             "1536×576, 576×1536), dense calibration statistics (not the sequential refit chain), one run per "
             "cell; in the sandbox the container start and the restricted interpreter's start come on top "
             "(benchmarks/results/sandbox_overhead.md).", ""]
    header = ["setting", "metric"] + list(METHODS)
    rows = []
    for key, s in results["settings"].items():
        rows.append([key, "seconds"] + [s["seconds"][m] for m in METHODS])
        rows.append([key, "refit error"] + [s["refit_error"][m] for m in METHODS])
        rows.append([key, "error / trusted sparsegpt"] + [round(s["refit_error"][m] / s["refit_error"]["trusted-sparsegpt"], 3)
                                                          for m in METHODS])
    lines.append(markdown_table(header, rows))
    lines += ["", "| setting | SparseGPT seed = trusted SparseGPT mask | ALPS seed time / SparseGPT seed time |",
              "|---|---|---|"]
    lines += [f"| {k} | {s['sparsegpt_seed_agreement']:.4%} | {s['alps_seed_over_sparsegpt_seed_time']}× |"
              for k, s in results["settings"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(parser, data_required=True)
    parser.add_argument("--blocks", type=int, default=1)
    args = parser.parse_args()
    results = measure(args)
    save_results("mask_program_seeds", results, markdown(results))


if __name__ == "__main__":
    main()
