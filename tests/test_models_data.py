"""Models and data: disjoint calibration / fitness windows, clear errors, embedded and GGUF loading."""

from __future__ import annotations

import pytest
import torch

from autoprune import data
from autoprune.data import (calibration_windows, consecutive_windows, fitness_windows, load_corpus, split_validation,
                            tokenize)
from autoprune.errors import DataError, ModelLoadError
from autoprune.models import embedded_model_dir, load_model, resolve_model_source


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture(scope="module")
def corpus(wikitext_dir):
    return load_corpus(str(wikitext_dir))


def contains_window(stream: torch.Tensor, window: torch.Tensor) -> bool:
    return bool(stream.unfold(0, window.numel(), 1).eq(window).all(1).any())


def test_calibration_comes_from_the_first_half_and_fitness_from_the_second(tokenizer, corpus):
    tokens = tokenize(tokenizer, corpus.validation)
    first, second = split_validation(tokens)
    assert first.numel() + second.numel() == tokens.numel()
    calib = calibration_windows(tokenizer, corpus, nsamples=4, seqlen=128, seed=0)
    fit = fitness_windows(tokenizer, corpus, nwindows=4, seqlen=128)
    for window in calib.ids:
        assert contains_window(first, window)
    assert torch.equal(fit.ids, consecutive_windows(second, 128, 4))
    assert "first half" in calib.description and "second half" in fit.description


def test_test_windows_are_consecutive_and_seeded_calibration_repeats(tokenizer, corpus):
    test = data.test_windows(tokenizer, corpus, nwindows=3, seqlen=64)
    assert test.ids.shape == (3, 64)
    assert torch.equal(test.ids.reshape(-1), tokenize(tokenizer, corpus.test())[: 3 * 64])
    a = calibration_windows(tokenizer, corpus, nsamples=3, seqlen=64, seed=5)
    b = calibration_windows(tokenizer, corpus, nsamples=3, seqlen=64, seed=5)
    assert torch.equal(a.ids, b.ids)


def test_bad_data_folders_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_corpus(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no validation text"):
        load_corpus(str(tmp_path))
    (tmp_path / "wiki.valid.tokens").write_text("a few words\n")
    with pytest.raises(DataError, match="no test text"):
        load_corpus(str(tmp_path)).test()


def test_too_short_text_is_a_data_error():
    with pytest.raises(DataError, match="fewer than one window"):
        consecutive_windows(torch.arange(10), 64)


def test_missing_models_raise_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_source(str(tmp_path / "nothing"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model_source(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_source(str(tmp_path / "empty"))


@pytest.mark.slow
def test_embedded_model_loads_from_its_safetensors_cache(embedded_model):
    assert embedded_model.name == "SmolLM2-135M-Instruct"
    assert embedded_model.model.config.model_type == "llama"
    assert (embedded_model_dir() / "model.safetensors").is_file()


@pytest.mark.slow
def test_gguf_file_loads_directly():
    from autoprune.models import embedded_gguf_path

    loaded = load_model(str(embedded_gguf_path()))
    assert loaded.model.config.model_type == "llama"
    ids = loaded.tokenizer("The cat", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(loaded.model(ids).logits).all()


def test_a_self_corpus_is_sized_to_what_the_windows_read(tokenizer, tiny_llama_dir):
    """`--data self` samples as many tokens as its windows read (one forward pass per token), no fewer.
    (That the same needs and seed give a worker the host's windows: test_executors.py.)"""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    needs = data.TextNeeds.windows(32, calibration=2, fitness=4, test=3)
    corpus = load_corpus("self", model=model, tokenizer=tokenizer, seed=7, needs=needs)
    validation = tokenize(tokenizer, corpus.validation).numel()
    assert needs.validation_tokens() <= validation <= 2 * needs.validation_tokens()
    assert fitness_windows(tokenizer, corpus, nwindows=4, seqlen=32).ids.shape == (4, 32)
    assert calibration_windows(tokenizer, corpus, nsamples=2, seqlen=32, seed=7).ids.shape == (2, 32)
    assert data.test_windows(tokenizer, corpus, nwindows=3, seqlen=32).ids.shape == (3, 32)
