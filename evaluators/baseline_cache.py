"""A cross-run cache of test perplexities: the dense model's and the baselines' (issue 16).

Evaluating the dense model or pruning with SparseGPT / ALPS / Wanda and measuring the result
gives the same number every time the inputs are the same, so it is computed once per

    (model weights, calibration windows, test windows, method, sparsity, pattern, allocation
     and its hyper-parameters, reconstruction, mode, dtype, device kind)

and never per commit. The model and the windows enter by digest: the model's tensors (names,
shapes, dtypes, exact sums and a strided sample of every tensor: cheap, and any fine-tune or
pruning changes them), the token ids of the windows (which fixes the data file, the tokenizer,
the number of windows, seqlen and the calibration seed at once). `PROTOCOL_VERSION` is bumped
when the perplexity protocol itself changes.

Entries live as one JSON file each under `cache_root()/baselines` (`AUTOPRUNE_CACHE` moves the
cache root, `AUTOPRUNE_BASELINE_CACHE_DIR` this folder alone; `AUTOPRUNE_BASELINE_CACHE=off` turns
the cache off). A cache file is input: it is read
through a size cap and a strict pydantic model, and must repeat the key it is filed under;
anything else is reported in one warning and the value computed again. Writes are atomic
(a temporary file in the same folder, then `os.replace`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoprune.models import cache_root

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1           # the Wanda/SparseGPT perplexity protocol (evaluators/perplexity.py)
ENTRY_MAX_BYTES = 64 * 1024
SAMPLE_PER_TENSOR = 4096
DISABLE_ENV = "AUTOPRUNE_BASELINE_CACHE"
DIR_ENV = "AUTOPRUNE_BASELINE_CACHE_DIR"


class BaselineKey(BaseModel):
    """What a cached test perplexity depends on. `method="dense"` leaves the pruning fields empty."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: int = PROTOCOL_VERSION
    model: str                            # model_digest
    test: str                             # windows_digest of the test windows
    test_windows: int = Field(ge=1)
    seqlen: int = Field(ge=1)
    method: str
    calibration: str = ""                 # windows_digest of the calibration windows ("" for dense)
    sparsity: float = 0.0
    pattern: str = ""
    allocation: str = ""
    allocation_hyper: dict = Field(default_factory=dict)
    reconstruct: str = ""
    mode: str = ""
    dtype: str
    device: str                           # "cpu" | "cuda": kernels differ in the last digits

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


class BaselineEntry(BaseModel):
    """One cache file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: BaselineKey
    perplexity: float = Field(gt=0.0, allow_inf_nan=False)
    seconds: float = Field(ge=0.0, allow_inf_nan=False)    # what computing it cost
    created: float = Field(allow_inf_nan=False)
    notes: dict[str, str] = Field(default_factory=dict)     # e.g. the commit that computed it: not part of the key


def model_digest(model) -> str:
    """Digest of the model's current tensors: names, shapes, dtypes, exact float64 sums of values and
    magnitudes, and up to SAMPLE_PER_TENSOR evenly strided values of each (one pass over the weights)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            if flat.numel() == 0:
                continue
            values = flat.to(torch.float64)
            sample = values[:: max(1, flat.numel() // SAMPLE_PER_TENSOR)].cpu()
            sums = torch.stack([values.sum(), values.abs().sum()]).cpu()
            h.update(sums.numpy().tobytes())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def windows_digest(windows) -> str:
    """Digest of a WindowSet's token ids (shape and values)."""
    import torch

    ids = windows.ids.to(torch.int64).contiguous().cpu()
    h = hashlib.sha256(f"{tuple(ids.shape)}|".encode())
    h.update(ids.numpy().tobytes())
    return h.hexdigest()


def model_fields(model) -> dict:
    """The key fields that describe the model: digest, dtype, device kind."""
    parameter = next(model.parameters())
    return {"model": model_digest(model), "dtype": str(parameter.dtype).removeprefix("torch."),
            "device": parameter.device.type}


def dense_key(model_info: dict, test) -> BaselineKey:
    return BaselineKey(**model_info, test=windows_digest(test), test_windows=len(test), seqlen=test.seqlen,
                       method="dense")


def baseline_key(model_info: dict, test, calibration, *, method: str, sparsity: float, pattern: str,
                 allocation: str = "uniform", allocation_hyper: Optional[dict] = None, reconstruct: str = "none",
                 mode: str = "sequential") -> BaselineKey:
    return BaselineKey(**model_info, test=windows_digest(test), test_windows=len(test), seqlen=test.seqlen,
                       method=method, calibration=windows_digest(calibration), sparsity=float(sparsity),
                       pattern=str(pattern), allocation=allocation,
                       allocation_hyper=json.loads(json.dumps(allocation_hyper or {}, sort_keys=True)),
                       reconstruct=reconstruct, mode=mode)


def default_root() -> Path:
    folder = os.environ.get(DIR_ENV, "").strip()
    return Path(folder).expanduser() if folder else cache_root() / "baselines"


def cache_enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("0", "off", "no", "false")


class BaselineCache:
    """Test perplexities by key, shared by every run and `prune` job on this machine.
    `hits` / `computed` count what this instance served and evaluated."""

    def __init__(self, root: Optional[Path] = None, *, enabled: Optional[bool] = None):
        self.root = Path(root) if root is not None else default_root()
        self.enabled = cache_enabled() if enabled is None else enabled
        self.hits = 0
        self.computed = 0

    def path(self, key: BaselineKey) -> Path:
        return self.root / f"{key.method}-{key.digest()[:32]}.json"

    def get(self, key: BaselineKey) -> Optional[BaselineEntry]:
        """The stored entry, or None (missing, or not a valid entry for this key: then a warning)."""
        if not self.enabled:
            return None
        path = self.path(key)
        try:
            if not path.is_file():
                return None
            if path.stat().st_size > ENTRY_MAX_BYTES:
                raise ValueError(f"larger than {ENTRY_MAX_BYTES} bytes")
            entry = BaselineEntry.model_validate_json(path.read_bytes())
            if entry.key != key:
                raise ValueError("it holds another key")
            return entry
        except (OSError, ValueError, ValidationError) as exc:     # ValidationError is a ValueError: one line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("baseline cache: %s is not a valid entry (%s); computing it again", path, reason)
            return None

    def put(self, key: BaselineKey, perplexity: float, seconds: float, notes: Optional[dict] = None) -> None:
        """Store a finite perplexity atomically (an infinite one is not worth keeping); never raises on I/O."""
        if not self.enabled or not math.isfinite(perplexity) or perplexity <= 0:
            return
        entry = BaselineEntry(key=key, perplexity=float(perplexity), seconds=max(0.0, float(seconds)),
                              created=time.time(), notes={k: str(v) for k, v in (notes or {}).items()})
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.root)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(entry.model_dump_json(indent=1))
            os.replace(tmp, self.path(key))
        except OSError as exc:
            log.warning("baseline cache: could not write %s (%s)", self.path(key), exc)

    def perplexity(self, key: BaselineKey, compute: Callable[[], float], *,
                   notes: Optional[dict] = None) -> tuple[float, bool]:
        """(perplexity, served from the cache): the stored value, else `compute()`, stored."""
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry.perplexity, True
        started = time.perf_counter()
        value = float(compute())
        self.computed += 1
        self.put(key, value, time.perf_counter() - started, notes)
        return value, False
