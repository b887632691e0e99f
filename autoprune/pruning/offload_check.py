"""What `prune --offload` can do with one decoder block in memory, checked without importing torch.

Offloaded pruning (autoprune.pruning.onload, the loop's `onloader`) materialises block i, prunes it
on inputs that went through the pruned blocks 0..i-1, saves it and releases it. Whatever needs the
whole model at once is refused here, before a model is opened, with one line naming every reason.
"""

from __future__ import annotations

from pathlib import Path

from autoprune.errors import BadInputError
from autoprune.pruning.allocators import needs_profiles


def offload_conflicts(config, method=None) -> list[str]:
    """Why `config` (a PruneConfig with `offload`) cannot run one block at a time; `method`, when it
    is already built, adds its own needs (gradients take a backward pass through every block)."""
    reasons = []
    if config.is_candidate_file:
        reasons.append("a candidate file (--method FILE.py) scores every layer in one sandbox call, on a bundle "
                       "of the whole model's weights and statistics, and its masks come back all at once")
    if config.mode != "sequential":
        reasons.append("--mode one-shot uses the dense statistics of every block at once (use sequential)")
    if needs_profiles(config.allocation):
        reasons.append(f"--allocation {config.allocation} profiles every dense block before the first is pruned "
                       "(use uniform or atp)")
    if config.data == "self":
        reasons.append("--data self samples text by generating with the whole model")
    if config.model and Path(config.model).suffix == ".gguf":
        reasons.append("a .gguf file is dequantized whole (convert it to a safetensors folder first)")
    if method is not None and getattr(method, "needs_grad", False):
        reasons.append(f"--method {config.method} needs gradients, a backward pass through every block at once")
    return reasons


def check_offload(config, method=None) -> None:
    """Nothing when `config` does not offload or can; else one BadInputError."""
    if not getattr(config, "offload", False):
        return
    reasons = offload_conflicts(config, method)
    if reasons:
        raise BadInputError("--offload keeps one decoder block in memory at a time, but " + "; ".join(reasons))
