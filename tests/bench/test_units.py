"""The benchmark's own arithmetic and request bodies: wrong here means wrong figures everywhere."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from python_multipart.multipart import MultipartParser, parse_options_header

from bench.run import parse_cpus
from bench.servers import metrics_delta
from bench.workloads import multipart_body, resize_crop
from harness.loadgen import Target, build_requests, header, percentile
from harness.metrics import parse_prometheus
from harness.nginx import write_local_config

METRICS_BEFORE = """\
# HELP imgserve_batch_size Images per model run.
# TYPE imgserve_batch_size histogram
imgserve_batch_size_bucket{le="1.0"} 3.0
imgserve_batch_size_bucket{le="+Inf"} 10.0
imgserve_batch_size_count 10.0
imgserve_batch_size_sum 100.0
# TYPE imgserve_images_total counter
imgserve_images_total 100.0
process_cpu_seconds_total 4.5
"""
METRICS_AFTER = (
    METRICS_BEFORE.replace("_count 10.0", "_count 14.0")
    .replace("_sum 100.0", "_sum 196.0")
    .replace("imgserve_images_total 100.0", "imgserve_images_total 196.0")
)


def test_metrics_delta_gives_the_mean_batch_size_of_the_window() -> None:
    delta = metrics_delta(parse_prometheus(METRICS_BEFORE), parse_prometheus(METRICS_AFTER))
    assert (delta.batches, delta.batched_images, delta.images_processed) == (4.0, 96.0, 96.0)
    assert delta.mean_batch_size == 24.0


def test_metrics_delta_without_server_metrics_is_empty() -> None:
    delta = metrics_delta({}, {})
    assert (delta.batches, delta.images_processed, delta.mean_batch_size) == (None, None, None)


def test_parse_prometheus_keeps_labels_apart() -> None:
    samples = parse_prometheus(METRICS_BEFORE)
    assert samples['imgserve_batch_size_bucket{le="+Inf"}'] == 10.0
    assert samples["process_cpu_seconds_total"] == 4.5


def test_percentile_is_nearest_rank() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(latencies, 50) == pytest.approx(0.050)
    assert percentile(latencies, 99) == pytest.approx(0.099)
    assert percentile(latencies, 100) == pytest.approx(0.100)
    assert percentile(latencies, 0) == pytest.approx(0.001)
    assert percentile([0.007], 99) == pytest.approx(0.007)
    ten = list(range(1, 11))
    assert percentile(ten, 91) == 10  # rank ceil(9.1): the smallest value with 91% at or below
    assert percentile(ten, 90) == 9  # exactly 90% of the values are at or below 9
    assert percentile(list(range(1, 1001)), 99.9) == 999  # 99.9% of 1000 is 999.0000000000001 in floats
    assert percentile(ten[::-1], 50) == 5  # unsorted input


def test_multipart_body_parses_back_to_the_same_images() -> None:
    images = [b"\xff\xd8first\r\n--not-a-boundary", b"\x89PNGsecond"]
    body, content_type = multipart_body([(images[0], "image/jpeg"), (images[1], "image/png")])
    _, options = parse_options_header(content_type)
    parts: list[bytearray] = []
    callbacks = {
        "on_part_begin": lambda: parts.append(bytearray()),
        "on_part_data": lambda data, start, end: parts[-1].extend(data[start:end]),
    }
    parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
    parser.write(body)
    parser.finalize()
    assert [bytes(p) for p in parts] == images


def test_request_bytes_have_the_exact_content_length() -> None:
    target = Target(
        "http://127.0.0.1:8000/predict?top_k=1", [(b"abc\r\n\r\nxyz", "image/jpeg"), (b"", "image/png")]
    )
    first, second = build_requests(target)
    head, body = first.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /predict?top_k=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Content-Type: image/jpeg" in head and b"Content-Length: 10" in head and body == b"abc\r\n\r\nxyz"
    assert second.endswith(b"Content-Type: image/png\r\nContent-Length: 0\r\n\r\n")


def test_header_reads_a_response_header_whatever_its_case() -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nRetry-After:  1\r\n\r\n"
    assert header(head, "retry-after") == "1"
    assert header(head, "x-missing") is None


def test_resize_crop_gives_the_exact_size() -> None:
    image = Image.new("RGB", (640, 427))
    assert resize_crop(image, 500, 375).size == (500, 375)
    assert resize_crop(image, 4000, 3000).size == (4000, 3000)
    buffer = io.BytesIO()
    resize_crop(image, 512, 512).save(buffer, "PNG")
    assert Image.open(buffer).size == (512, 512)


def test_parse_cpus_reads_taskset_lists() -> None:
    assert parse_cpus("0") == [0]
    assert parse_cpus("0,2-4") == [0, 2, 3, 4]


def test_nginx_config_points_the_shipped_site_at_local_replicas(tmp_path: Path) -> None:
    conf = write_local_config(tmp_path, 18080, [18081, 18082]).read_text()
    for port in (18081, 18082):  # the shipped upstream parameters are kept
        assert f"server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;" in conf
    assert "listen 127.0.0.1:18080;" in conf
    assert f"access_log {tmp_path}/access.log" in conf and f"error_log {tmp_path}/error.log" in conf
    directives = [line.split("#")[0] for line in conf.splitlines()]
    assert not any("app:8000" in line or "listen 80;" in line for line in directives)
    assert "proxy_next_upstream error timeout;" in conf  # the rest is what ships
