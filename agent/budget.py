"""The run's budget: candidates sent to the sandbox, LLM calls and tokens.

`--budget N` counts LLM-written programs submitted to the sandbox (repairs
included: each is a program the sandbox runs). Generation-0 seeds do not count.
LLM calls and tokens are capped too, so a chatty model cannot run forever.
The counts live in the checkpointed state; this class only judges them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class Budget:
    candidates: int
    llm_calls: int
    tokens: int

    def candidates_left(self, state: Mapping) -> int:
        return max(self.candidates - int(state.get("budget_used", 0)), 0)

    def tokens_used(self, state: Mapping) -> int:
        return sum(state.get("tokens", {}).values())

    def stop_reason(self, state: Mapping) -> Optional[str]:
        """Why the search must stop now, or None while every limit has room."""
        if self.candidates_left(state) == 0:
            return f"candidate budget spent ({self.candidates} sent to the sandbox)"
        if int(state.get("llm_calls", 0)) >= self.llm_calls:
            return f"LLM call cap reached ({self.llm_calls})"
        if self.tokens_used(state) >= self.tokens:
            return f"token cap reached ({self.tokens})"
        return None

    def can_submit(self, state: Mapping) -> bool:
        return self.stop_reason(state) is None

    def describe(self, state: Mapping) -> str:
        return (f"{int(state.get('budget_used', 0))}/{self.candidates} candidates, "
                f"{int(state.get('llm_calls', 0))}/{self.llm_calls} LLM calls, "
                f"{self.tokens_used(state)}/{self.tokens} tokens")
