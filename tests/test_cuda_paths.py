"""The CUDA paths on a real GPU; skipped where there is none (CI has none).

Each test does the same work on the CPU and on the GPU and compares the two: calibration
statistics, unstructured masks (Wanda, SparseGPT), structured pruning with Taylor importance
and the least-squares refit, the rate search end to end with `device="cuda"`, and 2:4
semi-structured sparse kernels against the masked dense model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from agent_support import ScriptedLLM
from rates_support import small_wikitext, tiny_config, tiny_loaded, tokenizer  # noqa: F401 (fixtures)
from autoprune.agent.rates.mode import run_rates_search
from autoprune.evaluators.latency import convert_linears_to_2to4, decode_tokens_per_second, tokens_per_second
from autoprune.evaluators.perplexity import perplexity
from autoprune.models import LoadedModel
from autoprune.pruning.calibration import collect_activation_stats
from autoprune.pruning.loop import prune_model
from autoprune.pruning.metrics import get_metric
from autoprune.pruning.sparsegpt import SparseGPTPruner
from autoprune.pruning.structured import (REFIT_TARGETS, attention_geometry, decoder_parameter_count,
                                          load_structured_model, prune_structured)
from autoprune.pruning.structured_importance import taylor_importance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matmuls would make GPU-vs-CPU comparisons loose for no reason."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_gpu(model):
    return copy.deepcopy(model).cuda()


def logits(model, ids):
    with torch.no_grad():
        return model(ids.to(next(model.parameters()).device)).logits.float().cpu()


def test_calibration_statistics_match_the_cpu(tiny_llama, tiny_windows):
    cpu = collect_activation_stats(tiny_llama, tiny_windows, with_gram=True)
    gpu = collect_activation_stats(on_gpu(tiny_llama), tiny_windows, with_gram=True)
    assert cpu.keys() == gpu.keys()
    for name, stats in cpu.items():
        assert gpu[name].norm.device.type == "cpu"          # statistics always come back to the host
        for field in ("norm", "sq_mean", "var", "max_abs", "gram"):
            torch.testing.assert_close(getattr(gpu[name], field), getattr(stats, field), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_unstructured_pruning_on_the_gpu_matches_the_cpu(tiny_llama, tiny_windows, method):
    def prune(model):
        pruner = SparseGPTPruner() if method == "sparsegpt" else get_metric(method)
        return prune_model(model, tiny_windows, method=pruner, sparsity=0.5, progress=False)

    gpu_model = on_gpu(tiny_llama)
    cpu_result, gpu_result = prune(tiny_llama), prune(gpu_model)
    agreement = [(cpu_result.masks[n] == gpu_result.masks[n].cpu()).float().mean().item() for n in cpu_result.masks]
    assert min(agreement) >= (0.999 if method == "wanda" else 0.97), agreement   # float order only
    assert gpu_result.target_sparsity == pytest.approx(0.5)
    ppl_cpu, ppl_gpu = perplexity(tiny_llama, tiny_windows), perplexity(gpu_model, tiny_windows)
    assert ppl_gpu == pytest.approx(ppl_cpu, rel=0.02)


def test_structured_pruning_with_taylor_and_refit_on_the_gpu(tiny_llama, tiny_windows, tmp_path):
    head_dim, _, group_size = attention_geometry(tiny_llama)
    rates = [0.5, 0.25]

    def prune(model):
        stats = collect_activation_stats(model, tiny_windows, with_gram=REFIT_TARGETS)
        importance = taylor_importance(model, tiny_windows, head_dim, group_size)
        return prune_structured(model, rates, stats, importance=importance, reconstruct=True), importance

    gpu_model = on_gpu(tiny_llama)
    (cpu_structure, cpu_importance), (gpu_structure, gpu_importance) = prune(tiny_llama), prune(gpu_model)
    assert gpu_structure == cpu_structure
    for cpu_scores, gpu_scores in zip(cpu_importance, gpu_importance):
        torch.testing.assert_close(gpu_scores.mlp, cpu_scores.mlp, rtol=1e-3, atol=1e-9)
    assert all(p.device.type == "cuda" for p in gpu_model.parameters())
    ids = tiny_windows.ids[:2]
    torch.testing.assert_close(logits(gpu_model, ids), logits(tiny_llama, ids), rtol=1e-3, atol=1e-3)
    gpu_model.save_pretrained(tmp_path / "pruned")
    reloaded = load_structured_model(tmp_path / "pruned").cuda()
    assert decoder_parameter_count(reloaded) == decoder_parameter_count(gpu_model)
    torch.testing.assert_close(logits(reloaded, ids), logits(gpu_model, ids))


def test_rate_search_runs_on_the_gpu(tmp_path, tokenizer, small_wikitext):
    """`search-rates --device cuda`: importance, fitness, the finale's speed and the export on the GPU."""
    config = tiny_config(tmp_path / "run", small_wikitext, budget=1, importance="taylor", device="cuda")
    tiny = tiny_loaded(tokenizer)
    loaded = LoadedModel(tiny.model.cuda(), tiny.tokenizer, tiny.name, tiny.source)
    summary = run_rates_search(config, loaded=loaded, llm=ScriptedLLM({"propose": ["garbage"]}))
    final = summary["final"]["test"]
    assert {final[v]["device"] for v in ("dense", "uniform", "searched")} == {"cuda:0"}
    assert final["searched"]["decoder_params"] < final["dense"]["decoder_params"]
    reloaded = load_structured_model(summary["final"]["export"])
    assert decoder_parameter_count(reloaded) == final["searched"]["decoder_params"]


def sparse_friendly_llama():
    """Shapes the 2:4 kernels accept (every linear's rows and columns multiples of 64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_2to4_kernels_compute_what_the_masked_dense_model_computes(tiny_windows, dtype):
    model = sparse_friendly_llama()
    prune_model(model, tiny_windows, method=get_metric("wanda"), sparsity=0.5, pattern="2:4", progress=False)
    dense = model.to(device="cuda", dtype=dtype)
    sparse = copy.deepcopy(dense)
    conversion = convert_linears_to_2to4(sparse)
    assert conversion == {"converted": 2 * 7, "skipped": {}}
    assert type(sparse.model.layers[0].mlp.up_proj.weight.data).__name__.startswith("SparseSemiStructured")
    ids = tiny_windows.ids[:4]
    torch.testing.assert_close(logits(sparse, ids), logits(dense, ids), rtol=2e-2, atol=2e-2)
    assert tokens_per_second(sparse, seqlen=32, repeats=2)["tokens_per_s"] > 0
    assert decode_tokens_per_second(sparse, prompt_len=8, new_tokens=4, repeats=1)["tokens_per_s"] > 0
