"""Calibration for the refit: XᵀX accumulated in float32 per batch stays within tolerance of the
float64 computation, and linears that read one input (q/k/v, gate/up) share one XᵀX, also
through the on-disk cache."""

from __future__ import annotations

import torch

from autoprune.adapters import linear_weight
from autoprune.data import WindowSet
from autoprune.pruning.calibration import collect_activation_stats, target_linears
from autoprune.pruning.sparsegpt import damped_inverse_hessian
from autoprune.pruning.stats import RunningChannelStats


def test_float32_batches_stay_within_tolerance_of_float64():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 512, 96, generator=g) * torch.linspace(0.01, 30.0, 96) + 0.5 for _ in range(6)]
    running = RunningChannelStats(96, with_gram=True)
    for x in batches:
        running.update(x)
    stats = running.finish(layer_index=0, num_layers=1, name="fc")
    X = torch.cat([x.reshape(-1, 96) for x in batches]).double()
    gram64 = X.T @ X
    assert stats.gram.dtype == torch.float32 and stats.nsamples == X.shape[0]
    assert float((stats.gram.double() - gram64).abs().max() / gram64.abs().max()) < 1e-5
    assert torch.allclose(stats.norm.double(), X.norm(dim=0), rtol=1e-5)
    assert torch.allclose(stats.mean.double(), X.mean(0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats.var.double(), X.var(0, unbiased=False), rtol=1e-4)
    assert torch.equal(stats.max_abs.double(), X.abs().amax(0).float().double())
    hinv, hinv64 = torch.diagonal(damped_inverse_hessian(stats.gram)), torch.diagonal(damped_inverse_hessian(gram64))
    assert torch.allclose(hinv, hinv64, rtol=1e-4)


def captured_inputs(model, windows) -> dict[str, torch.Tensor]:
    """Every target linear's inputs, concatenated over the windows (float64)."""
    seen: dict[str, list[torch.Tensor]] = {}
    modules = {name: m for name, (_, m) in target_linears(model).items()}
    handles = [m.register_forward_hook(lambda mod, args, out, n=n: seen.setdefault(n, []).append(args[0]))
               for n, m in modules.items()]
    with torch.no_grad():
        for i in range(0, len(windows), 4):
            model(windows.ids[i: i + 4], use_cache=False)
    for h in handles:
        h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double() for n, xs in seen.items()}


def test_one_gram_per_layer_input_matches_float64_and_survives_the_cache(tiny_llama, tmp_path):
    windows = WindowSet(torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1)), "8x32")
    stats = collect_activation_stats(tiny_llama, windows, with_gram=True, with_hessian=True, cache_dir=tmp_path)
    inputs = captured_inputs(tiny_llama, windows)
    for name, s in stats.items():
        X = inputs[name]
        assert s.gram.shape == (linear_weight(tiny_llama.get_submodule(name)).shape[1],) * 2
        assert float((s.gram.double() - X.T @ X).abs().max() / (X.T @ X).abs().max()) < 1e-5, name
    block = "model.layers.1."
    q, k, v, o = (stats[block + f"self_attn.{p}_proj"] for p in "qkvo")
    gate, up, down = (stats[block + f"mlp.{p}_proj"] for p in ("gate", "up", "down"))
    assert q.gram is k.gram is v.gram and gate.gram is up.gram
    assert len({id(s.gram) for s in (q, o, gate, down)}) == 4
    assert torch.equal(q.hinv_diag, k.hinv_diag) and q.nsamples == k.nsamples == 8 * 32
    assert torch.equal(q.norm, k.norm) and q.norm is not k.norm        # per-layer vectors stay separate
    cached = collect_activation_stats(tiny_llama, windows, with_gram=True, with_hessian=True, cache_dir=tmp_path)
    assert cached[block + "self_attn.q_proj"].gram is cached[block + "self_attn.v_proj"].gram
    for name, s in stats.items():
        assert torch.equal(cached[name].gram, s.gram) and torch.equal(cached[name].hinv_diag, s.hinv_diag)
    lean = collect_activation_stats(tiny_llama, windows, with_hessian=True)   # XᵀX dropped, hinv_diag kept
    assert all(s.gram is None and torch.equal(s.hinv_diag, stats[n].hinv_diag) for n, s in lean.items())
