"""The embedded LLM server: the real SmolLM2-135M behind `transformers serve`, on loopback."""

from __future__ import annotations

import os
import socket

import pytest

from autoprune.agent.embedded_server import embedded_llm_server, free_port, serve_command
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


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LLMError, match="no config.json"):
        with embedded_llm_server(tmp_path):
            pass


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_embedded_server_answers_and_stops_even_on_error(tmp_path):
    pid = port = None
    with pytest.raises(RuntimeError, match="graph crashed"):
        with embedded_llm_server(log_dir=tmp_path) as server:
            pid, port = server.pid, int(server.base_url.rsplit(":", 1)[1].split("/")[0])
            llm = LLMClient(server.base_url, server.model, timeout=300, max_retries=1)
            reply = llm.chat([{"role": "user", "content": "Write a Python expression that adds 1 and 2."}],
                             node="write_code", temperature=0.0, max_tokens=12, seed=0)
            assert reply.text.strip()
            assert reply.prompt_tokens > 5 and 0 < reply.completion_tokens <= 12
            assert llm.usage_by_node()["write_code"]["calls"] == 1
            raise RuntimeError("graph crashed")   # the server must still be stopped
    assert pid is not None and not process_alive(pid)
    assert not port_open(port)
    assert (tmp_path / "embedded_llm_server.log").is_file()
