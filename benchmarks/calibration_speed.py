"""Cost of the Hessian statistics in the agent's calibration pass, before and after issue 15's change:
XᵀX accumulated in float64 once per LAYER (HEAD's `RunningChannelStats`, loaded from git) against
float32 per batch into a float64 accumulator once per layer INPUT (q/k/v share one, gate/up one).

The statistics' part of the pass, on the embedded model's shapes (30 blocks; per block the inputs of
q/k/v, o, gate/up (576 wide) and down (1536 wide); one calibration batch of 4×512 tokens), plus the
hinv_diag Cholesky per layer (before) or per input (after). The two are interleaved `--repeats`
times, so a loaded machine slows both alike. The forward pass itself is the same in both and not
timed here. The float32 result is compared with float64 on the same inputs.

    python benchmarks/calibration_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from common import machine, markdown_table, save_results

BLOCKS, HIDDEN, INTERMEDIATE, TOKENS = 30, 576, 1536, 4 * 512
# (input width, linears reading it) per block of the embedded model (SmolLM2-135M)
INPUTS = ((HIDDEN, 3), (HIDDEN, 1), (HIDDEN, 2), (INTERMEDIATE, 1))


def head_stats_module() -> types.ModuleType:
    """HEAD's autoprune/pruning/stats.py (the float64 accumulator), run from git's copy."""
    source = subprocess.run(["git", "show", "HEAD:autoprune/pruning/stats.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parent).stdout
    module = types.ModuleType("head_stats")
    sys.modules["head_stats"] = module          # dataclasses look their module up
    exec(compile(source, "HEAD:autoprune/pruning/stats.py", "exec"), module.__dict__)
    return module


def batch_inputs(seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {w: torch.randn(TOKENS, w, generator=g) * torch.linspace(0.05, 8.0, w) for w in (HIDDEN, INTERMEDIATE)}


def statistics_pass(running_class, inputs: dict[int, torch.Tensor], *, per_input: bool, blocks: int) -> float:
    """Seconds for the updates and hinv_diag of `blocks` blocks (one batch per layer input)."""
    from autoprune.pruning.sparsegpt import damped_inverse_hessian

    started = time.perf_counter()
    for _ in range(blocks):
        for width, readers in INPUTS:
            for _ in range(1 if per_input else readers):
                running = running_class(width, with_gram=True)
                running.update(inputs[width])
                stats = running.finish(layer_index=0, num_layers=1, name="x")
                torch.diagonal(damped_inverse_hessian(stats.gram))
    return time.perf_counter() - started


def accuracy(old_class, new_class, inputs) -> dict:
    out = {}
    for width, x in inputs.items():
        grams = []
        for cls in (old_class, new_class):
            r = cls(width, with_gram=True)
            for chunk in x.split(512):             # four batches of 512 tokens each
                r.update(chunk)
            grams.append(r.finish(layer_index=0, num_layers=1, name="x").gram.double())
        exact = x.double().T @ x.double()
        out[str(width)] = {f"{label}_max_rel": float((g - exact).abs().max() / exact.abs().max())
                           for label, g in zip(("float64", "float32"), grams)}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blocks", type=int, default=BLOCKS, help="blocks timed (the model has 30)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a loaded machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from autoprune.pruning.stats import RunningChannelStats

    old = head_stats_module().RunningChannelStats
    inputs = batch_inputs()
    before, after = [], []
    for _ in range(args.repeats):
        before.append(statistics_pass(old, inputs, per_input=False, blocks=args.blocks))
        after.append(statistics_pass(RunningChannelStats, inputs, per_input=True, blocks=args.blocks))
    data = {"machine": machine(), "protocol": {"blocks": args.blocks, "inputs_per_block": [list(i) for i in INPUTS],
                                               "tokens_per_batch": TOKENS, "repeats": args.repeats},
            "before_s": before, "after_s": after, "accuracy": accuracy(old, RunningChannelStats, inputs)}
    m = data["machine"]
    rows = [["before: float64 per layer (HEAD)", " / ".join(f"{s:.1f}" for s in before), f"{min(before):.1f}"],
            ["after: float32 per batch, per input", " / ".join(f"{s:.1f}" for s in after), f"{min(after):.1f}"]]
    acc = [[w, f"{a['float64_max_rel']:.1e}", f"{a['float32_max_rel']:.1e}"] for w, a in data["accuracy"].items()]
    md = "\n".join([
        "# Hessian statistics of the calibration pass: float64 per layer vs float32 per input", "",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"commit {m['commit']} plus uncommitted changes; {m['date']}",
        f"- protocol: {args.blocks} of the embedded model's {BLOCKS} blocks (its shapes), one {TOKENS}-token batch per layer input "
        "(XᵀX update + finish + hinv_diag Cholesky); before = 7 per block (one per linear), after = 4 "
        "(q/k/v, o, gate/up, down); the two interleaved, each repeat in seconds; the forward pass "
        "(the same in both) is not included", "",
        markdown_table(["statistics", "seconds per repeat", "best"], rows), "",
        "Largest |XᵀX − exact| / max |exact| (four 512-token batches, exact = float64 matmul of all tokens):", "",
        markdown_table(["width", "before (float64)", "after (float32 per batch)"], acc), ""])
    save_results("calibration_speed", data, md)
    print(json.dumps({"before_s": before, "after_s": after}))


if __name__ == "__main__":
    main()
