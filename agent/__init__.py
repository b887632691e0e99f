"""The LangGraph agent: search pruning metrics with an LLM, verify them in the sandbox,
rank them in a tournament, finish with the winner + SDSA.

Entry points: `autoprune.agent.run.run_agent(RunConfig(...))` (the CLI's `run`) and
`autoprune.agent.rates.run_rates_search(RatesConfig(...))` (`search-rates`): two modes of one
runtime (`autoprune.agent.runtime`: run folder, endpoint, journal, trace, checkpoints, signals).
Kept import-light on purpose: submodules load torch, langgraph and openai only when used.
"""
