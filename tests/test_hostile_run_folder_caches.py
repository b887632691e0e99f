"""The run folder's journal and caches as input: llm_journal.jsonl garbage is skipped and reported while
valid entries still answer (a lone surrogate included), a corrupt model-profile cache is computed
again, and a stale server pid file cannot get another process killed."""

from __future__ import annotations

import json
import subprocess
import sys

from autoprune.agent.llm_journal import JOURNAL_FILE, JournaledLLM, exchange_key
from autoprune.agent.trace import TraceWriter
from autoprune.runlog.trace_file import read_trace

from agent_support import ScriptedLLM


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
