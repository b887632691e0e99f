"""`--dtype bf16|fp16|fp32`: models load in that dtype, pruning keeps it (statistics and the
SparseGPT solve run in float32/64 and the result is cast back), perplexity stays finite and close
to float32's; a bad name is one line and exit code 2 on every command that loads a model."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from autoprune.errors import BadInputError

CLI = [sys.executable, "-c", "from autoprune.cli import main; main()"]


@pytest.mark.parametrize("args", [
    ["prune", "--method", "wanda", "--sparsity", "0.5", "--dtype", "int8"],
    ["eval", "some/model", "--dtype", "float8"],
    ["run", "--budget", "1", "--dtype", "bf32"],
    ["search-rates", "--dtype", "half"],
])
def test_a_bad_dtype_is_one_line_and_exit_2(args):
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "dtype" in lines[0] and "bf16" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_every_config_carries_the_dtype(tmp_path):
    from autoprune.agent.config import make_config as run_config
    from autoprune.agent.rates.config import RatesConfig
    from autoprune.pruning.config import EvalConfig, PruneConfig, make_config

    assert make_config(PruneConfig, method="wanda", sparsity=0.5, dtype="bf16").dtype == "bf16"
    assert make_config(EvalConfig, model="org/name", dtype="fp16").dtype == "fp16"
    assert run_config(dtype="bf16").dtype == "bf16" and run_config().dtype == "fp32"
    assert RatesConfig(run_dir=tmp_path, dtype="fp16").dtype == "fp16"
    with pytest.raises(BadInputError, match="dtype"):
        RatesConfig(run_dir=tmp_path, dtype="int4")


def test_torch_dtype_names():
    from autoprune.models import check_dtype, torch_dtype

    assert [torch_dtype(n) for n in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]
    assert torch_dtype(None) is torch.float32 and torch_dtype(torch.float16) is torch.float16
    with pytest.raises(BadInputError, match="bf16 | fp16 | fp32"):
        check_dtype("float64")


@pytest.fixture(scope="module")
def calibration(tiny_llama_dir, wikitext_dir):
    from autoprune.data import calibration_windows, load_corpus, test_windows
    from autoprune.models import load_model

    tokenizer = load_model(str(tiny_llama_dir)).tokenizer
    corpus = load_corpus(str(wikitext_dir))
    return (calibration_windows(tokenizer, corpus, nsamples=4, seqlen=64, seed=0),
            test_windows(tokenizer, corpus, nwindows=2, seqlen=64))


def pruned(model_dir, dtype, windows):
    from autoprune.models import load_model
    from autoprune.pruning.choices import builtin_method
    from autoprune.pruning.loop import prune_model

    loaded = load_model(str(model_dir), dtype=dtype)
    result = prune_model(loaded.model, windows, method=builtin_method("sparsegpt"), sparsity=0.5, progress=False)
    return loaded, result


def test_bf16_prune_keeps_bf16_and_matches_fp32(tiny_llama_dir, calibration, tmp_path):
    from transformers import AutoModelForCausalLM

    from autoprune.adapters import linear_weight
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.pruning.calibration import target_linears
    from autoprune.pruning.export import export_pruned_model

    calib, test = calibration
    loaded, result = pruned(tiny_llama_dir, "bf16", calib)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert all(s == pytest.approx(0.5, abs=1e-3) for s in result.layer_sparsity.values())
    for name, (_, module) in target_linears(loaded.model).items():       # the mask is what the weights show
        assert torch.equal(linear_weight(module) != 0, result.masks[name].to(torch.bool)), name
    ppl_bf16 = perplexity(loaded.model, test)
    reference, _ = pruned(tiny_llama_dir, "fp32", calib)
    ppl_fp32 = perplexity(reference.model, test)
    assert math.isfinite(ppl_bf16) and ppl_bf16 == pytest.approx(ppl_fp32, rel=0.05)

    out = export_pruned_model(loaded.model, loaded.tokenizer, tmp_path / "bf16", {"method": "sparsegpt"})
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()      # plain transformers
    assert reloaded.dtype == torch.bfloat16
    ids = test.ids[:1]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, loaded.model(ids).logits)


def test_fp16_eval_is_close_to_fp32(tiny_llama_dir, calibration):
    from autoprune.evaluators.perplexity import perplexity
    from autoprune.models import load_model

    _, test = calibration
    half = load_model(str(tiny_llama_dir), dtype="fp16")
    assert half.model.dtype == torch.float16
    ppl_fp16, ppl_fp32 = perplexity(half.model, test), perplexity(load_model(str(tiny_llama_dir)).model, test)
    assert math.isfinite(ppl_fp16) and ppl_fp16 == pytest.approx(ppl_fp32, rel=0.01)
