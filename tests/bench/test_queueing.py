"""The ideal-server simulation behind the open-loop argument in docs/BENCHMARKS.md."""

from __future__ import annotations

import pytest

from bench.queueing import simulate


def test_one_server_matches_the_pollaczek_khinchine_mean() -> None:
    # M/D/1: the mean wait is rho * S / (2 (1 - rho)); at rho 0.5 the time in the system is 1.5 S.
    result = simulate(0.5, service_s=1.0, servers=1, max_batch=1, arrivals=100_000)
    assert result.mean_s == pytest.approx(1.5, rel=0.03)
    assert result.p50_s >= 1.0


def test_an_idle_server_answers_in_one_service_time() -> None:
    result = simulate(0.001, service_s=0.01, servers=2, arrivals=2_000)
    assert result.p99_s == pytest.approx(0.01)


def test_more_load_means_a_longer_tail() -> None:
    tails = [simulate(load, service_s=1.0, servers=2, arrivals=50_000).p99_s for load in (0.3, 0.5, 0.7)]
    assert tails[0] < tails[1] < tails[2]
    assert tails[0] > 1.0  # some images already wait at 30%


def test_batches_that_cost_one_image_cut_the_tail_of_the_same_arrivals() -> None:
    # Load is a fraction of capacity, and batches of 32 for the price of one have 32x the capacity.
    linear = simulate(0.9, service_s=1.0, servers=2, max_batch=32, batch_exponent=1.0, arrivals=50_000)
    flat = simulate(0.9 / 32, service_s=1.0, servers=2, max_batch=32, batch_exponent=0.0, arrivals=50_000)
    assert flat.p99_s < linear.p99_s / 3


@pytest.mark.parametrize("load", [0.0, 1.0, -0.5])
def test_a_load_outside_zero_to_one_is_refused(load: float) -> None:
    with pytest.raises(ValueError, match="load"):
        simulate(load, service_s=1.0)
