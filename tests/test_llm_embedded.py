"""The embedded LLM server: the real SmolLM2-135M behind llama.cpp (its GGUF) or `transformers serve`, on loopback."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from autoprune.agent.embedded_server import (BACKEND_ENV, LLAMA_CPP_ALIAS, embedded_llm_server, free_port,
                                             is_server_command, llama_cpp_command, llama_cpp_installed,
                                             serve_command)
from autoprune.agent.llm import LLMClient
from autoprune.errors import LLMError


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); its /proc state says it is gone
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_command_is_loopback_cpu_float32(tmp_path):
    cmd = serve_command(tmp_path, 1234)
    assert "serve" in cmd and str(tmp_path) in cmd
    for flag, value in (("--host", "127.0.0.1"), ("--port", "1234"), ("--device", "cpu"), ("--dtype", "float32")):
        assert cmd[cmd.index(flag) + 1] == value


def test_llama_cpp_command_is_loopback_with_the_ggufs_own_chat_template(tmp_path):
    cmd = llama_cpp_command(tmp_path / "m.gguf", 1234)
    for flag, value in (("--host", "127.0.0.1"), ("--port", "1234"), ("--n_gpu_layers", "0"),
                        ("--model_alias", LLAMA_CPP_ALIAS), ("--model", str(tmp_path / "m.gguf"))):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--chat_format" not in cmd           # llama.cpp then applies the template stored in the GGUF
    assert 1 <= int(cmd[cmd.index("--n_threads") + 1]) <= min(4, os.cpu_count())
    assert int(cmd[cmd.index("--n_ctx") + 1]) >= 4096   # our longest prompt (~1.6k) plus a 768-token reply


def test_server_commands_of_both_backends_are_recognised_on_loopback_only(tmp_path):
    for cmd in (serve_command(tmp_path, 1), llama_cpp_command(tmp_path / "m.gguf", 1)):
        args = [a.encode() for a in cmd]
        assert is_server_command(args)
        args[args.index(b"--host") + 1] = b"0.0.0.0"
        assert not is_server_command(args)
    assert not is_server_command([b"python", b"-m", b"http.server", b"--host", b"127.0.0.1"])


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "vllm")
    with pytest.raises(LLMError, match="unknown embedded LLM backend 'vllm'"):
        with embedded_llm_server():
            pass


def test_forced_llama_cpp_on_a_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(LLMError, match="no such GGUF file"):
        with embedded_llm_server(gguf=tmp_path / "missing.gguf", backend="llama.cpp"):
            pass


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LLMError, match="no config.json"):
        with embedded_llm_server(tmp_path):
            pass


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def ask_and_crash(server) -> None:
    """One real completion through the agent's client, then an error inside the block."""
    llm = LLMClient(server.base_url, server.model, timeout=300, max_retries=1)
    reply = llm.chat([{"role": "user", "content": "Write a Python expression that adds 1 and 2."}],
                     node="write_code", temperature=0.0, max_tokens=12, seed=0)
    assert reply.text.strip()
    assert reply.prompt_tokens > 5 and 0 < reply.completion_tokens <= 12
    assert llm.usage_by_node()["write_code"]["calls"] == 1
    raise RuntimeError("graph crashed")   # the server must still be stopped


def test_llama_cpp_server_answers_and_stops_even_on_error(tmp_path):
    assert llama_cpp_installed(), "llama-cpp-python is not installed: scripts/setup.sh builds it"
    pid = port = None
    with pytest.raises(RuntimeError, match="graph crashed"):
        with embedded_llm_server(log_dir=tmp_path) as server:      # the default: llama.cpp on the bundled GGUF
            assert server.backend == "llama.cpp" and server.model == LLAMA_CPP_ALIAS
            pid, port = server.pid, int(server.base_url.rsplit(":", 1)[1].split("/")[0])
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert is_server_command(args) and os.getpgid(pid) == pid   # what a resumed run's clean-up checks
            ask_and_crash(server)
    assert pid is not None and not process_alive(pid)
    assert not port_open(port)
    assert (tmp_path / "embedded_llm_server.log").is_file()


@pytest.mark.slow
def test_broken_gguf_falls_back_to_transformers_serve_which_answers_and_stops_even_on_error(tmp_path, caplog):
    from autoprune.models import embedded_model_dir

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    pid = port = None
    with pytest.raises(RuntimeError, match="graph crashed"), caplog.at_level(logging.WARNING):
        with embedded_llm_server(embedded_model_dir(), gguf=broken, log_dir=tmp_path) as server:
            assert server.backend == "transformers"
            pid, port = server.pid, int(server.base_url.rsplit(":", 1)[1].split("/")[0])
            pid, port = server.pid, int(server.base_url.rsplit(":", 1)[1].split("/")[0])
            ask_and_crash(server)
    fallback_lines = [r.getMessage() for r in caplog.records if "falls back to transformers serve" in r.getMessage()]
    assert len(fallback_lines) == 1 and "llama.cpp did not start" in fallback_lines[0]
    assert pid is not None and not process_alive(pid)
    assert not port_open(port)
    assert (tmp_path / "embedded_llm_server.log").is_file()


CRASHES_ON_FIRST_CHAT = """
import http.server, json, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        os._exit(139 - 128)          # dies mid-request, as a segfaulting decode does
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_server_that_answers_models_but_dies_on_its_first_chat_is_not_started(tmp_path):
    import sys

    from autoprune.agent.embedded_server import ServerLaunch, launched

    port = free_port()
    launch = ServerLaunch("llama.cpp", [sys.executable, "-c", CRASHES_ON_FIRST_CHAT, str(port)], "/v1/models",
                          "m", probe=True)
    with pytest.raises(LLMError, match="exited with code 11 on its first chat request"):
        with launched(launch, port, 30.0, tmp_path / "server.log"):
            pytest.fail("a server that cannot answer a chat request must not count as started")
    assert not port_open(port)
