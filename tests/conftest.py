"""Shared fixtures: tiny random models of each supported family, the embedded model, local data;
the agent tests' sandbox backend; the scripted LLM servers' clean-up.

`AUTOPRUNE_REQUIRE_DOCKER=1` (set by scripts/test.sh, hence CI) turns every test that would skip
for want of a Docker engine into a failure, and refuses the process backend for the agent tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = Path(os.environ.get("AUTOPRUNE_TEST_DATA", REPO.parent / "shared" / "data" / "wikitext-2"))
REQUIRE_DOCKER_ENV = "AUTOPRUNE_REQUIRE_DOCKER"
AGENT_SANDBOX_ENV = "AUTOPRUNE_TEST_SANDBOX"


def docker_required() -> bool:
    return os.environ.get(REQUIRE_DOCKER_ENV, "") not in ("", "0")


def pytest_addoption(parser):
    parser.addoption("--agent-sandbox", choices=("auto", "docker", "process"), default="auto",
                     help="sandbox backend of the agent tests (auto: docker when an engine answers, else process)")


def pytest_configure(config):
    if config.getoption("--agent-sandbox") != "auto":
        os.environ[AGENT_SANDBOX_ENV] = config.getoption("--agent-sandbox")     # agent_support reads it


@pytest.fixture(scope="session", autouse=True)
def private_baseline_cache(tmp_path_factory):
    """Tests (and the CLI they start) keep cached baseline perplexities out of the user's cache."""
    os.environ.setdefault("AUTOPRUNE_BASELINE_CACHE_DIR", str(tmp_path_factory.mktemp("baseline-cache")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Where Docker must be there, a test skipped for want of it has failed."""
    report = (yield).get_result()
    if report.skipped and docker_required() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if item.get_closest_marker("docker") is not None or "docker" in reason.lower():
            report.outcome = "failed"
            report.longrepr = f"{REQUIRE_DOCKER_ENV}=1, but this Docker test was skipped: {reason}"


@pytest.fixture(autouse=True)
def scripted_llm_servers():
    """Close the scripted LLM servers a test started; a request its script had no answer for fails it."""
    from llm_server_support import SCRIPTED_SERVERS

    yield
    servers = list(SCRIPTED_SERVERS)
    SCRIPTED_SERVERS.clear()
    for server in servers:
        server.close()
    errors = [error for server in servers for error in server.errors]
    assert not errors, f"the scripted LLM server could not answer: {errors}"


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    if not WIKITEXT.is_dir():
        pytest.skip(f"local WikiText-2 not found at {WIKITEXT} (set AUTOPRUNE_TEST_DATA)")
    return WIKITEXT


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)


def tiny_llama_model():
    """The tiny random Llama (seed 0, eval mode): the `tiny_llama` fixture, for module-scoped set-ups too."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture
def tiny_llama():
    return tiny_llama_model()


@pytest.fixture
def tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                       vocab_size=256, max_position_embeddings=256, word_embed_proj_dim=64)
    return OPTForCausalLM(config).eval()


@pytest.fixture
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=256)).eval()


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded default (SmolLM2-135M-Instruct), loaded once per session. Do not mutate it."""
    from autoprune.models import load_model

    return load_model()


@pytest.fixture
def tiny_windows():
    """Eight random 32-token windows for calibration on the tiny models (vocab 256)."""
    from autoprune.data import WindowSet

    generator = torch.Generator().manual_seed(1)
    return WindowSet(torch.randint(0, 256, (8, 32), generator=generator), "8x32 random tokens")


@pytest.fixture(params=["tiny_llama", "tiny_opt", "tiny_gpt2"])
def tiny_model(request):
    """Each supported family in turn (Llama, OPT, GPT-2 with Conv1D)."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama with the embedded model's tokenizer (full vocabulary), for CLI / pipeline runs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from autoprune.models import embedded_model_dir

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((embedded_model_dir() / name).read_bytes())
    return folder
