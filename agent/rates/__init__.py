"""Self-Pruner mode: the LLM runs an evolutionary search over layer-wise structured pruning rates.

Following Self-Pruner (arXiv 2502.14413), the LLM itself selects parents, crosses them over
and mutates them, given the population with its fitnesses. Trusted code validates every
proposed vector (parse, bounds, mean-rate constraint, projection), computes fitness as the
validation perplexity of the structurally pruned model, keeps the best (elitism), and, when
the LLM fails twice in a row, proposes a trusted crossover + mutation instead ("fallback").
It is a mode of the agent runtime (agent/runtime; the mode: agent/rates/mode.py).
Entry point: `run_rates_search(RatesConfig(...))` (agent/rates/mode.py; the config, which imports
no torch: agent/rates/config.py); CLI: `autoprune-agent search-rates`. Import-free on purpose:
the CLI validates a config without loading torch or langgraph; import from the submodules.
"""
