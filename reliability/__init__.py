"""Reliability and security commands: soak, API fuzzing, dependency audit. What they share
with the tests and the benchmarks (the server process, tiny models, the load generator) is in
``harness``."""
