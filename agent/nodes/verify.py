"""verify: static gate + sandbox for the next queued candidate.

`run_candidate` verifies every mask (shape, exact sparsity, N:M pattern) on the
host. One candidate per visit, so the checkpoint after this node holds its verdict:
a kill loses at most the candidate in flight. LLM candidates count against
`--budget` when sent; seeds do not. A failure keeps its exact message for the
repair turn of write_code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from autoprune.agent.archive import read_source
from autoprune.agent.mask_files import differing_fraction, load_packed, save_masks
from autoprune.agent.services import AgentServices, SandboxOutcome
from autoprune.agent.state import AgentState, add_count, add_timing, with_candidate
from autoprune.errors import MaskError
from autoprune.pruning.masks import pack_mask


def check_masks(outcome: SandboxOutcome, services: AgentServices) -> None:
    """Every bundle layer has a mask of its shape. (`run_candidate` already ran `verify_mask`
    on each one, sparsity and pattern included; this guards what the fitness service will index.)"""
    masks = outcome.masks or {}
    for spec in services.sandbox.bundle.layers:
        if spec.name not in masks:
            raise MaskError(f"no mask for {spec.name}")
        if tuple(masks[spec.name].shape) != tuple(spec.shape) or masks[spec.name].dtype != torch.bool:
            raise MaskError(f"{spec.name}: mask {tuple(masks[spec.name].shape)} is not a bool mask of {spec.shape}")


# Masks that differ on fewer weights than this prune alike (e.g. |W|·‖X‖ vs W²·mean(x²),
# which rank weights the same up to float rounding): not worth a fitness evaluation.
NEAR_DUPLICATE = 1e-3


def masks_digest(masks: dict[str, torch.Tensor]) -> str:
    """One hash of every layer's keep-mask: equal digests prune identically."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode("utf-8"))
        digest.update(pack_mask(masks[name]))
    return digest.hexdigest()


def twin_of(state: AgentState, run_dir: Path, masks: dict[str, torch.Tensor], digest: str) -> str | None:
    """Why these masks are not worth evaluating: an earlier candidate prunes (almost) the same weights.
    Exact twins are found by digest among all candidates; near twins among those whose masks are kept."""
    candidates = state.get("candidates", {})
    exact = next((cid for cid, rec in candidates.items()
                  if rec.get("mask_digest") == digest and rec.get("status") == "ok"), None)
    if exact is not None:
        return f"it removes exactly the same weights as {exact} (identical masks)"
    packed = {name: np.frombuffer(pack_mask(mask), dtype=np.uint8) for name, mask in masks.items()}
    for cid, rec in candidates.items():
        path = Path(run_dir) / rec["masks_path"] if rec.get("masks_path") else None
        if rec.get("status") == "ok" and path is not None and path.is_file():
            fraction = differing_fraction(packed, load_packed(path))
            if fraction < NEAR_DUPLICATE:
                return f"it removes almost the same weights as {cid} (masks differ on {fraction:.4%} of weights)"
    return None


def verify(state: AgentState, services: AgentServices) -> dict:
    queue = list(state.get("queue", []))
    cid, queue = queue[0], queue[1:]
    record = state["candidates"][cid]
    is_llm = record.get("origin") == "llm"
    update: dict = {"queue": queue}
    if is_llm and not services.budget.can_submit(state):
        update["candidates"] = with_candidate(state, cid, status="not-sent", message="budget spent")
        return update
    budget_used = int(state.get("budget_used", 0)) + (1 if is_llm else 0)
    layer_sparsity = services.sandbox.uniform_sparsity()
    outcome = services.sandbox.run(read_source(services.run_dir, record), layer_sparsity=layer_sparsity)
    status, message, masks_path = outcome.status, outcome.message, None
    digest = None
    if status == "ok":
        try:
            check_masks(outcome, services)
            digest = masks_digest(outcome.masks)
            twin = twin_of(state, services.run_dir, outcome.masks, digest)
            if twin is not None:
                status, message = "duplicate", (
                    f"{twin}, so it was not evaluated. A factor that is constant within a row or layer, "
                    "or a monotone transform of the whole score (squaring, sqrt, log), does not change "
                    "which weights are removed: change how the weights of one row compare with each other.")
            else:
                masks_path = f"candidates/{cid}.masks.safetensors"
                save_masks(services.run_dir / masks_path, outcome.masks)
        except MaskError as exc:
            status, message = "invalid-output", f"host mask check failed: {exc}"
    services.trace.emit("verdict", id=cid, status=status, message=message, group=outcome.group,
                        timings={k: round(v, 4) for k, v in outcome.timings.items()},
                        submitted=budget_used if is_llm else None, budget_used=budget_used)
    update.update(
        budget_used=budget_used, verdicts=add_count(state.get("verdicts", {}), status),
        timings=add_timing(state, "sandbox", outcome.seconds),
        candidates=with_candidate(state, cid, status=status, message=message, masks_path=masks_path,
                                  group=outcome.group, mask_digest=digest))
    if status == "ok":
        update["pending_evals"] = list(state.get("pending_evals", [])) + [[cid, 0]]
    elif is_llm:
        update.update(last_error=f"{status}: {message}", repairs=int(state.get("repairs", 0)) + 1, current=cid)
    return update
