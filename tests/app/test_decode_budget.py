"""Admission by decoded pixels and the fair decode scheduler (issue 16), in process."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest
from PIL import Image

from app.inference.errors import (
    DecodeBusyError,
    ImageTooLargeError,
    RequestTooLargeError,
    UndecodableImageError,
)
from app.inference.model import DecodeBudget, Decoder, NamedImage
from app.inference.preprocess import ImageLimits, probe
from app.inference.scheduler import FairScheduler, Job
from model_card import Preprocessing

SPEC = Preprocessing(resize_size=256, crop_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
LIMITS = ImageLimits(frozenset({"JPEG", "PNG", "WEBP", "GIF"}), 25_000_000)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_a_phone_jpeg_counts_the_pixels_draft_mode_decodes() -> None:
    """4000x3000 with resize 256: libjpeg decodes at 1/4 (short side 750 >= 512), 0.75 MP."""
    data = encode(Image.new("RGB", (4000, 3000), (1, 2, 3)), "JPEG")
    cost = probe(data, SPEC, LIMITS, "phone")
    assert (cost.width, cost.height, cost.pixels) == (4000, 3000, 1000 * 750)
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (512, 512))
        assert image.size == (1000, 750)  # what Pillow's draft mode really picks
    assert probe(data, SPEC, LIMITS, "phone", exact=True).pixels == 12_000_000


def test_an_animation_counts_one_frame_and_a_bomb_is_refused_from_its_header() -> None:
    frames = [Image.new("RGB", (300, 200), (i, 0, 0)) for i in range(50)]
    for fmt in ("GIF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        assert probe(data, SPEC, LIMITS, fmt).pixels == 300 * 200, fmt
    bomb = encode(Image.new("1", (6000, 6000)), "PNG")  # a few KB, 36 MP
    with pytest.raises(
        ImageTooLargeError, match=r"36000000 pixels, over the limit of 25000000 pixels per image"
    ):
        probe(bomb, SPEC, LIMITS, "bomb")


async def _decoder(budget: DecodeBudget, threads: int = 2) -> Decoder:
    decoder = Decoder(threads, LIMITS, budget=budget)
    decoder.start()
    return decoder


def test_the_request_and_process_budgets_refuse_and_give_back() -> None:
    flat = encode(Image.new("RGB", (2000, 1000), (9, 9, 9)), "PNG")  # 2 MP
    images = [NamedImage(f"#{i}", flat) for i in range(3)]

    async def scenario() -> None:
        decoder = await _decoder(DecodeBudget(max_request_pixels=5_000_000, max_decoding_pixels=6_000_000))
        try:
            with pytest.raises(RequestTooLargeError) as too_large:
                await decoder.admit(images, SPEC)
            assert too_large.value.message == (
                "the request's 3 images decode to 6000000 pixels, over the budget of 5000000 pixels per "
                "request (max_request_pixels); send fewer or smaller images per request"
            )
            first = await decoder.admit(images[:2], SPEC)
            assert decoder.decoding_pixels == 4_000_000
            with pytest.raises(DecodeBusyError, match=r"over the process budget of 6000000 pixels") as busy:
                await decoder.admit(images[:2], SPEC)
            assert busy.value.retry_after_s >= 1
            with first:
                arrays = await decoder.decode_all(first)
            assert [a.shape for a in arrays] == [(224, 224, 3)] * 2
            assert decoder.decoding_pixels == 0
            with await decoder.admit(images[:2], SPEC):
                assert decoder.decoding_pixels == 4_000_000
            assert decoder.decoding_pixels == 0  # given back unused, e.g. on a queue-full refusal
        finally:
            decoder.stop()

    asyncio.run(scenario())


def test_the_scheduler_takes_one_job_of_each_request_in_turn_and_keeps_a_thread_from_heavy_jobs() -> None:
    order: list[str] = []
    lock = threading.Lock()

    def job(name: str, seconds: float = 0.02) -> Job:
        def run() -> str:
            with lock:
                order.append(name)
            time.sleep(seconds)
            return name

        return Job(run, heavy=name.startswith("heavy"))

    async def scenario() -> None:
        scheduler = FairScheduler(threads=2)
        scheduler.start()
        try:
            heavy = asyncio.ensure_future(scheduler.run("a", [job(f"heavy{i}", 0.1) for i in range(4)]))
            await asyncio.sleep(0.01)
            light = asyncio.ensure_future(scheduler.run("b", [job(f"light{i}") for i in range(3)]))
            c = asyncio.ensure_future(scheduler.run("c", [job("c0")]))
            started = time.perf_counter()
            assert await light == ["light0", "light1", "light2"]
            await c
            # One thread was left to light work: it did not wait for a heavy image (0.1 s each).
            assert time.perf_counter() - started < 0.35
            assert await heavy == [f"heavy{i}" for i in range(4)]
        finally:
            scheduler.stop()

    asyncio.run(scenario())
    # Heavy jobs ran one at a time (the lane of threads - 1); c, arriving behind b, waited for
    # one job of b's, not for all of them.
    assert order.index("c0") < order.index("light2"), order
    assert order.index("heavy1") > order.index("light0")


def test_one_image_is_probed_admitted_and_decoded_in_one_job_with_the_same_checks() -> None:
    photo = encode(Image.radial_gradient("L").convert("RGB").resize((500, 375)), "JPEG")
    flat = encode(Image.new("RGB", (2000, 1000), (9, 9, 9)), "PNG")  # 2 MP
    heavy = encode(Image.new("RGB", (2500, 2000), (9, 9, 9)), "PNG")  # 5 MP: the heavy lane

    async def scenario() -> None:
        decoder = await _decoder(DecodeBudget(max_request_pixels=4_000_000, max_decoding_pixels=5_000_000))
        jobs: list[int] = []
        run = decoder._scheduler.run

        async def counting_run(owner: object, batch: list[Job]) -> list[object]:
            jobs.append(len(batch))
            return await run(owner, batch)

        decoder._scheduler.run = counting_run  # type: ignore[method-assign]
        try:
            with await decoder.admit([NamedImage("a", photo)], SPEC) as admission:
                [expected] = await decoder.decode_all(admission)
            jobs.clear()
            array = await decoder.decode_one(NamedImage("a", photo), SPEC)
            assert jobs == [1]  # one job, where admit + decode_all take two
            assert (array == expected).all()
            assert decoder.decoding_pixels == 0
            with pytest.raises(RequestTooLargeError, match=r"5000000 pixels, over the budget of 4000000"):
                await decoder.decode_one(NamedImage("big", heavy), SPEC)
            held = await decoder.admit([NamedImage("held", flat), NamedImage("held", flat)], SPEC)
            with held, pytest.raises(DecodeBusyError, match=r"4000000 pixels are waiting"):
                await decoder.decode_one(NamedImage("b", flat), SPEC)
            with pytest.raises(UndecodableImageError, match=r"^bad: not a decodable image"):
                await decoder.decode_one(NamedImage("bad", b"not an image"), SPEC)
            assert decoder.decoding_pixels == 0
        finally:
            decoder.stop()

    asyncio.run(scenario())


def test_a_heavy_lone_image_is_decoded_in_the_heavy_lane() -> None:
    heavy = encode(Image.new("RGB", (2500, 2000), (9, 9, 9)), "PNG")  # 5 MP
    lanes: list[bool] = []

    async def scenario() -> None:
        decoder = await _decoder(DecodeBudget(max_request_pixels=25_000_000, max_decoding_pixels=25_000_000))
        run = decoder._scheduler.run

        async def recording_run(owner: object, batch: list[Job]) -> list[object]:
            lanes.extend(job.heavy for job in batch)
            return await run(owner, batch)

        decoder._scheduler.run = recording_run  # type: ignore[method-assign]
        try:
            array = await decoder.decode_one(NamedImage("heavy", heavy), SPEC)
            assert array.shape == (224, 224, 3)
            assert decoder.decoding_pixels == 0
        finally:
            decoder.stop()

    asyncio.run(scenario())
    assert lanes == [False, True]  # the header in a light job, the pixels in the heavy lane


def test_heavy_requests_cannot_spend_the_part_kept_for_light_ones() -> None:
    """max_decoding_pixels 12 MP of which 4 MP kept for light requests (<= 4 MP in all): a
    second 5-MP request is refused (10 MP > 12 - 4), two 3-MP ones still fit (11 MP)."""
    heavy = NamedImage("heavy", encode(Image.new("RGB", (2500, 2000), (9, 9, 9)), "PNG"))  # 5 MP
    light = NamedImage("light", encode(Image.new("RGB", (1000, 1000), (9, 9, 9)), "PNG"))  # 1 MP

    async def scenario() -> None:
        budget = DecodeBudget(
            max_request_pixels=5_000_000, max_decoding_pixels=12_000_000, light_reserved_pixels=4_000_000
        )
        decoder = await _decoder(budget)
        try:
            with await decoder.admit([heavy], SPEC):
                with pytest.raises(DecodeBusyError) as busy:
                    await decoder.admit([heavy], SPEC)
                assert (
                    "over the process budget of 12000000 pixels (max_decoding_pixels) less the 4000000 kept "
                    in (busy.value.message)
                )
                first = await decoder.admit([light, light, light], SPEC)
                second = await decoder.admit([light, light, light], SPEC)  # past the 8 MP heavy ones may
                with first, second:
                    assert decoder.decoding_pixels == 11_000_000
        finally:
            decoder.stop()

    asyncio.run(scenario())
