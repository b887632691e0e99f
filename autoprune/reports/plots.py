"""The report's figures (matplotlib, Agg backend), each saved as a PNG beside the report.

Every function takes a RunView and an output path and returns the path, or None
when the run has no data for that figure yet (a run in progress has no final
allocation, a run without LLM calls has no tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")   # headless: reports are built on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402

from autoprune.reports.run_model import RunView  # noqa: E402

FAILED_COLOR, OK_COLOR, BEST_COLOR, WANDA_COLOR, DENSE_COLOR = "#c0392b", "#2e86c1", "#1e8449", "#7d3c98", "#7f8c8d"
VERDICT_COLORS = {"ok": OK_COLOR, "pending": "#bdc3c7"}


def comparison_level(view: RunView) -> Optional[int]:
    """The first fidelity level: every verified candidate (and Wanda) is measured there on the same windows."""
    levels = [lvl for c in view.candidates.values() for lvl in c.fitness]
    return min(levels) if levels else None


def reference_ppl(view: RunView, name: str, level: Optional[int]) -> Optional[float]:
    """A baseline at the comparison level: its `baseline` event, else the seed candidate of that name."""
    found = view.baseline_ppl(name, level)
    if found is not None:
        return found
    for cid in (name, f"seed-{name}"):
        seed = view.candidates.get(cid)
        point = seed.fitness.get(level) if seed is not None and level is not None else None
        if point is not None and point.ppl is not None:
            return point.ppl
    return view.baseline_ppl(name)


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fitness_over_budget(view: RunView, path: Path) -> Optional[Path]:
    """Every budgeted candidate's perplexity in submission order, the best so far, and Wanda."""
    subs = view.submitted_candidates()
    if not subs:
        return None
    level = comparison_level(view)
    xs_ok, ys_ok, xs_bad, best_x, best_y = [], [], [], [], []
    best = None
    for cand in subs:
        point = cand.fitness.get(level) if level is not None else None
        if point is not None and point.ppl is not None:
            xs_ok.append(cand.submitted)
            ys_ok.append(point.ppl)
            best = point.ppl if best is None else min(best, point.ppl)
        else:
            xs_bad.append(cand.submitted)
        if best is not None:
            best_x.append(cand.submitted)
            best_y.append(best)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(xs_ok, ys_ok, color=OK_COLOR, label="candidate (verified)", zorder=3)
    if best_x:
        ax.step(best_x, best_y, where="post", color=BEST_COLOR, linewidth=2, label="best so far")
    reference = reference_ppl(view, "wanda", level)
    if reference is not None:
        ax.axhline(reference, color=WANDA_COLOR, linestyle="--", label=f"Wanda ({reference:.2f})")
    dense = reference_ppl(view, "dense", level)
    if dense is not None:
        ax.axhline(dense, color=DENSE_COLOR, linestyle=":", label=f"dense ({dense:.2f})")
    finite = ys_ok + [v for v in (reference, dense) if v is not None]
    if finite and max(finite) / max(min(finite), 1e-9) > 20:
        ax.set_yscale("log")
    if xs_bad:   # no perplexity to plot: mark them along the top edge (x in data, y in axes units)
        ax.scatter(xs_bad, [0.97] * len(xs_bad), marker="x", color=FAILED_COLOR, label="failed (no fitness)",
                   zorder=3, transform=ax.get_xaxis_transform())
    ax.set_xlabel("budget used (candidates sent to the sandbox)")
    ax.set_ylabel(f"validation perplexity (level {level})" if level is not None else "validation perplexity")
    ax.set_title("Fitness over budget (lower is better)")
    ax.set_xlim(0.5, subs[-1].submitted + 0.5)
    ax.set_xticks(range(1, subs[-1].submitted + 1, max(1, subs[-1].submitted // 12)))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_verdict_counts(view: RunView, path: Path) -> Optional[Path]:
    counts = view.verdict_counts()
    if not counts:
        return None
    names = sorted(counts, key=lambda k: (k != "ok", -counts[k]))
    fig, ax = plt.subplots(figsize=(6, 3))
    bars = ax.bar(names, [counts[n] for n in names], color=[VERDICT_COLORS.get(n, FAILED_COLOR) for n in names])
    ax.bar_label(bars)
    ax.margins(y=0.15)    # room for the count labels above the bars
    ax.set_ylabel("candidates")
    ax.set_title("Sandbox verdicts")
    ax.tick_params(axis="x", labelrotation=20)
    return save(fig, path)


def plot_block_sparsity(view: RunView, path: Path) -> Optional[Path]:
    allocations = view.block_sparsities()
    if not allocations:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(allocations)
    for i, (name, values) in enumerate(allocations.items()):
        xs = [b + (i - (len(allocations) - 1) / 2) * width for b in range(len(values))]
        ax.bar(xs, values, width=width, label=name)
    nblocks = max(len(v) for v in allocations.values())
    ax.set_xticks(range(0, nblocks, max(1, nblocks // 16)))
    low = min(min(v) for v in allocations.values())
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(max(v) for v in allocations.values()) + 0.03))
    ax.set_xlabel("decoder block")
    ax.set_ylabel("sparsity")
    ax.set_title("Per-block sparsity by allocation")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def plot_time_and_tokens(view: RunView, path: Path) -> Optional[Path]:
    seconds, tokens = view.node_seconds(), view.node_tokens()
    if not seconds and not tokens:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    nodes = sorted(seconds, key=seconds.get, reverse=True)
    left.barh(nodes, [seconds[n] for n in nodes], color=OK_COLOR)
    left.invert_yaxis()
    left.set_xlabel("seconds")
    left.set_title("Time per node")
    names = sorted(tokens, key=lambda n: -sum(tokens[n]))
    prompt = [tokens[n][0] for n in names]
    right.barh(names, prompt, color="#5dade2", label="prompt")
    right.barh(names, [tokens[n][1] for n in names], left=prompt, color="#f5b041", label="completion")
    right.invert_yaxis()
    right.set_xlabel("tokens")
    right.set_title("LLM tokens per node")
    if names:
        right.legend(fontsize=8)
    return save(fig, path)


FIGURES = {
    "fitness_over_budget": plot_fitness_over_budget,
    "verdicts": plot_verdict_counts,
    "block_sparsity": plot_block_sparsity,
    "time_tokens": plot_time_and_tokens,
}


def draw_all(view: RunView, folder: Path) -> dict[str, Path]:
    """Every figure the run has data for, as `folder/<name>.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = {name: draw(view, folder / f"{name}.png") for name, draw in FIGURES.items()}
    return {name: p for name, p in drawn.items() if p is not None}
