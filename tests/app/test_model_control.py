"""Loading, swapping and unloading versions in process: real tiny ONNX models, real sessions.

What the e2e tests show over HTTP under load, shown here step by step: the swap is one step,
a request admitted by the old version finishes on it while the new one already answers, the old
session is then freed (a weak reference to it dies), and a failed load changes nothing served.
"""

from __future__ import annotations

import asyncio
import gc
import io
import shutil
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.inference.batcher import BatcherConfig
from app.inference.control import LoadError, LoadOptions, ModelControl, resolve_batching
from app.inference.engine import Engine, EngineError, EngineOptions, create_engine, live_session_count
from app.inference.errors import ModelNotFoundError, NotReadyError
from app.inference.model import Decoder, NamedImage
from app.inference.preprocess import ImageLimits
from app.inference.registry import ModelRegistry, VersionStatus
from app.inference.registry import VersionState as S
from app.inference.repository import DirectoryRepository, SingleModelFile, VersionPolicy
from harness.tiny_model import tiny_card, write_model

from .repository_models import truncate, write_mislabelled_version, write_version

pytestmark = pytest.mark.anyio

RED = (200, 30, 30)


def image(colour: tuple[int, int, int] = RED) -> NamedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buffer, format="PNG")
    return NamedImage("red.png", buffer.getvalue())


class Gates:
    """Wraps the loader: a version folder named in ``gates`` runs each batch only once its event
    is set."""

    def __init__(self, **gates: threading.Event) -> None:
        self.gates = {name.removeprefix("v"): event for name, event in gates.items()}

    def load(self, path: Path, options: EngineOptions) -> Engine:
        engine = create_engine(path, options)
        gate = self.gates.get(path.parent.name)
        if gate is not None:
            run = engine.run

            def gated_run(batch: np.ndarray, *, instance: bool = False) -> np.ndarray:
                gate.wait(10)
                return run(batch, instance=instance)

            engine.run = gated_run  # type: ignore[method-assign]
        return engine


@pytest.fixture
async def decoder() -> AsyncIterator[Decoder]:
    decoder = Decoder(1, ImageLimits(frozenset({"PNG"}), 10_000_000))
    decoder.start()
    yield decoder
    decoder.stop()


@pytest.fixture
async def make_control(decoder: Decoder) -> AsyncIterator[Callable[..., ModelControl]]:
    controls: list[ModelControl] = []

    def make(
        source: DirectoryRepository | SingleModelFile, gates: Gates | None = None, **options: int
    ) -> ModelControl:
        control = ModelControl(
            source,
            ModelRegistry(),
            decoder,
            (gates or Gates()).load,
            LoadOptions(
                engine=EngineOptions(intra_op_threads=1),
                batcher=BatcherConfig(max_batch_size=4, max_delay_ms=1),
                warmup_batch_sizes=(1,),
                max_loaded_versions=options.get("max_loaded_versions", 8),
                drain_timeout_s=10,
            ),
        )
        controls.append(control)
        return control

    yield make
    for control in controls:
        await control.stop(1)


async def top1(control: ModelControl, name: str | None = None, version: str | None = None) -> tuple[str, str]:
    model = control.registry.resolve(name, version)
    (result,) = await model.classify([image()], 1)
    return model.version, result.top_k[0].label


async def test_a_new_version_swaps_in_while_the_old_one_finishes_its_requests(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    write_version(tmp_path, "colours", 1)
    v1_gate = threading.Event()
    v1_gate.set()  # for the warm-up
    control = make_control(DirectoryRepository(tmp_path), Gates(v1=v1_gate))
    await control.start()
    v1_gate.clear()
    v1 = control.registry.resolve("colours")
    session = weakref.ref(v1.engine.session)
    gc.collect()  # sessions other tests left behind must not be counted as going with v1
    sessions_before = live_session_count()
    in_flight = asyncio.create_task(v1.classify([image()], 1))
    while v1.running_images == 0:  # the batch is in the model, blocked on the gate
        await asyncio.sleep(0.01)

    write_version(tmp_path, "colours", 2)
    load = asyncio.create_task(control.load("colours"))
    while control.registry.versions("colours") != ["2"]:
        await asyncio.sleep(0.01)
    # Swapped: v2 answers while v1 still holds its request, and the load waits for it.
    assert await top1(control, "colours") == ("2", "red-v2")
    assert control.registry.statuses() == [
        VersionStatus("colours", "1", S.UNLOADING),
        VersionStatus("colours", "2", S.READY),
    ]
    assert not load.done() and not in_flight.done()
    v1_gate.set()
    await load
    (result,) = await in_flight
    assert result.top_k[0].label == "red-v1"
    assert control.registry.statuses() == [
        VersionStatus("colours", "1", S.UNAVAILABLE, "unloaded"),
        VersionStatus("colours", "2", S.READY),
    ]
    del v1, in_flight
    gc.collect()
    assert session() is None
    assert live_session_count() == sessions_before  # v2 came, v1 went
    with pytest.raises(
        ModelNotFoundError, match=r"model 'colours' has no version '1' \(UNAVAILABLE: unloaded\)"
    ):
        control.registry.resolve("colours", "1")


async def test_a_request_still_decoding_on_the_old_version_finishes_there(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    """Admitted (queue room reserved) but not yet in a batch when the swap happens."""
    write_version(tmp_path, "colours", 1)
    control = make_control(DirectoryRepository(tmp_path))
    await control.start()
    v1 = control.registry.resolve("colours")
    requests = [asyncio.create_task(v1.classify([image()] * 3, 1)) for _ in range(4)]
    await asyncio.sleep(0)  # each has reserved its images and handed them to the decoder
    assert v1.in_flight_requests == 4
    write_version(tmp_path, "colours", 2)
    await control.load("colours")
    for request in requests:
        assert [r.top_k[0].label for r in await request] == ["red-v1"] * 3
    assert await top1(control) == ("2", "red-v2")


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda repo: truncate(write_version(repo, "colours", 3)), "ONNX Runtime cannot load"),
        (
            lambda repo: write_mislabelled_version(repo, "colours", 3),
            "the graph has 4 classes but the card has 5 labels",
        ),
    ],
)
async def test_a_version_that_fails_to_load_changes_nothing_served_and_says_why(
    tmp_path: Path,
    make_control: Callable[..., ModelControl],
    corrupt: Callable[[Path], object],
    reason: str,
) -> None:
    write_version(tmp_path, "colours", 2)
    control = make_control(DirectoryRepository(tmp_path))
    await control.start()
    corrupt(tmp_path)
    with pytest.raises(LoadError, match=f"cannot load model 'colours' version 3 .*{reason}"):
        await control.load("colours")
    assert await top1(control, "colours") == ("2", "red-v2")
    (v2, v3) = control.index()
    assert v2 == VersionStatus("colours", "2", S.READY)
    assert (v3.version, v3.state) == ("3", S.UNAVAILABLE) and reason in v3.reason
    with pytest.raises(ModelNotFoundError, match=f"no version '3' \\(UNAVAILABLE: cannot load .*{reason}"):
        control.registry.resolve("colours", "3")


async def test_latest_two_serves_a_pinned_version_beside_the_newest(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    for version in (1, 2, 3):
        write_version(tmp_path, "colours", version)
    (tmp_path / "colours" / "config.toml").write_text("[version_policy]\nlatest = 2\n")
    control = make_control(DirectoryRepository(tmp_path))
    await control.start()
    assert control.registry.versions("colours") == ["2", "3"]
    assert await top1(control) == ("3", "red-v3")
    assert await top1(control, "colours", "2") == ("2", "red-v2")
    # A new config picks fewer versions: the next load retires the rest.
    (tmp_path / "colours" / "config.toml").write_text("[version_policy]\nspecific = [2]\n")
    await control.load("colours")
    assert control.registry.versions("colours") == ["2"]
    # A load request's policy wins over the file until a load without one.
    await control.load("colours", VersionPolicy("all"))
    assert control.registry.versions("colours") == ["1", "2", "3"]
    await control.load("colours")
    assert control.registry.versions("colours") == ["2"]


async def test_the_cap_counts_versions_served_and_a_swap_fits_under_it(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    write_version(tmp_path, "a", 1)
    write_version(tmp_path, "b", 1)
    control = make_control(DirectoryRepository(tmp_path), max_loaded_versions=2)
    await control.start()
    write_version(tmp_path, "a", 2)
    await control.load("a")  # replaces a/1: still 2 served
    assert control.registry.versions("a") == ["2"]
    write_version(tmp_path, "c", 1)
    with pytest.raises(LoadError, match="2 model versions are loaded and the limit is 2; unload one first"):
        await control.load("c")
    await control.unload("b")
    await control.load("c")
    assert control.registry.names() == ["a", "c"]
    assert [(s.name, s.version, s.state, s.reason) for s in control.index()] == [
        ("a", "1", S.UNAVAILABLE, "unloaded"),
        ("a", "2", S.READY, ""),
        ("b", "1", S.UNAVAILABLE, "unloaded"),
        ("c", "1", S.READY, ""),
    ]


async def test_rescan_loads_new_models_and_unloads_vanished_ones(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    write_version(tmp_path, "a", 1)
    write_version(tmp_path, "b", 1)
    control = make_control(DirectoryRepository(tmp_path))
    await control.start()
    (tmp_path / "b" / "1" / "model.onnx").rename(tmp_path / "b" / "1" / "gone.onnx")
    write_version(tmp_path, "a", 2)
    write_version(tmp_path, "c", 4)
    failures = await control.rescan(loaded_only=False)
    assert len(failures) == 1 and "model 'b' has no version" in failures[0]
    assert {name: control.registry.versions(name) for name in control.registry.names()} == {
        "a": ["2"],
        "b": ["1"],  # a failed load leaves what serves
        "c": ["4"],
    }
    shutil.rmtree(tmp_path / "b")
    assert await control.rescan(loaded_only=False) == []
    assert control.registry.names() == ["a", "c"]


async def test_explicit_rescan_touches_only_loaded_models(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    write_version(tmp_path, "a", 1)
    write_version(tmp_path, "b", 1)
    control = make_control(DirectoryRepository(tmp_path))
    await control.start()
    await control.unload("b")
    write_version(tmp_path, "a", 2)
    assert await control.rescan(loaded_only=True) == []
    assert control.registry.names() == ["a"] and control.registry.versions("a") == ["2"]
    assert [(s.name, s.version, s.state) for s in control.index() if s.name == "b"] == [
        ("b", "1", S.UNAVAILABLE)
    ]
    with pytest.raises(ModelNotFoundError, match=r"model 'b' is not loaded \(unloaded\)"):
        control.registry.resolve("b")
    with pytest.raises(LoadError, match="no model 'zebra' in model repository"):
        await control.unload("zebra")


async def test_a_single_model_file_reloads_as_its_cards_new_version(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    path = write_model(tmp_path / "m", tiny_card(name="tiny", version="1"))
    control = make_control(SingleModelFile(path))
    await control.start()
    assert control.registry.names() == ["tiny"] and control.registry.versions("tiny") == ["1"]
    await control.load("tiny")  # the same file: nothing to do
    assert control.registry.versions("tiny") == ["1"]
    staged = write_model(tmp_path / "staged", tiny_card(name="tiny", version="2"))
    staged.replace(path)
    (tmp_path / "staged" / "model.json").replace(tmp_path / "m" / "model.json")
    await control.load("tiny")
    assert control.registry.versions("tiny") == ["2"]
    assert [s.version for s in control.index() if s.state == S.READY] == ["2"]


async def test_the_default_model_and_a_repository_without_models(
    tmp_path: Path, make_control: Callable[..., ModelControl]
) -> None:
    with pytest.raises(LoadError, match=r"holds no model: expected <model>/<version>/model\.onnx"):
        await make_control(DirectoryRepository(tmp_path)).start()
    write_version(tmp_path, "a", 1)
    write_version(tmp_path, "b", 1)
    control = make_control(DirectoryRepository(tmp_path))
    await control.start()
    with pytest.raises(
        ModelNotFoundError, match="no default model: this server serves 'a', 'b'; name the model"
    ):
        control.registry.default()
    control.registry.default_name = "b"
    assert control.registry.default().name == "b"
    await control.unload("b")
    with pytest.raises(NotReadyError, match=r"the default model 'b' has no version loaded \(unloaded\)"):
        control.registry.default()


@pytest.mark.parametrize(
    ("max_batch_size", "warmup", "provider", "expected"),
    [
        (0, (), "CPUExecutionProvider", (4, [1, 2, 4])),  # the defaults: the provider's cap
        (0, (), "CUDAExecutionProvider", (32, [1, 2, 4, 8, 16, 32])),
        (8, (), "CPUExecutionProvider", (8, [1, 2, 4, 8])),  # a setting wins
        (0, (1, 3), "CPUExecutionProvider", (4, [1, 3])),
    ],
)
def test_batching_is_resolved_for_the_provider_a_version_runs_on(
    max_batch_size: int, warmup: tuple[int, ...], provider: str, expected: tuple[int, list[int]]
) -> None:
    options = LoadOptions(
        engine=EngineOptions(),
        batcher=BatcherConfig(max_batch_size=max_batch_size, max_delay_ms=2),
        warmup_batch_sizes=warmup,
    )
    batching, sizes = resolve_batching(options, provider)
    assert (batching.max_batch_size, sizes) == expected
    assert batching.max_delay_ms == 2


def test_warmup_sizes_past_the_providers_cap_fail_the_load() -> None:
    options = LoadOptions(
        engine=EngineOptions(), batcher=BatcherConfig(max_batch_size=0), warmup_batch_sizes=(1, 16)
    )
    with pytest.raises(
        EngineError, match=r"warmup_batch_sizes \[16\] exceed max_batch_size 4 \(on CPUExecutionProvider\)"
    ):
        resolve_batching(options, "CPUExecutionProvider")
