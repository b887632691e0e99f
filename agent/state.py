"""The typed state of the LangGraph agent.

Everything here is checkpointed after every node (SQLite in the run folder), so
it holds ids, paths, numbers and text only: masks live in files under
`candidates/`, weights stay in the fitness service. Nodes return partial
updates; a field a node returns replaces the old value (dicts are copied and
updated by the node, see `with_candidate`).
"""

from __future__ import annotations

from typing import Literal, Optional

# typing_extensions' TypedDict: pydantic validates it on Python 3.11 (agent/checkpoints.py checks a
# resumed state against these classes).
from typing_extensions import TypedDict

# "llm": written by the LLM; "mutation": the LLM repeated a tested metric and trusted code
# mutated it (agent/mutation.py, or a population parent under --proposer mutation); "random": drawn from
# the expression grammar (--proposer random, agent/random_search.py). All are search candidates:
# budgeted, reflected on, ranked.
Origin = Literal["seed", "llm", "mutation", "random"]
SEARCH_ORIGINS = ("llm", "mutation", "random")
Phase = Literal["seeding", "search", "final"]


class CandidateRecord(TypedDict, total=False):
    id: str
    generation: int
    origin: Origin
    hypothesis: str                 # name of the hypothesis it tests ("" for seeds)
    path: str                       # candidates/<id>.py, relative to the run folder
    parent: Optional[str]           # the candidate this one repairs
    status: str                     # "written" until verified, then the sandbox verdict status, or
                                    # "duplicate" (verified, but its masks equal an earlier candidate's)
    message: str                    # the verdict's message (the exact error for failures)
    masks_path: Optional[str]       # candidates/<id>.masks.safetensors while it is kept
    group: str                      # how its scores became masks: "row" | "layer"
    mask_digest: Optional[str]      # sha256 over all its masks, to spot candidates that prune alike
    fingerprint: str                # archive.metric_fingerprint of its source, computed once when written
    nll: dict[str, list[float]]     # fidelity level (as str) -> per-window NLLs
    fitness: Optional[float]        # perplexity at its highest level
    level: int                      # highest fidelity level evaluated (-1 = none)
    reflection: str
    sent: int                       # an LLM candidate's number among those sent (the budget's count)


def is_search_candidate(record: CandidateRecord) -> bool:
    return record.get("origin") in SEARCH_ORIGINS


class Hypothesis(TypedDict, total=False):
    name: str
    statement: str
    generation: int


class AgentState(TypedDict, total=False):
    run_id: str
    phase: Phase
    generation: int
    analysis: str                   # the analyse node's text for later prompts
    hypothesis: Optional[Hypothesis]
    current: Optional[str]          # candidate being written / repaired
    repairs: int                    # repairs used on the current hypothesis
    attempts: int                   # write_code calls on the current hypothesis (numbers the candidates)
    last_error: Optional[str]       # exact error that goes back to write_code
    queue: list[str]                # written candidates waiting for the sandbox
    in_flight: list[str]            # sent to the evaluation pipeline, verdict not yet recorded (oldest first)
    reflected: int                  # the last generation reflect has judged (the pipeline lets it lag)
    open_hypotheses: dict[str, Hypothesis]   # generation (str) -> its hypothesis, until reflected
    pending_evals: list[list]       # [candidate id, level] pairs waiting for fitness
    candidates: dict[str, CandidateRecord]
    ratings: dict[str, dict[str, float]]   # level -> candidate id -> rating
    leaderboard: list[str]          # candidate ids, best first
    archive: list[str]              # elite candidate ids (top-k)
    insights: dict                  # InsightGraph.to_dict()
    budget_used: int                # LLM candidates sent to the sandbox
    llm_calls: int
    tokens: dict[str, int]          # prompt / completion
    verdicts: dict[str, int]        # verdict status -> count
    timings: dict[str, float]       # llm / sandbox / fitness seconds
    stop_reason: Optional[str]
    final: Optional[dict]           # finalize's summary


def initial_state(run_id: str, seed_ids: list[str], seed_records: dict[str, CandidateRecord]) -> AgentState:
    return AgentState(
        run_id=run_id, phase="seeding", generation=0, analysis="", hypothesis=None, current=None,
        repairs=0, attempts=0, last_error=None, queue=list(seed_ids), in_flight=[], reflected=0, open_hypotheses={},
        pending_evals=[], candidates=dict(seed_records),
        ratings={}, leaderboard=[], archive=[], insights={}, budget_used=0, llm_calls=0,
        tokens={"prompt": 0, "completion": 0}, verdicts={},
        timings={"llm": 0.0, "sandbox": 0.0, "fitness": 0.0}, stop_reason=None, final=None,
    )


def with_candidate(state: AgentState, cid: str, **changes) -> dict[str, CandidateRecord]:
    """A copy of the candidates dict with one record updated (the node returns it)."""
    candidates = dict(state.get("candidates", {}))
    candidates[cid] = {**candidates.get(cid, {}), **changes}
    return candidates


def add_timings(state: AgentState, **seconds: float) -> dict[str, float]:
    """The state's timings with `seconds` added per kind (`add_timings(state, sandbox=1.5)`)."""
    timings = dict(state.get("timings", {}))
    for kind, value in seconds.items():
        timings[kind] = round(timings.get(kind, 0.0) + value, 4)
    return timings


def add_count(counts: dict[str, int], key: str, n: int = 1) -> dict[str, int]:
    out = dict(counts)
    out[key] = out.get(key, 0) + n
    return out


def reflect_generation(state: AgentState) -> int:
    """The generation reflect judges next: the one after the last judged (a checkpoint from before the
    pipeline has no `reflected`: then the current one)."""
    generation = int(state.get("generation", 0))
    return int(state.get("reflected", generation - 1)) + 1


def unsettled(state: AgentState, generation: int) -> bool:
    """Some candidate of `generation` is still queued or in the evaluation pipeline."""
    candidates = state.get("candidates", {})
    waiting = list(state.get("queue") or []) + list(state.get("in_flight") or [])
    return any(candidates.get(cid, {}).get("generation") == generation for cid in waiting)


def candidate_id(generation: int, attempt: int) -> str:
    """Deterministic ids, so a resumed node re-creates the same candidate, never a new one."""
    return f"g{generation:03d}-a{attempt}"
