"""Benchmarks: one script per figure of issue 6, each printing its ratio against a baseline from the same run."""
