"""Latency / throughput of a (pruned) model: tokens per second of full forward passes.

Unstructured masks do not make a dense kernel faster; this evaluator measures what
the user would get. On a CUDA device, 2:4-sparse models can run their linears through
PyTorch's semi-structured sparse tensors (`accelerate_2to4=True`), compared with dense.
"""

from __future__ import annotations

import statistics
import time

import torch

from autoprune.adapters import adapter_for
from autoprune.evaluators.base import EvalRequest, EvalResult


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def tokens_per_second(model, *, seqlen: int = 256, batch_size: int = 1, repeats: int = 5,
                      warmup: int = 1, vocab_size: int | None = None) -> dict:
    """Median tokens/s over `repeats` timed forward passes of random token windows."""
    device = next(model.parameters()).device
    vocab = vocab_size or model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, seqlen), generator=torch.Generator().manual_seed(0)).to(device)
    for _ in range(warmup):
        model(ids)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        model(ids)
        synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"tokens_per_s": batch_size * seqlen / median, "median_s": median,
            "seqlen": seqlen, "batch_size": batch_size, "repeats": repeats, "device": str(device)}


def convert_linears_to_2to4(model) -> int:
    """Swap every target linear's weight for a semi-structured sparse tensor (CUDA, fp16/bf16).

    Returns how many linears were converted; the weights must already follow a 2:4 pattern.
    """
    from torch.sparse import to_sparse_semi_structured

    adapter = adapter_for(model)
    converted = 0
    for block in adapter.blocks(model):
        for module in adapter.linears(block).values():
            if isinstance(module, torch.nn.Linear):
                module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.detach()),
                                                   requires_grad=False)
                converted += 1
    return converted


class LatencyEvaluator:
    """Evaluator plugin: options {"seqlen", "repeats", "accelerate_2to4"}."""

    name = "latency"

    def evaluate(self, model, tokenizer, request: EvalRequest) -> EvalResult:
        opts = request.options
        device = next(model.parameters()).device
        if opts.get("accelerate_2to4") and device.type == "cuda":
            convert_linears_to_2to4(model)
        result = tokens_per_second(model, seqlen=int(opts.get("seqlen", request.seqlen)),
                                   batch_size=request.batch_size, repeats=int(opts.get("repeats", 5)))
        protocol = {k: result[k] for k in ("seqlen", "batch_size", "repeats", "device")}
        protocol["threads"] = torch.get_num_threads()
        return EvalResult(metrics={"tokens_per_s": result["tokens_per_s"], "latency_s": result["median_s"]},
                          protocol=protocol)
