"""Benchmarks for pool-observer: what the observer costs, side by side, and how it scales.

Run ``python -m bench`` (a few minutes) or ``python -m bench --tiny`` (seconds, what CI runs).
See ``bench/README.md`` for the method and the latest figures.
"""
