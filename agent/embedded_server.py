"""The embedded LLM: SmolLM2-135M-Instruct served on loopback, by llama.cpp or `transformers serve`.

The run starts it, talks to it through the same OpenAI-compatible client as any
other endpoint, and stops it on exit — also on errors and Ctrl-C. The server
runs in its own process group so that stopping it (terminate, then kill) also
reaches anything it spawned, and a Ctrl-C in the terminal is not delivered to
it twice.

Two backends, one interface. llama.cpp (`python -m llama_cpp.server`, built by
scripts/setup.sh) serves the bundled Q4_1 GGUF as it is, with the chat template
the GGUF carries; it is several times faster on CPU (benchmarks/results/
embedded_llm_speed.md). `transformers serve` is the fallback when llama.cpp is
not installed or fails to start: it serves the GGUF dequantized into a
float32 folder and pins that folder (its FORCE_MODEL argument), so requests
must name that same path as `model`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from autoprune.errors import LLMError

log = logging.getLogger(__name__)

LOG_FILE = "embedded_llm_server.log"
BACKEND_ENV = "AUTOPRUNE_EMBEDDED_BACKEND"
BACKENDS = ("auto", "llama.cpp", "transformers")
LLAMA_CPP_ALIAS = "SmolLM2-135M-Instruct"
# The model's trained context (the GGUF's llama.context_length). Our longest prompt (write_code,
# program style, five elite entries with code) is ~1.6k tokens and a reply is capped at 768
# (agent/config.py llm_max_tokens), so a user's longer templates still fit; the KV cache of 8192
# tokens costs ~190 MB for this model, and decoding cost follows the tokens used, not n_ctx.
LLAMA_CPP_N_CTX = 8192


@dataclass(frozen=True)
class EmbeddedServer:
    base_url: str       # "http://127.0.0.1:PORT/v1"
    model: str          # the `model` field requests must carry
    pid: int
    log_path: Optional[Path]
    backend: str = "transformers"     # "llama.cpp" or "transformers"


@dataclass(frozen=True)
class ServerLaunch:
    """How to start one backend: its command, the URL path that answers once it is ready, the model name."""

    backend: str
    command: list[str]
    ready_path: str
    model: str
    env: dict = field(default_factory=dict)     # on top of server_env()
    probe: bool = False                          # answer one real chat request before it counts as started


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


def llama_cpp_threads() -> int:
    """Half the cores, at most 4: the run evaluates candidates while the LLM writes the next ones.
    One thread on 2 cores: ggml's OpenMP threads spin at every barrier, and on an oversubscribed
    machine two threads decoded at 0.8 tokens/s where one decoded at 21 (embedded_llm_speed.md)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2))


def llama_cpp_command(gguf: Path, port: int, *, n_ctx: int = LLAMA_CPP_N_CTX,
                      n_threads: Optional[int] = None) -> list[str]:
    """`llama_cpp.server` on one GGUF, loopback only; no chat format given, so the GGUF's own template."""
    threads = str(n_threads or llama_cpp_threads())
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", LLAMA_CPP_ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", threads,
            "--n_threads_batch", threads, "--n_gpu_layers", "0", "--verbose", "False"]


def is_server_command(args: list[bytes]) -> bool:
    """A process command line (/proc/PID/cmdline split on NUL) that one of the two backends runs on loopback."""
    backend = b"serve" in args or b"llama_cpp.server" in args
    host = args[args.index(b"--host") + 1:args.index(b"--host") + 2] if b"--host" in args else []
    return backend and host == [b"127.0.0.1"]


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def chosen_backend(backend: Optional[str]) -> str:
    """The caller's choice, else $AUTOPRUNE_EMBEDDED_BACKEND, else "auto"."""
    value = backend or os.environ.get(BACKEND_ENV) or "auto"
    if value not in BACKENDS:
        raise LLMError(f"unknown embedded LLM backend {value!r} (${BACKEND_ENV}); choose one of "
                       + ", ".join(BACKENDS))
    return value


def server_env() -> dict[str, str]:
    """Offline, and a hub cache folder that exists (the server's model listing scans it)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("AUTOPRUNE_LLM_API_KEY", None)  # the local server needs no secret
    env.pop("OPENAI_API_KEY", None)
    env.pop("CONFIG_FILE", None)            # llama_cpp.server would read its settings from that file instead
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


def wait_until_ready(proc: subprocess.Popen, port: int, timeout: float, log_path: Optional[Path],
                     path: str = "/health") -> None:
    """Poll `path` until the server answers 200; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{path}"
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


PROBE_MESSAGES = [{"role": "system", "content": "You write short answers."},
                  {"role": "user", "content": "Name one way to prune a neural network."}]


def probe_chat(proc: subprocess.Popen, port: int, model: str, timeout: float, log_path: Optional[Path]) -> None:
    """One multi-token chat completion (max 1 new token): a build that answers /v1/models but crashes
    on its first batched decode (seen: a llama.cpp wheel built with AMX on a VM) fails here, at start-up."""
    body = json.dumps({"model": model, "messages": PROBE_MESSAGES, "max_tokens": 1}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    where = f"; see {log_path}" if log_path else ""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            answer = json.loads(resp.read())
        if not answer.get("choices"):
            raise LLMError(f"the embedded LLM server answered its first chat request without choices{where}")
    except (urllib.error.URLError, ConnectionError, OSError, ValueError) as exc:
        died = proc.poll()
        state = f"exited with code {died}" if died is not None else f"failed ({str(exc)[:120]})"
        raise LLMError(f"the embedded LLM server {state} on its first chat request{where}") from None


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
def launched(launch: ServerLaunch, port: int, startup_timeout: float,
             log_path: Optional[Path]) -> Iterator[EmbeddedServer]:
    """Run one backend's server for the duration of the block; it is stopped on any exit."""
    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        try:
            proc = subprocess.Popen(launch.command, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, env={**server_env(), **launch.env},
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except OSError as exc:
            raise LLMError(f"cannot start the embedded LLM server ({launch.backend}): {exc}") from exc
        try:
            wait_until_ready(proc, port, startup_timeout, log_path, launch.ready_path)
            if launch.probe:
                probe_chat(proc, port, launch.model, startup_timeout, log_path)
            yield EmbeddedServer(f"http://127.0.0.1:{port}/v1", launch.model, proc.pid, log_path, launch.backend)
        finally:
            stop_process_group(proc)
    finally:
        if log_path:
            log_file.close()


def transformers_launch(model_dir: Optional[Path], port: int, device: str) -> ServerLaunch:
    if model_dir is None:
        from autoprune.models import embedded_model_dir
        model_dir = embedded_model_dir()
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise LLMError(f"cannot serve {model_dir}: not a transformers model folder (no config.json)")
    return ServerLaunch("transformers", serve_command(model_dir, port, device), "/health", str(model_dir))


def llama_cpp_launch(gguf: Optional[Path], port: int) -> ServerLaunch:
    if gguf is None:
        from autoprune.models import embedded_gguf_path
        gguf = embedded_gguf_path()
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise LLMError(f"cannot serve {gguf}: no such GGUF file")
    # With more than one thread, idle OpenMP threads sleep instead of spinning (a user's setting wins).
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return ServerLaunch("llama.cpp", llama_cpp_command(gguf, port), "/v1/models", LLAMA_CPP_ALIAS, env, probe=True)


@contextlib.contextmanager
def embedded_llm_server(model_dir: Optional[Path] = None, *, gguf: Optional[Path] = None,
                        backend: Optional[str] = None, port: Optional[int] = None,
                        startup_timeout: float = 180.0, log_dir: Optional[Path] = None,
                        device: str = "cpu") -> Iterator[EmbeddedServer]:
    """Serve the embedded model on 127.0.0.1 for the duration of the block.

    backend "auto" (the default, or $AUTOPRUNE_EMBEDDED_BACKEND): llama.cpp on `gguf` (default: the
    bundled GGUF) when it is installed, else — or when it fails to start — `transformers serve` on
    `model_dir` (default: the bundled GGUF dequantized). A `model_dir` given without a `gguf` means
    that folder, so `transformers serve`.
    """
    choice = chosen_backend(backend)
    if choice == "auto" and model_dir is not None and gguf is None:
        choice = "transformers"
    log_path = Path(log_dir) / LOG_FILE if log_dir is not None else None
    with contextlib.ExitStack() as stack:
        yield started(stack, choice, model_dir, gguf, port or free_port(), startup_timeout, log_path, device)


def started(stack: contextlib.ExitStack, choice: str, model_dir: Optional[Path], gguf: Optional[Path],
            port: int, startup_timeout: float, log_path: Optional[Path], device: str) -> EmbeddedServer:
    """The chosen backend's server, entered on `stack`; "auto" falls back to transformers serve in one log line."""
    if choice != "transformers":
        if choice == "llama.cpp" or llama_cpp_installed():
            try:
                return stack.enter_context(launched(llama_cpp_launch(gguf, port), port, startup_timeout, log_path))
            except LLMError as exc:
                if choice == "llama.cpp":
                    raise
                log.warning("llama.cpp did not start (%s): the embedded LLM falls back to transformers serve",
                            exc)
            port = free_port()
        else:
            log.warning("llama.cpp is not installed (scripts/setup.sh builds it): the embedded LLM falls back "
                        "to transformers serve, several times slower")
    return stack.enter_context(launched(transformers_launch(model_dir, port, device), port, startup_timeout,
                                        log_path))
