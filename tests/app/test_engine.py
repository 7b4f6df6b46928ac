"""The engine: providers, the card (file or metadata), graph checks, layouts and dtypes."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.inference import engine as engine_module
from app.inference.engine import CPU_PROVIDER, CUDA_PROVIDER, EngineError, EngineOptions, create_engine
from harness.tiny_model import expected_probabilities, tiny_card, write_model
from model_card import CARD_METADATA_KEY, load_card, sha256_file

COLOURS = np.array([[200, 30, 30], [20, 220, 40], [10, 20, 250], [128, 128, 128]], dtype=np.uint8)


def flat_batch(size: int = 32) -> np.ndarray:
    return np.broadcast_to(COLOURS[:, None, None, :], (4, size, size, 3)).copy()


@pytest.mark.parametrize(
    ("layout", "output_dtype", "tolerance"),
    [
        ("NHWC", "float32", 1e-5),
        ("NCHW", "float32", 1e-5),
        ("NHWC", "float16", 2e-3),
        ("NCHW", "float16", 2e-3),
    ],
)
def test_layouts_and_output_dtypes_give_the_same_probabilities(
    tmp_path: Path, layout: str, output_dtype: str, tolerance: float
) -> None:
    engine = create_engine(
        write_model(tmp_path, tiny_card(layout=layout, output_dtype=output_dtype)), EngineOptions()
    )
    probabilities = engine.run(flat_batch())
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 4)
    np.testing.assert_allclose(probabilities, expected_probabilities(COLOURS / 255), atol=tolerance)


def test_the_card_is_the_embedded_one_with_or_without_model_json(tmp_path: Path) -> None:
    with_file = create_engine(write_model(tmp_path / "a"), EngineOptions())
    from_metadata = create_engine(write_model(tmp_path / "b", with_card_file=False), EngineOptions())
    assert with_file.card == from_metadata.card == load_card(tmp_path / "a" / "model.onnx")
    assert with_file.card.sha256 == sha256_file(tmp_path / "b" / "model.onnx")


def test_cpu_is_the_provider_without_cuda(tiny_model_path: Path) -> None:
    engine = create_engine(tiny_model_path, EngineOptions())
    assert engine.execution_provider == (
        CUDA_PROVIDER if CUDA_PROVIDER in ort.get_available_providers() else CPU_PROVIDER
    )
    assert engine.warm_up([1, 4]).keys() == {1, 4}


def test_missing_file_fails_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"model file '.*nothing\.onnx' does not exist; export one with"):
        create_engine(tmp_path / "nothing.onnx", EngineOptions())


def test_a_card_that_does_not_belong_to_the_file_fails(tmp_path: Path) -> None:
    path = write_model(tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    card["sha256"] = "0" * 64
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(EngineError, match=r"the model and its model\.json do not belong together"):
        create_engine(path, EngineOptions())


def test_a_card_that_disagrees_with_the_graph_fails(tmp_path: Path) -> None:
    import onnx

    path = write_model(tmp_path, tiny_card(crop_size=32), with_card_file=False)
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {CARD_METADATA_KEY: tiny_card(crop_size=24).to_metadata_json()})
    onnx.save(model, path)
    with pytest.raises(
        EngineError, match=r"input shape \['N', 32, 32, 3\] does not match the card's \(24, 24, 3\)"
    ):
        create_engine(path, EngineOptions())


def test_no_card_at_all_fails(tmp_path: Path) -> None:
    import onnx

    path = write_model(tmp_path, with_card_file=False)
    model = onnx.load(path)
    del model.metadata_props[:]
    onnx.save(model, path)
    with pytest.raises(EngineError, match="has no 'model_card' in its metadata; export it with model_export"):
        create_engine(path, EngineOptions())


@pytest.mark.skipif(CUDA_PROVIDER in ort.get_available_providers(), reason="CUDA is available here")
def test_require_cuda_fails_without_cuda(tiny_model_path: Path) -> None:
    with pytest.raises(
        EngineError, match=r"IMGSERVE_REQUIRE_CUDA is set but this ONNX Runtime build \(.+\) has no CUDA"
    ):
        create_engine(tiny_model_path, EngineOptions(require_cuda=True))


@pytest.mark.skipif(CUDA_PROVIDER in ort.get_available_providers(), reason="instances are the CPU provider's")
@pytest.mark.parametrize(
    ("intra_op_threads", "instances", "expected"), [(2, 0, 2), (3, 0, 3), (1, 0, 1), (2, 3, 3), (4, 1, 1)]
)
def test_cpu_instances_are_one_thread_runs_that_agree_with_the_whole_session(
    tiny_model_path: Path, intra_op_threads: int, instances: int, expected: int
) -> None:
    engine = create_engine(
        tiny_model_path, EngineOptions(intra_op_threads=intra_op_threads, instances=instances)
    )
    assert engine.instances == expected
    assert engine.session.get_session_options().intra_op_num_threads == intra_op_threads
    if expected == 1:
        assert engine.instance_session is None  # one session, as before instances
    else:
        assert engine.instance_session is not None
        assert engine.instance_session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(engine.run(flat_batch(), instance=True), engine.run(flat_batch()), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(
    CUDA_PROVIDER not in ort.get_available_providers(), reason="needs onnxruntime-gpu with CUDA"
)
def test_cuda_provider_is_active_on_a_gpu(tiny_model_path: Path) -> None:
    engine = create_engine(tiny_model_path, EngineOptions(require_cuda=True))
    assert engine.execution_provider == CUDA_PROVIDER
    assert engine.instances == 1 and engine.instance_session is None  # batches already run on the GPU
    np.testing.assert_allclose(engine.run(flat_batch()), expected_probabilities(COLOURS / 255), atol=1e-4)


def _offer_cuda(monkeypatch: pytest.MonkeyPatch, preload: object) -> None:
    """Make this CPU build look like onnxruntime-gpu up to the session (which it cannot open)."""
    cpu_only = ort.get_available_providers()
    cpu_choice = engine_module.choose_providers(cpu_only)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, *cpu_only])
    monkeypatch.setattr(ort, "preload_dlls", preload)
    monkeypatch.setattr(engine_module, "choose_providers", lambda available: cpu_choice)


def test_cuda_libraries_are_preloaded_only_when_the_cuda_provider_is_offered(
    monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append("cpu build"))
    create_engine(tiny_model_path, EngineOptions())
    assert calls == []
    _offer_cuda(monkeypatch, lambda: calls.append("gpu build"))
    create_engine(tiny_model_path, EngineOptions())
    assert calls == ["gpu build"]


def test_a_failed_preload_is_logged_and_the_session_still_loads(
    monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def missing_libraries() -> None:
        raise OSError("libcudnn.so.9: cannot open shared object file")

    _offer_cuda(monkeypatch, missing_libraries)
    engine = create_engine(tiny_model_path, EngineOptions())
    assert engine.execution_provider == CPU_PROVIDER
    assert "could not preload the CUDA/cuDNN libraries" in caplog.text
    assert "libcudnn.so.9" in caplog.text


def _has_nvidia_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_has_nvidia_driver(), reason="this machine has an NVIDIA driver")
def test_a_cuda_build_without_a_gpu_says_in_one_line_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # onnxruntime-gpu on a machine (or in a container) without the NVIDIA driver: it serves on
    # the CPU and one warning names the missing driver; required, it refuses to start.
    _offer_cuda(monkeypatch, lambda: None)
    engine = create_engine(tiny_model_path, EngineOptions())
    assert engine.execution_provider == CPU_PROVIDER
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "CUDA provider unavailable, serving on CPUExecutionProvider: no NVIDIA driver (libcuda.so.1 not "
        "found): no GPU on this machine, or a container started without one (docker run --gpus all, "
        "with the NVIDIA container toolkit)"
    ]
    with pytest.raises(EngineError, match=r"^IMGSERVE_REQUIRE_CUDA is set but no NVIDIA driver \(libcuda"):
        create_engine(tiny_model_path, EngineOptions(require_cuda=True))


# ONNX Runtime skips telemetry on CI systems it recognises; these would hide what users get.
CI_VARIABLES = (
    "CI",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
)


@pytest.mark.parametrize(("setting", "telemetry_on"), [(None, False), ("0", True)])
def test_onnx_runtime_telemetry_is_off_unless_the_operator_opts_in(
    tiny_model_path: Path, setting: str | None, telemetry_on: bool
) -> None:
    # With nowhere to keep its device id (a read-only home, as in the container), ONNX Runtime
    # warns as it starts telemetry; with telemetry off it never gets that far.
    env = {key: value for key, value in os.environ.items() if key not in CI_VARIABLES}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    env |= {"HOME": "/dev/null/home", "XDG_CACHE_HOME": "/dev/null/cache"}
    if setting is not None:
        env["ORT_DISABLE_TELEMETRY"] = setting
    code = (
        "import sys, pathlib; from app.inference.engine import EngineOptions, create_engine; "
        "print(create_engine(pathlib.Path(sys.argv[1]), EngineOptions()).execution_provider)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in (CPU_PROVIDER, CUDA_PROVIDER)
    assert ("telemetry" in result.stderr) is telemetry_on, result.stderr


class BatchSizeLog:
    """A session stand-in that records the batch size of every run, then runs the real one."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.sizes: list[int] = []

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.sizes.append(next(iter(feed.values())).shape[0])
        return self.session.run(names, feed)  # type: ignore[no-any-return]


@pytest.mark.skipif(CUDA_PROVIDER in ort.get_available_providers(), reason="instances are the CPU provider's")
def test_with_instances_only_the_instance_session_warms_up_batches(tiny_model_path: Path) -> None:
    """The all-threads session runs lone images only: a batch there would grow its memory
    arena for good with activations no request uses."""
    engine = create_engine(tiny_model_path, EngineOptions(intra_op_threads=2, instances=2))
    assert engine.instance_session is not None
    whole, instance = BatchSizeLog(engine.session), BatchSizeLog(engine.instance_session)
    engine.session, engine.instance_session = whole, instance  # type: ignore[assignment]
    assert sorted(engine.warm_up([4, 1, 2])) == [1, 2, 4]
    assert (whole.sizes, instance.sizes) == ([1], [1, 2, 4])


def test_without_instances_the_one_session_warms_up_every_size(tiny_model_path: Path) -> None:
    engine = create_engine(tiny_model_path, EngineOptions(intra_op_threads=1, instances=1))
    whole = BatchSizeLog(engine.session)
    engine.session = whole  # type: ignore[assignment]
    engine.warm_up([1, 2, 4])
    assert whole.sizes == [1, 2, 4]


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        (CPU_PROVIDER, 4),
        (engine_module.OPENVINO_PROVIDER, 4),
        (CUDA_PROVIDER, 32),
        ("TensorrtExecutionProvider", 32),
    ],
)
def test_the_batch_size_cap_follows_the_provider(provider: str, expected: int) -> None:
    assert engine_module.default_max_batch_size(provider) == expected
