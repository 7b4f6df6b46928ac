"""The model's session: execution provider, the card, warm-up and ``run(batch)``.

Four execution providers: ONNX Runtime's CPU, CUDA and TensorRT providers, and the OpenVINO
runtime itself (it reads the same ONNX file, and runs an int8 QDQ graph as int8 kernels). The
OpenVINO runtime rather than ONNX Runtime's OpenVINO provider: the runtime installs beside
``onnxruntime`` from PyPI, while the provider ships as ``onnxruntime-openvino``, a build that
replaces the ``onnxruntime`` package. Which provider runs a file: the setting
(``execution_provider``), or with ``auto`` the one the card says the file is made for, or CUDA
when this build offers it, else the CPU. A provider this process cannot use falls back
(TensorRT to CUDA to CPU, OpenVINO to CPU) with one warning, or fails the load when
``require_provider`` is set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort

from model_card import CardError, ModelCard, load_card

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
OPENVINO_PROVIDER = "OpenVINO"
ProviderSetting = Literal["auto", "cpu", "openvino", "cuda", "tensorrt"]
PROVIDER_SETTINGS: tuple[str, ...] = ("auto", "cpu", "openvino", "cuda", "tensorrt")
_ORT_PROVIDER_NAMES = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER}
_OV_TYPES = {"u8": "tensor(uint8)", "f32": "tensor(float)", "f16": "tensor(float16)"}
_FALLBACK = {"tensorrt": "cuda", "cuda": "cpu", "openvino": "cpu"}
# The largest batch worth its memory, by where the model runs. On a CPU an image costs the same
# at every batch size (EfficientNet-Lite0: 9.1-10.2 CPU-ms at 1 to 32), so a large batch buys no
# throughput, only activations that ONNX Runtime's arena keeps for good (~10 MB an image, for
# each batch running at once); a GPU needs large batches to fill it.
CPU_MAX_BATCH_SIZE = 4
GPU_MAX_BATCH_SIZE = 32
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}


# Every session this process has created and not yet freed: proof, by reference, that an unloaded
# version's session is gone (a leak would keep it here).
_live_sessions: weakref.WeakSet[Any] = weakref.WeakSet()


def live_session_count() -> int:
    """ONNX Runtime sessions alive in this process: serving, loading or draining."""
    return len(_live_sessions)


class EngineError(Exception):
    """The model cannot be served as configured (missing, inconsistent, CUDA unavailable)."""


@dataclass(frozen=True)
class EngineOptions:
    """How to build the session."""

    require_cuda: bool = False
    intra_op_threads: int = 0
    # Batches that may run at once on the CPU, each on one thread (Triton's instance group);
    # 0: one per intra-op thread. With CUDA, one: batches already run on the GPU.
    instances: int = 0
    # Which provider runs the model (see the module's docstring); fatal instead of a fallback.
    execution_provider: ProviderSetting = "auto"
    require_provider: bool = False


class Session(Protocol):
    """What the engine needs of a session: ONNX Runtime's ``InferenceSession`` or :class:`OpenVinoSession`."""

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray]) -> list[Any]: ...
    def get_providers(self) -> list[str]: ...
    def get_inputs(self) -> list[Any]: ...
    def get_outputs(self) -> list[Any]: ...


@dataclass(frozen=True)
class PortInfo:
    """A graph input or output as ONNX Runtime describes it (name, ``tensor(uint8)``, shape)."""

    name: str
    type: str
    shape: list[int | str]


class OpenVinoSession:
    """The OpenVINO runtime on the CPU behind the same ``run`` as an ONNX Runtime session.

    ``threads`` 1 with ``streams`` N: N batches at once, one thread each (the engine's
    instances); one infer request per calling thread. ``precision_hint``: ``bf16`` or ``f32``
    (set explicitly: on CPUs with bf16 arithmetic OpenVINO would otherwise choose bf16 itself).
    """

    def __init__(self, model_path: Path, threads: int, streams: int, precision_hint: str) -> None:
        import openvino as ov

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision_hint,
            "NUM_STREAMS": streams,
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads * streams
        self._compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        self._local = threading.local()
        self.precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray]) -> list[Any]:
        results = self._request().infer(input_feed)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return [by_name[name] for name in output_names]

    def get_providers(self) -> list[str]:
        return [OPENVINO_PROVIDER]

    def _ports(self, ports: Any) -> list[PortInfo]:
        return [
            PortInfo(
                port.get_any_name(),
                _OV_TYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type())),
                [d.get_length() if d.is_static else "N" for d in port.get_partial_shape()],
            )
            for port in ports
        ]

    def get_inputs(self) -> list[PortInfo]:
        return self._ports(self._compiled.inputs)

    def get_outputs(self) -> list[PortInfo]:
        return self._ports(self._compiled.outputs)


class Engine:
    """An ONNX Runtime session and the card that says how to feed it.

    ``run`` takes a uint8 batch [N, H, W, 3] (what preprocessing produces) and returns float32
    probabilities [N, C]. For a float NCHW graph it normalises with the card's mean/std first.
    ``run`` blocks: call it from a worker thread, never from the event loop.

    With ``instances`` > 1 a second session of the same file runs on one thread per call
    (``run(batch, instance=True)``, safe from ``instances`` threads at once): on a CPU, batches
    on one thread per core outrun one batch spread over every core. ``session`` uses every
    intra-op thread, for a lone image.
    """

    def __init__(
        self,
        session: Session,
        card: ModelCard,
        source: str,
        instance_session: Session | None = None,
        instances: int = 1,
        precision: str | None = None,
    ) -> None:
        if instances > 1 and instance_session is None:
            raise ValueError("several instances need an instance session")
        self.session = session
        self.instance_session = instance_session
        self.instances = instances
        self.card = card
        self.source = source
        self.providers: list[str] = session.get_providers()
        # What runs: the card's precision, unless the provider cannot run it (a bf16 card on a
        # CPU without bf16 arithmetic, or on ONNX Runtime, runs fp32).
        self.precision = precision or card.precision
        self._input_name = card.input.name
        self._output_names = [card.output.name]
        explanation = card.explanation
        self._explain_output_names = (
            [card.output.name, explanation.maps_output, explanation.classes_output] if explanation else []
        )
        self._float_input = card.input.layout == "NCHW"
        pre = card.preprocessing
        # (x / 255 - mean) / std == x * scale + shift, per channel, broadcast over NCHW
        std = np.asarray(pre.std, dtype=np.float32)
        self._scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
        self._shift = (-np.asarray(pre.mean, dtype=np.float32) / std).reshape(1, 3, 1, 1)

    @property
    def execution_provider(self) -> str:
        return self.providers[0]

    @property
    def explains(self) -> bool:
        """Whether the graph outputs class activation maps (the card says so)."""
        return bool(self._explain_output_names)

    def run(self, batch: np.ndarray, *, instance: bool = False, explain: bool = False) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float32 probabilities [N, C]; ``instance``: on one thread.

        ``explain`` (a model that :attr:`explains`): each row is the probabilities followed by
        the maps and their class indices, flattened (:meth:`split_row` takes a row apart), so
        that explained rows travel through the batcher as any other. Without it, only the
        probabilities are fetched.
        """
        session = self.instance_session if instance and self.instance_session is not None else self.session
        feed = self._to_graph_input(batch)
        if explain and self.explains:
            probabilities, maps, classes = session.run(self._explain_output_names, {self._input_name: feed})
            count = len(probabilities)
            parts = [probabilities, np.reshape(maps, (count, -1)), classes]
            return np.concatenate([np.asarray(part, dtype=np.float32) for part in parts], axis=1)
        (probabilities,) = session.run(self._output_names, {self._input_name: feed})
        probabilities = np.asarray(probabilities)
        if probabilities.dtype != np.float32:
            probabilities = probabilities.astype(np.float32)
        return probabilities

    def split_row(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One row of :meth:`run`: (probabilities [C], maps [K, h, w] or None, classes [K] or None)."""
        classes = self.card.num_classes
        explanation = self.card.explanation
        if explanation is None or row.shape[0] == classes:
            return row[:classes], None, None
        k, height, width = explanation.top_k, explanation.height, explanation.width
        maps = row[classes : classes + k * height * width].reshape(k, height, width)
        return row[:classes], maps, row[classes + k * height * width :].astype(np.int64)

    def _to_graph_input(self, batch: np.ndarray) -> np.ndarray:
        if not self._float_input:
            return batch
        nchw = batch.transpose(0, 3, 1, 2).astype(np.float32)
        nchw *= self._scale
        nchw += self._shift
        dtype = np.float16 if self.card.input.dtype == "float16" else np.float32
        return np.ascontiguousarray(nchw, dtype=dtype)

    def warm_up(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run each batch size once (allocators, kernels, CUDA graphs); returns seconds per size.

        With instances, batches run on the instance session and the all-threads session only
        ever runs a lone image, so that one warms up at one image: a larger batch there would
        grow its memory arena for good with activations no request uses.
        """
        height, width = self.card.preprocessing.crop_size, self.card.preprocessing.crop_size
        timings: dict[int, float] = {}
        for size in sorted(set(batch_sizes)):
            batch = np.full((size, height, width, 3), 128, dtype=np.uint8)
            start = time.perf_counter()
            self.run(batch, instance=True)
            timings[size] = time.perf_counter() - start
        if self.instance_session is not None:
            self.run(np.full((1, height, width, 3), 128, dtype=np.uint8))
        return timings


def default_max_batch_size(provider: str) -> int:
    """The batch size cap when the settings leave it to the provider (``max_batch_size`` 0)."""
    return GPU_MAX_BATCH_SIZE if provider in (CUDA_PROVIDER, TENSORRT_PROVIDER) else CPU_MAX_BATCH_SIZE


def choose_providers(available: Sequence[str]) -> list[str]:
    return [p for p in (CUDA_PROVIDER, CPU_PROVIDER) if p in available]


def openvino_available() -> str | None:
    """None when the OpenVINO runtime can be used here, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"the openvino package is not installed ({exc}); install the `openvino` extra"
    return None


def _unavailable(provider: str, available: Sequence[str]) -> str | None:
    if provider == "openvino":
        return openvino_available()
    ort_name = _ORT_PROVIDER_NAMES[provider]
    if ort_name not in available:
        return f"this ONNX Runtime build offers only {list(available)}"
    return None


def provider_unavailable(card: ModelCard) -> str | None:
    """Why the provider (and precision) ``card`` is made for cannot run here, or None when it can."""
    if card.execution_provider in (None, "cpu"):
        return None
    if card.execution_provider == "openvino":
        missing = openvino_available()
        if missing is None and card.precision == "bf16":
            import openvino as ov

            if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                return "this CPU has no bf16 arithmetic"
        return missing
    available = ort.get_available_providers()
    missing = _unavailable(card.execution_provider, available)
    if missing is None and CUDA_PROVIDER in available:
        return cuda_driver_problem()
    return missing


def resolve_provider(options: EngineOptions, card: ModelCard, available: Sequence[str], source: str) -> str:
    """The provider that will run ``card``'s file: asked for (setting, else card, else the
    build's default), or the first fallback that is available, with one warning."""
    default = "cuda" if CUDA_PROVIDER in available else "cpu"
    if options.execution_provider != "auto":
        wanted, why = options.execution_provider, "IMGSERVE_EXECUTION_PROVIDER"
    elif card.execution_provider is not None:
        wanted, why = card.execution_provider, "its model card"
    else:
        return default
    provider: str | None = wanted
    reasons: list[str] = []
    while provider is not None:
        reason = _unavailable(provider, available)
        if reason is None:
            break
        reasons.append(f"{provider}: {reason}")
        provider = _FALLBACK.get(provider)
    if provider == wanted:
        return wanted
    if options.require_provider or provider is None:
        raise EngineError(
            f"{source}: {why} asks for the {wanted} execution provider, which cannot run here "
            f"({'; '.join(reasons)}); IMGSERVE_REQUIRE_PROVIDER makes that fatal"
            if options.require_provider
            else f"{source}: no execution provider can run it ({'; '.join(reasons)})"
        )
    logger.warning(
        "execution provider %s (from %s) is not available: %s; falling back to %s "
        "(set IMGSERVE_REQUIRE_PROVIDER=true to make this fatal)",
        wanted,
        why,
        "; ".join(reasons),
        provider,
        extra={"model_path": source, "requested_provider": wanted, "provider": provider},
    )
    return provider


def create_engine(model_path: Path, options: EngineOptions) -> Engine:
    """Load the ONNX file and its card; fail with a clear message if they cannot be served."""
    if not model_path.is_file():
        raise EngineError(
            f"model file {str(model_path)!r} does not exist; export one with "
            "`python -m model_export default --output-dir DIR` and set IMGSERVE_MODEL_PATH"
        )
    available = ort.get_available_providers()
    if options.require_cuda and CUDA_PROVIDER not in available:
        raise EngineError(f"IMGSERVE_REQUIRE_CUDA is set but {cuda_unavailable_reason()}")
    # No driver or no GPU: CUDA is not offered to the session at all, so ONNX Runtime does not
    # log its own multi-line failure; the one warning below says what is missing.
    no_gpu = cuda_driver_problem() if CUDA_PROVIDER in available else None
    if no_gpu is not None and options.require_cuda:
        raise EngineError(f"IMGSERVE_REQUIRE_CUDA is set but {no_gpu}")
    usable = [p for p in available if not (no_gpu is not None and p in (CUDA_PROVIDER, TENSORRT_PROVIDER))]
    try:
        card = load_card(model_path)
    except CardError as exc:
        # A file that is no model at all: ONNX Runtime's own words say more than the card's.
        _open_session(model_path, 1, [CPU_PROVIDER])
        raise EngineError(str(exc)) from exc
    provider = resolve_provider(options, card, usable, str(model_path))
    if provider == "openvino":
        return _create_openvino_engine(model_path, card, options)
    if CUDA_PROVIDER in available:
        preload_cuda_libraries()
    providers = _ort_providers(provider, usable)
    session = _open_session(model_path, options.intra_op_threads, providers)
    check_graph_matches_card(session, card, str(model_path))
    active = session.get_providers()
    default_path = options.execution_provider == "auto" and card.execution_provider is None
    wanted_gpu = provider in ("cuda", "tensorrt") or (no_gpu is not None and default_path)
    if CUDA_PROVIDER in available and wanted_gpu and active[0] not in (CUDA_PROVIDER, TENSORRT_PROVIDER):
        reason = no_gpu or cuda_unavailable_reason()
        if options.require_cuda:
            raise EngineError(f"IMGSERVE_REQUIRE_CUDA is set but {reason}")
        logger.warning("CUDA provider unavailable, serving on %s: %s", active[0], reason)
    if options.require_provider and options.execution_provider != "auto" and active[0] != providers[0]:
        raise EngineError(f"IMGSERVE_REQUIRE_PROVIDER is set but the active providers are {active}")
    instances = resolve_instances(options, active[0])
    instance_session = _open_session(model_path, 1, [CPU_PROVIDER]) if instances > 1 else None
    # ONNX Runtime has no bf16 kernels: a bf16 card's (fp32) graph runs in fp32 here.
    precision = "fp32" if card.precision == "bf16" else card.precision
    _log_loaded(card, active, instances, model_path, precision)
    return Engine(session, card, str(model_path), instance_session, instances, precision)


def _ort_providers(provider: str, available: Sequence[str]) -> list[str]:
    """ONNX Runtime's provider list for ``provider``: it, then what it falls back to, then CPU."""
    if provider == "cpu":
        return [CPU_PROVIDER]
    if provider == "tensorrt":
        return [p for p in (TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER) if p in available]
    return choose_providers(available)


def _create_openvino_engine(model_path: Path, card: ModelCard, options: EngineOptions) -> Engine:
    hint = "bf16" if card.precision == "bf16" else "f32"
    instances = resolve_instances(options, CPU_PROVIDER)
    try:
        session = OpenVinoSession(model_path, options.intra_op_threads, 1, hint)
        instance_session = OpenVinoSession(model_path, 1, instances, hint) if instances > 1 else None
    except Exception as exc:  # OpenVINO raises its own exception types for bad files
        raise EngineError(f"OpenVINO cannot load {str(model_path)!r}: {exc}") from exc
    _live_sessions.add(session)
    if instance_session is not None:
        _live_sessions.add(instance_session)
    check_graph_matches_card(session, card, str(model_path))
    precision = card.precision
    if card.precision == "bf16" and session.precision != "bf16":
        if options.require_provider:
            raise EngineError(
                f"{model_path}: the card asks for bf16 but this CPU has no bf16 arithmetic "
                f"(OpenVINO runs {session.precision}); IMGSERVE_REQUIRE_PROVIDER makes that fatal"
            )
        logger.warning(
            "the card asks for bf16 but this CPU has no bf16 arithmetic: OpenVINO runs %s",
            session.precision,
            extra={"model_path": str(model_path)},
        )
        precision = "fp32"
    _log_loaded(card, session.get_providers(), instances, model_path, precision)
    return Engine(session, card, str(model_path), instance_session, instances, precision)


def _log_loaded(card: ModelCard, providers: list[str], instances: int, path: Path, precision: str) -> None:
    logger.info(
        "model loaded",
        extra={
            "model": card.name,
            "model_version": card.version,
            "providers": providers,
            "precision": precision,
            "instances": instances,
            "path": str(path),
        },
    )


def resolve_instances(options: EngineOptions, provider: str) -> int:
    """Model instances: as asked on the CPU (0: one per intra-op thread, or per core this process
    may run on when ONNX Runtime chooses the threads), one with CUDA."""
    if provider not in (CPU_PROVIDER, OPENVINO_PROVIDER):
        return 1
    if options.instances > 0:
        return options.instances
    return max(1, options.intra_op_threads or len(os.sched_getaffinity(0)))


def _open_session(model_path: Path, intra_op_threads: int, providers: list[str]) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = intra_op_threads
    session_options.inter_op_num_threads = 1
    # No spinning: a worker thread that busy-waits between a run's parallel sections answers
    # sooner on an idle machine (a lone image ~0.5 ms), but when another process holds a core
    # it burns its time slice while the thread it waits for cannot run (a lone image beside a
    # busy loop: p50 17.2 against 14.6 ms, p99 +30%), and between batches it takes the cores
    # the decoders need.
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(model_path), sess_options=session_options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for bad files
        raise EngineError(f"ONNX Runtime cannot load {str(model_path)!r}: {exc}") from exc
    _live_sessions.add(session)
    return session


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the pip packages the `gpu` extra installs.

    They live under site-packages/nvidia/*/lib, where the dynamic loader does not look, so
    without this the CUDA provider fails to load and ONNX Runtime quietly runs on the CPU
    (the container image adds those folders to ld.so.conf instead; loading twice is harmless).
    """
    try:
        ort.preload_dlls()
    except Exception:  # a missing library is reported when the session falls back or fails
        logger.warning("could not preload the CUDA/cuDNN libraries", exc_info=True)


def cuda_unavailable_reason() -> str:
    """Why ONNX Runtime's CUDA provider cannot run in this process, in one line: what is missing.

    Checked in the order a deployment gets them wrong: the ONNX Runtime build, the NVIDIA driver
    (a container started without its GPUs has none), a GPU the driver can use, then the CUDA and
    cuDNN libraries the provider links against.
    """
    if CUDA_PROVIDER not in ort.get_available_providers():
        return (
            f"this ONNX Runtime build ({ort.__version__}) has no CUDA provider: "
            "install onnxruntime-gpu (the `gpu` extra)"
        )
    no_gpu = cuda_driver_problem()
    if no_gpu is not None:
        return no_gpu
    provider_library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(provider_library))
    except OSError as exc:
        return f"the CUDA provider cannot load its libraries ({exc}): install the `gpu` extra (CUDA, cuDNN)"
    return "ONNX Runtime could not create the CUDA provider (its own error is logged above)"


def cuda_driver_problem() -> str | None:
    """What keeps the NVIDIA driver from giving this process a GPU, or None when it has one."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return (
            "no NVIDIA driver (libcuda.so.1 not found): no GPU on this machine, or a container "
            "started without one (docker run --gpus all, with the NVIDIA container toolkit)"
        )
    status = driver.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver found no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "the NVIDIA driver sees no GPU (check CUDA_VISIBLE_DEVICES)"
    return None


def check_graph_matches_card(session: Session, card: ModelCard, source: str) -> None:
    """The card's input/output names, dtypes and sizes must be what the graph declares."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    graph_input = inputs.get(card.input.name)
    if graph_input is None:
        raise EngineError(
            f"{source}: the card's input {card.input.name!r} is not a graph input ({list(inputs)})"
        )
    if card.output.name not in outputs:
        raise EngineError(
            f"{source}: the card's output {card.output.name!r} is not a graph output ({list(outputs)})"
        )
    if _ORT_DTYPES.get(graph_input.type) != card.input.dtype:
        raise EngineError(f"{source}: input is {graph_input.type} but the card says {card.input.dtype}")
    if card.input.layout == "NHWC" and card.input.dtype != "uint8":
        raise EngineError(f"{source}: an NHWC input must be uint8, the card says {card.input.dtype}")
    expected = card.input_shape
    declared = tuple(graph_input.shape[1:])
    if len(declared) != 3 or any(
        isinstance(d, int) and d != e for d, e in zip(declared, expected, strict=True)
    ):
        raise EngineError(f"{source}: input shape {graph_input.shape} does not match the card's {expected}")
    classes = outputs[card.output.name].shape[-1]
    if isinstance(classes, int) and classes != card.num_classes:
        raise EngineError(
            f"{source}: the graph has {classes} classes but the card has {card.num_classes} labels"
        )
    explanation = card.explanation
    if explanation is not None:
        maps, map_classes = outputs.get(explanation.maps_output), outputs.get(explanation.classes_output)
        expected_maps = (explanation.top_k, explanation.height, explanation.width)
        if maps is None or map_classes is None:
            raise EngineError(
                f"{source}: the card's explanation outputs {explanation.maps_output!r} and "
                f"{explanation.classes_output!r} are not both graph outputs ({list(outputs)})"
            )
        if tuple(maps.shape[1:]) != expected_maps or map_classes.shape[1:] != [explanation.top_k]:
            raise EngineError(
                f"{source}: explanation outputs have shapes {maps.shape} and {map_classes.shape}, "
                f"the card says [N, {explanation.top_k}, {explanation.height}, {explanation.width}] "
                f"and [N, {explanation.top_k}]"
            )
