"""The embedded LLM: SmolLM2-135M-Instruct served on loopback by `transformers serve`.

The run starts it, talks to it through the same OpenAI-compatible client as any
other endpoint, and stops it on exit — also on errors and Ctrl-C. The server
runs in its own process group so that stopping it (terminate, then kill) also
reaches anything it spawned, and a Ctrl-C in the terminal is not delivered to
it twice. `transformers serve` pins the folder given as its FORCE_MODEL
argument; requests must then name that same path as `model`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from autoprune.errors import LLMError

LOG_FILE = "embedded_llm_server.log"


@dataclass(frozen=True)
class EmbeddedServer:
    base_url: str       # "http://127.0.0.1:PORT/v1"
    model: str          # the `model` field requests must carry (the served folder's path)
    pid: int
    log_path: Optional[Path]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(model_dir: Path, port: int, device: str = "cpu") -> list[str]:
    """`transformers serve` pinned to one local folder, float32, loopback only (CPU by default)."""
    cli = Path(sys.executable).with_name("transformers")
    head = [str(cli)] if cli.is_file() else [sys.executable, "-m", "transformers.cli.transformers"]
    return head + ["serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                   "--device", device, "--dtype", "float32", "--log-level", "warning"]


def server_env() -> dict[str, str]:
    """Offline, and a hub cache folder that exists (the server's model listing scans it)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("AUTOPRUNE_LLM_API_KEY", None)  # the local server needs no secret
    env.pop("OPENAI_API_KEY", None)
    if "HF_HUB_CACHE" not in env:
        cache = Path(env.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
        with contextlib.suppress(OSError):
            cache.mkdir(parents=True, exist_ok=True)
    return env


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the agent is killed outright (SIGKILL skips our `finally`)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_until_ready(proc: subprocess.Popen, port: int, timeout: float, log_path: Optional[Path]) -> None:
    """Poll /health until the server answers; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LLMError(f"the embedded LLM server exited with code {proc.returncode} during start-up"
                           + (f"; see {log_path}" if log_path else ""))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.3)
    raise LLMError(f"the embedded LLM server did not answer within {timeout:.0f} s"
                   + (f"; see {log_path}" if log_path else ""))


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's group, wait, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def embedded_llm_server(model_dir: Optional[Path] = None, *, port: Optional[int] = None,
                        startup_timeout: float = 180.0, log_dir: Optional[Path] = None,
                        device: str = "cpu") -> Iterator[EmbeddedServer]:
    """Serve the embedded model (or `model_dir`) on 127.0.0.1 for the duration of the block."""
    if model_dir is None:
        from autoprune.models import embedded_model_dir
        model_dir = embedded_model_dir()
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise LLMError(f"cannot serve {model_dir}: not a transformers model folder (no config.json)")
    port = port or free_port()
    log_path = Path(log_dir) / LOG_FILE if log_dir is not None else None
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(serve_command(model_dir, port, device), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=server_env(), start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    except OSError as exc:
        raise LLMError(f"cannot start the embedded LLM server: {exc}") from exc
    try:
        wait_until_ready(proc, port, startup_timeout, log_path)
        yield EmbeddedServer(f"http://127.0.0.1:{port}/v1", str(model_dir), proc.pid, log_path)
    finally:
        stop_process_group(proc)
        if log_path:
            log.close()
