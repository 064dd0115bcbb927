"""The timing helpers of the perf suite, for the scripts in this folder: they live in :mod:`fire_plugin.bench._timing`.

The perf suite itself (the runner and every ``bench_*.py``) ships inside the package, ``fire_plugin/bench/``, so that
``fire-plugin bench`` works from an installed wheel; ``python -m fire_plugin.bench.bench_NAME`` runs one benchmark.
"""

from fire_plugin.bench._timing import (
    add_timing_args,
    choose_clock,
    format_table,
    interleaved_times,
    median_time,
    row,
    target_met,
)

__all__ = ["add_timing_args", "choose_clock", "format_table", "interleaved_times", "median_time", "row", "target_met"]
