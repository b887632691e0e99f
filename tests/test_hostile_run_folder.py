"""A run folder is input: `--resume`, `report` and `replay` read it as an attacker may have written it.

Attacks: a config.json that sends the prompts (and the user's API key) elsewhere or picks a weaker
sandbox / another executor; a checkpoint naming `os.system`; trace and journal lines of every
broken kind; trace entries whose paths lead out of the folder. Each ends with exit code 2 and one
line, or a skipped and reported line: never a traceback, never the attack.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ormsgpack
import pytest

from autoprune.agent.checkpoints import CHECKPOINTS, ProjectSerializer, checked_state, project_checkpointer
from autoprune.agent.config import RunConfig, load_config, resume_config
from autoprune.agent.graph import build_graph
from autoprune.agent.llm_journal import JOURNAL_FILE, JournaledLLM, exchange_key
from autoprune.agent.runtime.folder import original_run_id
from autoprune.agent.rates.state import RatesState
from autoprune.agent.state import AgentState, initial_state
from autoprune.agent.trace import TraceWriter
from autoprune.runlog.trace_file import read_trace
from autoprune.errors import BadInputError, TraceError
from autoprune.reports.build import build_report
from autoprune.reports.run_data import load_run
from autoprune.reports.trace_follow import LiveRun

from agent_support import ScriptedLLM

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]
ATTACKER = "http://127.0.0.1:{port}/v1"
HOSTILE_TEXT = "W[/] \x1b]52;c;cHduZWQ=\x07\x1b[2J\x1b[31mFAKE OK\u202e"


def cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": "sk-user-secret", **(env_extra or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_clean_refusal(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "\x1b" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    for word in words:
        assert word in last, last


class Recorder(BaseHTTPRequestHandler):
    """An 'attacker' endpoint on loopback: it only records what reaches it."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *_args):
        pass


@pytest.fixture
def attacker():
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ATTACKER.format(port=server.server_address[1]), Recorder.seen
    server.shutdown()


# -- config.json ----------------------------------------------------------------------------------------


GUARDED = [
    ({"llm_base_url": "http://evil.example:8000/v1"}, {}, "llm_base_url"),
    ({"llm_base_url": "http://evil.example:8000/v1", "llm_model": "m"},
     {"llm_base_url": "http://evil.example:8000/v1"}, "llm_model"),
    ({"sandbox": "process"}, {}, "sandbox"),
    ({"executor": "local", "workers": 2}, {}, "executor"),
    ({"executor": "ray", "ray_address": "10.0.0.9:6379"}, {"executor": "ray"}, "ray_address"),
    ({"gpus": "0"}, {}, "gpus"),
]


@pytest.mark.parametrize("stored, given, setting", GUARDED, ids=[g[2] for g in GUARDED])
def test_resume_takes_endpoint_sandbox_and_executor_only_when_confirmed(tmp_path, stored, given, setting):
    RunConfig(**stored).save(tmp_path)
    with pytest.raises(BadInputError, match=f"sets {setting} = .*pass --{setting.replace('_', '-')} "):
        resume_config(tmp_path, given)
    confirmed = resume_config(tmp_path, {**given, setting: stored[setting]})
    assert getattr(confirmed, setting) == stored[setting]


def test_resume_replaces_a_stored_endpoint_by_the_one_given_and_records_it(tmp_path):
    RunConfig(llm_base_url="http://evil.example:8000/v1").save(tmp_path)
    config = resume_config(tmp_path, {"llm_base_url": "http://127.0.0.1:8000/v1"})
    assert config.llm_base_url == "http://127.0.0.1:8000/v1" == load_config(tmp_path).llm_base_url


CORRUPT = [
    ({"budget": "5"}, "budget: Input should be a valid integer"),
    ({"budget": True}, "budget: Input should be a valid integer"),
    ({"budget": 0}, "budget: Input should be greater than or equal to 1"),
    ({"sparsity": 1.5}, "sparsity"),
    ({"sandbox": "none"}, "sandbox: Input should be 'docker' or 'process'"),
    ({"llm_base_url": "file:///etc/passwd"}, "http:// or https://"),
    ({"unknown_knob": 1}, "unknown_knob: Extra inputs are not permitted"),
    ({"prompts": "not-installed"}, "unknown prompt set 'not-installed'"),
    ([1, 2], "Input should be an object"),
]


@pytest.mark.parametrize("content, message", CORRUPT, ids=[str(c[0])[:30] for c in CORRUPT])
def test_resume_refuses_a_config_of_wrong_types_ranges_or_keys(tmp_path, content, message):
    (tmp_path / "config.json").write_text(json.dumps(content))
    with pytest.raises(BadInputError) as err:
        load_config(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_resume_refuses_config_that_is_not_json_or_huge(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(BadInputError, match="corrupt"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(BadInputError, match="larger than"):
        load_config(tmp_path)


def test_cli_resume_never_sends_the_api_key_to_a_stored_endpoint(tmp_path, attacker):
    url, seen = attacker
    RunConfig(llm_base_url=url, llm_model="gpt", sandbox="process").save(tmp_path)
    proc = cli("run", "--resume", str(tmp_path))
    assert_clean_refusal(proc, "llm_base_url", "--llm-base-url")
    assert seen == []                                        # nothing, let alone the key, reached it
    assert not (tmp_path / "trace.jsonl").exists()           # refused before the run touched the folder


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


# -- trace.jsonl ------------------------------------------------------------------------------------------


def good_trace(run_dir: Path) -> None:
    trace = TraceWriter(run_dir)
    trace.emit("run_started", run_id="orig", config={"budget": 1, "sparsity": "half"})
    trace.emit("node_entered", node="write_code", generation=1)
    trace.emit("candidate", id="c1", generation=1, origin="llm", hypothesis="h", source="def score(W, X):\n  pass\n")


BAD_LINES = {
    "seq": b'{"v": 1, "seq": "7", "ts": 1.0, "type": "note", "text": "x"}',
    "run_id": b'{"v": 1, "seq": 8, "ts": 1.0, "type": "run_started", "config": {}}',
    "type": b'{"v": 1, "seq": 9, "ts": 1.0, "type": ["note"]}',
    "list": b'[1, 2, 3]',
    "utf8": b'{"v": 1, "seq": 10, "ts": 1.0, "type": "note", "text": "\xff\xfe"}',
    "timings": b'{"v": 1, "seq": 11, "ts": 1.0, "type": "verdict", "id": "c1", "timings": [1, 2]}',
    "standings": b'{"v": 1, "seq": 12, "ts": 1.0, "type": "tournament", "standings": 5}',
    "id": b'{"v": 1, "seq": 13, "ts": 1.0, "type": "verdict", "id": ["c1"], "status": "ok"}',
    "deep": b"[" * 100_000,
    "nan-ts": b'{"v": 1, "seq": 14, "ts": NaN, "type": "note"}',
}


def hostile_trace(run_dir: Path, *, huge: int = 100 * 2**20) -> Path:
    run_dir.mkdir(exist_ok=True)
    good_trace(run_dir)
    with (run_dir / "trace.jsonl").open("ab") as fh:
        for line in BAD_LINES.values():
            fh.write(line + b"\n")
        fh.write(b'{"v": 1, "seq": 20, "ts": 2.0, "type": "note", "text": "' + b"A" * huge + b'"}\n')
        fh.write(b'{"v": 1, "seq": 21, "ts": 3.0, "type": "verdict", "id": "c1", "status": "crashed", '
                 b'"message": "boom"}\n')
        fh.write(b'{"v": 1, "seq": 22, "ts": 4.0, "type": "no')              # cut by kill -9
    return run_dir


def test_trace_reader_skips_and_reports_every_bad_line(tmp_path):
    run_dir = hostile_trace(tmp_path / "run")
    result = read_trace(run_dir)
    assert [e["seq"] for e in result.events] == [1, 2, 3, 21]
    assert len(result.problems) == len(BAD_LINES) + 2                    # + the huge line, + the cut one
    assert all("skipped" in p for p in result.problems)
    assert "longer than" in result.problems[-2] and "truncated last line" in result.problems[-1]
    assert "seq: Input should be a valid integer" in result.problems[0]
    assert "run_id: Field required" in result.problems[1]


def test_resume_report_and_replay_readers_survive_the_hostile_trace(tmp_path):
    run_dir = hostile_trace(tmp_path / "run")
    writer = TraceWriter(run_dir)                     # what --resume does first: continue the numbering
    assert writer.emit("note", text="resumed")["seq"] == 22
    assert original_run_id(run_dir) == "orig"
    view = load_run(run_dir)
    assert view.candidates["c1"].status == "crashed" and view.candidates["c1"].message == "boom"
    files = build_report(run_dir)
    assert "Notice: trace.jsonl:" in files.markdown.read_text() and files.html.is_file()
    live = LiveRun(run_dir)
    assert len(live.view.problems) == len(BAD_LINES) + 2 and live.view.candidates["c1"].status == "crashed"


def test_replay_app_opens_the_hostile_trace(tmp_path):
    from autoprune.tui import ReplayApp

    run_dir = hostile_trace(tmp_path / "run", huge=9 * 2**20)

    async def drive():
        app = ReplayApp(run_dir, follow=False)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("G")
            await pilot.pause()
            assert app.query_one("#notice").display
    asyncio.run(drive())


def test_cli_report_of_the_hostile_trace_prints_notices_not_tracebacks(tmp_path):
    run_dir = hostile_trace(tmp_path / "run", huge=9 * 2**20)
    proc = cli("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("notice: trace.jsonl:") == len(BAD_LINES) + 2


def test_a_folder_that_is_no_run_is_one_clear_error(tmp_path):
    proc = cli("report", str(tmp_path))
    assert_clean_refusal(proc, "trace.jsonl")


# -- llm_journal.jsonl ------------------------------------------------------------------------------------


def test_journal_garbage_is_skipped_reported_and_valid_entries_still_answer(tmp_path):
    messages = [{"role": "user", "content": "hi"}]
    key = exchange_key("analyse", messages, None)
    good = {"key": key, "text": "cached reply", "prompt_tokens": 3, "completion_tokens": 2, "seconds": 0.1}
    lines = [b"[1]", b"\xff\xfe", json.dumps({**good, "key": "../../x"}).encode(),
             json.dumps({**good, "key": "a" * 24, "prompt_tokens": "many"}).encode(),
             json.dumps({**good, "key": "b" * 24, "seconds": float("inf")}).encode(),
             json.dumps(good).encode(), b'{"key": "c']                       # the last one cut by a kill
    (tmp_path / JOURNAL_FILE).write_bytes(b"\n".join(lines))
    trace = TraceWriter(tmp_path)
    llm = ScriptedLLM({"analyse": ["fresh reply"]})
    journaled = JournaledLLM(llm, tmp_path, trace)
    assert journaled.chat(messages, node="analyse").text == "cached reply" and llm.requests == []
    notes = [e["text"] for e in read_trace(tmp_path).events if e["type"] == "note"]
    assert len(notes) == 1 and notes[0].count("llm_journal.jsonl:") == 5 and ":7:" not in notes[0]


# -- paths in the trace -----------------------------------------------------------------------------------


def test_report_never_reads_a_file_outside_the_run_folder(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-TOKEN")
    run_dir = tmp_path / "run"
    (run_dir / "candidates").mkdir(parents=True)
    (run_dir / "candidates" / "link.py").symlink_to(secret)
    (run_dir / "candidates" / "inside.py").write_text("def score(W, X):\n    return W.abs()  # INSIDE\n")
    (run_dir / "candidates" / "alias.py").symlink_to(run_dir / "candidates" / "inside.py")
    trace = TraceWriter(run_dir)
    trace.emit("run_started", run_id="r")
    for cid, path in (("up", "../secret.txt"), ("abs", str(secret)), ("link", "candidates/link.py"),
                      ("../secret", None), ("alias", "candidates/alias.py")):
        trace.emit("candidate", id=cid, generation=1, origin="llm", hypothesis="h", path=path)
        trace.emit("fitness", id=cid, level=0, ppl=30.0 if cid != "alias" else 10.0)
    view = load_run(run_dir)
    for cid in ("up", "abs", "link", "../secret"):
        assert view.candidate_source(cid) is None, cid
    assert "INSIDE" in view.candidate_source("alias")            # a link that stays inside is fine
    files = build_report(run_dir)
    assert "SECRET-TOKEN" not in files.markdown.read_text() + files.html.read_text()


# -- caches in the folder ---------------------------------------------------------------------------------


def test_a_corrupt_model_profile_cache_is_computed_again(tmp_path, tiny_llama):
    from autoprune.agent.setup import PROFILE_FILE, model_profile
    from autoprune.pruning.calibration import collect_activation_stats

    from agent_support import random_windows

    stats = collect_activation_stats(tiny_llama, random_windows(2))
    for garbage in ('{"a": 1}', '[{"skewness": "x"}]', "[" * 100_000, '[{"outlier_ratio": 1}]'):
        (tmp_path / PROFILE_FILE).write_text(garbage)
        profiles = model_profile(tiny_llama, stats, tmp_path)
        assert len(profiles) == tiny_llama.config.num_hidden_layers
        assert isinstance(profiles[0]["skewness"], float)


def test_a_stale_server_pid_file_cannot_get_another_process_killed(tmp_path):
    from autoprune.agent.runtime.endpoint import SERVER_PID_FILE, stop_stale_server

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "serve", "--port", "80"],
                              start_new_session=True)
    try:
        for content in (str(victim.pid), "1", "-1", "garbage", "9" * 5000):
            (tmp_path / SERVER_PID_FILE).write_text(content)
            stop_stale_server(tmp_path)
            assert victim.poll() is None and not (tmp_path / SERVER_PID_FILE).exists()
    finally:
        victim.kill()
        victim.wait()


def test_an_llm_reply_with_a_lone_surrogate_is_journaled_and_traced_readably(tmp_path):
    """JSON from an endpoint may decode to a lone surrogate, which UTF-8 cannot encode."""
    trace = TraceWriter(tmp_path)
    llm = JournaledLLM(ScriptedLLM({"analyse": ["half \ud800 pair"]}), tmp_path, trace)
    assert llm.chat([{"role": "user", "content": "hi \udfff"}], node="analyse").text == "half \ud800 pair"
    result = read_trace(tmp_path)
    assert not result.problems and result.events[-1]["text"] == "half \ud800 pair"
    again = JournaledLLM(ScriptedLLM({"analyse": ["other"]}), tmp_path, trace)
    assert again.chat([{"role": "user", "content": "hi \udfff"}], node="analyse").cached
