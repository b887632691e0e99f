"""Counting evaluations for real: a forward pre-hook on the model counts the rows of a window set that go
through it (perplexity runs one window per forward), never replacing what computes them."""

from __future__ import annotations

from autoprune.data import WindowSet


class ForwardCounter:
    """`count`: forward passes of `model` over rows of `windows` since this counter was made."""

    def __init__(self, model, windows: WindowSet):
        self.rows = {tuple(row.tolist()) for row in windows.ids}
        self.count = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and ids.dim() == 2:
            self.count += sum(tuple(row.tolist()) in self.rows for row in ids)

    def remove(self) -> None:
        self.handle.remove()
