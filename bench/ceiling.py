"""The ceiling: decode + preprocess + inference in process, no HTTP, with the server's own code.

It calls ``app.inference.preprocess.preprocess`` and ``app.inference.engine.create_engine``
with the thread counts the server would use (``app.config.Settings``: ``decode_threads``,
``intra_op_threads``, ``max_batch_size``) and mirrors the server's pipeline: images are decoded
on a pool of ``decode_threads`` threads while the previous batch runs on one inference thread.
So it is the same work, minus HTTP, multipart parsing, the event loop, batching waits and JSON.

Reported: images/s (wall) and CPU-seconds per image from the process's own CPU accounting
(``getrusage``, all threads); plus the split between preprocessing and the model, measured
separately on one thread so each is a clean per-core cost; and the single-image latency: one
image at a time from its bytes to probabilities (decode, preprocess, the model at batch 1),
the least a lone request can take, which the server's c=1 latency is compared with.

Run standalone: ``python -m bench.ceiling --model models/default/model.onnx --workload-dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.config import Settings
from app.inference.engine import Engine, EngineOptions, create_engine, default_max_batch_size
from app.inference.preprocess import ImageLimits, configure_pillow, preprocess
from harness.loadgen import percentile


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _limits(settings: Settings) -> ImageLimits:
    return ImageLimits(frozenset(settings.allowed_formats), settings.max_image_pixels)


def measure_pipeline(
    engine: Engine, images: list[bytes], settings: Settings, duration_s: float, batch_size: int
) -> dict[str, float]:
    """The server's pipeline without the server: N decode threads feeding one inference thread."""
    spec, limits = engine.card.preprocessing, _limits(settings)

    def prep(index: int) -> np.ndarray:
        return preprocess(images[index % len(images)], spec, limits, f"image{index}")

    processed = 0
    with ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool:
        # keep two batches of decodes in flight, like concurrent requests would
        pending: deque[Future[np.ndarray]] = deque(pool.submit(prep, i) for i in range(2 * batch_size))
        submitted = len(pending)
        # one untimed batch first: allocators, caches
        engine.run(np.stack([pending.popleft().result() for _ in range(batch_size)]))
        for i in range(batch_size):
            pending.append(pool.submit(prep, submitted + i))
        submitted += batch_size
        cpu_before, wall_before = cpu_s(), time.perf_counter()
        while time.perf_counter() - wall_before < duration_s:
            arrays = [pending.popleft().result() for _ in range(batch_size)]
            for i in range(batch_size):
                pending.append(pool.submit(prep, submitted + i))
            submitted += batch_size
            engine.run(np.stack(arrays))
            processed += batch_size
        wall = time.perf_counter() - wall_before
        cpu = cpu_s() - cpu_before
        for future in pending:
            future.cancel()
    return {
        "images": processed,
        "wall_s": wall,
        "images_per_s": processed / wall,
        "cpu_s_per_image": cpu / processed,
    }


def measure_preprocess(engine: Engine, images: list[bytes], settings: Settings, duration_s: float) -> float:
    """CPU-seconds per image of preprocessing alone, one thread."""
    spec, limits = engine.card.preprocessing, _limits(settings)
    preprocess(images[0], spec, limits, "warmup")
    count, before, wall = 0, cpu_s(), time.perf_counter()
    while time.perf_counter() - wall < duration_s:
        preprocess(images[count % len(images)], spec, limits, "image")
        count += 1
    return (cpu_s() - before) / count


def measure_single_image(
    engine: Engine, images: list[bytes], settings: Settings, duration_s: float
) -> dict[str, float]:
    """Wall milliseconds from an image's bytes to its probabilities, one image at a time on
    this thread: decode + preprocess, then the model at batch 1 (its own intra-op threads)."""
    spec, limits = engine.card.preprocessing, _limits(settings)

    def classify(index: int) -> None:
        engine.run(preprocess(images[index % len(images)], spec, limits, f"image{index}")[np.newaxis])

    classify(0)  # untimed: allocators, caches
    latencies: list[float] = []
    wall = time.perf_counter()
    while time.perf_counter() - wall < duration_s or not latencies:
        start = time.perf_counter()
        classify(len(latencies))
        latencies.append(time.perf_counter() - start)
    return {
        "images": len(latencies),
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "mean_ms": 1000 * sum(latencies) / len(latencies),
    }


def measure_model(engine: Engine, batch_size: int, duration_s: float) -> dict[str, float]:
    """CPU-seconds and wall seconds per image of the model alone at ``batch_size``."""
    size = engine.card.preprocessing.crop_size
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    engine.run(batch)
    count, before, wall = 0, cpu_s(), time.perf_counter()
    while time.perf_counter() - wall < duration_s or count == 0:
        engine.run(batch)
        count += batch_size
    elapsed = time.perf_counter() - wall
    return {"cpu_s_per_image": (cpu_s() - before) / count, "images_per_s": count / elapsed}


def run_ceiling(
    model_path: Path,
    image_sets: dict[str, list[bytes]],
    settings: Settings,
    duration_s: float,
    pipeline_batch_sizes: dict[str, tuple[int, ...]] | None = None,
    model_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    single_image_duration_s: float | None = None,
) -> dict[str, object]:
    """Everything the report needs from the in-process side, per image set.

    The pipeline runs at ``settings.max_batch_size`` for every image set and, for the sets named
    in ``pipeline_batch_sizes``, at those batch sizes too: the server's batches are often smaller
    than its maximum, and the ceiling it is compared with should be at the batch size it reached.
    """
    configure_pillow(settings.max_image_pixels)
    single_s = duration_s / 2 if single_image_duration_s is None else single_image_duration_s
    engine = create_engine(model_path, EngineOptions(intra_op_threads=settings.intra_op_threads))
    # 0 means "the provider's default", as the server resolves it at load
    max_batch_size = settings.max_batch_size or default_max_batch_size(engine.execution_provider)
    result: dict[str, object] = {
        "provider": engine.execution_provider,
        "providers": engine.providers,
        "decode_threads": settings.decode_threads,
        "intra_op_threads": settings.intra_op_threads,
        "max_batch_size": max_batch_size,
    }
    model: dict[str, object] = {}
    for batch_size in sorted({*model_batch_sizes, max_batch_size}):
        model[str(batch_size)] = measure_model(engine, batch_size, duration_s / 4)
    result["model"] = model
    pipeline: dict[str, object] = {}
    for name, images in image_sets.items():
        sizes = sorted({max_batch_size, *(pipeline_batch_sizes or {}).get(name, ())})
        by_batch = {str(size): measure_pipeline(engine, images, settings, duration_s, size) for size in sizes}
        figures: dict[str, object] = dict(by_batch[str(max_batch_size)])
        figures["by_batch"] = by_batch
        figures["preprocess_cpu_s_per_image"] = measure_preprocess(engine, images, settings, duration_s / 2)
        figures["single_image"] = measure_single_image(engine, images, settings, single_s)
        pipeline[name] = figures
    result["pipeline"] = pipeline
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="in-process ceiling (server's preprocess + engine, no HTTP)")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="folders of encoded images")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="*",
        default=[],
        help="extra pipeline batch sizes for the first image set",
    )
    parser.add_argument(
        "--other-batch-sizes",
        type=int,
        nargs="*",
        default=[],
        help="extra pipeline batch sizes for the other sets",
    )
    parser.add_argument("--model-batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument(
        "--single-image-duration", type=float, help="seconds of one-at-a-time images (default: duration / 2)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    settings = Settings(model_path=args.model)  # IMGSERVE_* from the environment, as the server
    sets = {folder.name: [p.read_bytes() for p in sorted(folder.iterdir())] for folder in args.images}
    first = args.images[0].name
    result = run_ceiling(
        args.model,
        sets,
        settings,
        args.duration,
        {name: tuple(args.batch_sizes if name == first else args.other_batch_sizes) for name in sets},
        tuple(args.model_batch_sizes),
        args.single_image_duration,
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
