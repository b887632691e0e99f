"""The fault suite, LLM side: the real `openai` client of agent/llm.py against a real server on
loopback that fails in every way a proxy, an overloaded vLLM or a broken gateway does.

Each case checks that the call ends within a bound (no hang), that the client retried what is
transient (with the backoff or the server's Retry-After, capped) and gave up on the rest with
one clear line, and that the failure is recorded (`on_call` sees it, so the trace does). The
last test runs a whole tiny agent against a server that fails many of its calls.
"""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from autoprune.agent.llm import LLMClient, LLMUnusableReply
from autoprune.errors import LLMError

from llm_server_support import Fault, FaultyLLMServer, agent_reply

MESSAGES = [{"role": "user", "content": "score?"}]
TIMEOUT = 0.6           # whole-exchange bound of each request in these tests


@pytest.fixture(scope="module", autouse=True)
def warm_client():
    """The openai client imports parts of itself on the first request (~1 s): not a fault's cost."""
    server = FaultyLLMServer(["ok"])
    LLMClient(server.base_url, "scripted").chat(MESSAGES, node="warm-up")
    server.close()


@pytest.fixture
def serve():
    servers = []

    def start(*script, reply=None):
        server = FaultyLLMServer(list(script), **({"reply": reply} if reply else {}))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def client(server, records=None, **kw) -> LLMClient:
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", TIMEOUT)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    hook = (lambda req, resp: records.append((req, resp))) if records is not None else None
    return LLMClient(server.base_url, "scripted", on_call=hook, **kw)


def timed(fn):
    started = time.perf_counter()
    try:
        return fn(), time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc, time.perf_counter() - started


@pytest.mark.parametrize("fault", ["500", "429", "hang", "drip", "garbage", "truncated", "cut", "endless",
                                   "empty_choices"])
def test_a_transient_fault_is_retried_and_the_next_answer_is_used(serve, fault):
    server = serve(fault, "ok")
    records = []
    reply, seconds = timed(lambda: client(server, records).chat(MESSAGES, node="write_code"))
    assert not isinstance(reply, Exception), reply
    assert reply.text == "W.abs() * X.norm" and (reply.prompt_tokens, reply.completion_tokens) == (11, 5)
    assert server.kinds() == [fault, "ok"]
    assert seconds < 4 * TIMEOUT, f"{fault}: {seconds:.1f} s"
    (_, response), = records                       # one call, accounted once, tokens of the answer only
    assert "error" not in response and response["completion_tokens"] == 5


@pytest.mark.parametrize("fault", ["500", "hang", "drip", "endless", "garbage", "cut"])
def test_a_persistent_fault_ends_in_one_clear_error_within_a_bound_and_is_recorded(serve, fault):
    server = serve(fault)
    records = []
    llm = client(server, records, max_retries=1)
    error, seconds = timed(lambda: llm.chat(MESSAGES, node="reflect"))
    assert isinstance(error, LLMError) and "\n" not in str(error)
    assert "after 2 attempts" in str(error) and server.base_url in str(error)
    assert len(server.served) == 2 and seconds < 3 * TIMEOUT + 1, f"{fault}: {seconds:.1f} s"
    (request, response), = records
    assert request["node"] == "reflect" and response["text"] == "" and response["error"] == str(error)
    assert llm.failures == 1 and llm.calls == 0 and llm.total_tokens == 0


def test_a_slow_drip_is_cut_at_the_whole_request_timeout_not_each_read(serve):
    """Each byte comes 50 ms after the last (far under the read timeout): only a bound on the whole
    exchange stops it. Unbounded, this reply would take ~15 s."""
    server = serve("drip")
    error, seconds = timed(lambda: client(server, max_retries=0).chat(MESSAGES, node="analyse"))
    assert isinstance(error, LLMError) and "timed out" in str(error).lower()
    assert seconds < TIMEOUT + 0.5


def test_retry_after_is_honoured(serve):
    server = serve(Fault("429", retry_after="0.5"), "ok")
    reply, _ = timed(lambda: client(server, backoff_cap=5.0).chat(MESSAGES, node="analyse"))
    assert reply.text == "W.abs() * X.norm"
    first, second = server.served
    assert second.at - first.done >= 0.45           # the backoff alone would be ~0.01 s


def test_retry_after_as_a_date_is_honoured(serve):
    server = serve(Fault("429", retry_after=formatdate(time.time() + 2, usegmt=True)), "ok")
    client(server, backoff_cap=5.0).chat(MESSAGES, node="analyse")
    first, second = server.served
    assert second.at - first.done >= 0.5             # an HTTP date has whole seconds: at least ~1 s


def test_retry_after_is_capped(serve):
    server = serve(Fault("429", retry_after="3600"), "ok")
    reply, seconds = timed(lambda: client(server, backoff_cap=0.3).chat(MESSAGES, node="analyse"))
    assert reply.text == "W.abs() * X.norm" and seconds < 2


def test_an_unreadable_retry_after_falls_back_to_the_backoff(serve):
    server = serve(Fault("429", retry_after="soon, maybe"), "ok")
    reply, seconds = timed(lambda: client(server).chat(MESSAGES, node="analyse"))
    assert reply.text == "W.abs() * X.norm" and seconds < 2


def test_an_enormous_body_is_refused_at_once_without_reading_it_all(serve):
    server = serve(Fault("huge_body", size=4 * 1024 * 1024))
    records = []
    error, seconds = timed(lambda: client(server, records, max_reply_bytes=256 * 1024).chat(MESSAGES, node="a"))
    assert isinstance(error, LLMUnusableReply) and "oversized" in str(error)
    assert len(server.served) == 1 and seconds < 3, "an oversized reply is not worth asking again"
    assert records[0][1]["error"] == str(error)


def test_an_enormous_content_under_the_byte_cap_is_cut_to_the_text_cap(serve):
    server = serve(Fault("long_content", size=300_000))
    reply = client(server, max_reply_chars=10_000).chat(MESSAGES, node="write_code")
    assert len(reply.text) == 10_000 and set(reply.text) == {"W"}


def test_null_content_is_an_empty_reply_the_node_handles(serve):
    server = serve("null_content")
    reply = client(server).chat(MESSAGES, node="analyse")
    assert reply.text == "" and len(server.served) == 1


def test_a_server_that_never_answers_is_bounded_by_the_timeout(serve):
    server = serve("hang")
    error, seconds = timed(lambda: client(server, max_retries=0).chat(MESSAGES, node="analyse"))
    assert isinstance(error, LLMError) and seconds < TIMEOUT + 0.6


def test_the_journal_records_a_failed_call_in_the_trace_and_a_resume_asks_again(serve, tmp_path):
    from autoprune.agent.llm_journal import JOURNAL_FILE, JournaledLLM
    from autoprune.agent.services import RunTrace
    from autoprune.runlog.trace_file import read_trace

    server = serve("500", "500", "ok")
    trace = RunTrace(tmp_path)
    journaled = JournaledLLM(client(server, max_retries=1), tmp_path, trace)
    with pytest.raises(LLMError):
        journaled.chat(MESSAGES, node="hypothesise", seed=3)
    assert not (tmp_path / JOURNAL_FILE).exists()                  # nothing journaled: it is asked again
    assert journaled.chat(MESSAGES, node="hypothesise", seed=3).text == "W.abs() * X.norm"
    responses = [e for e in read_trace(tmp_path).events if e["type"] == "llm_response"]
    assert [bool(e.get("error")) for e in responses] == [True, False]
    assert "still failing after 2 attempts" in responses[0]["error"] and responses[0]["text"] == ""


# ---- a whole tiny agent run against a misbehaving endpoint ----

# The serial run's LLM calls come in a fixed order; each takes up to three attempts (max_retries=2).
AGENT_SCRIPT = ["500", "hang", "500",                         # analyse: fails -> falls back on the profile
                "drip", "empty_choices", "ok",                # hypothesise: answered on the third try
                "garbage", "cut", "truncated",                # write_code a0: fails -> a repair turn
                "null_content",                               # write_code a1: an empty answer -> no code
                "endless", Fault("429", retry_after="0.2"), "ok",   # write_code a2: the candidate
                "ok"]                                         # reflect


def test_a_tiny_agent_run_survives_a_failing_endpoint_and_records_every_failure(serve, tmp_path, tiny_llama):
    from autoprune.agent.archive import write_seeds
    from autoprune.agent.graph import build_graph
    from autoprune.agent.state import initial_state
    from autoprune.agent.summary import summarise
    from autoprune.runlog.trace_file import read_trace

    from agent_support import tiny_services

    server = serve(*AGENT_SCRIPT, reply=agent_reply)
    llm = client(server, max_retries=2)
    started = time.perf_counter()
    services = tiny_services(tiny_llama, tmp_path, llm, budget=1)
    state = build_graph(services).invoke(initial_state("f", *write_seeds(tmp_path)), {"recursion_limit": 500})
    summary = summarise(state, tmp_path, services.config, wall_s=time.perf_counter() - started).to_dict()

    assert state["final"] is not None and summary["budget_used"] == 1 and summary["best"]
    assert [k for k in server.kinds()] == [f.kind if isinstance(f, Fault) else f for f in AGENT_SCRIPT]
    events = read_trace(tmp_path).events
    failed = [e for e in events if e["type"] == "llm_response" and e.get("error")]
    assert [e["node"] for e in failed] == ["analyse", "write_code"] and llm.failures == 2
    assert "InternalServerError" in failed[0]["error"] and "after 3 attempts" in failed[1]["error"]
    notes = [e["text"] for e in events if e["type"] == "note"]
    assert sum("LLM call failed, the node falls back" in text for text in notes) == 2
    assert "(the LLM gave no analysis)" in state["analysis"]
    assert state["hypothesis"]["name"] == "input-scale"
    written = [e["id"] for e in events if e["type"] == "candidate"]
    assert written == ["g001-a2"] and state["candidates"]["g001-a2"]["status"] == "ok"
    # every failed call still counts against the LLM call cap (a dead endpoint cannot spin forever)
    assert state["llm_calls"] == 6 and llm.calls == 4
    assert events[-1]["type"] == "node_left" and events[-1]["node"] == "finalize"


def test_a_node_falls_back_on_a_failing_endpoint_but_stops_on_a_refused_key(serve, tmp_path, tiny_llama):
    """A 5xx storm costs the node its answer (and one call of the cap); a 401 is the user's to fix:
    the run stops with the one line that says so instead of searching on without an LLM."""
    from autoprune.agent.archive import write_seeds
    from autoprune.agent.nodes.analyse import analyse
    from autoprune.agent.state import initial_state

    from agent_support import tiny_services

    failing = serve("500")
    services = tiny_services(tiny_llama, tmp_path, client(failing, max_retries=1))
    state = initial_state("n", *write_seeds(tmp_path))
    update = analyse(state, services)
    assert "(the LLM gave no analysis)" in update["analysis"] and update["llm_calls"] == 1
    assert update["tokens"] == {"prompt": 0, "completion": 0}

    refusing = serve(Fault("401"))
    services.llm.client = client(refusing)
    with pytest.raises(LLMError, match="API key"):
        analyse(state, services)
    assert len(refusing.served) == 1
