"""The run's budget: what the search may spend, and the one judge of every stop.

Program search: `--budget N` counts LLM-written programs submitted to the sandbox (repairs
included: each is a program the sandbox runs; generation-0 seeds do not count), and LLM calls
and tokens are capped too, so a chatty model cannot run forever. Rate search: `--budget N`
counts offspring evaluated, with no LLM cap (each offspring costs at most `max_repairs + 1`
calls). The counts live in the checkpointed state; this class only judges them: the graph's
routes ask it whether to go on, the finalize node records its `stop_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class Budget:
    candidates: int
    llm_calls: Optional[int] = None      # None: no cap
    tokens: Optional[int] = None
    counter: str = "budget_used"         # the state key that counts spent candidates
    spent: str = "sent to the sandbox"   # what a spent candidate is, for the stop reason

    def used(self, state: Mapping) -> int:
        return int(state.get(self.counter, 0) or 0)

    def candidates_left(self, state: Mapping) -> int:
        return max(self.candidates - self.used(state), 0)

    def tokens_used(self, state: Mapping) -> int:
        return sum(state.get("tokens", {}).values())

    def llm_cap_reason(self, state: Mapping) -> Optional[str]:
        """Why no further LLM call may be made, or None."""
        if self.llm_calls is not None and int(state.get("llm_calls", 0)) >= self.llm_calls:
            return f"LLM call cap reached ({self.llm_calls})"
        if self.tokens is not None and self.tokens_used(state) >= self.tokens:
            return f"token cap reached ({self.tokens})"
        return None

    def stop_reason(self, state: Mapping) -> Optional[str]:
        """Why the search must stop now, or None while every limit has room."""
        if self.candidates_left(state) == 0:
            return f"candidate budget spent ({self.candidates} {self.spent})"
        return self.llm_cap_reason(state)

    def can_submit(self, state: Mapping) -> bool:
        return self.stop_reason(state) is None

    def can_send(self, state: Mapping, already_sent: int = 0) -> bool:
        """One more LLM candidate may go to the sandbox beside `already_sent` ones of the same batch."""
        return self.can_submit(state) and self.candidates_left(state) > already_sent

    def may_ask(self, state: Mapping) -> bool:
        """An LLM call that spends no candidate (reflect's lesson) is still within the caps."""
        return self.llm_cap_reason(state) is None

    def describe(self, state: Mapping) -> str:
        text = f"{self.used(state)}/{self.candidates} candidates"
        if self.llm_calls is not None:
            text += f", {int(state.get('llm_calls', 0))}/{self.llm_calls} LLM calls"
        if self.tokens is not None:
            text += f", {self.tokens_used(state)}/{self.tokens} tokens"
        return text
