"""Load a run folder into a `RunView`: the one reader behind replay and reports.

`RunViewBuilder.add(event)` folds trace events one at a time, so a finished
run (`load_run`) and a run still being written (`TraceFollower` feeding the
replay app) go through the same code. Payload keys follow docs/trace.md; every
key is optional, and a candidate may be named `candidate_id`, `candidate` or `id`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from autoprune.errors import TraceError
from autoprune.reports.run_model import CandidateView, FitnessPoint, LLMExchange, RunView, Step
from autoprune.runlog.trace_file import TRACE_FILE, read_trace

CONFIG_FILE = "config.json"
NODE_EVENTS = ("node_entered", "node_left")


def candidate_key(event: dict) -> Optional[str]:
    cid = event.get("candidate_id", event.get("candidate", event.get("id")))
    if isinstance(cid, dict):
        cid = cid.get("id") or cid.get("candidate_id")
    return str(cid) if cid is not None else None


def as_float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class RunViewBuilder:
    """Folds trace events into a RunView, in `seq` order."""

    def __init__(self, run_dir: Path, config: Optional[dict] = None):
        self.view = RunView(run_dir=Path(run_dir), config=dict(config or {}))
        self._open: Optional[Step] = None
        self._handlers: dict[str, Callable[[dict], None]] = {
            "run_started": self._run_started, "run_resumed": self._run_resumed,
            "run_finished": self._run_finished, "run_failed": self._run_failed,
            "node_entered": self._node_entered, "node_left": self._node_left,
            "llm_request": self._llm_request, "llm_response": self._llm_response,
            "candidate": self._candidate, "verdict": self._verdict, "fitness": self._fitness,
            "rating": self._rating, "tournament": self._tournament, "insight": self._insight,
            "hypothesis": self._hypothesis,
            "baseline": self._baseline, "final_result": self._final_result,
        }

    def add_all(self, events: list[dict]) -> RunView:
        for event in events:
            self.add(event)
        return self.view

    def add(self, event: dict) -> None:
        view = self.view
        view.event_count += 1
        ts = as_float(event.get("ts"))
        if ts is not None:
            view.started_ts = ts if view.started_ts is None else view.started_ts
            view.last_ts = ts
        if view.status == "empty":
            view.status = "running"
        step = self._step_for(event)
        step.events.append(event)
        handler = self._handlers.get(event.get("type", ""))
        if handler is not None:
            handler(event)

    # -- steps -------------------------------------------------------------------------------------------

    def _step_for(self, event: dict) -> Step:
        """The step an event belongs to: the open node, or a step of its own outside any node."""
        kind = event.get("type", "")
        if kind == "node_entered":
            if self._open is not None:      # a node that never said it left (crash, parallel branch)
                self._open = None
            return self._new_step(str(event.get("node", "?")), event)
        if self._open is not None:
            return self._open
        return self._new_step(f"({kind})", event, opened=False)

    def _new_step(self, node: str, event: dict, *, opened: bool = True) -> Step:
        step = Step(index=len(self.view.steps), node=node, started=as_float(event.get("ts")) or 0.0,
                    generation=event.get("generation"))
        if not opened:
            step.seconds = 0.0
        self.view.steps.append(step)
        self._open = step if opened else None
        return step

    def _node_entered(self, event: dict) -> None:
        pass  # the step was opened by _step_for

    def _node_left(self, event: dict) -> None:
        step = self._open
        if step is None:
            return
        seconds = as_float(event.get("seconds"))
        ts = as_float(event.get("ts"))
        step.seconds = seconds if seconds is not None else (ts - step.started if ts is not None else 0.0)
        if step.generation is None:
            step.generation = event.get("generation")
        self._open = None

    # -- run lifecycle -----------------------------------------------------------------------------------

    def _run_started(self, event: dict) -> None:
        if isinstance(event.get("config"), dict):
            self.view.config = {**event["config"], **self.view.config}
        for key in ("run_id", "protocol", "model", "llm"):
            if event.get(key) is not None:
                self.view.run_info[key] = event[key]

    def _run_resumed(self, event: dict) -> None:
        self._run_started(event)
        self.view.status = "running"
        self.view.failure = None

    def _run_finished(self, event: dict) -> None:
        self.view.status = "finished"
        summary = event.get("summary")
        self.view.summary = summary if isinstance(summary, dict) else {k: v for k, v in event.items()
                                                                      if k not in ("v", "seq", "ts", "type")}

    def _run_failed(self, event: dict) -> None:
        self.view.status = "failed"
        self.view.failure = str(event.get("error") or event.get("message") or "run failed")

    # -- LLM ---------------------------------------------------------------------------------------------

    def _llm_request(self, event: dict) -> None:
        messages = event.get("messages")
        if not isinstance(messages, list):
            prompt = event.get("prompt")
            messages = [{"role": "user", "content": str(prompt)}] if prompt is not None else []
        exchange = LLMExchange(node=str(event.get("node") or self._node_name()), messages=messages,
                               seq=as_int(event.get("seq")))
        self.view.exchanges.append(exchange)
        self.view.steps[-1].exchanges.append(exchange)

    def _llm_response(self, event: dict) -> None:
        pending = [ex for ex in self.view.exchanges if ex.text is None]
        exchange = pending[-1] if pending else None
        if exchange is None:               # a response without its request (trace cut at the start)
            self._llm_request({"node": event.get("node"), "seq": event.get("seq")})
            exchange = self.view.exchanges[-1]
        exchange.text = str(event.get("text", event.get("content", "")))
        exchange.prompt_tokens = as_int(event.get("prompt_tokens"))
        exchange.completion_tokens = as_int(event.get("completion_tokens"))
        exchange.seconds = as_float(event.get("seconds"))

    def _node_name(self) -> str:
        return self._open.node if self._open is not None else "?"

    # -- candidates --------------------------------------------------------------------------------------

    def _candidate_view(self, event: dict) -> Optional[CandidateView]:
        cid = candidate_key(event)
        if cid is None:
            return None
        cand = self.view.candidates.get(cid)
        if cand is None:
            cand = self.view.candidates[cid] = CandidateView(id=cid, first_seq=as_int(event.get("seq")))
        step = self.view.steps[-1]
        if cid not in step.candidate_ids:
            step.candidate_ids.append(cid)
        return cand

    def _candidate(self, event: dict) -> None:
        cand = self._candidate_view(event)
        if cand is None:
            return
        for key in ("generation", "origin", "hypothesis", "source", "path", "parent"):
            if event.get(key) is not None:
                value = event[key]
                if key == "hypothesis" and isinstance(value, dict):
                    value = str(value.get("name") or "")
                setattr(cand, key, value)

    def _verdict(self, event: dict) -> None:
        cand = self._candidate_view(event)
        if cand is None:
            return
        cand.status = str(event.get("status", "unknown"))
        cand.message = str(event.get("message") or "")
        cand.timings = {k: v for k, v in (event.get("timings") or {}).items() if as_float(v) is not None}
        if "submitted" in event:           # docs/trace.md: null for seeds
            cand.submitted = as_int(event["submitted"], default=0) or None
            if cand.submitted is None and not cand.origin:   # seeds may reach the trace only through verify
                cand.origin, cand.generation = "seed", 0 if cand.generation is None else cand.generation
        elif not cand.is_seed and cand.submitted is None:
            cand.submitted = 1 + sum(1 for c in self.view.candidates.values() if c.submitted is not None)

    def _fitness(self, event: dict) -> None:
        cand = self._candidate_view(event)
        if cand is None:
            return
        level = as_int(event.get("level"), default=len(cand.fitness))
        ppl = as_float(event.get("ppl", event.get("perplexity", event.get("fitness"))))
        nwindows = event.get("nwindows")
        nlls = event.get("nlls", event.get("nll_per_window"))
        if nwindows is None and isinstance(nlls, list):
            nwindows = len(nlls)
        cand.fitness[level] = FitnessPoint(level=level, ppl=ppl, nwindows=nwindows, seq=as_int(event.get("seq")),
                                           seconds=as_float(event.get("seconds")))

    def _rating(self, event: dict) -> None:
        """Either `ratings: {id: rating}` for a whole level, or one candidate's `rating`."""
        ratings = event.get("ratings")
        if isinstance(ratings, dict):
            for cid, rating in ratings.items():
                cand = self.view.candidates.get(str(cid))
                if cand is not None and as_float(rating) is not None:
                    cand.rating = as_float(rating)
            return
        cand = self._candidate_view(event)
        if cand is not None:
            cand.rating = as_float(event.get("rating"))

    def _hypothesis(self, event: dict) -> None:
        if event.get("name"):
            self.view.hypotheses[str(event["name"])] = str(event.get("statement") or "")

    def _tournament(self, event: dict) -> None:
        standings = [s for s in event.get("standings") or [] if isinstance(s, dict)]
        self.view.tournaments.append({**event, "standings": standings})
        self.view.steps[-1].standings = standings
        for row in standings:
            cand = self.view.candidates.get(candidate_key(row) or "")
            if cand is not None and as_float(row.get("rating")) is not None:
                cand.rating = as_float(row.get("rating"))

    def _insight(self, event: dict) -> None:
        graph = event.get("graph", event.get("insights"))
        if isinstance(graph, dict):
            self.view.insight = graph

    def _baseline(self, event: dict) -> None:
        """Kept per name, one entry per event (Wanda is re-measured at every fidelity level)."""
        name = str(event.get("name", event.get("method", "baseline")))
        entry = {k: v for k, v in event.items() if k not in ("v", "seq", "type")}
        self.view.baselines.setdefault(name, []).append(entry)

    def _final_result(self, event: dict) -> None:
        self.view.final = {k: v for k, v in event.items() if k not in ("v", "seq", "ts", "type")}


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def check_run_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TraceError(f"no run folder at {run_dir}")
    if not (run_dir / TRACE_FILE).is_file():
        raise TraceError(f"{run_dir} has no {TRACE_FILE}: is it a run folder?")
    return run_dir


def load_run(run_dir: Path) -> RunView:
    """The whole run folder as a RunView; a truncated or malformed line becomes a notice in `problems`."""
    run_dir = check_run_dir(run_dir)
    result = read_trace(run_dir)
    view = RunViewBuilder(run_dir, read_config(run_dir)).add_all(result.events)
    view.problems.extend(result.problems)
    return view
