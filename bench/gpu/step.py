"""``python -m bench.gpu.step NAME``: one step of the GPU plan (run by bench.gpu.plan).

Every step writes what it measured to ``results.json`` as it goes, and its own status
(``ok``, ``skipped`` with why, or ``failed`` with the error) before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu.plan import DRY_SIZES, GPU_SIZES, STEP_NAMES, Sizes, load_results, update_results

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PHOTOS = "jpeg_500x375"


class Skip(Exception):
    """The step cannot run here (e.g. no TensorRT); its status says why, the run goes on."""


@dataclass(frozen=True)
class Context:
    name: str
    out: Path
    work: Path
    dry_run: bool
    deadline: float  # time.time(): stop between measurements past it
    model: Path | None
    fp16_model: Path | None
    images: Path | None

    @property
    def sizes(self) -> Sizes:
        return DRY_SIZES if self.dry_run else GPU_SIZES

    @property
    def provider(self) -> str:
        """The provider under test: CUDA on the GPU machine, the CPU in the dry run."""
        return CPU if self.dry_run else CUDA

    def time_left(self) -> float:
        return self.deadline - time.time()

    def record(self, *keys: str, value: Any) -> None:
        update_results(self.out, self.name, *keys, value=value)

    def results(self) -> dict[str, Any]:
        return load_results(self.out)


def preload() -> None:
    """onnxruntime-gpu finds CUDA and cuDNN (pip packages, or PyTorch's) only after this."""
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        with contextlib.suppress(Exception):
            ort.preload_dlls()


# --- env -------------------------------------------------------------------------------------
def nvidia_smi(*query: str) -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return []


def step_env(ctx: Context) -> None:
    import onnxruntime as ort
    import PIL

    from app.inference.engine import cuda_unavailable_reason

    preload()
    available = ort.get_available_providers()
    versions = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    for distribution in ("fastapi", "uvicorn", "torch"):  # versions only: importing torch takes seconds
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[distribution] = metadata.version(distribution)
    cpu_model = ""
    with contextlib.suppress(OSError):
        cpu_model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    gpus = nvidia_smi("name", "memory.total", "driver_version", "compute_cap")
    env: dict[str, Any] = {
        "versions": versions,
        "onnxruntime_build": ort.get_device(),
        "available_providers": available,
        "gpu": gpus or ["none (no nvidia-smi)"],
        "cpu": f"{cpu_model} x{len(os.sched_getaffinity(0))}",
        "provider_under_test": ctx.provider,
    }
    if CUDA in available:
        # a session says whether the provider really runs (it falls back to the CPU if not)
        try:
            env["cuda_session_providers"] = _probe_session(ctx.model, [CUDA, CPU])
        except Exception as exc:
            env["cuda_session_providers"] = [f"no session: {str(exc).splitlines()[0][:300]}"]
    if env.get("cuda_session_providers", [""])[0] != CUDA:
        env["cuda_unavailable"] = cuda_unavailable_reason()
    ctx.record(value=env)
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}), providers {available}; GPU: {env['gpu']}")
    if "cuda_unavailable" in env:
        print(f"CUDA: {env['cuda_unavailable']}")
    if not ctx.dry_run and "cuda_unavailable" in env:
        raise SystemExit(f"the CUDA provider does not run here: {env['cuda_unavailable']}")


def _probe_session(model: Path | None, providers: list[str]) -> list[str]:
    """The providers a session really got: of the carried model, else of a one-node graph."""
    import onnxruntime as ort

    if model is not None and model.is_file():
        return list(ort.InferenceSession(str(model), providers=providers).get_providers())
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    return list(session.get_providers())


# --- models ----------------------------------------------------------------------------------
def step_models(ctx: Context) -> None:
    """The fp32 model and its fp16 twin: carried (--model/--fp16-model, or models/default and
    models/default-fp16), else a tiny stand-in in the dry run. Never exported here: exporting
    needs PyTorch and takes longer than the whole sweep."""
    from bench.run import DEFAULT_MODEL

    if ctx.dry_run and ctx.model is None:
        fp32, fp16 = _tiny_models(ctx.work / "models")
    else:
        fp32 = ctx.model or DEFAULT_MODEL
        fp16 = (
            ctx.fp16_model
            or DEFAULT_MODEL.parent.with_name(DEFAULT_MODEL.parent.name + "-fp16") / "model.onnx"
        )
        missing = [str(p) for p in (fp32, fp16) if not p.is_file()]
        if fp32 in [Path(m) for m in missing]:
            raise SystemExit(
                f"no model at {fp32}: export it (python -m model_export default) or pass --model"
            )
        if missing:
            print(f"no fp16 model at {fp16}: the fp16 rows are skipped")
    models = {"fp32": str(fp32.resolve())}
    if fp16.is_file():
        models["fp16"] = str(fp16.resolve())
    from model_card import load_card

    cards: dict[str, dict[str, Any]] = {}
    for variant, path in models.items():
        card = load_card(Path(path))
        cards[variant] = {
            "name": card.name,
            "version": card.version,
            "input": f"{card.input.layout} {card.input.dtype}",
            "output": card.output.dtype,
            "mb": round(Path(path).stat().st_size / 1e6, 1),
        }
    ctx.record(value={"paths": models, "cards": cards, "images": str(_photo_dir(ctx))})
    for variant, row in cards.items():
        shape = f"{row['input']} -> {row['output']}, {row['mb']} MB"
        print(f"{variant}: {row['name']} {row['version']} ({shape})")


def _tiny_models(folder: Path) -> tuple[Path, Path]:
    """The dry run's stand-ins: bench's tiny model (ImageNet sizes, almost no compute) and
    its fp16 twin, made by the converter the exporter uses (weights and output in half)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from bench.run import create_tiny_model
    from harness.tiny_model import tiny_card, write_model

    fp32 = create_tiny_model(folder / "fp32")
    classes = 10
    card = tiny_card(
        labels=[f"class_{i}" for i in range(classes)],
        output_dtype="float16",
        resize_size=256,
        crop_size=224,
        name="bench-tiny-fp16",
        version="0.0.1",
        weights_source="random, seed 0",
    )
    weights = np.random.default_rng(0).normal(size=(3, classes)).astype(np.float32)
    # the card rides in the file's metadata (a model.json would no longer match its checksum)
    fp16 = write_model(folder / "fp16", card, weights, np.zeros(classes, np.float32), with_card_file=False)
    onnx.save(convert_float_to_float16(onnx.load(str(fp16))), str(fp16))
    return fp32, fp16


def _photo_dir(ctx: Context) -> Path:
    """Real photos, 500x375 JPEGs: carried (--images), else made from the photos that ship in
    scikit-learn, scikit-image and matplotlib (bench.workloads)."""
    if ctx.images is not None:
        folder = ctx.images / PHOTOS if (ctx.images / PHOTOS).is_dir() else ctx.images
        if not any(folder.glob("*.jp*g")):
            raise SystemExit(f"no JPEGs in {folder}")
        return folder
    folder = ctx.work / "images" / PHOTOS
    if not any(folder.glob("*.jpg")):
        write_photos(folder)
    return folder


def write_photos(folder: Path) -> None:
    """bench.workloads' 500x375 JPEGs (quality 90) of every photo it knows, and nothing else."""
    from bench.workloads import encode, load_source_photos, resize_crop

    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in load_source_photos():
        (folder / f"{name}.jpg").write_bytes(encode(resize_crop(photo, 500, 375), "JPEG"))


def model_paths(ctx: Context) -> dict[str, Path]:
    models = ctx.results().get("models", {}).get("paths")
    if not models:
        raise SystemExit("no models: the models step did not run or failed")
    return {variant: Path(path) for variant, path in models.items()}


def photos(ctx: Context) -> list[bytes]:
    folder = Path(ctx.results()["models"]["images"])
    found = [p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")]
    return found[: ctx.sizes.parity_photos] if ctx.sizes.parity_photos else found


# --- parity ----------------------------------------------------------------------------------
def step_parity(ctx: Context) -> None:
    """Each model on the provider under test against the fp32 model on the CPU provider, on
    real photos through the server's own preprocessing: what a user would see change."""
    from app.config import Settings
    from app.inference.engine import EngineOptions, create_engine
    from app.inference.preprocess import ImageLimits, preprocess

    preload()
    models = model_paths(ctx)
    images = photos(ctx)
    reference_engine = cpu_engine(models["fp32"])
    spec = reference_engine.card.preprocessing
    settings = Settings(model_path=models["fp32"])
    limits = ImageLimits(frozenset(settings.allowed_formats), settings.max_image_pixels)
    batch = np.stack([preprocess(data, spec, limits, f"photo{i}") for i, data in enumerate(images)])
    reference = reference_engine.run(batch)
    for variant, path in models.items():
        if ctx.time_left() < 0:
            break
        engine = create_engine(path, EngineOptions(require_cuda=not ctx.dry_run))
        probabilities = engine.run(batch)
        top1 = probabilities.argmax(axis=1) == reference.argmax(axis=1)
        top5 = [
            len(set(np.argsort(-p)[:5]) & set(np.argsort(-r)[:5])) / 5
            for p, r in zip(probabilities, reference, strict=True)
        ]
        figures = {
            "provider": engine.execution_provider,
            "photos": len(images),
            "top1_agreement": float(top1.mean()),
            "top5_overlap": float(np.mean(top5)),
            "max_abs_diff": float(np.abs(probabilities - reference).max()),
            "mean_abs_diff": float(np.abs(probabilities - reference).mean()),
        }
        ctx.record(variant, value=figures)
        print(
            f"{variant} on {engine.execution_provider} vs fp32 on CPU, {len(images)} photos: "
            f"top-1 {figures['top1_agreement']:.0%}, top-5 overlap {figures['top5_overlap']:.0%}, "
            f"max |diff| {figures['max_abs_diff']:.2e}"
        )


def cpu_engine(path: Path) -> Any:
    import onnxruntime as ort

    from app.inference.engine import Engine
    from model_card import load_card

    return Engine(ort.InferenceSession(str(path), providers=[CPU]), load_card(path), str(path))


# --- the model sweep ---------------------------------------------------------------------------
def step_sweep(ctx: Context) -> None:
    """The model alone: images/s at each batch size, fp32 and fp16, two ways of feeding it:
    ``host``: numpy in, numpy out (each run copies the batch to the GPU and the answer back,
    as the server does); ``iobinding``: input and output already on the device (the GPU's
    own speed, the most any copy-free pipeline could reach)."""
    preload()
    sizes = ctx.sizes
    for variant, path in model_paths(ctx).items():
        session = _session(path, [ctx.provider, CPU] if ctx.provider != CPU else [CPU])
        if session.get_providers()[0] != ctx.provider:
            raise SystemExit(f"the {variant} session runs on {session.get_providers()}, not {ctx.provider}")
        for binding in ("host", "iobinding"):
            for batch in sizes.sweep_batches:
                if ctx.time_left() < 0:
                    ctx.record("cut", value=f"at {variant}/{binding}/b{batch}: the step's time limit")
                    return
                figures = measure_model(session, batch, binding, ctx.provider, sizes.sweep_seconds)
                ctx.record("points", f"{variant}/{binding}/b{batch}", value=figures)
                print(
                    f"sweep {variant:4s} {binding:9s} batch {batch:4d}: {figures['images_per_s']:9.1f} "
                    f"images/s, {figures['batch_ms_p50']:.2f} ms per batch"
                )


def _session(path: Path, providers: list[Any]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def measure_model(session: Any, batch: int, binding: str, provider: str, seconds: float) -> dict[str, Any]:
    import onnxruntime as ort

    (graph_input,) = session.get_inputs()
    output = session.get_outputs()[0].name
    shape = [batch, *(d if isinstance(d, int) else 224 for d in graph_input.shape[1:])]
    dtype = {"tensor(uint8)": np.uint8, "tensor(float16)": np.float16}.get(graph_input.type, np.float32)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, shape).astype(dtype) if dtype == np.uint8 else rng.random(shape).astype(dtype)
    run: Callable[[], object]
    if binding == "host":
        feed = {graph_input.name: data}

        def run() -> object:
            return session.run([output], feed)
    else:
        device = "cuda" if provider in (CUDA, TENSORRT) else "cpu"
        bound = session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(data, device, 0)
        bound.bind_ortvalue_input(graph_input.name, value)
        bound.bind_output(output, device)

        def run() -> object:
            session.run_with_iobinding(bound)
            return None

    for _ in range(2):  # allocators, cuDNN's algorithm search
        run()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    times.sort()
    return {
        "variant_provider": session.get_providers()[0],
        "batch": batch,
        "binding": binding,
        "runs": len(times),
        "images_per_s": batch * len(times) / elapsed,
        "batch_ms_p50": 1000 * times[len(times) // 2],
        "batch_ms_p90": 1000 * times[int(0.9 * (len(times) - 1))],
    }


# --- TensorRT ----------------------------------------------------------------------------------
def step_tensorrt(ctx: Context) -> None:
    """The TensorRT provider (fp16 kernels allowed), where this ONNX Runtime build has it and
    TensorRT's own libraries load; its engine is built per input shape (the first run of each
    batch size takes seconds), so only a few batch sizes."""
    import onnxruntime as ort

    preload()
    if TENSORRT not in ort.get_available_providers():
        raise Skip(f"this ONNX Runtime build ({ort.get_device()}) has no TensorRT provider")
    path = model_paths(ctx)["fp32"]
    cache = ctx.work / "trt-cache"
    cache.mkdir(parents=True, exist_ok=True)
    trt_options = {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
    }
    try:
        session = _session(path, [(TENSORRT, trt_options), CUDA, CPU])
    except Exception as exc:  # TensorRT's libraries missing raise here on some builds
        raise Skip(f"the TensorRT provider did not load: {str(exc).splitlines()[0][:300]}") from exc
    if session.get_providers()[0] != TENSORRT:
        raise Skip(
            f"the TensorRT provider did not load (libnvinfer missing?); session runs on "
            f"{session.get_providers()}"
        )
    for batch in ctx.sizes.tensorrt_batches:
        if ctx.time_left() < 0:
            ctx.record("cut", value=f"at batch {batch}: the step's time limit")
            return
        t0 = time.perf_counter()
        figures = measure_model(session, batch, "host", TENSORRT, ctx.sizes.sweep_seconds)
        figures["first_run_and_measure_s"] = round(time.perf_counter() - t0, 1)
        ctx.record("points", f"fp32-trt16/host/b{batch}", value=figures)
        print(f"tensorrt batch {batch}: {figures['images_per_s']:.1f} images/s")


# --- the server --------------------------------------------------------------------------------
def step_server(ctx: Context) -> None:
    from bench.gpu.serve import run_server_points

    run_server_points(ctx)


STEPS: dict[str, Callable[[Context], None]] = {
    "env": step_env,
    "models": step_models,
    "parity": step_parity,
    "sweep": step_sweep,
    "server": step_server,
    "tensorrt": step_tensorrt,
}
assert tuple(STEPS) == STEP_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one step of the GPU plan (see bench.gpu)")
    parser.add_argument("name", choices=STEP_NAMES)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--deadline", type=float, required=True, help="time.time() to stop measuring at")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--fp16-model", type=Path)
    parser.add_argument("--images", type=Path)
    args = parser.parse_args(argv)
    ctx = Context(
        args.name, args.out, args.work, args.dry_run, args.deadline, args.model, args.fp16_model, args.images
    )
    try:
        STEPS[args.name](ctx)
    except Skip as skip:
        update_results(ctx.out, "steps", ctx.name, value={"status": "skipped", "why": str(skip)})
        print(f"{ctx.name}: skipped: {skip}")
        return 0
    except BaseException as exc:
        why = str(exc) if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        update_results(
            ctx.out, "steps", ctx.name, value={"status": "failed", "why": why.splitlines()[0][:500]}
        )
        if not isinstance(exc, SystemExit):
            traceback.print_exc()
        print(f"{ctx.name}: failed: {why}", file=sys.stderr)
        return 1
    update_results(ctx.out, "steps", ctx.name, value={"status": "ok"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
