"""Self-Pruner mode: the LLM runs an evolutionary search over layer-wise structured pruning rates.

Following Self-Pruner (arXiv 2502.14413), the LLM itself selects parents, crosses them over
and mutates them, given the population with its fitnesses. Trusted code validates every
proposed vector (parse, bounds, mean-rate constraint, projection), computes fitness as the
validation perplexity of the structurally pruned model, keeps the best (elitism), and, when
the LLM fails twice in a row, proposes a trusted crossover + mutation instead ("fallback").
Entry point: `run_rates_search(RatesConfig(...))`; CLI: `autoprune-agent search-rates`.
"""

from autoprune.agent.rates.config import RatesConfig

__all__ = ["RatesConfig", "run_rates_search"]


def run_rates_search(config: RatesConfig, **kwargs) -> dict:
    from autoprune.agent.rates.run import run_rates_search as run

    return run(config, **kwargs)
