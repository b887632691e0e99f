"""The insight graph (measured findings, hypotheses, the evidence for and against them, lessons) as a Tree.

Its words come from the LLM: every label is a `Text` of terminal-safe text (a str label
would be read as Rich markup, and `W[/]` would crash the app)."""

from __future__ import annotations

from typing import Any, Optional

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from autoprune.safe_text import terminal_safe

RELATION_STYLE = {"supports": "green", "refutes": "red", "inconclusive": "yellow"}


def fill_insight_tree(tree: Tree, graph: Optional[dict]) -> None:
    """Replace the tree's content with `graph` (agent/insights.py's InsightGraph.to_dict())."""
    tree.clear()
    root = tree.root
    root.expand()
    if not graph:
        root.add_leaf(Text("no insights yet", style="dim"))
        return
    if not isinstance(graph.get("hypotheses"), dict):
        add_generic(root, graph)      # an unknown shape still shows, key by key
        return
    evidence = [e for e in graph.get("evidence") or [] if isinstance(e, dict)] \
        if isinstance(graph.get("evidence"), list) else []
    lessons = graph.get("lessons", {}) if isinstance(graph.get("lessons"), dict) else {}
    add_findings(root, graph.get("findings"))
    for name, statement in graph["hypotheses"].items():
        mine = [e for e in evidence if e.get("hypothesis") == name]
        tally = {r: sum(1 for e in mine if e.get("relation") == r) for r in RELATION_STYLE}
        label = Text(terminal_safe(name, keep_newlines=False), style="bold")
        label.append(f"  +{tally['supports']} -{tally['refutes']} ?{tally['inconclusive']}", style="dim")
        node = root.add(label, expand=True)
        if statement:
            node.add_leaf(Text(terminal_safe(statement), style="italic"))
        for e in mine:
            fitness = e.get("fitness")
            relation = e.get("relation")
            line = Text(terminal_safe(f"{relation or '?'}: "),
                        style=RELATION_STYLE.get(relation, "") if isinstance(relation, str) else "")
            line.append(terminal_safe(f"{e.get('candidate', '?')} ({e.get('verdict', '?')}"
                                      + (f", ppl {fitness:.2f}" if isinstance(fitness, (int, float)) else "") + ")"))
            if e.get("detail"):
                line.append(terminal_safe(f" {e['detail']}"), style="dim")
            node.add_leaf(line)
        for lesson in lessons.get(name) if isinstance(lessons.get(name), list) else []:
            node.add_leaf(Text(terminal_safe(f"lesson: {lesson}"), style="cyan"))


def add_findings(root: TreeNode, findings: Any) -> None:
    """The measured findings (agent/evidence.py), each with its effect and interval, under one node."""
    rows = [f for f in findings if isinstance(f, dict)] if isinstance(findings, list) else []
    if not rows:
        return
    node = root.add(Text("measured (paired NLL, with - without)", style="bold"), expand=True)
    for f in rows:
        relation = f.get("relation")
        line = Text(terminal_safe(f"{relation if isinstance(relation, str) else '?'}: "),
                    style=RELATION_STYLE.get(relation, "") if isinstance(relation, str) else "")
        line.append(terminal_safe(str(f.get("name", "?")), keep_newlines=False))
        numbers = [f.get(k) for k in ("mean_nll_diff", "ci_low", "ci_high")]
        if all(isinstance(v, (int, float)) for v in numbers):
            line.append(f"  {numbers[0]:+.4f} [{numbers[1]:+.4f}, {numbers[2]:+.4f}]", style="dim")
        node.add_leaf(line)


def add_generic(node: TreeNode, value: Any, label: str = "") -> None:
    if isinstance(value, dict):
        child = node.add(Text(terminal_safe(label)), expand=True) if label else node
        for key, inner in value.items():
            add_generic(child, inner, str(key))
    elif isinstance(value, list):
        child = node.add(Text(terminal_safe(f"{label} [{len(value)}]")), expand=True)
        for n, inner in enumerate(value):
            add_generic(child, inner, str(n))
    else:
        node.add_leaf(Text(terminal_safe(f"{label}: {value}" if label else value)))
