"""`SearchMode`: what a search plugs into the runtime (agent/runtime/run.py).

The runtime owns everything a run has whatever it searches: the run folder, the LLM endpoint
and its journal, the trace, the checkpointer loop, signals and the failure event. A mode owns
what it searches: its inputs, its graph, its finale. Two exist: program search
(`ProgramSearch`, agent/run.py) and Self-Pruner rate search (agent/rates/mode.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Optional, Protocol

from autoprune.agent.runtime.endpoint import Endpoint
from autoprune.agent.runtime.trace import RunTrace


@dataclass
class Run:
    """One run as the runtime hands it to its mode."""

    run_dir: Path
    run_id: str                           # the checkpoint thread: the id the run started with
    resumed: bool
    trace: RunTrace
    from_seq: int = 0                     # the trace's last event before this leg
    started: float = field(default_factory=time.perf_counter)
    endpoint: Optional[Endpoint] = None   # set once the LLM endpoint is up
    client: Any = None                    # the endpoint's client (usage accounting)
    llm: Any = None                       # the JournaledLLM every node calls
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)   # closed when the run ends

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class SearchMode(Protocol):
    name: str                                   # the trace's run_started `mode`
    state_schema: type                          # the graph's TypedDict, checked on resume
    once_keys: dict[str, tuple[str, ...]]       # at-most-once trace events beyond RunTrace's
    settings: Any                               # a runtime.settings.SearchSettings

    def prepare(self, run: Run) -> None:
        """Model, data, statistics: everything computed before the LLM endpoint starts."""

    def connect(self, run: Run) -> Any:
        """The graph's services, once `run.endpoint` and `run.llm` exist."""

    def header(self, run: Run, services: Any) -> dict:
        """The run_started / run_resumed payload beyond run_id, mode and llm."""

    def build_graph(self, services: Any, checkpointer: Any) -> Any:
        """The compiled StateGraph (nodes wrapped by runtime.nodes.traced)."""

    def graph_input(self, services: Any, values: Optional[dict], run: Run) -> Optional[dict]:
        """The first state of a fresh run (`values` None); None to continue `values` (caches primed)."""

    def view(self, services: Any, live: bool) -> ContextManager:
        """A live view (node_started(name, update), state_changed(state)) or a null context."""

    def finalize(self, services: Any, state: dict, run: Run) -> Any:
        """The summary of the finished state (with `to_dict()`: what run_finished records)."""
