"""Sequential onloading (autoprune.pruning.onload): the decoder blocks stay in the model folder and
one at a time is materialised for calibration + pruning, perplexity and export. The result is the
resident path's exactly, and at no point is more than one block in memory."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import BadInputError


def save_tiny_llama(folder, *, layers: int = 4, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
                         tie_word_embeddings=tie)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def random_windows(n: int, seed: int):
    from autoprune.data import WindowSet

    return WindowSet(torch.randint(0, 256, (n, 32), generator=torch.Generator().manual_seed(seed)), f"{n}x32 random")


def materialised_blocks(onloader) -> int:
    return sum(any(not p.is_meta for p in block.parameters()) for block in onloader.blocks)


class WatchedOnloader:
    """Wraps a real onloader and records how many blocks hold real weights after each onload."""

    def __init__(self, onloader):
        self.inner, self.peaks = onloader, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def onload(self, index):
        block = self.inner.onload(index)
        self.peaks.append(materialised_blocks(self.inner))
        return block


@pytest.mark.parametrize("tie", [False, True])
def test_offloaded_sparsegpt_equals_resident_and_exports(tmp_path, tie):
    from transformers import LlamaForCausalLM

    from autoprune.evaluators.perplexity import perplexity
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.export import export_offloaded_model
    from autoprune.pruning.loop import prune_model
    from autoprune.pruning.onload import open_offloaded

    folder = save_tiny_llama(tmp_path / "dense", tie=tie)
    calibration, test = random_windows(6, 1), random_windows(3, 2)
    resident = LlamaForCausalLM.from_pretrained(folder).eval()
    prune_model(resident, calibration, method=builtin_method("sparsegpt"), sparsity=0.5, progress=False)

    skeleton, onloader = open_offloaded(folder, tmp_path / "work")
    assert materialised_blocks(onloader) == 0
    result = prune_model(skeleton, calibration, method=builtin_method("sparsegpt"), sparsity=0.5, progress=False,
                         onloader=onloader)
    assert result.masks == {} and result.summary()["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert perplexity(skeleton, test, onloader=onloader) == pytest.approx(perplexity(resident, test), rel=1e-6)
    assert materialised_blocks(onloader) == 0

    out = export_offloaded_model(onloader, None, tmp_path / "pruned", {"method": "sparsegpt"})
    reloaded = LlamaForCausalLM.from_pretrained(out).eval()          # plain transformers, nothing of ours
    with torch.no_grad():
        assert torch.equal(reloaded(test.ids).logits, resident(test.ids).logits)


@pytest.mark.parametrize("layers", [2, 8])
def test_at_most_one_block_is_in_memory_whatever_the_depth(tmp_path, layers):
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.export import export_offloaded_model
    from autoprune.pruning.loop import prune_model
    from autoprune.pruning.onload import open_offloaded

    skeleton, onloader = open_offloaded(save_tiny_llama(tmp_path / "dense", layers=layers), tmp_path / "work")
    watched = WatchedOnloader(onloader)
    prune_model(skeleton, random_windows(4, 1), method=builtin_method("wanda"), sparsity=0.5, progress=False,
                onloader=watched)                                               # calibration + pruning
    perplexity(skeleton, random_windows(2, 2), onloader=watched)               # evaluation
    export_offloaded_model(watched, None, tmp_path / "pruned", {})             # export
    assert len(watched.peaks) == 3 * layers and set(watched.peaks) == {1}
    block_bytes = sum(p.numel() * p.element_size() for p in onloader.onload(0).parameters())
    onloader.offload(0)
    assert onloader.take_peaks() == {"max_blocks": 1, "peak_block_bytes": block_bytes}      # its own count agrees
    assert onloader.take_peaks() == {"max_blocks": 0, "peak_block_bytes": 0}


def test_bf16_offloaded_keeps_the_dtype(tmp_path):
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.loop import prune_model
    from autoprune.pruning.onload import open_offloaded

    skeleton, onloader = open_offloaded(save_tiny_llama(tmp_path / "dense"), tmp_path / "work", dtype="bf16")
    prune_model(skeleton, random_windows(4, 1), method=builtin_method("sparsegpt"), sparsity=0.5, progress=False,
                onloader=onloader)
    block = onloader.onload(0)
    assert {p.dtype for p in block.parameters()} == {torch.bfloat16}
    assert skeleton.get_input_embeddings().weight.dtype == torch.bfloat16
    onloader.offload(0)
    assert torch.isfinite(torch.tensor(perplexity(skeleton, random_windows(2, 2), onloader=onloader)))


def test_offloaded_refuses_what_needs_the_whole_model(tmp_path):
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.loop import prune_model
    from autoprune.pruning.onload import open_offloaded

    skeleton, onloader = open_offloaded(save_tiny_llama(tmp_path / "dense", layers=2), tmp_path / "work")
    with pytest.raises(BadInputError, match="one block at a time"):
        prune_model(skeleton, random_windows(2, 1), method=builtin_method("wanda"), sparsity=0.5, mode="one-shot",
                    progress=False, onloader=onloader)
