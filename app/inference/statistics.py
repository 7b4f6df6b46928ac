"""Per model version statistics: what Triton's ModelStatistics reports, in no protocol's terms.

Two sources feed a version's :class:`VersionStatistics`, both on the event loop (no locks):

- the request path (``request_finished``): each request's outcome and its duration, from
  the moment the server had it to the answer (reading, decoding, queueing and the model);
- the batcher (:class:`ExecutionObserver`): each model run (its size, and the time to
  assemble the batch, run the model, and hand the rows back: Triton's compute input, infer
  and output), and, per request that succeeded, how long its images waited in the queue for a
  model instance and the compute time of the run they were in (the longest, when they were
  split over several runs: those run at once on several instances).

A version's statistics live while it is loaded (:meth:`ModelStatistics.track` when it starts
serving, :meth:`ModelStatistics.forget` once it has drained), like its metrics series.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

NS_PER_S = 1_000_000_000


@dataclass(slots=True)
class Duration:
    """A count and the total time of what was counted (Triton's StatisticDuration)."""

    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds

    @property
    def ns(self) -> int:
        return round(self.seconds * NS_PER_S)


@dataclass(frozen=True)
class ExecutionTiming:
    """One model run: ``size`` images; assembling the batch, running it, handing back the rows."""

    size: int
    input_s: float
    infer_s: float
    output_s: float


@dataclass
class BatchStatistics:
    """Every model run of one batch size (Triton's InferBatchStatistics)."""

    batch_size: int
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ExecutionObserver(Protocol):
    """What the batcher tells a version's statistics."""

    def observe_execution(self, timing: ExecutionTiming) -> None: ...
    def observe_request(self, queue_s: float, executions: Sequence[ExecutionTiming]) -> None: ...


@dataclass
class VersionStatistics:
    """One loaded model version's figures since it was loaded (Triton's ModelStatistics).

    ``success`` and ``fail``: requests and their durations. ``queue`` and ``compute_*``: per
    request that succeeded (its images' longest wait for a model instance; the run its images
    were in, the longest of them when they were split over several). ``inference_count``:
    images run; ``execution_count``: model runs; ``last_inference_ms``: when the last run
    finished, in milliseconds since the epoch (0: never).
    """

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStatistics] = field(default_factory=dict)

    def observe_execution(self, timing: ExecutionTiming) -> None:
        self.inference_count += timing.size
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self.batches.get(timing.size)
        if batch is None:
            batch = self.batches[timing.size] = BatchStatistics(timing.size)
        batch.compute_input.add(timing.input_s)
        batch.compute_infer.add(timing.infer_s)
        batch.compute_output.add(timing.output_s)

    def observe_request(self, queue_s: float, executions: Sequence[ExecutionTiming]) -> None:
        self.queue.add(queue_s)
        if len(executions) == 1:  # most requests: one image, one run
            [execution] = executions
            input_s, infer_s, output_s = execution.input_s, execution.infer_s, execution.output_s
        else:  # its images ran in several runs, often at once on several instances: the longest
            input_s = max((e.input_s for e in executions), default=0.0)
            infer_s = max((e.infer_s for e in executions), default=0.0)
            output_s = max((e.output_s for e in executions), default=0.0)
        self.compute_input.add(input_s)
        self.compute_infer.add(infer_s)
        self.compute_output.add(output_s)

    def request_finished(self, succeeded: bool, duration_s: float) -> None:
        (self.success if succeeded else self.fail).add(duration_s)

    def batch_statistics(self) -> list[BatchStatistics]:
        """By batch size, smallest first."""
        return [self.batches[size] for size in sorted(self.batches)]


class RequestOutcome(Protocol):
    """How a request ended, as the request path reports it (``error`` None: it succeeded;
    ``model_version`` None: it failed before a model version was resolved)."""

    @property
    def model_name(self) -> str | None: ...
    @property
    def model_version(self) -> str | None: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def error(self) -> BaseException | None: ...


class ModelStatistics:
    """The statistics of every loaded version, by name and version."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStatistics] = {}
        # A version reloaded from a changed file is loaded again before the old load drains.
        self._loads: dict[tuple[str, str], int] = {}

    def track(self, name: str, version: str) -> VersionStatistics:
        """The statistics of a version that starts serving (kept across a reload of it)."""
        key = (name, version)
        self._loads[key] = self._loads.get(key, 0) + 1
        return self._versions.setdefault(key, VersionStatistics(name, version))

    def forget(self, name: str, version: str) -> None:
        """A load of the version has drained; its figures go with the last one."""
        key = (name, version)
        loads = self._loads.get(key, 0) - 1
        if loads > 0:
            self._loads[key] = loads
            return
        self._loads.pop(key, None)
        self._versions.pop(key, None)

    def get(self, name: str, version: str) -> VersionStatistics | None:
        return self._versions.get((name, version))

    def versions(self, name: str | None = None) -> list[VersionStatistics]:
        """Every version's statistics (of ``name`` only when given), by name then version."""
        found = [s for s in self._versions.values() if name is None or s.name == name]
        return sorted(found, key=lambda s: (s.name, _version_order(s.version)))

    def request_finished(self, outcome: RequestOutcome) -> None:
        """The request path's hook: count the request against the version that answered it."""
        if outcome.model_name is None or outcome.model_version is None:
            return  # no version was resolved (an unknown model, not ready): no figures to add to
        statistics = self._versions.get((outcome.model_name, outcome.model_version))
        if statistics is not None:
            statistics.request_finished(outcome.error is None, outcome.duration_s)


def _version_order(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order, before any other."""
    return (0, int(version)) if version.isdigit() else (1, version)
