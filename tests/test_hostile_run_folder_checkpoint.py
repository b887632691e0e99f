"""A hostile checkpoints.sqlite: values naming `os.system` and friends, pickled or LangChain-JSON values,
states of the wrong shape. Refused before anything is constructed or any node reads it; through the
CLI, exit code 2 and one line, and the LLM's words in a finished run's summary print without escapes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import ormsgpack
import pytest

from autoprune.agent.checkpoints import CHECKPOINTS, ProjectSerializer, checked_state, project_checkpointer
from autoprune.agent.config import RunConfig
from autoprune.agent.graph import build_graph
from autoprune.agent.rates.state import RatesState
from autoprune.agent.state import AgentState, initial_state
from autoprune.errors import TraceError
from autoprune.runlog.trace_file import read_trace

from hostile_folder_support import HOSTILE_TEXT, assert_clean_refusal, attacker, cli  # noqa: F401 - a fixture


# -- checkpoints.sqlite ---------------------------------------------------------------------------------


def write_checkpoint(run_dir: Path, values: dict, as_node: str = "finalize") -> None:
    """A real checkpoint: the project's graph and saver record `values` as if `as_node` had returned them."""
    with sqlite3.connect(run_dir / CHECKPOINTS, check_same_thread=False) as conn:
        graph = build_graph(None, checkpointer=project_checkpointer(conn))
        graph.update_state({"configurable": {"thread_id": run_dir.name}}, values, as_node=as_node)


def tamper(run_dir: Path, key: str, value) -> None:
    """Replace one state value in the newest checkpoint, as an attacker editing the file would."""
    with sqlite3.connect(run_dir / CHECKPOINTS) as conn:
        cid, blob = conn.execute("SELECT checkpoint_id, checkpoint FROM checkpoints "
                                 "ORDER BY checkpoint_id DESC LIMIT 1").fetchone()
        checkpoint = ormsgpack.unpackb(blob, option=ormsgpack.OPT_NON_STR_KEYS)
        checkpoint["channel_values"][key] = value
        conn.execute("UPDATE checkpoints SET checkpoint = ? WHERE checkpoint_id = ?",
                     (ormsgpack.packb(checkpoint, option=ormsgpack.OPT_NON_STR_KEYS), cid))


def constructor(module: str, name: str, *args) -> ormsgpack.Ext:
    return ormsgpack.Ext(1, ormsgpack.packb([module, name, list(args)]))     # EXT_CONSTRUCTOR_POS_ARGS


def finished_state(run_id: str, hypothesis: str = "rms-input") -> dict:
    state = initial_state(run_id, [], {})
    state.update(phase="final", budget_used=1, stop_reason="candidate budget spent",
                 final={"winner": {"id": "g001-a0", "hypothesis": hypothesis, "ppl_validation": 31.5, "level": 1},
                        "test": {"uniform": 33.0}, "beats_wanda": True})
    return state


def read_back(run_dir: Path) -> dict:
    with sqlite3.connect(run_dir / CHECKPOINTS, check_same_thread=False) as conn:
        graph = build_graph(None, checkpointer=project_checkpointer(conn))
        return dict(graph.get_state({"configurable": {"thread_id": run_dir.name}}).values)


@pytest.mark.parametrize("payload", [
    constructor("os", "system", "touch {canary}"),
    constructor("subprocess", "Popen", ["touch", "{canary}"]),
    {"nested": [constructor("builtins", "eval", "open('{canary}', 'w')")]},
    ormsgpack.Ext(3, ormsgpack.packb(["os", "system", "touch {canary}", "__call__"])),   # a method call
], ids=["os.system", "subprocess.Popen", "nested-eval", "method"])
def test_crafted_checkpoint_is_refused_before_anything_is_constructed(tmp_path, payload):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    canary = tmp_path / "canary"
    write_checkpoint(run_dir, finished_state(run_dir.name))
    assert read_back(run_dir)["final"]["winner"]["id"] == "g001-a0"      # the genuine checkpoint reads back
    raw = ormsgpack.packb(payload).replace(b"{canary}", str(canary).encode())
    tamper(run_dir, "analysis", ormsgpack.unpackb(raw, ext_hook=lambda code, data: ormsgpack.Ext(code, data.replace(
        b"{canary}", str(canary).encode()))))
    with pytest.raises(TraceError, match="checkpoints.sqlite holds a value naming .*cannot be resumed"):
        read_back(run_dir)
    assert not canary.exists()


def test_pickled_or_langchain_json_values_are_refused():
    serde = ProjectSerializer()
    for kind in ("pickle", "json"):
        with pytest.raises(TraceError, match=f"stored as '{kind}'"):
            serde.loads_typed((kind, b"cos\nsystem\n(S'id'\ntR."))
    with pytest.raises(TraceError, match="unreadable"):
        serde.loads_typed(("msgpack", b"\xc1\xc1"))
    assert serde.loads_typed(serde.dumps_typed({"a": [1, 2.5, "x", None], "s": {1, 2}})) == \
        {"a": [1, 2.5, "x", None], "s": {1, 2}}


@pytest.mark.parametrize("key, value, where", [
    ("candidates", [1], "candidates"),
    ("candidates", {"g001-a0": {"nll": {"0": "many"}}}, "nll"),
    ("budget_used", {"a": 1}, "budget_used"),
    ("candidates", {"g001-a0": {"path": "../../outside.py"}}, "outside the run folder"),
    ("candidates", {"g001-a0": {"masks_path": "/etc/passwd"}}, "outside the run folder"),
], ids=["list-for-dict", "string-for-nll", "dict-for-int", "path-escape", "absolute-masks-path"])
def test_a_resumed_state_of_the_wrong_shape_is_one_clear_error(tmp_path, key, value, where):
    """Builtins only, so the serializer revives them: the state's shape is checked before any node reads it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_checkpoint(run_dir, finished_state(run_dir.name))
    values = read_back(run_dir)
    assert checked_state(values, AgentState, run_dir) is values        # the genuine state passes
    tamper(run_dir, key, value)
    with pytest.raises(TraceError, match=f"checkpoints.sqlite .*{where}.*cannot be resumed"):
        checked_state(read_back(run_dir), AgentState, run_dir)


def test_a_resumed_rates_state_of_the_wrong_shape_is_one_clear_error():
    good = {"run_id": "r", "population": [{"id": "u", "rates": [0.3, 0.3], "fitness": 40.0, "params_fraction": 0.7,
                                           "origin": "uniform", "outcome": "seed", "generation": 0}]}
    assert checked_state(good, RatesState) is good
    with pytest.raises(TraceError, match="population.0.rates"):
        checked_state({**good, "population": [{**good["population"][0], "rates": "all"}]}, RatesState)


def cli_run_folder(run_dir: Path, model_dir: Path, data_dir: Path, llm_url: str) -> None:
    run_dir.mkdir()
    RunConfig(model=str(model_dir), data=str(data_dir), budget=1, seqlen=32, calibration_samples=2,
              fitness_levels=[1], test_windows=1, sandbox="process", llm_base_url=llm_url,
              export_model=False).save(run_dir)


def test_cli_resume_of_a_crafted_checkpoint_exits_2_and_runs_nothing(tmp_path, tiny_llama_dir, wikitext_dir,
                                                                      attacker):
    url, _ = attacker
    run_dir, canary = tmp_path / "run", tmp_path / "canary"
    cli_run_folder(run_dir, tiny_llama_dir, wikitext_dir, url)
    write_checkpoint(run_dir, initial_state(run_dir.name, [], {}), as_node="verify")
    tamper(run_dir, "analysis", constructor("os", "system", f"touch {canary}"))
    proc = cli("run", "--resume", str(run_dir), "--sandbox", "process", "--llm-base-url", url, "--json")
    assert_clean_refusal(proc, "checkpoints.sqlite", "os.system")
    assert not canary.exists()
    failed = [e for e in read_trace(run_dir).events if e["type"] == "run_failed"]
    assert failed and failed[-1]["kind"] == "TraceError"


def test_cli_resume_of_a_finished_run_prints_llm_words_without_escapes(tmp_path, tiny_llama_dir, wikitext_dir,
                                                                       attacker):
    """The summary table shows the winner's hypothesis, written by the LLM: no markup, no escape bytes."""
    url, seen = attacker
    run_dir = tmp_path / "run"
    cli_run_folder(run_dir, tiny_llama_dir, wikitext_dir, url)
    write_checkpoint(run_dir, finished_state(run_dir.name, hypothesis=HOSTILE_TEXT))
    proc = cli("run", "--resume", str(run_dir), "--sandbox", "process", "--llm-base-url", url,
               env_extra={"COLUMNS": "200", "TERM": "xterm"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\x1b" not in proc.stdout + proc.stderr and "\u202e" not in proc.stdout
    assert "W[/]" in proc.stdout and "FAKE OK" in proc.stdout and "31.50" in proc.stdout
    assert seen == []                                # a finished run asks the LLM nothing
