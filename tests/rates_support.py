"""Shared by the rate-search tests (CPU and CUDA): the embedded tokenizer, a small WikiText
slice, a tiny random Llama with that tokenizer, and small search settings."""

from __future__ import annotations

import pytest
import torch

from autoprune.agent.rates.config import RatesConfig
from autoprune.models import LoadedModel, embedded_model_dir

LAYERS = 4


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture(scope="module")
def small_wikitext(tmp_path_factory, wikitext_dir):
    """The first lines of the local WikiText-2 (in a temp folder): tokenizing all of it dominates."""
    folder = tmp_path_factory.mktemp("wikitext-small")
    for name in ("wiki.valid.tokens", "wiki.test.raw"):
        lines = (wikitext_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:300]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


def tiny_loaded(tokenizer) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                         tie_word_embeddings=True)
    return LoadedModel(LlamaForCausalLM(config).eval(), tokenizer, "tiny-llama", "random")


def tiny_config(run_dir, small_wikitext, **overrides) -> RatesConfig:
    settings = dict(run_dir=run_dir, target_params=0.7, budget=3, population=3, data=str(small_wikitext), seqlen=64,
                    nsamples=2, fitness_windows=2, eval_seqlen=64, eval_windows=2, speed_repeats=1, high=0.8)
    return RatesConfig(**{**settings, **overrides})
