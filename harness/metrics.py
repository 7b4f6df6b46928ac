"""The server's Prometheus ``/metrics``, read as numbers (tests, benchmarks)."""

from __future__ import annotations

import re

import httpx

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|[+-]Inf)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Flat ``{'name{labels}': value}`` as the text writes them; enough for gauges, counters
    and histogram buckets, sums and counts."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def read_metrics(base_url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """``GET base_url/metrics``, parsed; raises on a failed request or a status other than 200."""
    response = httpx.get(f"{base_url}/metrics", timeout=timeout_s)
    response.raise_for_status()
    return parse_prometheus(response.text)
