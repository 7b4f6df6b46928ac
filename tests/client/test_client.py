"""Client and AsyncClient against a fake server (httpx ``MockTransport``) and a fake clock.

Every test runs on both clients: they share the retry policy, and this proves they use it alike.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgserve_client import (
    ClassScore,
    ConnectionFailedError,
    ImageReadError,
    Prediction,
    RejectedError,
    ServerBusyError,
    ServerError,
)
from imgserve_client.images import Loaded, multipart_body
from PIL import Image

from .fakes import NOW, FakeClock, answers, error, make_client, models_body, ok, predict_body, uploaded_files

KINDS = ["sync", "async"]
BUSY = (
    "overloaded: 4 images are queued and this request brings 1, over the queue limit of 4 (max_queue_images)"
)
PHOTO = b"\xff\xd8\xff\xe0 not really a jpeg, the fake server does not look"


def busy(retry_after: str | None = "2") -> httpx.Response:
    return error(503, BUSY, **({"Retry-After": retry_after} if retry_after is not None else {}))


def success(filename: str = "image") -> httpx.Response:
    return httpx.Response(200, json=predict_body([filename], ["tabby"]))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the retries the issue lists -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_503_with_retry_after_2_then_200_waits_2_s_once_in_two_attempts(kind: str, clock: FakeClock) -> None:
    handler, seen = answers(busy("2"), success())
    client = make_client(kind, handler, clock)
    prediction = client.predict(PHOTO)
    assert clock.sleeps == [2.0]
    assert len(seen) == 2
    assert dict(client.stats.retries) == {"503": 1} and client.stats.waited_s == 2.0
    assert prediction == Prediction(
        top_k=(ClassScore(3, "tabby", 0.75), ClassScore(1, "other", 0.25)),
        filename="image",
        model="fake",
        model_version="7",
    )
    assert (prediction.label, prediction.index, prediction.probability) == ("tabby", 3, 0.75)


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_as_an_http_date(kind: str, clock: FakeClock) -> None:
    date = format_datetime(datetime.fromtimestamp(NOW + 7, UTC), usegmt=True)  # "Sun, ... GMT"
    handler, seen = answers(busy(date), success())
    make_client(kind, handler, clock).predict(PHOTO)
    assert clock.sleeps == [7.0]
    assert len(seen) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_the_total_wait_cap_ends_the_retries_with_the_servers_detail(kind: str, clock: FakeClock) -> None:
    handler, seen = answers(*[busy("2")] * 10)
    client = make_client(kind, handler, clock, max_retries=10, max_total_wait=5.0)
    with pytest.raises(ServerBusyError) as caught:
        client.predict(PHOTO)
    # 2 + 2 waited; a third wait of 2 s would pass 5 s, so the third answer is the last
    assert clock.sleeps == [2.0, 2.0]
    assert len(seen) == 3
    err = caught.value
    assert (err.status, err.detail, err.retry_after, err.attempts) == (503, BUSY, 2.0, 3)
    assert str(err) == f"503 {BUSY} (Retry-After 2 s; 3 attempts)"


@pytest.mark.parametrize("kind", KINDS)
def test_after_the_last_attempt_the_error_carries_status_detail_retry_after_and_attempts(
    kind: str, clock: FakeClock
) -> None:
    handler, seen = answers(busy("1"), busy("1"), busy("3"))
    client = make_client(kind, handler, clock, max_retries=2)
    with pytest.raises(ServerBusyError) as caught:
        client.predict(PHOTO)
    assert clock.sleeps == [1.0, 1.0]
    assert len(seen) == 3
    assert (caught.value.status, caught.value.detail, caught.value.retry_after, caught.value.attempts) == (
        503,
        BUSY,
        3.0,
        3,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_415_is_not_retried(kind: str, clock: FakeClock) -> None:
    detail = "file #1 'scan.tif': image format TIFF is not accepted; allowed: BMP, GIF, JPEG, PNG, WEBP"
    handler, seen = answers(error(415, detail), success())
    client = make_client(kind, handler, clock)
    with pytest.raises(RejectedError) as caught:
        client.predict(PHOTO)
    assert clock.sleeps == []
    assert len(seen) == 1
    assert (caught.value.status, caught.value.detail, caught.value.retry_after, caught.value.attempts) == (
        415,
        detail,
        None,
        1,
    )
    assert client.stats.total == 0


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, RejectedError),
        (401, RejectedError),
        (422, RejectedError),
        (500, ServerError),
        (504, ServerError),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_no_other_status_is_retried(kind: str, clock: FakeClock, status: int, error_type: type) -> None:
    handler, seen = answers(error(status, f"status {status}"), success())
    with pytest.raises(error_type) as caught:
        make_client(kind, handler, clock).predict(PHOTO)
    assert (len(seen), clock.sleeps, caught.value.status, caught.value.detail) == (
        1,
        [],
        status,
        f"status {status}",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_429_is_retried_like_503(kind: str, clock: FakeClock) -> None:
    handler, seen = answers(error(429, "slow down", **{"Retry-After": "4"}), success())
    client = make_client(kind, handler, clock)
    assert client.predict(PHOTO).label == "tabby"
    assert (clock.sleeps, len(seen), dict(client.stats.retries)) == ([4.0], 2, {"429": 1})


@pytest.mark.parametrize("kind", KINDS)
def test_without_retry_after_the_waits_are_exponential_backoff_with_full_jitter(
    kind: str, clock: FakeClock
) -> None:
    # nginx's own 503 page: HTML, no Retry-After
    page = httpx.Response(503, text="<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>")
    handler, seen = answers(page, page, page, success())
    client = make_client(kind, handler, clock, random=lambda: 0.5)
    client.predict(PHOTO)
    assert clock.sleeps == [0.25, 0.5, 1.0]  # half of the 0.5, 1 and 2 s ceilings
    assert len(seen) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_page_that_is_not_json_gives_its_text_as_the_detail(kind: str, clock: FakeClock) -> None:
    page = httpx.Response(413, text="<html><head><title>413 Request Entity Too Large</title></head></html>")
    handler, _ = answers(page)
    with pytest.raises(RejectedError) as caught:
        make_client(kind, handler, clock).predict(PHOTO)
    assert caught.value.detail == "<html><head><title>413 Request Entity Too Large</title></head></html>"


@pytest.mark.parametrize("kind", KINDS)
def test_connection_errors_are_retried_then_reported_with_the_attempts(kind: str, clock: FakeClock) -> None:
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    handler, seen = answers(refused, httpx.ReadTimeout("timed out"), success())
    client = make_client(kind, handler, clock, random=lambda: 1.0)
    assert client.predict(PHOTO).label == "tabby"
    assert (clock.sleeps, dict(client.stats.retries)) == ([0.5, 1.0], {"connection": 2})

    handler, seen = answers(*[refused] * 3)
    clock.sleeps.clear()
    with pytest.raises(ConnectionFailedError) as caught:
        make_client(kind, handler, clock, max_retries=2, random=lambda: 1.0).predict(PHOTO)
    assert (len(seen), len(clock.sleeps), caught.value.attempts) == (3, 2, 3)
    assert str(caught.value) == (
        "ConnectError on http://imgserve.test/predict?top_k=5: [Errno 111] Connection refused (3 attempts)"
    )


# -- inputs, headers, probes ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_as_a_path_bytes_a_file_object_or_a_pil_image(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(PHOTO)
    picture = Image.new("RGB", (6, 4), (200, 30, 10))
    sent: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.extend(uploaded_files(request))
        return ok(request)

    client = make_client(kind, handler, clock)
    with path.open("rb") as opened:
        for image in (path, str(path), PHOTO, io.BytesIO(PHOTO), opened, picture):
            assert client.predict(image).label == "label-0"
    assert [name for name, _ in sent] == ["cat.jpg", "cat.jpg", "image", "image", "cat.jpg", "image.png"]
    assert [data for _, data in sent[:5]] == [PHOTO] * 5
    decoded = Image.open(io.BytesIO(sent[5][1]))
    assert (decoded.format, decoded.size, decoded.getpixel((0, 0))) == ("PNG", (6, 4), (200, 30, 10))


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_key_and_top_k_are_sent(kind: str, clock: FakeClock) -> None:
    handler, seen = answers(success())
    make_client(kind, handler, clock, api_key="s3cret").predict(PHOTO, top_k=2)
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert seen[0].url.params["top_k"] == "2"
    assert seen[0].headers["user-agent"].startswith("imgserve-client/0.1.0 httpx/")


@pytest.mark.parametrize("kind", KINDS)
def test_health_ready_and_models(kind: str, clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/readyz":
            return error(503, "not ready: the model is loading", **{"Retry-After": "1"})
        return httpx.Response(200, json=models_body(max_images_per_request=4, max_queue_images=8))

    client = make_client(kind, handler, clock)
    assert (client.health(), client.ready()) == (True, False)
    [model] = client.models()
    assert (model.name, model.version, model.num_classes, model.execution_provider) == (
        "fake",
        "7",
        10,
        "CPUExecutionProvider",
    )
    assert (model.limits.max_images_per_request, model.limits.max_queue_images) == (4, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_server_is_an_error_not_a_false(kind: str, clock: FakeClock) -> None:
    handler, _ = answers(httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(ConnectionFailedError, match=r"ConnectError on http://imgserve\.test/healthz"):
        make_client(kind, handler, clock).health()


# -- predict_many ---------------------------------------------------------------------------------


def fake_server(
    limits: dict[str, Any], bad: set[str] = frozenset(), busy_first: int = 0
) -> tuple[Any, list[list[str]]]:
    """A fake server that enforces ``max_images_per_request``, refuses (all or nothing) any
    request holding a file named in ``bad`` with 422, and answers 503 to its first requests."""
    requests: list[list[str]] = []
    state = {"busy": busy_first}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=models_body(**limits))
        names = [name for name, _ in uploaded_files(request)]
        requests.append(names)
        if state["busy"]:
            state["busy"] -= 1
            return busy("1")
        if len(names) > limits.get("max_images_per_request", 32):
            return error(413, "too many")
        for number, name in enumerate(names, 1):
            if name in bad:
                return error(422, f"file #{number} {name!r}: not a decodable image")
        return httpx.Response(200, json=predict_body(names, [f"is-{n}" for n in names]))

    return handler, requests


def files(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = tmp_path / f"{i:03d}.jpg"
        path.write_bytes(PHOTO + bytes([i]))
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", KINDS)
def test_predict_many_gives_every_image_once_with_its_own_prediction(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    handler, requests = fake_server({"max_batch_size": 32})
    paths = files(tmp_path, 50)
    results = list(make_client(kind, handler, clock).predict_many(paths, concurrency=4))
    assert sorted(r.image for r in results) == paths
    assert all(r.prediction is not None and r.prediction.label == f"is-{r.name}" for r in results)
    # 4 requests in flight do not fill the server's batches of 32: one image each
    assert [len(r) for r in requests] == [1] * 50
    assert sorted(name for r in requests for name in r) == sorted(p.name for p in paths)


@pytest.mark.parametrize(
    ("limits", "concurrency", "pack"),
    [
        ({"max_batch_size": 4}, 4, 8),  # batches full with 4 in flight: packs, of at most 8
        ({"max_batch_size": 4}, 3, 1),  # 3 in flight do not fill them: no packing
        ({"max_batch_size": 4, "max_images_per_request": 4}, 4, 4),  # the server's request limit
        ({"max_batch_size": 4, "max_queue_images": 12}, 4, 3),  # all in flight fit the queue
        ({"max_batch_size": 4, "max_queue_images": 4}, 32, 1),  # more workers than the queue: one each
        ({"max_batch_size": 1}, 16, 3),  # 40 images, 16 workers: packs of ceil(40 / 16), all busy
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_packs_only_when_the_requests_fill_the_batches_and_within_the_servers_limits(
    kind: str, clock: FakeClock, tmp_path: Path, limits: dict[str, int], concurrency: int, pack: int
) -> None:
    handler, requests = fake_server(limits)
    results = list(
        make_client(kind, handler, clock).predict_many(files(tmp_path, 40), concurrency=concurrency)
    )
    assert len(results) == 40 and all(r.ok for r in results)
    assert max(len(r) for r in requests) == pack
    assert sum(len(r) for r in requests) == 40


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_image_in_a_pack_fails_alone_and_the_others_are_classified(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    paths = files(tmp_path, 8)
    handler, requests = fake_server({"max_batch_size": 1}, bad={"003.jpg"})
    results = {r.name: r for r in make_client(kind, handler, clock).predict_many(paths, concurrency=1)}
    assert requests[0] == [p.name for p in paths]  # one pack of 8, refused all or nothing
    assert requests[1:] == [[p.name] for p in paths]  # then each image alone
    bad = results.pop("003.jpg")
    assert isinstance(bad.error, RejectedError) and bad.prediction is None
    assert (bad.error.status, bad.error.detail) == (422, "file #1 '003.jpg': not a decodable image")
    assert all(r.ok for r in results.values()) and len(results) == 7


@pytest.mark.parametrize("kind", KINDS)
def test_unreadable_and_oversized_files_are_reported_without_being_sent(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    good = files(tmp_path, 2)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 5000)
    missing = tmp_path / "gone.jpg"
    handler, requests = fake_server({"max_upload_bytes": 4000})
    results = {r.name: r for r in make_client(kind, handler, clock).predict_many([*good, big, missing])}
    assert sorted(name for r in requests for name in r) == ["000.jpg", "001.jpg"]
    assert isinstance(results["gone.jpg"].error, ImageReadError)
    assert str(results["gone.jpg"].error) == f"cannot read {str(missing)!r}: No such file or directory"
    err = results["big.jpg"].error
    assert isinstance(err, RejectedError)
    assert (err.status, err.attempts, err.detail) == (
        413,
        0,
        "not sent: the file is 5000 bytes; the server accepts at most 4000 bytes per request "
        "(max_upload_bytes)",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_predict_many_retries_busy_answers_and_counts_them(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    handler, requests = fake_server({"max_images_per_request": 1}, busy_first=3)
    client = make_client(kind, handler, clock)
    results = list(client.predict_many(files(tmp_path, 5), concurrency=1))
    assert all(r.ok for r in results) and len(results) == 5
    assert (len(requests), clock.sleeps, dict(client.stats.retries)) == (8, [1.0, 1.0, 1.0], {"503": 3})


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_no_image_can_pass_is_raised(kind: str, clock: FakeClock, tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=models_body())
        return error(401, "invalid API key")

    with pytest.raises(RejectedError, match="401 invalid API key"):
        list(make_client(kind, handler, clock).predict_many(files(tmp_path, 3), concurrency=2))


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_beyond_the_models_classes_is_refused_before_sending(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    handler, requests = fake_server({"num_classes": 10})
    with pytest.raises(ValueError, match=r"top_k must be between 1 and 10 \(the model's classes\), got 11"):
        list(make_client(kind, handler, clock).predict_many(files(tmp_path, 2), top_k=11))
    assert requests == []


@pytest.mark.parametrize("kind", KINDS)
def test_without_v1_models_one_image_goes_per_request(kind: str, clock: FakeClock, tmp_path: Path) -> None:
    requests: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(404, json={"detail": "Not Found"})
        requests.append(len(uploaded_files(request)))
        return ok(request)

    results = list(make_client(kind, handler, clock).predict_many(files(tmp_path, 6), concurrency=2))
    assert len(results) == 6 and all(r.ok for r in results)
    assert requests == [1] * 6


@pytest.mark.parametrize(
    "name", ["cat.jpg", 'a "quoted" name.jpg', "back\\slash.jpg", "line\nbreak.jpg", "café 猫.jpg"]
)
def test_the_multipart_body_is_the_one_httpx_would_send(name: str) -> None:
    pack = [Loaded("first", name, PHOTO), Loaded("second", "two.png", b"\x89PNG\r\n--not a boundary")]
    body, content_type = multipart_body(pack)
    reference = httpx.Request(
        "POST",
        "http://imgserve.test/predict",
        files=[("file", (i.name, i.data, "application/octet-stream")) for i in pack],
    )
    theirs = reference.headers["content-type"].split("boundary=")[1].encode()
    ours = content_type.split("boundary=")[1].encode()
    assert content_type.startswith("multipart/form-data; boundary=")
    assert body.replace(ours, theirs) == reference.read()
