"""Reliability and security tooling: soak, API fuzzing, dependency audit, and the helpers
(tiny models, a managed server process, a load generator) that the tests in
``tests/reliability`` share with those commands."""
