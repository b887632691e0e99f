"""autoprune-agent: an LLM agent that discovers pruning algorithms for LLMs.

One import namespace: `autoprune` (core), `autoprune.agent`, `autoprune.sandbox`,
`autoprune.evaluators`, `autoprune.prompts` (see DESIGN §1).
"""

__version__ = "0.1.0"
