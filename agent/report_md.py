"""report.md of a run: protocol, winner, Wanda on the same windows, allocations, costs.

Honest by construction: the verdict line compares the winner with Wanda on the
same validation windows (paired) and the test table shows both side by side.
"""

from __future__ import annotations

from pathlib import Path

from autoprune.agent.services import AgentServices

REPORT_FILE = "report.md"


def fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and value is not None else "-"


def best_llm_line(final: dict) -> str:
    best = final.get("best_llm")
    if not best:
        return "No LLM-written candidate passed verification and evaluation."
    if best.get("wanda_ppl_same_windows") is None:
        return f"Best LLM-written candidate: `{best['id']}`, perplexity {fmt(best['ppl_validation'])}."
    wins, n = best["paired_wins_vs_wanda"], best["nwindows"]
    word = "beats" if wins > n / 2 and best["ppl_validation"] < best["wanda_ppl_same_windows"] else "does NOT beat"
    return (f"Best LLM-written candidate `{best['id']}` ({best['hypothesis']}) {word} Wanda: perplexity "
            f"{fmt(best['ppl_validation'])} vs {fmt(best['wanda_ppl_same_windows'])} on the same "
            f"{n} windows, lower NLL on {wins:g}/{n}.")


def verdict_line(final: dict) -> str:
    win = final["winner"]
    if win["id"] == "seed-wanda":
        return "**The search did not beat Wanda: Wanda itself is the winner.**"
    if win["id"].startswith("seed-"):
        prefix = f"**The winner is the generation-0 seed `{win['id']}`, not an LLM-written metric.** "
        return prefix + plain_verdict(final)
    return plain_verdict(final)


def plain_verdict(final: dict) -> str:
    win, wanda = final["winner"], final["wanda"]
    if wanda.get("ppl_validation") is None:
        return "Wanda could not be evaluated, so the winner is not compared with it."
    n, wins = win["nwindows"], final.get("paired_wins_vs_wanda")
    word = "beats" if final["beats_wanda"] else "does NOT beat"
    return (f"**The winner {word} Wanda** on the validation fitness windows: perplexity "
            f"{fmt(win['ppl_validation'])} vs {fmt(wanda['ppl_validation'])}, lower NLL on {wins:g}/{n} windows.")


def sdsa_note(final: dict, target: float) -> str:
    sdsa = final.get("sdsa")
    if not sdsa:
        return "SDSA: not applicable (an N:M pattern fixes every layer's sparsity)."
    ratios = sdsa["block_sparsity"]
    if max(ratios) - min(ratios) < 1e-9:
        return "SDSA: the profile had no spread between blocks, so SDSA equals uniform here."
    return f"SDSA per-block sparsity ranges {min(ratios):.3f}..{max(ratios):.3f} (target {target})."


def write_report(services: AgentServices, state: dict, final: dict, stop_reason: str) -> Path:
    cfg, ctx = services.config, services.context
    win = final["winner"]
    lines = [f"# autoprune-agent run {state.get('run_id', '')}", "",
             verdict_line(final), "", best_llm_line(final), "", "## Configuration and protocol", "",
             f"- model: {ctx.model_name}; target sparsity {cfg.sparsity} ({cfg.pattern})",
             f"- budget: {cfg.budget} candidates ({services.budget.describe(state)}); stopped: {stop_reason}",
             f"- LLM: {ctx.extras.get('llm', '?')}; code style {ctx.code_style}; seed {cfg.seed}",
             f"- sandbox: {cfg.sandbox}",
             f"- calibration: {ctx.extras.get('calibration', '?')}",
             f"- search fitness: {services.fitness.describe()}",
             f"- final test: {final['test_protocol']}", "",
             "## Winner", "", f"`{win['id']}` — hypothesis {win['hypothesis'] or '-'}: {win.get('statement') or '-'}", "",
             f"Validation perplexity at full fidelity ({win['nwindows']} windows): {fmt(win['ppl_validation'])}; "
             f"Wanda on the same windows: {fmt(final['wanda']['ppl_validation'])}.", "",
             "```python", win["source"].strip(), "```", "",
             "## Test perplexity (final evaluation, test split)", "",
             "| variant | validation ppl | test ppl |", "| --- | --- | --- |"]
    for name, value in final["test"].items():
        val = final["validation"].get(name) if name != "sdsa" else final["validation"].get(
            next((k for k in final["validation"] if k.startswith("sdsa")), ""), None)
        lines.append(f"| {name} | {fmt(val)} | {fmt(value)} |")
    lines += ["", f"Allocation chosen on validation and exported: {final['chosen_allocation']}"
              + (f" (SDSA λ={final['sdsa']['lam']})" if final.get("sdsa") else ""),
              f"Exported model: {final['export'] or 'not exported'}", sdsa_note(final, services.config.sparsity), ""]
    lines += ["## Candidates by verdict", "", "| verdict | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in sorted(state.get("verdicts", {}).items())]
    t, tok = state.get("timings", {}), state.get("tokens", {})
    lines += ["", "## Cost", "", f"- time: LLM {fmt(t.get('llm', 0))} s, sandbox {fmt(t.get('sandbox', 0))} s, "
              f"fitness {fmt(t.get('fitness', 0))} s, final test {fmt(final['timings'].get('test', 0))} s",
              f"- LLM calls {state.get('llm_calls', 0)}, tokens: prompt {tok.get('prompt', 0)}, "
              f"completion {tok.get('completion', 0)}", ""]
    path = Path(services.run_dir) / REPORT_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
