"""Everything a run computes once before the graph starts (and again, from caches, on resume).

Model, data, one-shot dense calibration statistics, the read-only scoring
bundle in the run folder, the fitness windows, the model profile text that
`analyse` shows. Nothing here talks to the LLM.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from autoprune.agent.config import RunConfig
from autoprune.agent.fitness import FitnessService
from autoprune.data import TextNeeds, calibration_windows, fitness_windows, load_corpus, test_windows
from autoprune.models import load_model

log = logging.getLogger(__name__)
BUNDLE_DIR = "bundle"
CALIBRATION_DIR = "calibration"
PROFILE_FILE = "model_profile.json"
PROFILE_MAX_BYTES = 1 << 20


@dataclass
class Prepared:
    loaded: Any
    corpus: Any
    calibration: Any
    stats: dict
    bundle: Any
    fitness: FitnessService
    profile: list[dict]

    @property
    def has_hessian(self) -> bool:
        """X.hinv_diag is there for every layer (the contract's `needs="hessian"` fields)."""
        return all(s.hinv_diag is not None for s in self.stats.values())

    def test_windows(self, config: RunConfig):
        return test_windows(self.loaded.tokenizer, self.corpus, nwindows=config.test_windows, seqlen=config.seqlen)


def run_device(config: RunConfig) -> str:
    return "cuda" if config.gpus and torch.cuda.is_available() else "cpu"


def text_needs(config: RunConfig) -> TextNeeds:
    """What the run reads of its text: sizes a `--data self` corpus (its workers ask for the same)."""
    return TextNeeds.windows(config.seqlen, calibration=config.calibration_samples,
                             fitness=max(config.fitness_levels), test=config.test_windows)


def search_stats(model, calibration, refit: str, run_dir: Path) -> dict:
    """The run's dense calibration statistics, cached in run_dir/calibration (where a parallel worker
    finds the host's file: `executors.EvaluationWorker.from_spec`). The contract's XᵀX-derived fields
    (X.hinv_diag) for every layer; XᵀX itself, one tensor per layer input, only when search-time
    fitness refits (`refit` != "none"), and never in the bundle."""
    from autoprune.pruning.calibration import collect_activation_stats

    return collect_activation_stats(model, calibration, with_hessian=True, with_gram=refit != "none",
                                    cache_dir=Path(run_dir) / CALIBRATION_DIR)


def prepare(config: RunConfig, run_dir: Path) -> Prepared:
    from autoprune.sandbox.bundle import ScoringBundle, write_scoring_bundle

    loaded = load_model(config.model, dtype=config.dtype, device=run_device(config))
    from autoprune.pruning.loop import check_pattern_fits_model

    check_pattern_fits_model(loaded.model, config.sparsity_pattern)
    corpus = load_corpus(config.data, model=loaded.model, tokenizer=loaded.tokenizer, seed=config.seed,
                         needs=text_needs(config))
    calibration = calibration_windows(loaded.tokenizer, corpus, nsamples=config.calibration_samples,
                                      seqlen=config.seqlen, seed=config.seed)
    stats = search_stats(loaded.model, calibration, config.search_refit, run_dir)
    bundle_dir = run_dir / BUNDLE_DIR
    if (bundle_dir / "manifest.json").is_file():
        bundle = ScoringBundle.open(bundle_dir)
    else:
        bundle = write_scoring_bundle(loaded.model, stats, bundle_dir, with_gram=config.search_refit != "none")
    windows = fitness_windows(loaded.tokenizer, corpus, nwindows=max(config.fitness_levels), seqlen=config.seqlen)
    fitness = FitnessService(loaded.model, windows, config.fitness_levels, refit=config.search_refit, stats=stats)
    return Prepared(loaded, corpus, calibration, stats, bundle, fitness, model_profile(loaded.model, stats, run_dir))


class BlockProfile(BaseModel):
    """One block's entry in model_profile.json (a cache in the run folder: read back as input)."""

    model_config = ConfigDict(extra="allow", strict=True)

    outlier_ratio: float
    skewness: float
    weight_skewness: float


PROFILE_LIST = TypeAdapter(list[BlockProfile])


def cached_profile(path: Path) -> Optional[list[dict]]:
    """The cached profile, or None when it is missing, unreadable or not what `model_profile` writes."""
    if not path.is_file() or path.stat().st_size > PROFILE_MAX_BYTES:
        return None
    try:
        return [p.model_dump() for p in PROFILE_LIST.validate_json(path.read_bytes())]
    except ValidationError:
        log.warning("%s is not a valid profile: computing it again", path)
        return None


def model_profile(model, stats: dict, run_dir: Path) -> list[dict]:
    """Per-block outlier ratio and skewness of |W| and of Wanda's activation-weighted scores (cached)."""
    path = run_dir / PROFILE_FILE
    cached = cached_profile(path)
    if cached is not None:
        return cached
    from autoprune.pruning.loop import dense_block_profiles
    from autoprune.pruning.metrics import get_metric

    profiles = dense_block_profiles(model, stats, get_metric("wanda"))
    path.write_text(json.dumps(profiles, indent=1))
    return profiles


def profile_text(profiles: list[dict], rows: int = 3) -> str:
    """The profile in a few lines for prompts: the blocks with the heaviest and lightest tails."""
    if not profiles:
        return "(no profile)"
    order = sorted(range(len(profiles)), key=lambda i: profiles[i]["skewness"], reverse=True)
    shown = order if len(order) <= 2 * rows else order[:rows] + order[-rows:]
    lines = [f"{len(profiles)} blocks. Per block: outlier ratio and skewness of |W|*||X|| (Wanda scores), "
             "and skewness of |W|."]
    for i in shown:
        p = profiles[i]
        lines.append(f"block {i}: outliers {p['outlier_ratio']:.4f}, score skew {p['skewness']:.1f}, "
                     f"|W| skew {p['weight_skewness']:.1f}")
    return "\n".join(lines)
