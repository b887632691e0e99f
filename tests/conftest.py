"""Shared fixtures: tiny random models of each supported family, the embedded model, local data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = Path(os.environ.get("AUTOPRUNE_TEST_DATA", REPO.parent / "shared" / "data" / "wikitext-2"))


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    if not WIKITEXT.is_dir():
        pytest.skip(f"local WikiText-2 not found at {WIKITEXT} (set AUTOPRUNE_TEST_DATA)")
    return WIKITEXT


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)


@pytest.fixture
def tiny_llama():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


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
