"""A small but complete run folder written with the real TraceWriter (payloads as in docs/trace.md),
shared by the replay, report and run-data tests; plus the tests of `load_run` itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune.agent.trace import TraceWriter
from autoprune.errors import TraceError
from autoprune.reports.run_data import load_run

WANDA = "def score(W, X):\n    return W.abs() * X.norm.unsqueeze(0)\n"
SKEW = ("import torch\n\ndef score(W, X):\n    # heavier outlier channels weigh more\n"
        "    return W.abs() * (X.norm * (1 + X.max_abs / (X.norm + 1e-6))).unsqueeze(0)\n")
BROKEN = "import os\n\ndef score(W, X):\n    return os.system('id')\n"
BLOCK_SDSA = [0.46, 0.48, 0.5, 0.52, 0.53, 0.51]


class Clock:
    """Deterministic timestamps so node durations in the sample look like a real run."""

    def __init__(self, start: float = 1_790_000_000.0):
        self.now = start

    def __call__(self, seconds: float = 0.0) -> float:
        self.now += seconds
        return round(self.now, 3)


def write_candidate(run_dir: Path, cid: str, source: str) -> str:
    rel = f"candidates/{cid}.py"
    (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / rel).write_text(source, encoding="utf-8")
    return rel


def node(trace: TraceWriter, clock: Clock, name: str, generation: int, seconds: float, body=None) -> None:
    trace.emit("node_entered", node=name, generation=generation, ts=clock())
    if body is not None:
        body()
    trace.emit("node_left", node=name, generation=generation, seconds=seconds, ts=clock(seconds))


def llm(trace: TraceWriter, clock: Clock, name: str, prompt: str, reply: str, tokens=(400, 120)) -> None:
    trace.emit("llm_request", node=name, messages=[{"role": "system", "content": "You design pruning metrics."},
                                                   {"role": "user", "content": prompt}], ts=clock(0.1))
    trace.emit("llm_response", node=name, text=reply, prompt_tokens=tokens[0], completion_tokens=tokens[1],
               seconds=2.5, ts=clock(2.5))


def write_sample_run(run_dir: Path, *, finished: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"budget": 3, "sparsity": 0.5, "pattern": "unstructured", "seqlen": 128, "model": None,
              "fitness_levels": [2, 8]}
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    trace, clock = TraceWriter(run_dir), Clock()
    trace.emit("run_started", run_id="sample", config=config, model="SmolLM2-135M", ts=clock(),
               protocol={"calibration": "wikitext2 train, 64 x 128", "fitness": "wikitext2 validation",
                         "levels": [2, 8], "seqlen": 128},
               llm={"base_url": None, "model": "SmolLM2-135M-Instruct", "embedded": True})

    def seeds():
        for cid, ppl in (("wanda", 40.0), ("magnitude", 95.0)):
            trace.emit("candidate", id=cid, generation=0, origin="seed", hypothesis="",
                       path=write_candidate(run_dir, cid, WANDA), parent=None, source=WANDA, ts=clock(0.1))
            trace.emit("verdict", id=cid, status="ok", message="", timings={"total": 1.5}, submitted=None,
                       ts=clock(1.5))
            trace.emit("fitness", id=cid, level=0, nwindows=2, nlls=[3.6, 3.8], ppl=ppl, seconds=1.0, ts=clock(1))
        trace.emit("baseline", name="dense", level=0, nwindows=2, ppl=22.0, ts=clock())
        trace.emit("baseline", name="wanda", level=0, nwindows=2, ppl=40.0, ts=clock())
    node(trace, clock, "seed", 0, 6.0, seeds)
    node(trace, clock, "analyse", 1, 3.0, lambda: llm(trace, clock, "analyse", "Model statistics: ...",
                                                      "Blocks 3-5 carry heavy outliers."))

    def hypothesise():
        llm(trace, clock, "hypothesise", "Archive: wanda 40.0", "HYPOTHESIS outlier-skew: ...")
        trace.emit("hypothesis", name="outlier-skew", statement="channels with outliers matter more",
                   generation=1, ts=clock())
    node(trace, clock, "hypothesise", 1, 3.0, hypothesise)
    submissions = [("c1", BROKEN, "rejected-static", "import of 'os' is not allowed (line 1)", None),
                   ("c2", SKEW, "ok", "", 36.5), ("c3", WANDA + "# variant\n", "crashed", "RuntimeError: shape", None)]
    for n, (cid, source, status, message, ppl) in enumerate(submissions, 1):
        parent = "c1" if cid == "c2" else None
        node(trace, clock, "write_code", 1, 3.0, lambda: (
            llm(trace, clock, "write_code", f"Write score() for outlier-skew{' (repair)' if parent else ''}",
                f"```python\n{source}```", tokens=(900, 250)),
            trace.emit("candidate", id=cid, generation=1, origin="llm", hypothesis="outlier-skew", parent=parent,
                       path=write_candidate(run_dir, cid, source), source=source, ts=clock())))
        node(trace, clock, "verify", 1, 2.0, lambda: trace.emit(
            "verdict", id=cid, status=status, message=message, timings={"total": 2.0}, submitted=n,
            budget_used=n, ts=clock(2)))
        if ppl is not None:
            node(trace, clock, "evaluate", 1, 4.0, lambda: (
                trace.emit("fitness", id=cid, level=0, nwindows=2, nlls=[3.5, 3.7], ppl=ppl, seconds=1, ts=clock(1)),
                trace.emit("fitness", id=cid, level=1, nwindows=8, nlls=[3.6] * 8, ppl=ppl + 1, seconds=3,
                           ts=clock(3))))
    standings = [{"id": "c2", "rank": 1, "level": 1, "rating": 1580.0, "ppl": 37.5, "hypothesis": "outlier-skew"},
                 {"id": "wanda", "rank": 2, "level": 1, "rating": 1500.0, "ppl": 41.0, "hypothesis": ""},
                 {"id": "magnitude", "rank": 3, "level": 0, "rating": 1420.0, "ppl": 95.0, "hypothesis": ""}]
    node(trace, clock, "tournament", 1, 1.0, lambda: (
        trace.emit("rating", level=1, ratings={"c2": 1580.0, "wanda": 1500.0}, ts=clock()),
        trace.emit("tournament", generation=1, standings=standings, promoted=[], archive=["c2", "wanda"],
                   ts=clock())))
    graph = {"hypotheses": {"outlier-skew": "channels with outliers matter more"},
             "evidence": [{"candidate": "c2", "hypothesis": "outlier-skew", "verdict": "ok",
                           "relation": "supports", "fitness": 37.5, "detail": "beats wanda on 7/8 windows"}],
             "lessons": {"outlier-skew": ["max_abs helps in late blocks"]}}
    node(trace, clock, "reflect", 1, 3.0, lambda: (
        llm(trace, clock, "reflect", "Why did c2 win?", "LESSON: max_abs helps in late blocks"),
        trace.emit("insight", generation=1, candidate="c2", hypothesis="outlier-skew", relation="supports",
                   lesson="max_abs helps in late blocks", graph=graph, ts=clock())))
    if not finished:
        return run_dir
    final = {"winner": {"id": "c2", "hypothesis": "outlier-skew", "ppl_validation": 37.5, "level": 1},
             "wanda": {"ppl_validation": 41.0}, "beats_wanda": True,
             "test": {"uniform": 38.2, "owl": 37.9, "sdsa": 37.1, "wanda_uniform": 42.3, "dense": 21.5},
             "sdsa": {"lambda": 0.04, "temperature": 1.0, "sparsities": BLOCK_SDSA},
             "allocations": {"owl": [0.47, 0.49, 0.5, 0.51, 0.52, 0.51]},
             "export": str(run_dir / "model"), "report": None}
    node(trace, clock, "finalize", 1, 30.0, lambda: trace.emit("final_result", **final, ts=clock()))
    trace.emit("run_finished", summary={"winner": "c2", "budget_used": 3, "stop_reason": "candidate budget spent"},
               ts=clock())
    return run_dir


def truncate_last_line(run_dir: Path) -> None:
    """What a kill mid-write leaves: the last event cut in half, no newline."""
    path = run_dir / "trace.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])


@pytest.fixture
def sample_run(tmp_path) -> Path:
    return write_sample_run(tmp_path / "run")


def test_load_run_joins_candidates_verdicts_fitness_and_ratings(sample_run):
    view = load_run(sample_run)
    assert view.status == "finished" and not view.problems
    assert list(view.candidates) == ["wanda", "magnitude", "c1", "c2", "c3"]
    c2 = view.candidates["c2"]
    assert (c2.status, c2.parent, c2.submitted, c2.ppl, c2.rating) == ("ok", "c1", 2, 37.5, 1580.0)
    assert view.candidates["c1"].message.startswith("import of 'os'")
    assert view.winner_id == "c2"
    assert [c.id for c in view.submitted_candidates()] == ["c1", "c2", "c3"]
    assert view.verdict_counts() == {"ok": 3, "rejected-static": 1, "crashed": 1}
    assert view.baseline_ppl("wanda") == 40.0 and view.baseline_ppl("wanda", level=0) == 40.0
    assert view.baseline_ppl("wanda", level=1) is None and view.baseline_ppl("nope") is None
    assert view.hypotheses == {"outlier-skew": "channels with outliers matter more"}


def test_steps_time_and_tokens(sample_run):
    view = load_run(sample_run)
    nodes = [s.node for s in view.steps]
    assert nodes[:3] == ["(run_started)", "seed", "analyse"] and nodes[-1] == "(run_finished)"
    write = next(s for s in view.steps if s.node == "write_code")
    assert write.seconds == 3.0 and write.candidate_ids == ["c1"] and write.exchanges[0].text.startswith("```")
    assert view.node_seconds()["write_code"] == 9.0
    assert view.node_tokens()["write_code"] == (2700, 750)
    assert view.time_split() == {"llm": 15.0, "sandbox": 9.0, "fitness": 6.0}
    assert view.candidate_source("c2") == SKEW


def test_truncated_trace_loads_with_a_notice(sample_run):
    truncate_last_line(sample_run)
    view = load_run(sample_run)
    assert view.status == "running"          # run_finished was the line cut in half
    assert len(view.problems) == 1 and "truncated" in view.problems[0]


def test_missing_folder_or_trace_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="no run folder"):
        load_run(tmp_path / "nope")
    with pytest.raises(TraceError, match="no trace.jsonl"):
        load_run(tmp_path)


def test_tolerates_events_with_missing_keys(tmp_path):
    trace = TraceWriter(tmp_path)
    for kind in ("node_left", "llm_response", "verdict", "fitness", "rating", "tournament", "final_result",
                 "candidate", "insight", "baseline", "run_failed"):
        trace.emit(kind)
    trace.emit("fitness", id="x", ppl="not a number")
    view = load_run(tmp_path)
    assert view.status == "failed" and view.candidates["x"].ppl is None
    assert view.ranked_candidates() == [] and view.winner_id is None


def test_seeds_known_only_from_their_verdict(tmp_path):
    """The agent verifies generation-0 seeds without a `candidate` event; `submitted: null` marks them."""
    trace = TraceWriter(tmp_path)
    trace.emit("verdict", id="seed-wanda", status="ok", message="", submitted=None, budget_used=0,
               timings={"worker": 3.9, "worker_score": 0.01, "gate": 0.001})
    trace.emit("verdict", id="g001-a0", status="crashed", message="boom", submitted=1, timings={"total": 4.5})
    view = load_run(tmp_path)
    seed = view.candidates["seed-wanda"]
    assert (seed.origin, seed.generation, seed.submitted, seed.is_seed) == ("seed", 0, None, True)
    assert [c.id for c in view.submitted_candidates()] == ["g001-a0"]
    assert view.time_split()["sandbox"] == pytest.approx(3.9 + 4.5)   # nested timings are not double counted
