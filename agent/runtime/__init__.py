"""One agent runtime for every search mode (program search, Self-Pruner rate search).

`run_search(mode, run_dir, resumed=...)` (agent/runtime/run.py) owns the run folder's trace and
checkpoints, the LLM endpoint's lifecycle and journal, signals and the failure event; a
`SearchMode` (agent/runtime/mode.py) brings its inputs, graph and finale. `Budget`
(agent/budget.py) decides every stop.

Import-free on purpose: a config imports `runtime.settings` / `runtime.folder` to validate flags,
and must not pull in run.py's langgraph to do so. Import from the submodules.
"""
