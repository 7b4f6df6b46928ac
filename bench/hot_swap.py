"""The hot swap measured: a new version of the real default model loaded under steady load.

    python -m bench.hot_swap [--rounds 3] [--clients 4] [--phase-s 5] [--out bench/results/hot_swap]

A real server (``python -m app``) serves a model repository that holds the ImageNet default
model (EfficientNet-Lite0) as ``imagenet/1``, with ``IMGSERVE_MODEL_CONTROL=explicit``.
``--clients`` closed-loop clients send 500x375 JPEGs of real photos to ``/predict`` back to back.
Each round copies the model to the next version folder, waits ``--phase-s`` (before), calls
``POST /v2/repository/models/imagenet/load`` (during: until the call returns, which is after the
old version has drained) and waits ``--phase-s`` again (after). It reports, per round:

- the time from the load call to the first answer from the new version (``model_version``),
  and how long the load call took;
- p50 / p99 latency of the requests *started* before, during and after the load call;
- failed requests (anything but a 200) and the server's RSS before the load, at its peak
  during, and after (one session more while both versions exist, then back).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.workloads import encode, load_source_photos, resize_crop
from harness.loadgen import percentile
from harness.server import REPO_ROOT, ServerProcess

MB = 1024 * 1024


@dataclass
class Answer:
    started_s: float
    finished_s: float
    status: int
    version: str


@dataclass
class Round:
    version: str
    load_call_s: float
    first_new_answer_s: float
    p50_ms: dict[str, float]
    p99_ms: dict[str, float]
    requests: dict[str, int]
    failed: int
    rss_mb: dict[str, float]
    readyz_probes: int
    readyz_not_200: int
    versions_seen_during: list[str] = field(default_factory=list)


class Clients:
    """``count`` closed-loop clients over keep-alive connections, recording every answer."""

    def __init__(self, url: str, bodies: list[bytes], count: int) -> None:
        self.url, self.bodies = url, bodies
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            n = index
            while not self._stop.is_set():
                body = self.bodies[n % len(self.bodies)]
                n += 1
                started = time.monotonic()
                try:
                    response = client.post("/predict", content=body, headers={"Content-Type": "image/jpeg"})
                    status = response.status_code
                    version = response.json().get("model_version", "") if status == 200 else ""
                except httpx.HTTPError:
                    status, version = 0, ""
                with self._lock:
                    self.answers.append(Answer(started, time.monotonic(), status, version))

    def between(self, start_s: float, end_s: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start_s <= a.started_s < end_s]


class RssSampler(threading.Thread):
    """Samples the server's RSS and its ``/readyz`` status every 20 ms while running."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self.running = server, 0, True
        self.readyz: list[int] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=10) as client:
            while self.running:
                self.peak = max(self.peak, self.server.rss())
                self.readyz.append(client.get("/readyz").status_code)
                time.sleep(0.02)


def jpeg_bodies() -> list[bytes]:
    return [encode(resize_crop(photo, 500, 375), "JPEG") for _, photo in load_source_photos()]


def copy_version(model_dir: Path, repository: Path, version: int) -> None:
    """Stage the files in a hidden folder, then rename: a rescan never sees half a version."""
    staging = repository / "imagenet" / f".staging-{version}"
    staging.mkdir(parents=True)
    for name in ("model.onnx", "model.json"):
        shutil.copy(model_dir / name, staging / name)
    staging.rename(repository / "imagenet" / str(version))


def one_round(
    server: ServerProcess, clients: Clients, repository: Path, model_dir: Path, version: int, phase_s: float
) -> Round:
    copy_version(model_dir, repository, version)
    time.sleep(phase_s)
    rss_before = server.rss()
    sampler = RssSampler(server)
    sampler.start()
    load_at = time.monotonic()
    response = httpx.post(f"{server.base_url}/v2/repository/models/imagenet/load", timeout=300)
    loaded_at = time.monotonic()
    sampler.running = False
    sampler.join()
    if response.status_code != 200:
        raise RuntimeError(f"load failed: {response.status_code} {response.text}")
    time.sleep(phase_s)
    end_at = time.monotonic()
    phases = {
        "before": clients.between(load_at - phase_s, load_at),
        "during": clients.between(load_at, loaded_at),
        "after": clients.between(loaded_at, end_at),
    }
    new = [a.finished_s for a in clients.between(load_at - phase_s, end_at) if a.version == str(version)]
    everything = [a for answers in phases.values() for a in answers]
    return Round(
        version=str(version),
        load_call_s=loaded_at - load_at,
        first_new_answer_s=min(new) - load_at if new else float("nan"),
        p50_ms={name: _pct(answers, 50) for name, answers in phases.items()},
        p99_ms={name: _pct(answers, 99) for name, answers in phases.items()},
        requests={name: len(answers) for name, answers in phases.items()},
        failed=sum(a.status != 200 for a in everything),
        rss_mb={"before": rss_before / MB, "peak_during": sampler.peak / MB, "after": server.rss() / MB},
        readyz_probes=len(sampler.readyz),
        readyz_not_200=sum(status != 200 for status in sampler.readyz),
        versions_seen_during=sorted({a.version for a in phases["during"]}),
    )


def _pct(answers: list[Answer], q: float) -> float:
    return 1000 * percentile([a.finished_s - a.started_s for a in answers if a.status == 200], q)


def print_report(rounds: list[Round], args: argparse.Namespace) -> None:
    print(f"\nhot swap of the default model, {args.clients} clients, 500x375 JPEGs, {args.phase_s} s phases")
    print(
        "round  load call  first new answer  p99 before/during/after (ms)   p50 b/d/a (ms)      "
        "requests b/d/a   failed  RSS before/peak/after (MB)"
    )
    for r in rounds:
        p99, p50, n, rss = r.p99_ms, r.p50_ms, r.requests, r.rss_mb
        print(
            f"v{r.version:<5} {r.load_call_s:8.2f} s {r.first_new_answer_s:12.2f} s    "
            f"{p99['before']:6.0f} / {p99['during']:6.0f} / {p99['after']:6.0f}      "
            f"{p50['before']:5.0f} / {p50['during']:5.0f} / {p50['after']:5.0f}   "
            f"{n['before']:5d} / {n['during']:4d} / {n['after']:5d}  {r.failed:6d}   "
            f"{rss['before']:6.0f} / {rss['peak_during']:6.0f} / {rss['after']:6.0f}"
        )
    median = statistics.median
    p99_medians = " / ".join(
        f"{median(r.p99_ms[p] for r in rounds):.0f}" for p in ("before", "during", "after")
    )
    print(
        f"median over {len(rounds)} rounds: load call {median(r.load_call_s for r in rounds):.2f} s, "
        f"first answer from the new version {median(r.first_new_answer_s for r in rounds):.2f} s after the "
        f"call; p99 {p99_medians} ms; failed requests {sum(r.failed for r in rounds)}; /readyz during the "
        f"loads: {sum(r.readyz_not_200 for r in rounds)} not 200 of {sum(r.readyz_probes for r in rounds)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--phase-s", type=float, default=5.0, help="seconds measured before and after each load"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "hot_swap")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = jpeg_bodies()
    with tempfile.TemporaryDirectory(prefix="hot-swap-") as tmp:
        repository = Path(tmp) / "repository"
        copy_version(args.model_dir, repository, 1)
        env = {
            "IMGSERVE_MODEL_REPOSITORY": str(repository),
            "IMGSERVE_MODEL_CONTROL": "explicit",
            "IMGSERVE_LOG_LEVEL": "info",
        }
        with (
            ServerProcess(env, args.out / "server.log", inherit_settings=False) as server,
            Clients(server.base_url, bodies, args.clients) as clients,
        ):
            rounds = [
                one_round(server, clients, repository, args.model_dir, version, args.phase_s)
                for version in range(2, args.rounds + 2)
            ]
    print_report(rounds, args)
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in rounds], indent=2) + "\n")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
