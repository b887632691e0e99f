"""`RunConfig`: everything one agent run needs, validated once (bad values -> BadInputError).

The CLI builds it from flags; a Python user builds it directly. It is written to
`config.json` in the run folder so `--resume` continues with exactly the same
settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from autoprune.agent.runtime.folder import CONFIG_FILE
from autoprune.agent.runtime.settings import SearchSettings
from autoprune.errors import BadInputError
from autoprune.models import DtypeName, check_model_spec
from autoprune.pruning.config import check_data_folder
from autoprune.pruning.pattern import SparsityPattern

CONFIG_MAX_BYTES = 1 << 20
# Where the prompts and the user's API key are sent, how and where candidates run: a resumed run
# takes these from its command line only (`resume_config`), never silently from the folder.
RESUME_CONFIRMED = ("llm_base_url", "llm_model", "sandbox", "executor", "ray_address", "gpus")


class RunConfig(SearchSettings):
    """Program search (`autoprune-agent run`); the LLM, seed and budget fields are SearchSettings'."""

    budget: int = Field(50, ge=1, description="candidate programs sent to the sandbox (seeds excluded)")
    model: Optional[str] = Field(None, description="hub id, local folder, .gguf, or None for the embedded model")
    dtype: DtypeName = Field("fp32", description="the weights' dtype; statistics and refits run in float32/64")
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    pattern: str = "unstructured"
    sandbox: Literal["docker", "process"] = "docker"
    gpus: Optional[str] = None
    data: Optional[str] = None
    out: Optional[Path] = None
    # Protocol knobs (reports state them).
    calibration_samples: int = Field(64, ge=1)
    seqlen: int = Field(512, ge=16)
    fitness_levels: list[int] = Field(default_factory=lambda: [2, 8, 32])
    test_windows: Optional[int] = Field(None, ge=1, description="None = the whole test split")
    # Search knobs.
    elite_k: int = Field(5, ge=1)
    max_repairs: int = Field(2, ge=0)
    max_llm_calls: Optional[int] = Field(None, ge=1, description="default: 6 per budgeted candidate + 10")
    max_tokens: Optional[int] = Field(None, ge=1, description="default: 20000 per budgeted candidate")
    code_mode: Literal["auto", "program", "expression"] = "auto"
    mutate_repeats: bool = Field(True, description="expression style: a repeated metric is mutated by trusted "
                                                  "code (agent/mutation.py) instead of asking the LLM again")
    proposer: Literal["llm", "mutation", "random"] = Field(
        "llm", description="who proposes candidates: the LLM with trusted mutation of repeats; trusted mutation "
                           "of population parents only (no LLM call, no LLM server); random expressions from the "
                           "contract's grammar (agent/population.py, agent/random_search.py)")
    prompts: str = Field("gcot", description="prompt set (entry-point group autoprune.prompts)")
    # The finale refits the winner's surviving weights for its masks (sequential, autoprune.pruning.reconstruct):
    # none | obs | exact. Old config.json files stored a bool (false = none, true = obs).
    reconstruct: Literal["none", "obs", "exact"] = "exact"
    # Search-time fitness measures the masked model after this one-shot refit of the kept weights with
    # the dense calibration XᵀX (agent/fitness.py; costs: benchmarks/results/fitness_levels.md).
    search_refit: Literal["none", "obs", "exact"] = "obs"
    # `prune --method` baselines the finale reports on the same test windows (cached across runs).
    final_baselines: list[str] = Field(default_factory=lambda: ["wanda", "sparsegpt", "alps"])
    # Allocations the finale chooses from on validation (hyper-parameters tuned there too).
    final_allocations: list[Literal["uniform", "owl", "sdsa", "atp"]] = Field(
        default_factory=lambda: ["uniform", "owl", "sdsa", "atp"], min_length=1)
    # Zero-shot accuracy in the finale (lm-eval): winner (chosen allocation), Wanda uniform, dense.
    final_tasks: list[str] = Field(default_factory=list, description="e.g. arc_easy,piqa (empty = none)")
    zeroshot_data: Optional[str] = Field(None, description="local task files (default: the hub)")
    zeroshot_limit: Optional[int] = Field(None, ge=1, description="examples per task (default: all)")
    sdsa_lambdas: list[float] = Field(default_factory=lambda: [0.05, 0.1])   # the finale's SDSA grid (|W| skew)
    candidate_timeout_s: float = Field(600.0, gt=0)
    export_model: bool = True
    # Parallel evaluation (agent.executors): "serial" verifies and scores in this process, one at a
    # time; "local" / "ray" write `workers` candidates per hypothesis and evaluate them concurrently.
    executor: Literal["serial", "local", "ray"] = "serial"
    workers: int = Field(1, ge=1, le=256)
    ray_address: Optional[str] = None
    # agent/pipeline.py: batches evaluating in the background while the LLM writes the next candidate
    # (its prompt then lacks their results; reflect judges them when collected). 0 = one after another.
    pipeline_depth: int = Field(0, ge=0, le=8, description="candidate batches evaluated while the LLM writes on")

    @field_validator("prompts")
    @classmethod
    def _prompt_set_installed(cls, value: str) -> str:
        from autoprune.prompts.registry import get_prompt_set

        get_prompt_set(value)   # an unknown or broken set fails before any work starts
        return value

    @field_validator("reconstruct", mode="before")
    @classmethod
    def _reconstruct_name(cls, value):
        if isinstance(value, bool):          # config.json of an older version: the OBS flag
            return "obs" if value else "none"
        if value not in ("none", "obs", "exact"):
            raise ValueError(f"unknown reconstruction {value!r} (known: none, obs, exact)")
        return value

    @field_validator("final_baselines")
    @classmethod
    def _known_baselines(cls, value: list[str]) -> list[str]:
        from autoprune.pruning.choices import method_names

        unknown = [m for m in value if m not in method_names()]
        if unknown:
            raise ValueError(f"unknown baseline method(s) {', '.join(unknown)} (known: {', '.join(method_names())})")
        return value

    @field_validator("final_tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        from autoprune.evaluators.zeroshot_data import LOCAL_TASKS

        unknown = [t for t in value if t not in LOCAL_TASKS]
        if unknown:
            raise ValueError(f"unknown zero-shot task(s) {', '.join(unknown)} (known: {', '.join(LOCAL_TASKS)})")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_parses(cls, value: str) -> str:
        return str(SparsityPattern.parse(value))

    @field_validator("fitness_levels")
    @classmethod
    def _levels_increase(cls, value: list[int]) -> list[int]:
        if not value or any(n < 1 for n in value) or sorted(set(value)) != list(value):
            raise ValueError("fitness levels must be strictly increasing window counts >= 1, e.g. 2,8,32")
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus_form(cls, value: Optional[str]) -> Optional[str]:
        if value in (None, "", "none"):
            return None
        if value != "all" and not all(p.strip().isdigit() for p in value.split(",")):
            raise ValueError("--gpus takes 'all' or a comma-separated list of indices, e.g. 0,1")
        return value

    @model_validator(mode="after")
    def _ray_needs_address(self) -> "RunConfig":
        if self.executor == "ray" and not self.ray_address:
            raise ValueError("--executor ray needs --ray-address (e.g. 127.0.0.1:6379 or 'auto')")
        return self

    @model_validator(mode="after")
    def _trusted_proposers_write_expressions(self) -> "RunConfig":
        if self.proposer != "llm" and self.code_mode == "program":
            raise ValueError(f"--proposer {self.proposer} writes one-line expressions: use --code-style "
                             "expression or auto")
        return self

    @property
    def parallel(self) -> bool:
        """Candidates are written in batches and evaluated through an executor."""
        return self.executor != "serial"

    @property
    def batch_size(self) -> int:
        return self.workers if self.parallel else 1

    @property
    def sparsity_pattern(self) -> SparsityPattern:
        return SparsityPattern.parse(self.pattern)

    @property
    def llm_call_cap(self) -> int:
        return self.max_llm_calls or 6 * self.budget + 10

    @property
    def token_cap(self) -> int:
        return self.max_tokens or 20000 * self.budget


def make_config(**values) -> RunConfig:
    """Build a RunConfig, turning pydantic's errors into one clear BadInputError line."""
    try:
        config = RunConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc)) from None
    check_model_spec(config.model)       # on disk only: answered before a run folder, torch or a download
    check_data_folder(config.data)
    return config


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "invalid run settings: " + "; ".join(parts)


def load_config(run_dir: Path) -> RunConfig:
    """The config a run folder was started with (for --resume), validated strictly: exact JSON types,
    the same ranges and allowed values as a fresh run, unknown keys refused."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise BadInputError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    if path.stat().st_size > CONFIG_MAX_BYTES:
        raise BadInputError(f"{path} is corrupt: larger than {CONFIG_MAX_BYTES} bytes")
    try:
        return RunConfig.model_validate_json(path.read_bytes(), strict=True)
    except ValidationError as exc:
        problem = describe_validation_error(exc).removeprefix("invalid run settings: ")
        raise BadInputError(f"{path} is corrupt: {problem}") from None


def resume_config(run_dir: Path, given: Optional[dict[str, Any]] = None) -> RunConfig:
    """The stored config for `--resume`, where the command line must confirm what decides where prompts
    (and the API key) go and how candidates run: a folder is input, and may have been handed over or edited.

    A guarded setting that differs from its default is taken only when `given` (the flags passed with
    --resume) repeats it; a value in `given` replaces the stored one (the user said so), and the folder's
    config.json is updated to match."""
    stored = load_config(run_dir)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = set(given) - set(RESUME_CONFIRMED)
    if unknown:
        raise ValueError(f"not a setting --resume takes: {', '.join(sorted(unknown))}")
    for name in RESUME_CONFIRMED:
        value, default = getattr(stored, name), RunConfig.model_fields[name].default
        if name not in given and value != default:
            flag = "--" + name.replace("_", "-")
            shown = str(value)[:200]
            raise BadInputError(f"{Path(run_dir) / CONFIG_FILE} sets {name} = {shown!r}: a resumed run takes it "
                                f"only from the command line; pass {flag} {shown} with --resume to confirm it "
                                "(or another value to replace it)")
    if not given:
        return stored
    config = make_config(**{**stored.model_dump(), **given})
    if config != stored:
        config.save(run_dir)
    return config
