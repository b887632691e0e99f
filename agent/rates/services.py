"""What the rate-search nodes call: the model and its statistics, fitness, the LLM, the trace.

Nodes stay small functions of the state; everything heavy or external lives here and is
passed in, so a node can be tested with a tiny model and a real (small) LLM endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from autoprune.agent.budget import Budget
from autoprune.agent.runtime.trace import RunTrace
from autoprune.data import WindowSet
from autoprune.evaluators.perplexity import perplexity
from autoprune.pruning.param_budget import decoder_totals, kept_parameter_fraction
from autoprune.pruning.rates import RateConstraint
from autoprune.pruning.stats import ActivationStats
from autoprune.pruning.structured import pruned_copy
from autoprune.pruning.structured_importance import BlockImportance


@dataclass
class RatesServices:
    model: object                       # the dense model (never modified)
    tokenizer: object
    stats: dict[str, ActivationStats]   # dense calibration statistics (first half of validation)
    windows: WindowSet                  # fitness windows (second half of validation)
    constraint: RateConstraint
    llm: Any                            # the runtime's JournaledLLM (.chat(messages, node=, seed=, ...))
    trace: RunTrace
    prompts: object                     # a PromptSet with "system", "propose", "repair"
    model_name: str = "the model"
    budget: Budget = field(default_factory=lambda: Budget(8, counter="evaluated", spent="offspring evaluated"))
    population_size: int = 6
    max_repairs: int = 1
    llm_max_tokens: int = 256
    temperature: float = 0.7
    seed: int = 0
    reconstruct: bool = False                         # refit output projections after pruning
    importance: Optional[list[BlockImportance]] = None  # unit scores (None: activation scores from stats)
    proposal: str = "vector"                          # "vector" or "edit" (agent/rates/edits.py)
    seeds: list[dict] = field(default_factory=list)   # generation 0: {"origin", "rates"}
    finalize: Optional[object] = None                 # callable(state, services) -> dict
    _cache: dict[tuple, float] = field(default_factory=dict)
    _totals: Optional[tuple[int, int]] = None

    def fitness(self, rates: list[float]) -> float:
        """Validation perplexity of the model pruned by `rates` (cached per vector)."""
        key = tuple(round(r, 6) for r in rates)
        if key not in self._cache:
            self._cache[key] = perplexity(self.pruned(rates), self.windows)
        return self._cache[key]

    def pruned(self, rates: list[float], *, reconstruct: Optional[bool] = None):
        """The model pruned by `rates` (refitted when the search reconstructs, unless told otherwise)."""
        refit = self.reconstruct if reconstruct is None else reconstruct
        return pruned_copy(self.model, rates, self.stats, importance=self.importance, reconstruct=refit)

    def prime(self, rates: list[float], value: float) -> None:
        """Remember a fitness computed before a resume."""
        self._cache[tuple(round(r, 6) for r in rates)] = value

    def params_fraction(self, rates: list[float]) -> float:
        if self._totals is None:
            self._totals = decoder_totals(self.model)
        return kept_parameter_fraction(self.model, rates, self._totals)
