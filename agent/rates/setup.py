"""Everything a rate search needs before its first node: model, data, statistics, seeds."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.agent.rates.config import RatesConfig
from autoprune.data import TextCorpus, WindowSet, calibration_windows, fitness_windows, load_corpus
from autoprune.models import LoadedModel, load_model
from autoprune.pruning.allocators import allocate_sparsity
from autoprune.pruning.calibration import collect_activation_stats
from autoprune.pruning.loop import block_param_counts, dense_block_profiles
from autoprune.pruning.metrics import get_metric
from autoprune.pruning.param_budget import mean_rate_for_params
from autoprune.pruning.rates import RateConstraint, project, uniform_rates
from autoprune.pruning.stats import ActivationStats
from autoprune.pruning.structured import attention_geometry, refit_targets
from autoprune.pruning.structured_importance import BlockImportance, structured_importance


@dataclass
class SearchInputs:
    model: object
    tokenizer: object
    model_name: str
    corpus: TextCorpus
    calibration: WindowSet
    windows: WindowSet
    stats: dict[str, ActivationStats]
    constraint: RateConstraint
    uniform_params_fraction: float      # what the uniform vector at the mean rate keeps
    importance: list[BlockImportance]   # per-block unit scores, computed once on the dense model


def allocator_seeds(model, stats: dict[str, ActivationStats], constraint: RateConstraint) -> list[dict]:
    """Generation 0: uniform plus OWL and SDSA allocations (Wanda-score profiles) at the same mean."""
    seeds = [{"origin": "uniform", "rates": uniform_rates(constraint)}]
    if not 0.0 < constraint.target < 1.0:
        return seeds
    profiles = dense_block_profiles(model, stats, get_metric("wanda"))
    params = block_param_counts(model)
    for name in ("owl", "sdsa"):
        ratios = allocate_sparsity(name, constraint.target, profiles, params)
        seeds.append({"origin": name, "rates": project(ratios, constraint)})
    return seeds


def prepare_search(config: RatesConfig, loaded: LoadedModel | None = None) -> SearchInputs:
    """Load (unless given) the model, the data, the dense statistics; fix the rate constraint."""
    loaded = loaded or load_model(config.model, dtype=config.dtype, device=config.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    attention_geometry(model)                       # fail early on unsupported families
    corpus = load_corpus(config.data, model=model, tokenizer=tokenizer, seed=config.seed)
    calibration = calibration_windows(tokenizer, corpus, nsamples=config.nsamples, seqlen=config.seqlen,
                                      seed=config.seed)
    windows = fitness_windows(tokenizer, corpus, nwindows=config.fitness_windows, seqlen=config.seqlen)
    stats = collect_activation_stats(model, calibration, with_gram=refit_targets(model) if config.reconstruct else False,
                                     cache_dir=config.run_dir / "stats_cache")
    rate, kept = mean_rate_for_params(model, config.target_params, high=config.high)
    constraint = RateConstraint(target=rate, low=config.low, high=config.high,
                                layers=model.config.num_hidden_layers)
    head_dim, _, group_size = attention_geometry(model)
    importance = structured_importance(config.importance, model, stats, calibration, head_dim, group_size)
    return SearchInputs(model, tokenizer, loaded.name, corpus, calibration, windows, stats, constraint, kept,
                        importance)
