"""Offline measurement of T_bg: `tbg measure` (one load, full report) and `tbg sweep` (T_bg vs load).

Modules, one concept each: prompts (the prompt set), store (resumable JSONL run records),
client (one temperature-0 request through the openai SDK), execute (bounded concurrent runner),
progress (stderr progress line), analysis (records -> estimator results), plots (PNG, optional),
report (JSON/Markdown), measure_cmd and sweep (the two subcommands); for `--compare URL` (an A/B
of two endpoints): cross (cross-divergence and its Boltzmann prediction), verdict, compare_plot
and compare (runs the candidate, builds the report's `compare` block).
"""
