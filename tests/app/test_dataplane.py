"""The one request path (app/dataplane.py) on its own: a fake model, a fake resolver."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from app.dataplane import DataPlane, InferenceRequest, RequestLimits, RequestOutcome
from app.inference import errors
from app.inference.model import NamedImage
from app.inference.postprocess import Classification, ClassScore


@dataclass
class FakeModel:
    name: str
    version: str
    seconds: float = 0.0
    calls: list[int] = field(default_factory=list)
    cancelled: bool = False
    default_top_k: int = 3
    max_top_k: int = 4
    explains: bool = False
    explained: list[bool] = field(default_factory=list)

    def top_k_range(self) -> str:
        return "1 and 4 (the number of classes)"

    def check_explain(self, explain: bool) -> None:
        if explain and not self.explains:
            raise errors.ExplainUnsupportedError(f"model {self.name!r} does not explain its answers")

    async def classify(
        self, images: Sequence[NamedImage], top_k: int, explain: bool = False
    ) -> list[Classification]:
        self.calls.append(top_k)
        self.explained.append(explain)
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        score = ClassScore(index=0, label=self.version, probability=1.0)
        return [Classification([score] * top_k, np.ones(4, np.float32)) for _ in images]


@dataclass
class Recorder:
    outcomes: list[RequestOutcome] = field(default_factory=list)
    images: int = 0

    def request_finished(self, outcome: RequestOutcome) -> None:
        self.outcomes.append(outcome)

    def count_images(self, protocol: str, count: int) -> None:
        self.outcomes.append(RequestOutcome(protocol, None, None, count, 0.0, None))


def make_dataplane(resolve: Any, recorder: Recorder, timeout_s: float = 5.0) -> DataPlane:
    limits = RequestLimits(timeout_s, 1000, 2, frozenset({"PNG"}))
    return DataPlane(resolve, limits, recorder, None, observers=[recorder])


IMAGE = NamedImage("image[0]", b"png")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_the_model_is_resolved_again_after_the_body_and_that_version_answers() -> None:
    old, new = FakeModel("m", "1"), FakeModel("m", "2")
    models = iter([old, new])
    recorder = Recorder()
    dataplane = make_dataplane(lambda name, version: next(models), recorder)

    async def read(head: InferenceRequest) -> tuple[InferenceRequest, str]:
        return replace(head, images=[IMAGE]), "parsed"

    head = InferenceRequest(model_name="m", protocol="v2_http")
    result, parsed = run(dataplane.run(head, read, record=recorder))
    assert (result.model_version, parsed, old.calls, new.calls) == ("2", "parsed", [], [3])
    assert recorder.images == 1
    finished = [o for o in recorder.outcomes if o.model_version is not None]
    assert [(o.protocol, o.model_version, o.images, o.error) for o in finished] == [("v2_http", "2", 1, None)]
    assert RequestOutcome("v2_http", None, None, 1, 0.0, None) in recorder.outcomes  # the image metric


def test_one_top_k_rule_checked_before_the_body_when_explicit() -> None:
    model = FakeModel("m", "1")
    dataplane = make_dataplane(lambda name, version: model, Recorder())
    read_called = False

    async def read(head: InferenceRequest) -> tuple[InferenceRequest, None]:
        nonlocal read_called
        read_called = True
        return replace(head, images=[IMAGE]), None

    with pytest.raises(errors.InvalidRequestError, match=r"^top_k must be between 1 and 4 .*got 9$"):
        run(dataplane.run(InferenceRequest(model_name="m", top_k=9), read))
    assert not read_called
    request = InferenceRequest([IMAGE], top_k=5, top_k_parameter="classification")
    with pytest.raises(errors.InvalidRequestError, match=r"^classification must be between 1 and 4"):
        run(dataplane.infer(request))
    assert run(dataplane.infer(InferenceRequest([IMAGE]))).classifications[0].top_k[0].label == "1"
    assert model.calls == [3]  # the default


def test_image_count_explain_and_failures_reach_the_observer() -> None:
    model = FakeModel("m", "1")
    recorder = Recorder()
    dataplane = make_dataplane(lambda name, version: model, recorder)
    with pytest.raises(errors.BodyTooLargeError, match=r"more than 2 images in one request"):
        run(dataplane.infer(InferenceRequest([IMAGE] * 3), record=recorder))
    assert recorder.images == 0
    with pytest.raises(errors.ExplainUnsupportedError, match="does not explain"):
        run(dataplane.infer(InferenceRequest([IMAGE], explain=True)))
    assert model.calls == []
    failed = [type(o.error) for o in recorder.outcomes]
    assert failed == [errors.BodyTooLargeError, errors.ExplainUnsupportedError]
    # Refused before the body too; a model that explains is asked to.
    with pytest.raises(errors.ExplainUnsupportedError):
        dataplane.model("m", None, explain=True)
    explaining = FakeModel("m", "2", explains=True)
    dataplane = make_dataplane(lambda name, version: explaining, recorder)
    run(dataplane.infer(InferenceRequest([IMAGE], explain=True)))
    run(dataplane.infer(InferenceRequest([IMAGE])))
    assert explaining.explained == [True, False]


def test_a_client_that_leaves_cancels_its_classification() -> None:
    model = FakeModel("m", "1", seconds=5.0)
    dataplane = make_dataplane(lambda name, version: model, Recorder())

    async def gone() -> bool:
        await asyncio.sleep(0.05)
        return True

    with pytest.raises(errors.ClientGoneError):
        run(dataplane.infer(InferenceRequest([IMAGE]), gone=gone))
    assert model.cancelled


def test_the_deadline_covers_reading_and_classifying() -> None:
    model = FakeModel("m", "1", seconds=5.0)
    dataplane = make_dataplane(lambda name, version: model, Recorder(), timeout_s=0.1)

    async def read(head: InferenceRequest) -> tuple[InferenceRequest, None]:
        return replace(head, images=[IMAGE]), None

    with pytest.raises(errors.DeadlineExceededError, match=r"deadline of 0\.1 s"):
        run(dataplane.run(InferenceRequest(), read))
    assert model.cancelled
