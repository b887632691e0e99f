"""Latency / throughput of a (pruned) model: tokens per second of full forward passes
(prefill) and of greedy decoding with the KV cache.

Unstructured masks do not make a dense kernel faster; this evaluator measures what
the user would get. On a CUDA device, 2:4-sparse models can run their linears through
PyTorch's semi-structured sparse tensors (`accelerate_2to4=True`), compared with dense.
"""

from __future__ import annotations

import statistics
import time

import torch

from autoprune.adapters import adapter_for
from autoprune.errors import BadInputError
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


@torch.no_grad()
def decode_tokens_per_second(model, *, prompt_len: int = 128, new_tokens: int = 128, batch_size: int = 1,
                             repeats: int = 3, warmup: int = 1, vocab_size: int | None = None) -> dict:
    """Median generated tokens/s of greedy decoding with the KV cache (what a chat user waits on):
    `new_tokens` tokens after a random `prompt_len`-token prompt, prefill included."""
    device = next(model.parameters()).device
    vocab = vocab_size or model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    options = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=0, eos_token_id=None)
    for _ in range(warmup):
        model.generate(ids, **options)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        model.generate(ids, **options)
        synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"tokens_per_s": batch_size * new_tokens / median, "median_s": median, "prompt_len": prompt_len,
            "new_tokens": new_tokens, "batch_size": batch_size, "repeats": repeats, "device": str(device)}


def follows_2to4(weight: torch.Tensor) -> bool:
    """True when every 4 consecutive inputs of every row hold at least 2 zeros."""
    if weight.shape[-1] % 4:
        return False
    return bool(((weight.reshape(-1, 4) == 0).sum(dim=1) >= 2).all())


def convert_linears_to_2to4(model) -> dict:
    """Swap every target linear's weight for a semi-structured sparse tensor (CUDA, fp16/bf16),
    so its matmuls run on the 2:4 sparse tensor cores (cuSPARSELt or CUTLASS).

    The weights must already follow a 2:4 pattern (a dense weight is refused: converting it would
    silently prune it). A linear whose shape the kernels reject stays dense and is listed under
    "skipped" with the reason."""
    from torch.sparse import to_sparse_semi_structured

    adapter = adapter_for(model)
    converted, skipped = 0, {}
    for index, block in enumerate(adapter.blocks(model)):
        for name, module in adapter.linears(block).items():
            if not isinstance(module, torch.nn.Linear):
                continue
            weight = module.weight.detach()
            if not follows_2to4(weight):
                raise BadInputError(f"block {index} {name} is not 2:4 sparse: prune with --pattern 2:4 first")
            try:
                sparse = to_sparse_semi_structured(weight)
            except (RuntimeError, ValueError) as exc:
                skipped[f"{index}.{name}"] = str(exc).splitlines()[0]
                continue
            module.weight = torch.nn.Parameter(sparse, requires_grad=False)
            converted += 1
    return {"converted": converted, "skipped": skipped}


class LatencyEvaluator:
    """Evaluator plugin: options {"seqlen", "repeats", "accelerate_2to4"}."""

    name = "latency"

    def evaluate(self, model, tokenizer, request: EvalRequest) -> EvalResult:
        opts = request.options
        device = next(model.parameters()).device
        conversion = None
        if opts.get("accelerate_2to4") and device.type == "cuda":
            conversion = convert_linears_to_2to4(model)
        result = tokens_per_second(model, seqlen=int(opts.get("seqlen", request.seqlen)),
                                   batch_size=request.batch_size, repeats=int(opts.get("repeats", 5)))
        protocol = {k: result[k] for k in ("seqlen", "batch_size", "repeats", "device")}
        protocol["threads"] = torch.get_num_threads()
        if conversion is not None:
            protocol["2to4"] = conversion
        return EvalResult(metrics={"tokens_per_s": result["tokens_per_s"], "latency_s": result["median_s"]},
                          protocol=protocol)
