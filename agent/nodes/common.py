"""Helpers every node shares: one accounted LLM call, archive entries for prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoprune.agent.archive import read_source
from autoprune.agent.evidence import comparable_ranking
from autoprune.agent.expression import expression_of
from autoprune.agent.insights import InsightGraph
from autoprune.agent.llm import LLMRequestRefused
from autoprune.agent.llm_journal import Exchange
from autoprune.agent.population import population_of
from autoprune.agent.services import AgentServices
from autoprune.agent.state import AgentState, add_timings
from autoprune.errors import LLMError

NODE_SEED_OFFSETS = {"analyse": 1, "hypothesise": 2, "write_code": 3, "reflect": 4}
# Replies asked for are short (bullets, one line, one expression): a CPU-served model should not ramble on.
NODE_MAX_TOKENS = {"analyse": 200, "hypothesise": 80, "reflect": 120}
EXPRESSION_MAX_TOKENS = 80


def max_tokens_for(services: AgentServices, node: str) -> int:
    limit = services.config.llm_max_tokens
    if node == "write_code":
        return min(limit, EXPRESSION_MAX_TOKENS) if services.context.code_style == "expression" else limit
    return min(limit, NODE_MAX_TOKENS.get(node, limit))


def llm_seed(services: AgentServices, state: AgentState, node: str, attempt: int = 0) -> int:
    """Deterministic per (run seed, generation, node, attempt): a rerun samples the same replies."""
    return (services.config.seed * 100_000 + int(state.get("generation", 0)) * 100
            + NODE_SEED_OFFSETS.get(node, 0) * 10 + attempt)


@dataclass
class FailedExchange(Exchange):
    """The LLM call failed after the client's retries: empty text, and why."""

    error: str = ""


def ask(services: AgentServices, state: AgentState, node: str, *, attempt: int = 0,
        template: str | None = None, **context: Any) -> tuple[Exchange, dict]:
    """Render the node's prompt, call the LLM once, and return (exchange, accounting update).
    A call that failed after the client's retries comes back as a `FailedExchange` (the node falls
    back on empty text) and still counts against the LLM call cap, so a dead endpoint ends the search;
    a refused request (bad key, unknown model) stops the run with its one line."""
    messages = services.prompts.render(template or node, **prompt_context(services, state), **context)
    try:
        exchange = services.llm.chat(messages, node=node, seed=llm_seed(services, state, node, attempt),
                                     max_tokens=max_tokens_for(services, node))
    except LLMRequestRefused:
        raise                   # a bad key or model name: the user's to fix, not worth the whole search
    except LLMError as exc:
        services.trace.emit("note", text=f"{node}: LLM call failed, the node falls back: {exc}")
        exchange = FailedExchange(text="", prompt_tokens=0, completion_tokens=0, seconds=0.0, error=str(exc))
    tokens = dict(state.get("tokens", {"prompt": 0, "completion": 0}))
    tokens["prompt"] = tokens.get("prompt", 0) + exchange.prompt_tokens
    tokens["completion"] = tokens.get("completion", 0) + exchange.completion_tokens
    accounting = {"llm_calls": int(state.get("llm_calls", 0)) + 1, "tokens": tokens,
                  "timings": add_timings(state, llm=exchange.seconds)}
    return exchange, accounting


def prompt_context(services: AgentServices, state: AgentState) -> dict:
    """Context every template may read (prompts/registry.DEFAULT_CONTEXT names them). The elite's
    entries are built once: the registry renders `archive_brief` without their code, `archive` with it."""
    cfg = services.config
    elite = archive_entries(services, state)
    return {"model_name": services.context.model_name, "sparsity": cfg.sparsity, "pattern": cfg.pattern,
            "model_profile": services.context.model_profile, "analysis": state.get("analysis") or None,
            "insights": InsightGraph.from_dict(state.get("insights")).render(),
            "archive_brief": elite, "elite": elite, "archive": elite,
            "archive_windows": elite[0]["windows"] if elite else 0,
            **services.context.offered(), "code_style": services.context.code_style}


def archive_entries(services: AgentServices, state: AgentState) -> list[dict]:
    """The examples as dicts the prompt registry renders (code, hypothesis, fitness, reflection, expression,
    windows): the best of distinct population cells (agent/population.py), ranked and shown by their
    perplexity on the same validation windows only (agent/evidence.py: `comparable_ranking`)."""
    candidates = state.get("candidates", {})
    ids = population_of(state, services.run_dir).diverse_elite(state.get("leaderboard", []), services.config.elite_k)
    windows, ranked = comparable_ranking(candidates, ids or state.get("archive", [])[: services.config.elite_k])
    entries = []
    for cid, ppl in ranked:
        rec = candidates[cid]
        source = read_source(services.run_dir, rec)
        entries.append({"hypothesis": rec.get("hypothesis") or cid, "fitness": ppl, "windows": windows,
                        "reflection": rec.get("reflection", ""), "code": source, "expression": expression_of(source)})
    return entries
