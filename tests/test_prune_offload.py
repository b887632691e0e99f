"""`prune --offload`: the whole job (dense perplexity, calibration + pruning, pruned perplexity,
export) with the decoder blocks left in the model folder, one materialised at a time.

The deep-model test runs the real CLI on 4- and 16-layer random Llamas and reads, per stage, the
most blocks and block parameter bytes that were in memory at once (counted off the parameters
themselves by the onloader), and the CLI process's own peak RSS (VmHWM)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]
VOCAB = 512
STAGES = {"dense_perplexity", "calibration_pruning", "perplexity", "export"}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, wikitext_dir):
    """A real byte-level BPE tokenizer (vocab 512) trained on validation text: a tiny model then
    needs no 49k-row embedding, and its blocks dominate its memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with open(wikitext_dir / "wiki.valid.tokens", encoding="utf-8") as handle:
        lines = list(itertools.islice(handle, 3000))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=VOCAB, show_progress=False,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(folder)
    return folder


def save_llama(folder, tokenizer_dir, *, layers: int, hidden: int = 64, intermediate: int = 128) -> int:
    """A random Llama folder with the BPE tokenizer; returns one block's parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                         max_position_embeddings=256)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    for file in tokenizer_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return sum(p.numel() for p in model.model.layers[0].parameters())


# The CLI, reporting its own peak RSS (VmHWM) on its last stderr line: a child's rusage would also count
# the pages of the pytest process it was forked from.
CLI_HWM = [sys.executable, "-c", "import atexit, sys; atexit.register(lambda: print(next(line for line in "
           "open('/proc/self/status') if line.startswith('VmHWM')), file=sys.stderr)); "
           "from autoprune.cli import main; main()"]


def run_cli(*args: str, cli=CLI) -> subprocess.CompletedProcess:
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=600)


def peak_rss_mib(done: subprocess.CompletedProcess) -> float:
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("VmHWM:") and last.endswith("kB"), last
    return int(last.split()[1]) / 1024


def prune_args(model, data, *extra: str) -> list[str]:
    return ["prune", "--model", str(model), "--data", str(data), "--nsamples", "4", "--seqlen", "32",
            "--eval-windows", "3", "--sparsity", "0.5", *extra]


def test_memory_is_flat_in_depth_in_every_stage(tmp_path, tokenizer_dir, wikitext_dir):
    """4 vs 16 layers through `prune --offload --dtype bf16`: one block in memory at a time in each
    stage, the same peak block bytes at both depths, and peak RSS that grows by far less than the
    12 extra blocks would take resident."""
    from transformers import LlamaForCausalLM

    runs = {}
    for layers in (4, 16):
        folder = tmp_path / f"L{layers}"
        per_block = save_llama(folder, tokenizer_dir, layers=layers, hidden=256, intermediate=8192)
        done = run_cli(*prune_args(folder, wikitext_dir, "--method", "wanda", "--offload", "--dtype", "bf16",
                                   "--out", str(tmp_path / f"out{layers}"), "--json"), cli=CLI_HWM)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[layers] = (json.loads(done.stdout), peak_rss_mib(done), per_block)
    for layers, (result, _, per_block) in runs.items():
        stages = result["offload"]["stages"]
        assert set(stages) == STAGES and result["offload"]["layers"] == layers
        for peaks in stages.values():
            assert peaks == {"max_blocks": 1, "peak_block_bytes": per_block * 2}     # bf16: 2 bytes
        assert result["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert result["perplexity"]["pruned"] > 0 and result["perplexity"]["dense"] > 0
        reloaded = LlamaForCausalLM.from_pretrained(result["exported_to"])            # plain transformers
        assert reloaded.config.num_hidden_layers == layers
        assert not any(name.startswith(".autoprune-offload-") for name in os.listdir(result["exported_to"]))
    assert runs[16][0]["offload"]["skeleton_bytes"] == runs[4][0]["offload"]["skeleton_bytes"] > 0
    for stage in STAGES:
        assert runs[16][0]["offload"]["stages"][stage]["peak_block_bytes"] \
            <= 1.3 * runs[4][0]["offload"]["stages"][stage]["peak_block_bytes"]
    extra_blocks_mib = 12 * runs[4][2] * 2 / 2**20
    grown = runs[16][1] - runs[4][1]
    print(f"peak RSS 4 layers {runs[4][1]:.0f} MiB, 16 layers {runs[16][1]:.0f} MiB; "
          f"12 more blocks resident would be {extra_blocks_mib:.0f} MiB")
    assert grown < 0.5 * extra_blocks_mib


@pytest.mark.parametrize("extra", [["--method", "sparsegpt"], ["--method", "wanda", "--reconstruct", "exact"],
                                   ["--method", "alps", "--pattern", "2:4"]])
def test_offload_gives_the_resident_masks_and_perplexities(tmp_path, tokenizer_dir, wikitext_dir, extra):
    """The same job with and without --offload: equal exported weights (so equal masks) and perplexities."""
    from safetensors.torch import load_file

    from autoprune.jobs import run_prune_job
    from autoprune.pruning.config import PruneConfig, make_config

    folder = tmp_path / "dense"
    save_llama(folder, tokenizer_dir, layers=3)
    flags = dict(zip(extra[::2], extra[1::2]))
    results = {}
    for offload in (False, True):
        config = make_config(PruneConfig, model=str(folder), data=str(wikitext_dir), nsamples=4, seqlen=32,
                             eval_windows=3, sparsity=0.5, progress=False, offload=offload,
                             out=str(tmp_path / f"out-{offload}"), cache_dir=str(tmp_path / "stats"),
                             **{k.removeprefix("--"): v for k, v in flags.items()})
        results[offload] = run_prune_job(config)
    resident, offloaded = results[False], results[True]
    assert "offload" not in resident and offloaded["offload"]["layers"] == 3
    for which in ("dense", "pruned"):
        assert offloaded["perplexity"][which] == pytest.approx(resident["perplexity"][which], rel=1e-5)
    assert offloaded["overall_sparsity"] == pytest.approx(resident["overall_sparsity"], abs=1e-6)
    assert offloaded["layer_sparsity"] == pytest.approx(resident["layer_sparsity"], abs=1e-6)
    dense_weights = load_file(str(folder / "model.safetensors"))
    resident_weights = load_file(str(tmp_path / "out-False" / "model.safetensors"))
    offloaded_weights = {}
    for shard in (tmp_path / "out-True").glob("*.safetensors"):
        offloaded_weights.update(load_file(str(shard)))
    assert set(offloaded_weights) == set(resident_weights) == set(dense_weights)
    for name, tensor in resident_weights.items():
        assert torch.equal(offloaded_weights[name] == 0, tensor == 0), name               # the same masks
        assert torch.allclose(offloaded_weights[name], tensor, atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("extra,fragment", [
    (["--method", "wanda", "--mode", "one-shot"], "one-shot"),
    (["--method", "wanda", "--allocation", "owl"], "allocation owl"),
    (["--method", "wanda", "--data", "self"], "--data self"),
    (["--method", "pruner-zero"], "gradients"),
    (["--method", "CANDIDATE"], "candidate file"),
])
def test_offload_refuses_what_needs_the_whole_model(tmp_path, tokenizer_dir, extra, fragment):
    folder = tmp_path / "dense"
    save_llama(folder, tokenizer_dir, layers=2)
    candidate = tmp_path / "cand.py"
    candidate.write_text("def score(W, X):\n    return W.abs()\n")
    extra = [str(candidate) if arg == "CANDIDATE" else arg for arg in extra]
    args = ["prune", "--model", str(folder), "--sparsity", "0.5", "--offload", *extra]
    if "--data" not in extra:
        args += ["--data", str(tmp_path)]                 # an existing folder: refused before it is read
    done = run_cli(*args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "--offload keeps one decoder block in memory" in lines[0] and fragment in lines[0]
    assert "Traceback" not in done.stderr
