"""The report's content: what a reader of a finished (or running) run needs, in order."""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from autoprune.reports.document import Code, Document, Figure, Para, Section, Table
from autoprune.reports.insight_section import insight_section
from autoprune.reports.run_model import RunView

LEADERBOARD_ROWS = 10
FAILURES_SHOWN = 8


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_document(view: RunView, figures: Iterable[str]) -> Document:
    figures = set(figures)
    doc = Document(title=f"autoprune run {view.run_info.get('run_id') or view.run_dir.name}")
    for build in (summary_section, config_section, winner_section, fitness_section, insight_section,
                  verdict_section,
                  sparsity_section, final_section, cost_section):
        section = build(view, figures)
        if section is not None and section.blocks:
            doc.sections.append(section)
    return doc


def summary_section(view: RunView, figures: set[str]) -> Section:
    rows = [["status", view.status], ["events", str(view.event_count)],
            ["candidates", f"{len(view.candidates)} ({len(view.submitted_candidates())} budgeted)"]]
    if view.started_ts is not None and view.last_ts is not None:
        rows.append(["wall time", f"{view.last_ts - view.started_ts:.0f} s"])
    final = view.final or {}
    if final.get("beats_wanda") is not None:
        rows.append(["beats Wanda (paired, same windows)", "yes" if final["beats_wanda"] else "no"])
    for key in ("stop_reason", "budget_used"):
        if (view.summary or {}).get(key) is not None:
            rows.append([key.replace("_", " "), fmt(view.summary[key])])
    blocks: list = [Table(["run", "value"], rows)]
    if view.failure:
        blocks.append(Para(f"The run failed: {view.failure}"))
    if view.status == "running":
        blocks.append(Para("The run has not finished (still running, or killed): numbers below are partial."))
    blocks += [Para(f"Notice: {p}") for p in view.problems]
    return Section("Summary", blocks)


def config_section(view: RunView, figures: set[str]) -> Section:
    rows = [[k, fmt(v)] for k, v in view.config.items() if v is not None]
    blocks: list = [Table(["setting", "value"], rows)] if rows else []
    info = [[k, fmt(v)] for k, v in view.run_info.items() if k != "protocol" and v is not None]
    protocol = view.run_info.get("protocol")
    if isinstance(protocol, dict):
        info += [[f"protocol: {k}", fmt(v)] for k, v in protocol.items()]
    if info:
        blocks.append(Table(["run", "value"], info))
    blocks.append(Para("Perplexity protocol: the Wanda/SparseGPT one (text joined, non-overlapping windows of "
                       "`seqlen`, tail dropped, exp of the mean token NLL). Search-time fitness uses validation "
                       "windows; the final table uses the test split."))
    return Section("Configuration and protocol", blocks)


def winner_section(view: RunView, figures: set[str]) -> Optional[Section]:
    cid = view.winner_id
    cand = view.candidates.get(cid or "")
    if cand is None:
        return None
    final_winner = (view.final or {}).get("winner")
    hypothesis = cand.hypothesis or (final_winner.get("hypothesis", "") if isinstance(final_winner, dict) else "")
    statement = view.hypotheses.get(hypothesis, "")
    blocks: list = [Para(f"Winner `{cand.id}` (generation {fmt(cand.generation)}, {cand.origin or 'unknown'} origin); "
                         f"hypothesis `{hypothesis or '—'}`" + (f": {one_line(statement)}" if statement else ""))]
    levels = ", ".join(f"level {p.level}: {fmt(p.ppl)} on {fmt(p.nwindows)} windows" for p in cand.fitness.values())
    if levels:
        blocks.append(Para(f"Validation perplexity — {levels}; rating {fmt(cand.rating, 0)}."))
    source = view.candidate_source(cand.id)
    if source:
        blocks.append(Code(source))
    return Section("Winner", blocks)


def fitness_section(view: RunView, figures: set[str]) -> Section:
    blocks: list = []
    if "fitness_over_budget" in figures:
        blocks.append(Figure("fitness_over_budget", "Perplexity of every budgeted candidate in submission order "
                                                    "(failed ones marked x), the best so far, and Wanda."))
    rows = [[str(i), c.id, c.hypothesis or "—", str(max(c.fitness)), fmt(c.ppl), fmt(c.rating, 0), c.status or "—"]
            for i, c in enumerate(view.ranked_candidates()[:LEADERBOARD_ROWS], 1)]
    if rows:
        blocks.append(Table(["rank", "candidate", "hypothesis", "level", "ppl", "rating", "verdict"], rows))
    return Section("Fitness over budget", blocks)


def verdict_section(view: RunView, figures: set[str]) -> Section:
    counts = view.verdict_counts()
    blocks: list = [Figure("verdicts", "Sandbox verdicts of every candidate.")] if "verdicts" in figures else []
    if counts:
        blocks.append(Table(["verdict", "candidates"], [[k, str(v)] for k, v in sorted(counts.items())]))
    failed = [c for c in view.candidates.values() if c.status not in (None, "ok")][:FAILURES_SHOWN]
    if failed:
        blocks.append(Table(["candidate", "verdict", "message"], [[c.id, c.status, one_line(c.message)] for c in failed]))
    return Section("Verdicts", blocks)


def sparsity_section(view: RunView, figures: set[str]) -> Optional[Section]:
    allocations = view.block_sparsities()
    if not allocations:
        return None
    blocks: list = [Figure("block_sparsity", "Per-block sparsity under each allocation (same global target).")] \
        if "block_sparsity" in figures else []
    names = list(allocations)
    nblocks = max(len(v) for v in allocations.values())
    rows = [[str(b)] + [fmt(allocations[n][b], 3) if b < len(allocations[n]) else "–" for n in names]
            for b in range(nblocks)]
    blocks.append(Table(["block"] + names, rows))
    sdsa = (view.final or {}).get("sdsa")
    if isinstance(sdsa, dict):
        chosen = {k: v for k, v in sdsa.items() if not isinstance(v, list)}
        if chosen:
            blocks.append(Para("SDSA hyper-parameters (the best of its grid on validation data): "
                               + ", ".join(f"{k}={fmt(v, 3)}" for k, v in chosen.items())))
    return Section("Per-block sparsity: uniform / OWL / SDSA / ATP", blocks)


def final_section(view: RunView, figures: set[str]) -> Optional[Section]:
    final = view.final or {}
    rows = [[name, fmt(ppl)] for name, ppl in sorted(view.final_perplexities().items(), key=lambda kv: kv[1])]
    if not rows and not final:
        return None
    table = finale_table(final.get("table"))
    blocks: list = [table] if table else [Table(["configuration (test split)", "perplexity"], rows)] if rows else []
    if final.get("test_protocol"):
        blocks.append(Para(f"Test protocol: {final['test_protocol']}."))
    if isinstance(final.get("test_policy"), str):
        blocks.append(Para(final["test_policy"]))
    validation = [[name, fmt(ppl)] for name, ppl in (final.get("validation") or {}).items()
                  if isinstance(ppl, (int, float))]
    winner, wanda = final.get("winner") or {}, final.get("wanda") or {}
    if isinstance(winner, dict) and isinstance(winner.get("ppl_validation"), (int, float)):
        validation.append([f"winner {winner.get('id', '')}", fmt(winner["ppl_validation"])])
    if isinstance(wanda, dict) and isinstance(wanda.get("ppl_validation"), (int, float)):
        validation.append(["wanda", fmt(wanda["ppl_validation"])])
    if validation:
        blocks.append(Table(["configuration (validation, full fidelity)", "perplexity"], validation))
    if final.get("paired_wins_vs_wanda") is not None and winner.get("nwindows"):
        blocks.append(Para(f"Paired comparison: the winner has the lower NLL on {fmt(final['paired_wins_vs_wanda'], 1)}"
                           f" of {winner['nwindows']} validation windows against Wanda."))
    blocks += zeroshot_blocks(final.get("zeroshot"))
    if final.get("export"):
        blocks.append(Para(f"Pruned model exported to `{final['export']}`."))
    return Section("Final perplexity", blocks)


def finale_rows(rows: Any) -> list[dict]:
    """The finale's reported rows that have the expected shape (a run folder is input: others are dropped)."""
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and all(isinstance(r.get(k), str)
                                                           for k in ("variant", "refit", "allocation"))
            and isinstance(r.get("test_ppl"), (int, float)) and not isinstance(r.get("test_ppl"), bool)]


def ratio(value: float, reference: Optional[float]) -> str:
    return "–" if not reference or reference <= 0 else f"{value / reference:.3f}×"


def finale_table(rows: Any) -> Optional[Table]:
    """variant | refit | allocation | test ppl | vs SparseGPT | vs ALPS (the same test windows)."""
    rows = finale_rows(rows)
    if not rows:
        return None
    reference = {r["variant"]: float(r["test_ppl"]) for r in rows if r["variant"] in ("sparsegpt", "alps")}
    cells = []
    for r in rows:
        marks = [m for m in ("exported", "cached") if r.get(m) is True]
        ppl = float(r["test_ppl"])
        cells.append([r["variant"] + (f" ({', '.join(marks)})" if marks else ""), r["refit"], r["allocation"],
                      fmt(ppl), ratio(ppl, reference.get("sparsegpt")), ratio(ppl, reference.get("alps"))])
    return Table(["variant", "refit", "allocation", "test ppl", "vs SparseGPT", "vs ALPS"], cells)


def zeroshot_blocks(zeroshot: Any) -> list:
    """`--final-tasks`: accuracy per task (rows) for winner / Wanda / dense (columns), with example counts."""
    if not isinstance(zeroshot, dict) or not isinstance(zeroshot.get("results"), dict):
        return []
    variants = list(zeroshot["results"])
    tasks = sorted({t for scores in zeroshot["results"].values() if isinstance(scores, dict) for t in scores})
    rows = []
    for task in tasks:
        cells = [zeroshot["results"][v].get(task) if isinstance(zeroshot["results"][v], dict) else None
                 for v in variants]
        cells = [c if isinstance(c, dict) else {} for c in cells]
        n = next((c.get("n") for c in cells if c.get("n")), "")
        rows.append([f"{task} (n={n})"] + [fmt(c.get("acc"), 3) for c in cells])
    return [Table(["zero-shot accuracy (lm-eval)"] + variants, rows),
            Para(f"Zero-shot data: {zeroshot.get('source')}; examples per task: {zeroshot.get('limit') or 'all'}.")]


def cost_section(view: RunView, figures: set[str]) -> Section:
    blocks: list = [Figure("time_tokens", "Wall time per graph node and LLM tokens per node.")] \
        if "time_tokens" in figures else []
    seconds, tokens = view.node_seconds(), view.node_tokens()
    nodes = sorted(set(seconds) | set(tokens), key=lambda n: -seconds.get(n, 0.0))
    rows = [[n, fmt(seconds.get(n), 1), str(tokens.get(n, (0, 0))[0]), str(tokens.get(n, (0, 0))[1])] for n in nodes]
    if rows:
        blocks.append(Table(["node", "seconds", "prompt tokens", "completion tokens"], rows))
    split = view.time_split()
    blocks.append(Para("Time split: " + ", ".join(f"{k} {v:.1f} s" for k, v in split.items())
                       + f"; {len(view.exchanges)} LLM calls."))
    return Section("Time and tokens", blocks)
