"""Any causal LM a user brings: tiny random models of many transformers families, each pruned end to end.

Every family is built offline from its config class (hidden 64, 2 layers, vocab 256) and goes
through the real paths: the adapter discovers its layout, Wanda and SparseGPT prune it at 50%
through `prune_model`, the export reloads with plain transformers at the same perplexity, a
candidate runs through the sandbox (process backend; Docker for two families), structured
pruning works where the layout allows and is refused with one line where it does not.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import torch
import transformers as T
from transformers import AutoConfig, AutoModelForCausalLM

from torch_thread_support import one_thread  # noqa: F401 - a fixture

from autoprune.adapters import ADAPTERS, UnsupportedArchitectureError, adapter_for
from autoprune.adapters.discovery import discover_adapter
from autoprune.data import WindowSet
from autoprune.errors import BadInputError
from autoprune.evaluators.perplexity import perplexity
from autoprune.pruning.calibration import capture_block_inputs, collect_activation_stats, run_block, target_linears
from autoprune.pruning.export import export_pruned_model
from autoprune.pruning.loop import prune_model
from autoprune.pruning.masks import mask_sparsity
from autoprune.pruning.methods import PrecomputedMasks
from autoprune.pruning.metrics import get_metric
from autoprune.pruning.sparsegpt import SparseGPTPruner
from autoprune.pruning.structured import load_structured_model, prune_structured, refit_targets

H, VOCAB = 64, 256
GQA = dict(hidden_size=H, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           vocab_size=VOCAB, max_position_embeddings=128)
SLIDING = dict(sliding_window=8)   # shorter than the 32-token windows: per-layer masks differ

FAMILIES = {
    "llama": lambda: T.LlamaConfig(**GQA),
    "mistral": lambda: T.MistralConfig(**GQA, **SLIDING),
    "qwen2": lambda: T.Qwen2Config(**GQA),
    "qwen3": lambda: T.Qwen3Config(**GQA, head_dim=16),
    "gemma": lambda: T.GemmaConfig(**{**GQA, "num_key_value_heads": 1}, head_dim=16),
    "gemma2": lambda: T.Gemma2Config(**GQA, head_dim=16, **SLIDING),
    "gemma3_text": lambda: T.Gemma3TextConfig(**GQA, head_dim=16, **SLIDING),
    "phi": lambda: T.PhiConfig(hidden_size=H, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               vocab_size=VOCAB),
    "phi3": lambda: T.Phi3Config(**GQA, pad_token_id=0),
    "falcon": lambda: T.FalconConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB),
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=H, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=VOCAB),
    "gpt2": lambda: T.GPT2Config(n_embd=H, n_layer=2, n_head=4, vocab_size=VOCAB),
    "opt": lambda: T.OPTConfig(hidden_size=H, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                               word_embed_proj_dim=H, vocab_size=VOCAB),
    "olmo2": lambda: T.Olmo2Config(**GQA, pad_token_id=0),
    "granite": lambda: T.GraniteConfig(**GQA),
    "stablelm": lambda: T.StableLmConfig(**GQA),
    "cohere": lambda: T.CohereConfig(**GQA, pad_token_id=0),
    "starcoder2": lambda: T.Starcoder2Config(**GQA),
    "gptj": lambda: T.GPTJConfig(n_embd=H, n_layer=2, n_head=4, rotary_dim=8, vocab_size=VOCAB),
    "bloom": lambda: T.BloomConfig(hidden_size=H, n_layer=2, n_head=4, vocab_size=VOCAB),
}
FUSED = {"phi3", "falcon", "gpt_neox", "gpt2", "bloom"}        # qkv (and Phi-3's gate_up) in one matrix
CROSS_HEAD_NORM = {"olmo2"}                                    # q_norm / k_norm over all heads
STRUCTURED = sorted(set(FAMILIES) - FUSED - CROSS_HEAD_NORM)
DOCKER_FAMILIES = ("gpt_neox", "gemma2")
WANDA_SOURCE = "import torch\n\ndef score(W, X):\n    return W.abs() * X.norm\n"


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()


def windows(count: int, seed: int) -> WindowSet:
    ids = torch.randint(0, VOCAB, (count, 32), generator=torch.Generator().manual_seed(seed))
    return WindowSet(ids, f"{count}x32 random tokens (seed {seed})")


CALIBRATION, TEST = windows(8, 1), windows(4, 2)


def assert_same_perplexity(model, reloaded) -> None:
    before, after = perplexity(model, TEST), perplexity(reloaded, TEST)
    assert after == pytest.approx(before, rel=1e-5), (before, after)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layout_is_discovered_with_roles(family):
    model = build(family)
    adapter = discover_adapter(model)
    assert len(adapter.blocks(model)) == 2
    roles = set(adapter.roles)
    assert {"o", "down"} <= roles and ({"q", "k", "v"} <= roles or "qkv" in roles)
    assert bool(adapter.fused) == (family in FUSED)
    known = next((a for a in ADAPTERS if model.config.model_type in a.model_types), None)
    if known is not None:   # a fast path says exactly what discovery finds
        assert (known.blocks_path, known.linear_names, known.roles) == \
            (adapter.blocks_path, adapter.linear_names, adapter.roles)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prune_export_reload(family, method, tmp_path):
    model = build(family)
    pruner = SparseGPTPruner() if method == "sparsegpt" else get_metric("wanda")
    result = prune_model(model, CALIBRATION, method=pruner, sparsity=0.5, progress=False)
    assert set(result.masks) == set(target_linears(model))
    assert all(s == pytest.approx(0.5, abs=0.02) for s in result.layer_sparsity.values())
    assert torch.isfinite(torch.tensor(perplexity(model, TEST)))
    out = export_pruned_model(model, None, tmp_path / "pruned", result.summary())
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert_same_perplexity(model, reloaded)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_of_four_pattern(family):
    model = build(family)
    result = prune_model(model, CALIBRATION, method=get_metric("wanda"), sparsity=0.5, pattern="2:4",
                         mode="one-shot", progress=False)   # the loop verifies every mask's 2:4 groups
    assert result.pattern == "2:4" and set(result.masks) == set(target_linears(model))


def sandbox_candidate_masks(model, tmp_path, backend: str) -> None:
    """Wanda as an untrusted candidate on the model's real bundle gives the built-in Wanda's masks,
    and the loop applies them."""
    from autoprune.sandbox import ScoringRequest, run_candidate, write_scoring_bundle
    from sandbox_support import wanda_masks

    bundle = write_scoring_bundle(model, collect_activation_stats(model, CALIBRATION), tmp_path / "bundle")
    sparsity = {name: 0.5 for name in bundle.names}
    verdict = run_candidate(WANDA_SOURCE, bundle, ScoringRequest(sparsity=sparsity), backend=backend)
    assert verdict.status == "ok", verdict.message
    expected = wanda_masks(bundle, 0.5)
    assert set(verdict.masks) == set(target_linears(model))
    assert all(torch.equal(verdict.masks[name], expected[name]) for name in expected)
    result = prune_model(model, CALIBRATION, method=PrecomputedMasks(verdict.masks, sparsity, group=verdict.group),
                         sparsity=0.5, mode="one-shot", progress=False)
    assert all(mask_sparsity(mask) == pytest.approx(0.5, abs=0.02) for mask in result.masks.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_candidate_through_process_sandbox(family, tmp_path):
    sandbox_candidate_masks(build(family), tmp_path, "process")


@pytest.mark.docker
@pytest.mark.parametrize("family", DOCKER_FAMILIES)
def test_candidate_through_docker_sandbox(family, tmp_path):
    from sandbox_support import require_docker_image

    require_docker_image()
    sandbox_candidate_masks(build(family), tmp_path, "docker")


@pytest.mark.parametrize("family", STRUCTURED)
def test_structured_pruning_saves_and_reloads(family, tmp_path):
    model = build(family)
    stats = collect_activation_stats(model, CALIBRATION, with_gram=refit_targets(model))
    dense_params = sum(p.numel() for p in model.parameters())
    structure = prune_structured(model, [0.5, 0.5], stats, reconstruct=True)
    assert sum(p.numel() for p in model.parameters()) < dense_params
    assert all(layer.intermediate < 256 for layer in structure)
    model.save_pretrained(tmp_path / "structured")
    assert_same_perplexity(model, load_structured_model(tmp_path / "structured"))


@pytest.mark.parametrize("family", sorted(FUSED | CROSS_HEAD_NORM))
def test_structured_pruning_refused_with_one_line(family):
    model = build(family)
    with pytest.raises(BadInputError) as refused:
        prune_structured(model, [0.5, 0.5], collect_activation_stats(model, CALIBRATION))
    message = str(refused.value)
    assert "\n" not in message and repr(model.config.model_type) in message
    assert ("fuses" in message) == (family in FUSED)


def test_sliding_window_blocks_get_their_own_masks():
    """Gemma 2 alternates sliding-window and full attention: replaying block 0's mask everywhere
    would change block 1's output. The captured inputs reproduce the model's own hidden states."""
    model = build("gemma2")
    blocks = adapter_for(model).blocks(model)
    outputs = []
    handle = blocks[-1].register_forward_hook(lambda m, a, out: outputs.append(adapter_for(model).block_output(out)))
    with torch.no_grad():
        model(CALIBRATION.ids, use_cache=False)
    handle.remove()
    inputs = capture_block_inputs(model, CALIBRATION, batch_size=8)
    assert len(inputs[0].calls) == len(blocks)
    for block in blocks:
        inputs = run_block(block, inputs)
    assert torch.allclose(inputs[0].hidden, outputs[0], atol=1e-5)


GGUF_VOCAB = 512   # the embedded tokenizer cut to its first 512 tokens (specials, bytes, first merges): fast to parse
GGUF_GQA = {**GQA, "vocab_size": GGUF_VOCAB}
GGUF_TOKENIZER = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")
GGUF_FAMILIES = {   # model_type read back: (GGUF architecture written, general.name, tiny config)
    "llama": ("llama", "tiny", lambda: T.LlamaConfig(**GGUF_GQA)),
    "qwen2": ("qwen2", "tiny", lambda: T.Qwen2Config(**GGUF_GQA)),
    "qwen3": ("qwen3", "tiny", lambda: T.Qwen3Config(**GGUF_GQA)),   # head_dim 128: the only one read back
    "stablelm": ("stablelm", "tiny", lambda: T.StableLmConfig(**GGUF_GQA, tie_word_embeddings=False)),
    "phi3": ("phi3", "tiny", lambda: T.Phi3Config(**GGUF_GQA, tie_word_embeddings=False, pad_token_id=0)),
    # llama.cpp writes Mistral as architecture "llama"; transformers reads it back as a Llama
    "mistral": ("llama", "Mistral-tiny", lambda: T.MistralConfig(**GGUF_GQA)),
    "gemma2": ("gemma2", "tiny", lambda: T.Gemma2Config(**GGUF_GQA, head_dim=16, **SLIDING)),
    "gemma3_text": ("gemma3", "tiny", lambda: T.Gemma3TextConfig(**GGUF_GQA, head_dim=16, **SLIDING)),
    "falcon": ("falcon", "tiny", lambda: T.FalconConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                                        vocab_size=GGUF_VOCAB)),
    "bloom": ("bloom", "tiny", lambda: T.BloomConfig(hidden_size=H, n_layer=2, n_head=4, vocab_size=GGUF_VOCAB)),
    "gpt2": ("gpt2", "tiny", lambda: T.GPT2Config(n_embd=H, n_layer=2, n_head=4, vocab_size=GGUF_VOCAB)),
    "starcoder2": ("starcoder2", "tiny", lambda: T.Starcoder2Config(**GGUF_GQA)),
}
GGUF_READ_AS = {"mistral": "llama"}


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary row order for q/k (transformers' GGUF loader undoes it for llama)."""
    rows = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, rows, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_cpp_tensor(config, arch: str, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The inverse of transformers' per-architecture TensorProcessor (modeling_gguf_pytorch_utils) for one tensor,
    named by its GGUF name: what llama.cpp's converter does to the Hugging Face weight."""
    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):   # LlamaTensorProcessor: reverse permute
        heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
        return llama_cpp_permute(tensor, heads)
    if arch in ("gemma2", "gemma3") and "norm.weight" in name:          # Gemma2TensorProcessor: weights - 1
        return tensor + 1
    if arch == "bloom" and "attn_qkv" in name:                          # BloomTensorProcessor: per-head q/k/v
        return tensor.reshape(config.n_head, 3, -1, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)
    if arch == "gpt2" and name.endswith(("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")):
        return tensor.T                                                  # GPT2TensorProcessor: Conv1D transposes
    return tensor


@functools.lru_cache(maxsize=1)
def tiny_tokenizer_fields() -> dict:
    """The embedded SmolLM2 GGUF's tokenizer cut to GGUF_VOCAB tokens and the merges among them:
    (value, main type, element type) per key, read once."""
    import gguf

    from autoprune.models import embedded_gguf_path

    fields = gguf.GGUFReader(str(embedded_gguf_path())).fields
    values = {key: (fields[key].contents(), fields[key].types[0], fields[key].types[-1] if len(fields[key].types) > 1
                    else None) for key in GGUF_TOKENIZER}
    tokens, kind, element = values["tokenizer.ggml.tokens"]
    kept = set(tokens[:GGUF_VOCAB])
    merges, merge_kind, merge_element = values["tokenizer.ggml.merges"]
    merges = [m for m in merges if (lambda a, b: {a, b, a + b} <= kept)(*m.split(" ", 1))]
    types, type_kind, type_element = values["tokenizer.ggml.token_type"]
    return {**values, "tokenizer.ggml.tokens": (tokens[:GGUF_VOCAB], kind, element),
            "tokenizer.ggml.token_type": (types[:GGUF_VOCAB], type_kind, type_element),
            "tokenizer.ggml.merges": (merges, merge_kind, merge_element)}


def gguf_metadata(config, arch: str):
    """(key, value, type) for every config attribute transformers reads back: GGUF_CONFIG_MAPPING inverted."""
    import gguf
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    for key, attribute in GGUF_CONFIG_MAPPING.get(arch, {}).items():
        value = (config.rope_parameters.get("rope_theta") if attribute == "rope_theta"
                 else getattr(config, str(attribute), None))
        if isinstance(value, float):
            yield f"{arch}.{key}", value, gguf.GGUFValueType.FLOAT32
        elif isinstance(value, int) and not isinstance(value, bool):
            yield f"{arch}.{key}", value, gguf.GGUFValueType.UINT32


def write_tiny_gguf(model, arch: str, name: str, path) -> None:
    """The model as an F32 GGUF file the way llama.cpp lays it out (gguf's writer and tensor-name map, the inverse
    of transformers' tensor transforms), with a cut of the embedded model's tokenizer."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    for key, value, kind in gguf_metadata(config, arch):
        writer.add_key_value(key, value, kind)
    for key, (value, kind, element) in tiny_tokenizer_fields().items():
        writer.add_key_value(key, value, kind, element)
    if config.pad_token_id is not None:   # read back into the config (Phi-3's default, 32000, is outside the vocab)
        writer.add_pad_token_id(config.pad_token_id)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        base, _, suffix = hf_name.rpartition(".")
        mapped = names.get_name(base) or names.get_name(base.partition(".")[2])   # Bloom: names of BloomModel
        if mapped is None:
            assert hf_name == "lm_head.weight" and config.tie_word_embeddings, hf_name
            continue
        gguf_name = f"{mapped}.{suffix}"
        tensor = llama_cpp_tensor(config, arch, gguf_name, tensor.detach().float())
        writer.add_tensor(gguf_name, tensor.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_gguf_source(family: str):
    """A tiny random model of the family with every norm weight and bias moved off its initial value
    (so that norm offsets and bias layouts matter)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GGUF_FAMILIES[family][2]()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.mark.parametrize("family", sorted(GGUF_FAMILIES))
def test_gguf_file_loads_with_the_same_logits_and_prunes(family, tmp_path):
    from autoprune.models import load_model

    arch, name, _ = GGUF_FAMILIES[family]
    model = tiny_gguf_source(family)
    write_tiny_gguf(model, arch, name, tmp_path / f"tiny-{family}.gguf")
    loaded = load_model(str(tmp_path / f"tiny-{family}.gguf"))
    assert loaded.model.config.model_type == GGUF_READ_AS.get(family, family)
    assert loaded.tokenizer.vocab_size == GGUF_VOCAB == loaded.model.config.vocab_size
    ids = torch.randint(0, GGUF_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    calibration = WindowSet(ids, "2x16 random tokens")
    result = prune_model(loaded.model, calibration, method=get_metric("wanda"), sparsity=0.5, progress=False)
    assert set(result.masks) == set(target_linears(loaded.model)) and len(result.masks) == 2 * len(
        adapter_for(loaded.model).linear_names)


def falcon_new_decoder_config():
    """Falcon-40B/180B layout: grouped KV heads, which transformers' GGUF config mapping does not read back."""
    return T.FalconConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                          new_decoder_architecture=True, vocab_size=GGUF_VOCAB)


@pytest.mark.parametrize(("config", "arch", "name", "says"), [
    (FAMILIES["gpt_neox"], "gptneox", "tiny", "architecture gptneox is not supported"),   # no GGUF_CONFIG_MAPPING
    (FAMILIES["mistral"], "llama", "mistral", "Unknown gguf model_type: mistral"),   # renamed, unknown to gguf-py
    (falcon_new_decoder_config, "falcon", "tiny", "ignore_mismatched_sizes"),   # read back as multi-query Falcon
], ids=["gptneox", "llama-named-mistral", "falcon-new-decoder"])
def test_gguf_file_transformers_cannot_read_is_refused_with_one_line(config, arch, name, says, tmp_path):
    from autoprune.errors import ModelLoadError
    from autoprune.models import load_model

    torch.manual_seed(0)
    write_tiny_gguf(AutoModelForCausalLM.from_config(config()).eval(), arch, name, tmp_path / "tiny.gguf")
    with pytest.raises(ModelLoadError) as refused:
        load_model(str(tmp_path / "tiny.gguf"))
    assert "\n" not in str(refused.value) and says in str(refused.value), refused.value


class RenamedLlamaConfig(T.LlamaConfig):
    model_type = "my_new_family"


class RenamedLlama(T.LlamaForCausalLM):
    config_class = RenamedLlamaConfig


def test_standard_layout_under_an_unknown_model_type_prunes_and_reloads(tmp_path):
    AutoConfig.register("my_new_family", RenamedLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(RenamedLlamaConfig, RenamedLlama, exist_ok=True)
    torch.manual_seed(0)
    model = RenamedLlama(RenamedLlamaConfig(**GQA)).eval()
    adapter = adapter_for(model)
    assert adapter.family == "my_new_family" and adapter.blocks_path == "model.layers"
    result = prune_model(model, CALIBRATION, method=get_metric("wanda"), sparsity=0.5, progress=False)
    assert len(result.masks) == 14
    out = export_pruned_model(model, None, tmp_path / "pruned", result.summary())
    assert_same_perplexity(model, AutoModelForCausalLM.from_pretrained(out).eval())


def tiny_moe_config():
    return T.MixtralConfig(**GQA, num_local_experts=4, num_experts_per_tok=2)


def tiny_mamba_config():
    return T.MambaConfig(hidden_size=H, num_hidden_layers=2, vocab_size=VOCAB)


@pytest.mark.parametrize("config", [tiny_moe_config, tiny_mamba_config], ids=["mixtral", "mamba"])
def test_layout_not_understood_is_refused_saying_what_was_found(config):
    model = AutoModelForCausalLM.from_config(config())
    with pytest.raises(UnsupportedArchitectureError) as refused:
        adapter_for(model)
    message = str(refused.value)
    assert "\n" not in message and "holds weights outside linear layers" in message
    assert isinstance(refused.value, BadInputError)


def test_cli_refuses_an_unknown_layout_with_one_line_and_exit_2(tmp_path):
    from autoprune.models import embedded_model_dir

    folder = tmp_path / "moe"
    AutoModelForCausalLM.from_config(tiny_moe_config()).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((embedded_model_dir() / name).read_bytes())
    done = subprocess.run([sys.executable, "-c", "from autoprune.cli import main; main()", "prune", "--model",
                           str(folder), "--method", "wanda", "--sparsity", "0.5"],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "cannot prune model type 'mixtral'" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
