"""`--export-format compressed-tensors`: the pruned model as a compressed-tensors checkpoint.

A tiny random Llama pruned 50% (unstructured and 2:4) is exported, rewritten with compressed-tensors'
own sparsity compressors (sparse-bitmask / sparse-24-bitmask), read back through the library's
decompression into a transformers model, and must give the pruned model's logits exactly. An
offloaded (sharded, block by block) export goes the same way; a forged or corrupt checkpoint is
one ModelLoadError; the CLI refuses a bad --export-format with one line and runs a real job.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from torch_thread_support import one_thread  # noqa: F401 - a fixture

from autoprune.data import WindowSet
from autoprune.errors import ModelLoadError
from autoprune.pruning.compressed_export import (BITMASK, BITMASK_24, compress_checkpoint, is_compressed_checkpoint,
                                                 load_compressed_model)
from autoprune.pruning.export import export_offloaded_model, export_pruned_model, read_summary
from autoprune.pruning.loop import prune_model
from autoprune.pruning.metrics import get_metric

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]
VOCAB = 256
IDS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))


def windows(count: int, seed: int) -> WindowSet:
    return WindowSet(torch.randint(0, VOCAB, (count, 32), generator=torch.Generator().manual_seed(seed)), "random")


def tiny_llama(*, tie: bool = False, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


def pruned(pattern: str, *, tie: bool = False) -> LlamaForCausalLM:
    model = tiny_llama(tie=tie)
    prune_model(model, windows(4, 1), method=get_metric("wanda"), sparsity=0.5, pattern=pattern, progress=False)
    return model


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def compression_block(folder) -> dict:
    return json.loads((folder / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize("pattern,fmt,structure", [("unstructured", BITMASK, "unstructured"),
                                                    ("2:4", BITMASK_24, "2:4")])
@pytest.mark.parametrize("tie", [False, True])
def test_export_reloads_to_the_same_logits(pattern, fmt, structure, tie, tmp_path):
    model = pruned(pattern, tie=tie)
    out = export_pruned_model(model, None, tmp_path / "out", {"method": "wanda", "pattern": pattern})
    dense_bytes = (out / "model.safetensors").stat().st_size
    assert not is_compressed_checkpoint(out)
    record = compress_checkpoint(out, pattern)
    assert is_compressed_checkpoint(out)

    assert record["sparsity_format"] == fmt and record["global_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert record["compressed_linears"] == 14 and "fallback" not in record
    block = compression_block(out)
    assert block["quant_method"] == "compressed-tensors" and block["version"] == "0.13.0"
    sparsity = block["sparsity_config"]
    assert (sparsity["format"], sparsity["sparsity_structure"]) == (fmt, structure)
    assert sparsity["targets"] == ["Linear"] and sparsity["ignore"] == ["lm_head"]
    assert read_summary(out)["export"] == record
    stored = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.mlp.up_proj.bitmask" in stored and "model.layers.0.mlp.up_proj.weight" not in stored
    assert "model.embed_tokens.weight" in stored                  # not a target: stays dense
    assert (out / "model.safetensors").stat().st_size < 0.75 * dense_bytes

    reloaded = load_compressed_model(out)
    assert torch.equal(logits(reloaded), logits(model))
    if tie:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_bf16_export_reloads_like_the_dense_export(tmp_path):
    """bf16 weights stay bf16: the compressed checkpoint reloads to the logits plain transformers gets
    from the dense export of the same model."""
    from transformers import AutoModelForCausalLM

    model = pruned("unstructured").to(torch.bfloat16)
    dense = export_pruned_model(model, None, tmp_path / "dense", {})
    out = export_pruned_model(model, None, tmp_path / "out", {})
    compress_checkpoint(out, "unstructured")
    reloaded = load_compressed_model(out)
    assert reloaded.dtype == torch.bfloat16
    assert torch.equal(logits(reloaded), logits(AutoModelForCausalLM.from_pretrained(dense).eval()))


def test_two_four_that_is_not_falls_back_to_bitmask(tmp_path):
    """A 2:4 export whose weights are not 2:4: the 2:4 compressor would keep 2 of each 4 and drop the
    rest, so the bitmask is written instead, and said."""
    model = pruned("unstructured")
    out = export_pruned_model(model, None, tmp_path / "out", {})
    record = compress_checkpoint(out, "2:4")
    assert record["sparsity_format"] == BITMASK and "not 2:4" in record["fallback"]
    assert compression_block(out)["sparsity_config"]["sparsity_structure"] == "unstructured"
    assert torch.equal(logits(load_compressed_model(out)), logits(model))


def test_four_eight_is_bitmask_with_its_pattern_recorded(tmp_path):
    model = pruned("4:8")
    out = export_pruned_model(model, None, tmp_path / "out", {})
    assert compress_checkpoint(out, "4:8")["sparsity_format"] == BITMASK
    assert compression_block(out)["sparsity_config"]["autoprune_pattern"] == "4:8"
    assert torch.equal(logits(load_compressed_model(out)), logits(model))


def test_offloaded_export_is_compressed_shard_by_shard(tmp_path):
    from autoprune.pruning.onload import INDEX, open_offloaded

    tiny_llama().save_pretrained(tmp_path / "dense")
    resident = LlamaForCausalLM.from_pretrained(tmp_path / "dense").eval()
    calibration = windows(4, 1)
    prune_model(resident, calibration, method=get_metric("wanda"), sparsity=0.5, pattern="2:4", progress=False)
    skeleton, onloader = open_offloaded(tmp_path / "dense", tmp_path / "work")
    prune_model(skeleton, calibration, method=get_metric("wanda"), sparsity=0.5, pattern="2:4", progress=False,
                onloader=onloader)
    out = export_offloaded_model(onloader, None, tmp_path / "pruned", {"method": "wanda"})
    assert compress_checkpoint(out, "2:4")["sparsity_format"] == BITMASK_24

    index = json.loads((out / INDEX).read_text())["weight_map"]
    assert index["model.layers.1.self_attn.q_proj.bitmask"] == "model-block-00001.safetensors"
    assert not any(name.endswith("proj.weight") for name in index)
    assert sorted(p.name for p in out.glob("*.partial")) == []
    assert torch.allclose(logits(load_compressed_model(out)), logits(resident), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- forged and corrupt checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    out = export_pruned_model(pruned("unstructured"), None, tmp_path_factory.mktemp("ct") / "out", {})
    compress_checkpoint(out, "unstructured")
    return out


def forged(good, tmp_path, *, config=None, tensors=None, raw: bytes | None = None):
    """A copy of `good` with config.json edited by `config`, its tensors by `tensors`, or its shard
    replaced by `raw` bytes."""
    folder = tmp_path / "forged"
    folder.mkdir()
    data = json.loads((good / "config.json").read_text())
    if config:
        config(data)
    (folder / "config.json").write_text(json.dumps(data))
    state = load_file(str(good / "model.safetensors"))
    if tensors:
        tensors(state)
    if raw is not None:
        (folder / "model.safetensors").write_bytes(raw)
    else:
        save_file(state, str(folder / "model.safetensors"))
    return folder


def set_format(value):
    def edit(data):
        data["quantization_config"]["sparsity_config"]["format"] = value
    return edit


def set_tensor(name, value):
    def edit(state):
        state[name] = value
    return edit


def drop_tensor(name):
    def edit(state):
        del state[name]
    return edit


PROJ = "model.layers.0.mlp.up_proj"          # up_proj: 128 x 64
HOSTILE = {
    "a module path as format": (dict(config=set_format("os.path:join")), "not one this loader reads"),
    "a quantized format": (dict(config=set_format("pack-quantized")), "not one this loader reads"),
    "no compression block": (dict(config=lambda d: d.pop("quantization_config")), "not a compressed-tensors"),
    "quantization groups": (dict(config=lambda d: d["quantization_config"].update(config_groups={"g": {}})),
                            "sparsity only"),
    "an unknown model type": (dict(config=lambda d: d.update(model_type="no-such-family")), "config.json"),
    "a huge forged shape": (dict(tensors=set_tensor(f"{PROJ}.shape", torch.tensor([10**9, 10**9]))),
                            "stored with shape"),
    "a truncated bitmask": (dict(tensors=set_tensor(f"{PROJ}.bitmask", torch.zeros(3, 1, dtype=torch.uint8))),
                            "cannot decompress"),
    "a missing tensor": (dict(tensors=drop_tensor("model.norm.weight")), "no tensor for model.norm.weight"),
    "an unknown tensor": (dict(tensors=set_tensor("model.extra.weight", torch.zeros(2))), "unknown tensor"),
    "a corrupt shard": (dict(raw=b"\xff" * 64), "cannot decompress"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_forged_or_corrupt_checkpoint_is_one_clear_error(case, good_checkpoint, tmp_path):
    edits, fragment = HOSTILE[case]
    folder = forged(good_checkpoint, tmp_path, **edits)
    with pytest.raises(ModelLoadError) as caught:
        load_compressed_model(folder)
    message = str(caught.value)
    assert fragment in message and str(folder) in message and "\n" not in message
    assert caught.value.exit_code == 2


# ---------------------------------------------------------------- the command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("extra,fragment", [(["--export-format", "zip", "--out", "x"], "known: dense"),
                                            (["--export-format", "compressed-tensors"], "needs --out")])
def test_bad_export_format_is_one_line_exit_2(extra, fragment):
    done = run_cli("prune", "--method", "wanda", "--sparsity", "0.5", *extra)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr


def test_prune_cli_writes_a_compressed_checkpoint(tmp_path, wikitext_dir):
    """The real job through the CLI (offloaded, 2:4, tied embeddings): a sparse-24-bitmask checkpoint
    that reloads to the perplexity the job measured."""
    from transformers import AutoTokenizer

    from autoprune.data import load_corpus, test_windows
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.models import embedded_model_dir

    folder = tmp_path / "tiny"
    tiny_llama(tie=True, vocab=49152).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((embedded_model_dir() / name).read_bytes())
    out = tmp_path / "out"
    done = run_cli("prune", "--model", str(folder), "--data", str(wikitext_dir), "--method", "wanda",
                   "--sparsity", "0.5", "--pattern", "2:4", "--nsamples", "4", "--seqlen", "32",
                   "--eval-windows", "3", "--offload", "--out", str(out), "--export-format", "compressed-tensors",
                   "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["export"]["sparsity_format"] == BITMASK_24
    assert read_summary(out)["export"] == result["export"]
    test = test_windows(AutoTokenizer.from_pretrained(out), load_corpus(str(wikitext_dir)), nwindows=3, seqlen=32)
    reloaded = load_compressed_model(out)
    assert perplexity(reloaded, test) == pytest.approx(result["perplexity"]["pruned"], rel=1e-5)
    evaluated = run_cli("eval", str(out), "--data", str(wikitext_dir), "--seqlen", "32", "--windows", "3", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]   # `eval` reads the compressed folder itself
    assert json.loads(evaluated.stdout)["perplexity"] == pytest.approx(result["perplexity"]["pruned"], rel=1e-5)
    set_format("os.path:join")(config := json.loads((out / "config.json").read_text()))
    (out / "config.json").write_text(json.dumps(config))
    forged_run = run_cli("eval", str(out), "--data", str(wikitext_dir), "--seqlen", "32", "--windows", "3")
    lines = [line for line in forged_run.stderr.splitlines() if line.strip()]
    assert forged_run.returncode == 2 and len(lines) == 1 and "not one this loader reads" in lines[0], forged_run.stderr
