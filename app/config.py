"""Service settings: one pydantic-settings class, read from ``IMGSERVE_*`` environment variables.

Everything is validated when the class is instantiated, so a bad value stops the process at
start with a message that names the variable, the value and what is accepted.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.inference.batcher import MAX_BATCH_SIZE_LIMIT, powers_of_two_up_to

# The formats the service may be allowed to decode. Pillow knows many more (some, like EPS,
# shell out to other programs), so the allowlist can only narrow this set.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_FORMAT_ALIASES = {"JPG": "JPEG"}

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def default_cpu_count(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: CPU affinity (cpusets), capped by a cgroup v2 CPU quota.

    In a container limited to 2 CPUs on a 64-core node, ``os.cpu_count()`` says 64; sizing
    thread pools by it would oversubscribe the quota and throttle the process.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """All configuration of the server, one ``IMGSERVE_*`` variable per field.

    docs/reference/settings.md is generated from these fields (``make references``).
    """

    model_config = SettingsConfigDict(
        env_prefix="IMGSERVE_", extra="ignore", validate_default=True, protected_namespaces=()
    )

    # Model
    model_path: Path = Field(
        default=Path("models/default/model.onnx"),
        description=(
            "The ONNX file; its model card is the one embedded in the file, and a model.json "
            "beside it must be a faithful copy (same sha256 and fields) or loading fails."
        ),
    )
    model_repository: Path | None = Field(
        default=None,
        description=(
            "A model repository folder, <model>/<version>/model.onnx (Triton's layout); "
            "when set, model_path is not used."
        ),
    )
    model_control: Literal["none", "explicit"] = Field(
        default="none",
        description="explicit: the /v2/repository load, unload and index API is on; none: it is off.",
    )
    default_model: str | None = Field(
        default=None,
        description="The model that answers /predict; default: the only model served.",
    )
    max_loaded_versions: int = Field(
        default=8,
        ge=1,
        description="Model versions served at once, each its own ONNX Runtime sessions (two with instances).",
    )
    require_cuda: bool = Field(default=False, description="Fail at start unless the CUDA provider is active.")
    execution_provider: Literal["auto", "cpu", "openvino", "cuda", "tensorrt"] = Field(
        default="auto",
        description=(
            "What runs every model: ONNX Runtime's cpu, cuda or tensorrt provider, or the openvino "
            "runtime. auto: the provider each model's card names (a variant's), else CUDA when "
            "available, else the CPU. One that cannot run here falls back with a warning."
        ),
    )
    require_provider: bool = Field(
        default=False,
        description="Fail the load instead of falling back when a model's provider (or bf16) cannot run.",
    )
    intra_op_threads: int = Field(
        default_factory=default_cpu_count,
        ge=0,
        description="ONNX Runtime intra-op threads; default: the cores available; 0 = ONNX Runtime's choice.",
    )
    model_instances: int = Field(
        default=0,
        ge=0,
        description=(
            "Batches run at once on the CPU, each on one thread (a second session of the model); "
            "a lone image on an idle model still runs on every intra-op thread. "
            "0: one per intra-op thread; 1: one batch at a time on every intra-op thread. "
            "With CUDA, always 1."
        ),
    )
    warmup_batch_sizes: Annotated[list[int] | None, NoDecode] = Field(
        default=None,
        description=(
            "Batch sizes run once before ready; default: powers of two up to max_batch_size "
            "(the provider's when it is 0)."
        ),
    )

    # HTTP server
    host: str = Field(default="0.0.0.0", description="Bind address of HTTP and gRPC.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port.")
    log_level: LogLevel = Field(default="info", description="Log level; JSON lines on stderr.")
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="Idle keep-alive connections close after this."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "From a connection's start, or its previous response, until a request's headers are "
            "complete; then 408 (part of a request came) or a silent close."
        ),
    )
    max_header_bytes: int = Field(
        default=16384, ge=1024, description="Request line plus headers, in bytes; 431 past it."
    )
    max_header_count: int = Field(default=100, ge=1, description="Header fields per request; 431 past it.")
    max_connections: int = Field(
        default=1000,
        ge=1,
        description=(
            "Open HTTP connections served; a request on one past it gets 503 + Retry-After, "
            "except the probes (/healthz, /readyz, /v2/health/*)."
        ),
    )
    lingering_time_s: float = Field(
        default=30.0,
        gt=0,
        description="After a response sent before its request was read: read and discard at most this long.",
    )
    lingering_timeout_s: float = Field(
        default=5.0, gt=0, description="... and close sooner once the client sends nothing for this long."
    )
    send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "A response the client takes in nothing of (the server's send buffer stays full) for "
            "this long closes its connection."
        ),
    )
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol's gRPC service, on the same host; 0 turns it off.",
    )
    v2_input: Literal["image", "pixels"] = Field(
        default="image",
        description=(
            "The input v2 model metadata and config declare (both are accepted): image, BYTES [N, 1] "
            "encoded images; pixels, UINT8 [N, crop, crop, 3] decoded and resized images (NHWC), "
            "the tensor Triton's image client and perf_analyzer send."
        ),
    )

    grpc_max_concurrent_streams: int = Field(
        default=100,
        ge=1,
        description="gRPC calls at once on one connection (HTTP/2 streams); more wait in the client.",
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=256,
        ge=1,
        description=(
            "gRPC calls in progress across the process; one past it gets RESOURCE_EXHAUSTED at once "
            "(probes are not counted)."
        ),
    )
    grpc_max_connections: int = Field(
        default=100,
        ge=1,
        description="Open gRPC connections; one past it is closed as soon as it is accepted.",
    )
    grpc_connection_idle_s: float = Field(
        default=60.0,
        gt=0,
        description="A gRPC connection without calls for this long is closed (GOAWAY; clients reconnect).",
    )
    grpc_connection_age_s: float = Field(
        default=3600.0,
        gt=0,
        description="A gRPC connection this old is asked to close (GOAWAY): clients spread out again.",
    )
    grpc_connection_age_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="... and its calls in progress get this long to finish before it closes.",
    )

    # Batching
    max_batch_size: int = Field(
        default=0,
        ge=0,
        le=MAX_BATCH_SIZE_LIMIT,
        description=(
            "Most images in one model run. 0: by execution provider, 4 on a CPU (an image costs "
            "the same in any batch there, and each image of a batch holds ~10 MB of activations "
            "in ONNX Runtime's arena for good), 32 on a GPU."
        ),
    )
    max_delay_ms: float = Field(
        default=5.0, ge=0, le=10_000, description="Longest wait for a batch to fill, from its oldest image."
    )
    batch_policy: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description=(
            "adaptive: run at once when no admitted image is still decoding, else wait for those "
            "(at most max_delay_ms); fixed: always wait max_delay_ms for a batch to fill."
        ),
    )
    max_queue_images: int = Field(
        default=256,
        ge=1,
        description="Images admitted and not yet running (decoding or queued); past it 503 + Retry-After.",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of a request, its upload included; past it 504."
    )
    decode_threads: int = Field(
        default_factory=default_cpu_count,
        ge=1,
        description="Decode and preprocess threads; default: the cores available (affinity, cgroup quota).",
    )

    # Limits
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="Request body limit in bytes; 413 past it."
    )
    max_images_per_request: int = Field(
        default=32, ge=1, description="Images in one request; 413 past it. At most max_queue_images."
    )
    max_image_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Width x height of one image, from its header, before decoding; more is 413.",
    )
    max_jpeg_scans: int = Field(
        default=64,
        ge=1,
        description=(
            "Scans one JPEG may have (encoders write 1, or about 10 when progressive); more is 413. "
            "Each scan walks every block of the image again, whatever its size in bytes."
        ),
    )
    max_request_pixels: int = Field(
        default=100_000_000,
        ge=1,
        description=(
            "Pixels one request's images decode to, together (JPEG draft-mode scaling counted; a "
            "progressive JPEG at full size times the work of its scans), "
            "from their headers before decoding; more is 413."
        ),
    )
    max_decoding_pixels: int = Field(
        default=200_000_000,
        ge=1,
        description=(
            "Pixels admitted for decoding and not yet decoded, across the process; a request "
            "that would pass it gets 503 + Retry-After."
        ),
    )
    light_decoding_pixels: int = Field(
        default=40_000_000,
        ge=0,
        description=(
            "The part of max_decoding_pixels kept for light requests (at most 4 MP in all): heavy "
            "requests get 503 + Retry-After before they would spend it. At most max_decoding_pixels "
            "- max_request_pixels is kept."
        ),
    )
    max_buffered_body_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description=(
            "Request body bytes held at once across the process (Content-Length counted up front, "
            "chunked bodies as they arrive); past it 503 + Retry-After."
        ),
    )
    allowed_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SUPPORTED_FORMATS),
        description="Image formats decoded, comma-separated; can only narrow the default; others are 415.",
    )

    # Shutdown
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        description=(
            "After SIGTERM, keep answering connections already open this long "
            "(not listening, readiness 503, Connection: close)."
        ),
    )
    drain_timeout_s: float = Field(
        default=30.0, gt=0, description="Bound on the whole shutdown, the delay included."
    )

    # Security
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys, comma-separated; empty: no key needed."
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of API keys, one a line (# comments), added to api_keys."
    )
    docs_public: bool = Field(
        default=True,
        description="false: /docs, /redoc and /openapi.json need a key (with no keys set: 404).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS, comma-separated; empty: CORS off."
    )

    # The demo page
    demo_page: bool = Field(
        default=True, description="Serve the demo page at / (static files, public even with API keys)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("warmup_batch_sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, int):
            return [value]
        return _split_csv(value)

    @field_validator("model_repository", "default_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _parse_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _parse_formats(cls, value: Any) -> Any:
        formats = [str(f).strip().upper() for f in _split_csv(value)]
        formats = [_FORMAT_ALIASES.get(f, f) for f in formats]
        unknown = [f for f in formats if f not in SUPPORTED_FORMATS]
        if unknown:
            raise ValueError(f"unsupported image format(s) {unknown}; choose from {list(SUPPORTED_FORMATS)}")
        if not formats:
            raise ValueError(f"at least one format is needed; choose from {list(SUPPORTED_FORMATS)}")
        return list(dict.fromkeys(formats))

    @field_validator("api_keys")
    @classmethod
    def _keys_well_formed(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            _check_key(key.get_secret_value(), "IMGSERVE_API_KEYS")
        return keys

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_images_per_request > self.max_queue_images:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) exceeds max_queue_images "
                f"({self.max_queue_images}): such a request could never be admitted"
            )
        if not self.max_image_pixels <= self.max_request_pixels <= self.max_decoding_pixels:
            raise ValueError(
                f"need max_image_pixels ({self.max_image_pixels}) <= max_request_pixels "
                f"({self.max_request_pixels}) <= max_decoding_pixels ({self.max_decoding_pixels}): "
                f"otherwise an image or a request within its own limit could never be admitted"
            )
        if self.max_upload_bytes > self.max_buffered_body_bytes:
            raise ValueError(
                f"max_upload_bytes ({self.max_upload_bytes}) exceeds max_buffered_body_bytes "
                f"({self.max_buffered_body_bytes}): a body at the limit could never be read"
            )
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(
                f"grpc_port ({self.grpc_port}) must differ from port ({self.port}); 0 turns gRPC off"
            )
        if self.keep_alive_timeout_s > self.header_timeout_s:
            raise ValueError(
                f"keep_alive_timeout_s ({self.keep_alive_timeout_s}) exceeds header_timeout_s "
                f"({self.header_timeout_s}), which also runs between keep-alive requests"
            )
        if self.lingering_timeout_s > self.lingering_time_s:
            raise ValueError(
                f"lingering_timeout_s ({self.lingering_timeout_s}) exceeds lingering_time_s "
                f"({self.lingering_time_s}), the bound on the whole lingering close"
            )
        if self.shutdown_delay_s >= self.drain_timeout_s:
            raise ValueError(
                f"shutdown_delay_s ({self.shutdown_delay_s}) must be less than drain_timeout_s "
                f"({self.drain_timeout_s}), which bounds the whole shutdown"
            )
        if self.warmup_batch_sizes is None and self.max_batch_size:
            self.warmup_batch_sizes = powers_of_two_up_to(self.max_batch_size)
        limit = self.max_batch_size or MAX_BATCH_SIZE_LIMIT
        bad = [n for n in self.warmup_batch_sizes or [] if not 1 <= n <= limit]
        if bad:
            raise ValueError(f"warmup_batch_sizes {bad} are outside 1..max_batch_size ({limit})")
        if self.api_keys_file is not None:
            self.api_keys = [*self.api_keys, *_load_keys_file(self.api_keys_file)]
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def public_summary(self) -> dict[str, Any]:
        """Settings safe to log at start (no keys)."""
        summary = self.model_dump(exclude={"api_keys"}, mode="json")
        summary["api_keys"] = f"{len(self.api_keys)} configured"
        return summary


def _check_key(key: str, source: str) -> None:
    if not key or any(ch.isspace() for ch in key):
        raise ValueError(f"an API key in {source} is empty or contains whitespace")


def _load_keys_file(path: Path) -> list[SecretStr]:
    """One key a line; blank lines and lines starting with '#' are ignored."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"api_keys_file {str(path)!r} cannot be read: {exc.strerror}") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for key in keys:
        _check_key(key, str(path))
    if not keys:
        raise ValueError(f"api_keys_file {str(path)!r} holds no keys")
    return [SecretStr(key) for key in keys]
