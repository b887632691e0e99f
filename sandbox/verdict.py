"""What goes into a sandbox run (ScoringRequest, SandboxLimits) and what comes out (CandidateVerdict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from autoprune.pruning.masks import SparsityPattern

Status = Literal["ok", "rejected-static", "crashed", "timeout", "out-of-memory",
                 "invalid-output", "too-much-output"]
STATUSES: tuple[str, ...] = ("ok", "rejected-static", "crashed", "timeout", "out-of-memory",
                             "invalid-output", "too-much-output")


@dataclass(frozen=True)
class ScoringRequest:
    """Which layers to score, at which sparsity and pattern; or "profile" the score distributions."""

    sparsity: dict[str, float] = field(default_factory=dict)
    pattern: SparsityPattern = SparsityPattern()
    mode: Literal["masks", "profile"] = "masks"

    def to_json(self) -> dict:
        return {"sparsity": dict(self.sparsity), "pattern": str(self.pattern), "mode": self.mode}


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one candidate run. Defaults suit a ~100M-parameter model on CPU."""

    timeout_s: float = 120.0
    memory_bytes: int = 4 << 30          # container memory = memory+swap (no swap)
    cpus: float = 1.0                    # CPU quota (nano_cpus)
    threads: int = 1                     # torch intra-op threads: >1 spins badly under a quota
    pids: int = 64
    tmp_bytes: int = 64 << 20            # /tmp tmpfs
    output_bytes: Optional[int] = None   # /out tmpfs; None = 2 × the bundle's packed masks + 1 MiB
    stdout_bytes: int = 1 << 20          # worker stdout+stderr before it is killed
    gpus: Optional[str] = None           # "all" | "0,1" | None (CPU only)
    image: Optional[str] = None          # None = the default sandbox image
    raw: bool = False                    # tests only: skip the gate and the worker's restrictions

    def output_cap(self, packed_mask_bytes: int) -> int:
        if self.output_bytes is not None:
            return self.output_bytes
        return 2 * packed_mask_bytes + (1 << 20)


@dataclass
class CandidateVerdict:
    status: Status
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    masks: Optional[dict[str, torch.Tensor]] = None       # layer name -> bool keep-mask
    profile: Optional[dict[str, dict]] = None  # {"layers": {name: stats}, "blocks": {index: stats}}
    group: str = "row"
    backend: str = "docker"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> dict:
        """JSON-friendly view (for traces): everything except the tensors."""
        return {"status": self.status, "message": self.message, "group": self.group,
                "backend": self.backend, "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "layers": len(self.masks or self.profile or {})}
