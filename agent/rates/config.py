"""Settings of one Self-Pruner rate search (what the CLI and the benchmark pass in).

One config style with program search: a pydantic model on the runtime's SearchSettings
(budget, seed, LLM endpoint and sampling); the fields below are the rate search's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, ValidationError, model_validator

from autoprune.agent.runtime.settings import SearchSettings
from autoprune.errors import BadInputError
from autoprune.models import DtypeName, check_device, check_model_spec
from autoprune.pruning.choices import IMPORTANCE_KINDS
from autoprune.pruning.config import check_data_folder

PROPOSALS = ("auto", "vector", "edit")


class RatesConfig(SearchSettings):
    budget: int = 8                     # offspring evaluated (generation 0 is free)
    llm_max_tokens: int = 256           # a 30-number list plus a few words (an edit step is capped lower)
    temperature: float = 0.7
    run_dir: Path
    target_params: float = 0.7          # fraction of decoder parameters kept
    population: int = 6                 # survivors kept by elitism
    model: Optional[str] = None         # None = the embedded SmolLM2-135M
    dtype: DtypeName = "fp32"           # the weights' dtype (bf16 | fp16 | fp32); refits run in float64
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
    proposal: str = "auto"              # "vector" (the LLM writes the list), "edit" (one step line), "auto"
    device: str = "cpu"                 # where the model is pruned, scored and timed: cpu, cuda, cuda:N
    speed_repeats: int = 5
    zeroshot_tasks: list[str] = Field(default_factory=list)
    zeroshot_data: Optional[str] = None
    zeroshot_limit: Optional[int] = None
    export: bool = True
    resume: bool = False

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            from autoprune.agent.config import describe_validation_error

            raise BadInputError(describe_validation_error(exc)) from None

    @model_validator(mode="after")
    def _ranges(self) -> "RatesConfig":
        if not 0.0 < self.target_params < 1.0:
            raise BadInputError(f"--target-params must be in (0, 1), got {self.target_params}")
        if self.budget < 0 or self.population < 2:
            raise BadInputError("--budget must be >= 0 and --population >= 2")
        if self.proposal not in PROPOSALS:
            raise BadInputError(f"--proposal must be one of {', '.join(PROPOSALS)}, not {self.proposal!r}")
        if self.importance not in IMPORTANCE_KINDS:
            raise BadInputError(f"--importance must be one of {', '.join(IMPORTANCE_KINDS)}, not {self.importance!r}")
        check_device(self.device)
        check_model_spec(self.model)        # on disk only: answered before a run folder, torch or a download
        check_data_folder(self.data)
        if not 0.0 <= self.low < self.high < 1.0:
            raise BadInputError(f"rate bounds must satisfy 0 <= low < high < 1, got [{self.low}, {self.high}]")
        return self

    def proposal_for(self, *, embedded_llm: bool) -> str:
        """'auto': one edit step for the embedded 135M model, whole vectors for any other endpoint."""
        if self.proposal == "auto":
            return "edit" if embedded_llm else "vector"
        return self.proposal

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")
