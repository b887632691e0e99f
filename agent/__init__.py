"""The LangGraph agent: search pruning metrics with an LLM, verify them in the sandbox,
rank them in a tournament, finish with the winner + SDSA.

Entry point: `autoprune.agent.run.run_agent(RunConfig(...))` (the CLI's `run`).
Kept import-light on purpose: submodules load torch, langgraph and openai only when used.
"""
