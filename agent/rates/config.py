"""Settings of one Self-Pruner rate search (what the CLI and the benchmark pass in)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from autoprune.errors import BadInputError
from autoprune.models import check_device
from autoprune.pruning.structured_importance import IMPORTANCE_KINDS


PROPOSALS = ("auto", "vector", "edit")


@dataclass
class RatesConfig:
    run_dir: Path
    target_params: float = 0.7          # fraction of decoder parameters kept
    budget: int = 8                     # offspring evaluated (generation 0 is free)
    population: int = 6                 # survivors kept by elitism
    model: Optional[str] = None         # None = the embedded SmolLM2-135M
    data: Optional[str] = None          # data folder, 'wikitext2' or 'self'
    seqlen: int = 256                   # search-time windows (calibration and fitness)
    nsamples: int = 32                  # calibration windows (the refit needs more tokens than scores)
    fitness_windows: int = 4            # validation windows per fitness evaluation
    eval_seqlen: int = 512              # final test perplexity protocol
    eval_windows: Optional[int] = 16
    low: float = 0.0                    # per-layer rate bounds
    high: float = 0.9
    reconstruct: bool = True            # refit o_proj/down_proj on kept inputs (autoprune.pruning.refit)
    importance: str = "taylor"          # how units are ranked: "taylor" or "activation" (structured_importance)
    max_repairs: int = 1                # LLM repair rounds before trusted fallback
    llm_base_url: Optional[str] = None  # None = the embedded LLM on loopback
    llm_model: Optional[str] = None
    llm_max_tokens: int = 256          # a 30-number list plus a few words (an edit step is capped lower)
    proposal: str = "auto"             # "vector" (the LLM writes the list), "edit" (one step line), "auto"
    llm_timeout_s: float = 600.0       # per request: a CPU-served model on a busy machine is slow
    temperature: float = 0.7
    seed: int = 0
    device: str = "cpu"                 # where the model is pruned, scored and timed: cpu, cuda, cuda:N
    speed_repeats: int = 5
    zeroshot_tasks: list[str] = field(default_factory=list)
    zeroshot_data: Optional[str] = None
    zeroshot_limit: Optional[int] = None
    export: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if not 0.0 < self.target_params < 1.0:
            raise BadInputError(f"--target-params must be in (0, 1), got {self.target_params}")
        if self.budget < 0 or self.population < 2:
            raise BadInputError("--budget must be >= 0 and --population >= 2")
        if self.proposal not in PROPOSALS:
            raise BadInputError(f"--proposal must be one of {', '.join(PROPOSALS)}, not {self.proposal!r}")
        if self.importance not in IMPORTANCE_KINDS:
            raise BadInputError(f"--importance must be one of {', '.join(IMPORTANCE_KINDS)}, not {self.importance!r}")
        check_device(self.device)
        if not 0.0 <= self.low < self.high < 1.0:
            raise BadInputError(f"rate bounds must satisfy 0 <= low < high < 1, got [{self.low}, {self.high}]")

    def proposal_for(self, *, embedded_llm: bool) -> str:
        """'auto': one edit step for the embedded 135M model, whole vectors for any other endpoint."""
        if self.proposal == "auto":
            return "edit" if embedded_llm else "vector"
        return self.proposal

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
