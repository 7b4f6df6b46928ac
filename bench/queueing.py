"""The open-loop tail of an ideal server, simulated: what queueing alone costs, before any overhead.

    python -m bench.queueing --service-ms 12.5 --servers 2 --reference-ms 10.5

Poisson arrivals (the suite's open-loop sweep) reach an ideal server: no HTTP, no decode
threads, no noise, only ``--servers`` model instances whose batch of k images costs
``service_ms * k ** batch_exponent`` (1: a CPU, where a batch costs k single images, measured in
docs/BENCHMARKS.md; 0: a batch costs one image, the best a GPU can do). A free instance takes its
share of the queue (the queue split evenly over the instances, at most ``--max-batch``), as the
batcher does; ``--max-batch 1`` is first come, first served one image at a time. For each load
(a fraction of the ideal capacity: every instance running full batches, ``servers /
service_ms`` images/s at exponent 1, as the suite measures capacity at c=32) it prints
the p50 and p99 of the time in the system, and the p99 over ``--reference-ms`` (the issue's
target reads "p99 at 50% of capacity <= 2x the c=1 p50": pass ours' measured c=1 p50).

What it shows: the open-loop tail that queueing alone sets, before any server overhead. If even
this ideal server's p99 is over the target, no scheduling reaches it on that hardware.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueResult:
    p50_s: float
    p99_s: float
    mean_s: float


def simulate(
    load: float,
    *,
    service_s: float,
    servers: int = 1,
    max_batch: int = 1,
    batch_exponent: float = 1.0,
    arrivals: int = 200_000,
    seed: int = 0,
) -> QueueResult:
    """Times in the system of ``arrivals`` Poisson arrivals at ``load`` x the ideal capacity."""
    if not 0 < load < 1:
        raise ValueError(f"load must be between 0 and 1, not {load}")
    if servers < 1 or max_batch < 1 or service_s <= 0:
        raise ValueError("servers and max_batch must be at least 1, service_s positive")
    rng = random.Random(seed)
    # Capacity: every instance running full batches (at exponent 1, any batch size).
    rate = load * servers * max_batch / (service_s * max_batch**batch_exponent)
    times: list[float] = []
    queue: deque[float] = deque()
    running: list[tuple[float, int, list[float]]] = []  # (end time, tie-break, arrival times)
    next_arrival = rng.expovariate(rate)
    arrived = 0
    batch_id = 0
    while arrived < arrivals or queue or running:
        next_end = running[0][0] if running else math.inf
        if arrived < arrivals and next_arrival <= next_end:
            now = next_arrival
            queue.append(now)
            arrived += 1
            next_arrival = now + rng.expovariate(rate)
        else:
            now, _, batch = heapq.heappop(running)
            times.extend(now - arrival for arrival in batch)
        while queue and len(running) < servers:
            size = min(max_batch, len(queue), max(1, math.ceil(len(queue) / servers)))
            batch = [queue.popleft() for _ in range(size)]
            heapq.heappush(running, (now + service_s * size**batch_exponent, batch_id, batch))
            batch_id += 1
    times.sort()
    return QueueResult(
        p50_s=times[len(times) // 2],
        p99_s=times[min(len(times) - 1, int(len(times) * 0.99))],
        mean_s=sum(times) / len(times),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--service-ms", type=float, required=True, help="one image on one instance")
    parser.add_argument("--servers", type=int, default=1, help="model instances running at once")
    parser.add_argument("--max-batch", type=int, default=32, help="1: one image at a time")
    parser.add_argument(
        "--batch-exponent", type=float, default=1.0, help="a batch of k costs service * k**this"
    )
    parser.add_argument("--loads", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--reference-ms", type=float, help="divide the p99 by this (ours' c=1 p50)")
    parser.add_argument("--arrivals", type=int, default=200_000)
    args = parser.parse_args()
    reference = args.reference_ms or args.service_ms
    print(
        f"ideal server: {args.servers} instance(s), {args.service_ms} ms per image, a batch of k "
        f"costs k^{args.batch_exponent:g} images, at most {args.max_batch} per batch; "
        f"{args.arrivals} Poisson arrivals per load"
    )
    print(f"{'load':>5} {'p50 ms':>8} {'p99 ms':>8} {'p99 / ' + format(reference, 'g') + ' ms':>14}")
    for load in args.loads:
        result = simulate(
            load,
            service_s=args.service_ms / 1000,
            servers=args.servers,
            max_batch=args.max_batch,
            batch_exponent=args.batch_exponent,
            arrivals=args.arrivals,
        )
        p99_ms = 1000 * result.p99_s
        print(f"{load:>5.0%} {1000 * result.p50_s:>8.1f} {p99_ms:>8.1f} {p99_ms / reference:>14.2f}")


if __name__ == "__main__":
    main()
