"""Validated settings of a `prune` / `eval` job (pydantic), with one-line errors.

Imports no torch: the CLI validates every flag and path with it before the job loads anything."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autoprune.errors import BadInputError, DataError
from autoprune.models import DtypeName, check_model_spec
from autoprune.pruning.allocators import allocator_names
from autoprune.pruning.choices import RECONSTRUCTION_NAMES, method_names, reconstruction_name
from autoprune.pruning.pattern import SparsityPattern

NAMED_DATA = (None, "", "wikitext2", "self")


class PruneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str
    sparsity: float = Field(gt=0.0, lt=1.0)
    pattern: str = "unstructured"
    allocation: str = "uniform"
    model: Optional[str] = None
    dtype: DtypeName = "fp32"             # the weights' dtype; statistics and refits run in float32/64
    data: Optional[str] = None
    nsamples: int = Field(16, ge=1)
    seqlen: int = Field(512, ge=8)
    eval_windows: Optional[int] = Field(None, ge=1)
    mode: Literal["sequential", "one-shot"] = "sequential"
    reconstruct: str = "none"             # none | obs | exact (autoprune.pruning.reconstruct); True = obs
    seed: int = 0
    out: Optional[str] = None
    eval_dense: bool = True
    sandbox: Literal["docker", "process"] = "docker"
    allocation_hyper: dict = Field(default_factory=dict)
    cache_dir: Optional[str] = None
    progress: bool = True
    offload: bool = False                 # blocks stay on disk, one in memory at a time (autoprune.pruning.onload)

    @field_validator("method")
    @classmethod
    def known_method(cls, value: str) -> str:
        if value.endswith(".py"):
            if not Path(value).expanduser().is_file():
                raise ValueError(f"candidate file not found: {value}")
            return value
        if value not in method_names():
            raise ValueError(f"unknown method {value!r} (known: {', '.join(method_names())}, or FILE.py)")
        return value

    @field_validator("reconstruct", mode="before")
    @classmethod
    def known_reconstruction(cls, value) -> str:
        if isinstance(value, bool) or value in RECONSTRUCTION_NAMES:
            return reconstruction_name(value)
        raise ValueError(f"unknown reconstruction {value!r} (known: {', '.join(RECONSTRUCTION_NAMES)})")

    @field_validator("allocation")
    @classmethod
    def known_allocation(cls, value: str) -> str:
        if value not in allocator_names():
            raise ValueError(f"unknown allocation {value!r} (known: {', '.join(allocator_names())})")
        return value

    @field_validator("pattern")
    @classmethod
    def valid_pattern(cls, value: str) -> str:
        return str(SparsityPattern.parse(value))

    @property
    def sparsity_pattern(self) -> SparsityPattern:
        return SparsityPattern.parse(self.pattern)

    @property
    def is_candidate_file(self) -> bool:
        return self.method.endswith(".py")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    dtype: DtypeName = "fp32"
    data: Optional[str] = None
    seqlen: int = Field(512, ge=8)
    windows: Optional[int] = Field(None, ge=1)
    seed: int = 0
    progress: bool = True
    tasks: list[str] = Field(default_factory=lambda: ["wikitext2"])   # wikitext2 + zero-shot task names
    zeroshot_data: Optional[str] = None     # local zero-shot folder (None = lm-eval's hub datasets)
    zeroshot_limit: Optional[int] = Field(None, ge=1)


def make_config(cls, **values):
    """Build a config or raise BadInputError/DataError with one line naming the bad field."""
    try:
        config = cls(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error.get("loc", ())) or "config"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        raise BadInputError(f"{field}: {message}") from None
    check_model_spec(config.model)
    check_data_folder(config.data)
    if isinstance(config, PruneConfig):
        check_output_folder(config.out, flag="--out")
    return config


def check_output_folder(folder, *, flag: str, hint: str = "") -> None:
    """An output folder is new or empty: a file, or a folder that holds anything, is refused (before
    torch loads, so a typo costs no model load and overwrites nothing)."""
    if folder is None:
        return
    path = Path(folder).expanduser()
    try:
        if path.exists() and not path.is_dir():
            raise BadInputError(f"{flag} {path} exists and is not a folder")
        if path.is_dir() and any(path.iterdir()):
            raise BadInputError(f"{flag} {path} exists and is not empty" + (f" ({hint})" if hint else ""))
    except OSError as exc:
        raise BadInputError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def check_data_folder(data: Optional[str]) -> None:
    """Fail before loading a model when --data names a folder that is not there."""
    if data not in NAMED_DATA and not Path(data).expanduser().is_dir():
        raise DataError(f"data folder not found: {data}")
