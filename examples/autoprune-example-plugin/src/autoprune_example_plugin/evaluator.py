"""Next-token accuracy: how often the model's top-k guesses contain the next token.

Implements the evaluator contract of `autoprune.evaluators.base`: a `name` and
`evaluate(model, tokenizer, request) -> EvalResult`. It reads the same windows as
the built-in perplexity evaluator (validation windows for search, test windows
for final reports), so its numbers line up with perplexity window by window.
"""

from __future__ import annotations

import torch

from autoprune.data import fitness_windows, test_windows
from autoprune.evaluators.base import EvalRequest, EvalResult


class NextTokenAccuracyEvaluator:
    name = "next-token-accuracy"

    @torch.no_grad()
    def evaluate(self, model, tokenizer, request: EvalRequest) -> EvalResult:
        top_k = int(request.options.get("top_k", 1))
        pick = test_windows if request.split == "test" else fitness_windows
        windows = pick(tokenizer, request.corpus, nwindows=request.nwindows, seqlen=request.seqlen)
        device = next(model.parameters()).device
        hits = total = 0
        for start in range(0, len(windows), request.batch_size):
            ids = windows.ids[start: start + request.batch_size].to(device)
            guesses = model(ids).logits[:, :-1].topk(top_k, dim=-1).indices      # (b, seqlen-1, k)
            hits += (guesses == ids[:, 1:, None]).any(-1).sum().item()
            total += ids[:, 1:].numel()
        return EvalResult(metrics={f"top{top_k}_accuracy": hits / total},
                          protocol={"split": request.split, "windows": windows.description,
                                    "seqlen": windows.seqlen, "nwindows": len(windows), "top_k": top_k})
