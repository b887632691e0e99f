"""The sparsity pattern of a mask: unstructured or N:M. Plain Python (no torch): flags are checked
with it before anything heavy is imported, and the sandbox worker ships it with `masks.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from autoprune.errors import BadInputError


@dataclass(frozen=True)
class SparsityPattern:
    """Unstructured (n = m = 0) or N:M: in every M consecutive inputs of a row, N are kept."""

    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: Optional[str]) -> "SparsityPattern":
        if text in (None, "", "unstructured"):
            return cls()
        try:
            n, m = (int(v) for v in str(text).split(":"))
        except ValueError as exc:
            raise BadInputError(f"pattern {text!r} is not 'unstructured' or 'N:M' (e.g. 2:4)") from exc
        if not 0 < n < m:
            raise BadInputError(f"pattern {text!r}: need 0 < N < M")
        return cls(n, m)

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.m else float("nan")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"
