"""Perplexity with the Wanda/SparseGPT protocol: text joined, cut into non-overlapping
windows of `seqlen`, tail dropped, exp of the mean token NLL."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from autoprune.data import WindowSet, fitness_windows, test_windows
from autoprune.evaluators.base import EvalRequest, EvalResult
from autoprune.progress import progress_bar


@torch.no_grad()
def window_nlls(model, windows: WindowSet, *, batch_size: int = 1, show_progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window, shape (n,). Paired comparisons use these directly."""
    device = next(model.parameters()).device
    out = []
    batches = range(0, len(windows), batch_size)
    for start in progress_bar(batches, "perplexity", enabled=show_progress):
        ids = windows.ids[start: start + batch_size].to(device)
        logits = model(ids).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        out.append(loss.reshape(ids.shape[0], -1).mean(1).cpu())
    return torch.cat(out)


@torch.no_grad()
def offloaded_window_nlls(model, windows: WindowSet, onloader, *, batch_size: int = 1,
                          show_progress: bool = False) -> torch.Tensor:
    """`window_nlls` of a model whose blocks are offloaded (autoprune.pruning.onload): every window's
    hidden states go through block 0, then block 1, ... with one block materialised at a time, as
    SparseGPT's reference evaluation does; then the model's own norm and head give the logits."""
    from autoprune.pruning.calibration import capture_block_inputs, run_block
    from autoprune.pruning.onload import final_hidden_logits

    inputs = capture_block_inputs(model, windows, batch_size=batch_size)
    for index in progress_bar(range(len(onloader)), "perplexity (by block)", enabled=show_progress):
        inputs = run_block(onloader.onload(index), inputs)
        onloader.offload(index)
    out = []
    for start, x in zip(range(0, len(windows), batch_size), inputs):
        ids = windows.ids[start: start + batch_size]
        logits = final_hidden_logits(model, ids, x.hidden)[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        out.append(loss.reshape(ids.shape[0], -1).mean(1).cpu())
    return torch.cat(out)


def perplexity(model, windows: WindowSet, *, batch_size: int = 1, show_progress: bool = False,
               onloader=None) -> float:
    """exp of the mean window NLL; with an `onloader`, block by block (memory bounded by one block)."""
    nlls = window_nlls if onloader is None else partial(offloaded_window_nlls, onloader=onloader)
    nll = nlls(model, windows, batch_size=batch_size, show_progress=show_progress).mean().item()
    return math.exp(nll) if nll < 700 else float("inf")


class PerplexityEvaluator:
    name = "perplexity"

    def evaluate(self, model, tokenizer, request: EvalRequest) -> EvalResult:
        pick = test_windows if request.split == "test" else fitness_windows
        windows = pick(tokenizer, request.corpus, nwindows=request.nwindows, seqlen=request.seqlen)
        ppl = perplexity(model, windows, batch_size=request.batch_size,
                         show_progress=request.options.get("progress", False))
        return EvalResult(metrics={"perplexity": ppl},
                          protocol={"split": request.split, "windows": windows.description,
                                    "seqlen": windows.seqlen, "nwindows": len(windows)})
