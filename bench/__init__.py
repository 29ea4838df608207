"""sluice benchmarks: every figure is a ratio measured side by side in one run.

Absolute times on a shared 2-core machine are noise; a ratio of two things measured in the
same run, on the same machine, at the same moment, is not. ``python -m bench`` (``make
bench``) runs every scenario and writes ``bench/results/latest.json``, ``latest.md`` and a
drain timeline PNG; ``python -m bench --smoke`` does the same with tiny sizes.
"""
