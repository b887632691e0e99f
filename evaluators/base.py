"""The evaluator contract shared by built-ins and plugins.

An evaluator takes a model (masks already applied), its tokenizer and an
`EvalRequest` (data + fidelity), and returns named metrics with the protocol
that produced them. Register one under the entry-point group
`autoprune.evaluators`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

from autoprune.data import TextCorpus


@dataclass
class EvalRequest:
    corpus: TextCorpus
    split: str = "validation"          # "validation" (search) or "test" (final reports only)
    seqlen: int = 512
    nwindows: Optional[int] = None     # fidelity: how many windows (None = all)
    batch_size: int = 1
    options: dict = field(default_factory=dict)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    protocol: dict

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "protocol": self.protocol}


@runtime_checkable
class Evaluator(Protocol):
    name: str

    def evaluate(self, model, tokenizer, request: EvalRequest) -> EvalResult: ...
