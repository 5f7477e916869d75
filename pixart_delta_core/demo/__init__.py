"""Tiny models with random weights in the layouts users hold, for the demo, the tests and the benchmarks.
May import everything below the pipeline.
"""
