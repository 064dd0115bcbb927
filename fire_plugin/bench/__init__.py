"""The perf suite, shipped with the package so that ``fire-plugin bench`` works from an installed wheel.

:mod:`fire_plugin.bench.perf` runs every ``bench_*.py`` of this folder in one process and prints one table, each
ratio against its named peer (``fire-plugin bench``, ``make bench``, ``python -m fire_plugin.bench.perf``); each
benchmark also runs alone, ``python -m fire_plugin.bench.bench_distances [--quick]``. Importing this package imports
nothing; the benchmarks import torch, timm, torchattacks and ART when they run.
"""
