"""Example plugin for autoprune-agent: one evaluator, one prompt set (see the README)."""
