"""Settings: environment parsing, defaults and validation that fails at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.__main__ import describe_settings_errors, unknown_setting_names
from app.config import Settings, default_cpu_count
from app.inference.batcher import powers_of_two_up_to


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("IMGSERVE_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.model_path == Path("models/default/model.onnx")
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 8000, "info")
    # the batch cap and the warm-up sizes are the execution provider's (see test_model_control)
    assert (settings.max_batch_size, settings.max_delay_ms, settings.max_queue_images) == (0, 5.0, 256)
    assert settings.warmup_batch_sizes is None
    assert settings.allowed_formats == ["JPEG", "PNG", "WEBP", "BMP", "GIF"]
    assert (settings.max_upload_bytes, settings.max_images_per_request, settings.max_image_pixels) == (
        20 * 1024 * 1024,
        32,
        25_000_000,
    )
    assert (settings.max_request_pixels, settings.max_decoding_pixels) == (100_000_000, 200_000_000)
    assert settings.max_buffered_body_bytes == 256 * 1024 * 1024
    assert (settings.shutdown_delay_s, settings.drain_timeout_s) == (0.0, 30.0)
    assert settings.api_keys == [] and not settings.auth_enabled
    assert settings.docs_public is True and settings.cors_origins == []
    assert settings.decode_threads >= 1 and settings.require_cuda is False


def test_environment_with_prefix_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSERVE_MAX_BATCH_SIZE", "12")
    monkeypatch.setenv("IMGSERVE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("IMGSERVE_ALLOWED_FORMATS", "jpg, png")
    monkeypatch.setenv("IMGSERVE_API_KEYS", "key-one,key-two")
    monkeypatch.setenv("IMGSERVE_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("IMGSERVE_WARMUP_BATCH_SIZES", "1,12")
    settings = Settings()
    assert settings.max_batch_size == 12 and settings.log_level == "debug"
    assert settings.allowed_formats == ["JPEG", "PNG"]
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-one", "key-two"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.warmup_batch_sizes == [1, 12]
    assert "key-one" not in repr(settings) and "key-one" not in str(settings.public_summary())


def test_cpu_count_follows_a_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert default_cpu_count(cpu_max) == min(2, default_cpu_count(tmp_path / "missing"))
    cpu_max.write_text("max 100000\n")
    assert default_cpu_count(cpu_max) == default_cpu_count(tmp_path / "missing")


def test_unknown_imgserve_variables_are_reported() -> None:
    environ = {
        "IMGSERVE_MAX_BATCH_SIZE": "8",
        "IMGSERVE_MAX_BATCHSIZE": "8",
        "IMGSERVE_CLIENT_URL": "http://127.0.0.1:8000",  # the client's, not a typo
        "PATH": "/bin",
    }
    assert unknown_setting_names(environ) == ["IMGSERVE_MAX_BATCHSIZE"]


def test_keys_file_adds_to_env_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# rotated 2026-11\nfile-key-1\n\n  file-key-2  \n")
    monkeypatch.setenv("IMGSERVE_API_KEYS", "env-key")
    monkeypatch.setenv("IMGSERVE_API_KEYS_FILE", str(keys))
    assert [k.get_secret_value() for k in Settings().api_keys] == ["env-key", "file-key-1", "file-key-2"]


@pytest.mark.parametrize("size,expected", [(1, [1]), (5, [1, 2, 4, 5]), (32, [1, 2, 4, 8, 16, 32])])
def test_warmup_defaults_to_powers_of_two(size: int, expected: list[int]) -> None:
    assert powers_of_two_up_to(size) == expected
    assert Settings(max_batch_size=size, max_images_per_request=1).warmup_batch_sizes == expected


def test_a_single_warmup_size_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSERVE_WARMUP_BATCH_SIZES", "1")
    assert Settings().warmup_batch_sizes == [1]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"IMGSERVE_MAX_BATCH_SIZE": "-1"},
            "IMGSERVE_MAX_BATCH_SIZE: Input should be greater than or equal to 0 (got '-1')",
        ),
        ({"IMGSERVE_PORT": "http"}, "IMGSERVE_PORT: Input should be a valid integer"),
        (
            {"IMGSERVE_LOG_LEVEL": "loud"},
            "IMGSERVE_LOG_LEVEL: Input should be 'debug', 'info', 'warning', 'error' or 'critical'",
        ),
        (
            {"IMGSERVE_ALLOWED_FORMATS": "png,tiff"},
            "IMGSERVE_ALLOWED_FORMATS: unsupported image format(s) ['TIFF']; "
            "choose from ['JPEG', 'PNG', 'WEBP', 'BMP', 'GIF']",
        ),
        (
            {"IMGSERVE_MAX_IMAGES_PER_REQUEST": "300"},
            "settings: max_images_per_request (300) exceeds max_queue_images (256): "
            "such a request could never be admitted",
        ),
        (
            {"IMGSERVE_SHUTDOWN_DELAY_S": "40"},
            "settings: shutdown_delay_s (40.0) must be less than drain_timeout_s (30.0), "
            "which bounds the whole shutdown",
        ),
        (
            {"IMGSERVE_WARMUP_BATCH_SIZES": "1,64", "IMGSERVE_MAX_BATCH_SIZE": "32"},
            "settings: warmup_batch_sizes [64] are outside 1..max_batch_size (32)",
        ),
        (
            {"IMGSERVE_WARMUP_BATCH_SIZES": "0,2048"},
            "settings: warmup_batch_sizes [0, 2048] are outside 1..max_batch_size (1024)",
        ),
        (
            {"IMGSERVE_API_KEYS_FILE": "/nonexistent/keys"},
            "settings: api_keys_file '/nonexistent/keys' cannot be read: No such file or directory",
        ),
        (
            {"IMGSERVE_API_KEYS": "good-key,bad key"},
            "IMGSERVE_API_KEYS: an API key in IMGSERVE_API_KEYS is empty or contains whitespace",
        ),
        (
            {"IMGSERVE_REQUEST_TIMEOUT_S": "0"},
            "IMGSERVE_REQUEST_TIMEOUT_S: Input should be greater than 0 (got '0')",
        ),
        (
            {"IMGSERVE_GRPC_PORT": "8000"},
            "settings: grpc_port (8000) must differ from port (8000); 0 turns gRPC off",
        ),
        (
            {"IMGSERVE_HEADER_TIMEOUT_S": "3"},
            "settings: keep_alive_timeout_s (5) exceeds header_timeout_s (3.0), "
            "which also runs between keep-alive requests",
        ),
        (
            {"IMGSERVE_LINGERING_TIMEOUT_S": "60"},
            "settings: lingering_timeout_s (60.0) exceeds lingering_time_s (30.0), "
            "the bound on the whole lingering close",
        ),
        (
            {"IMGSERVE_MAX_HEADER_BYTES": "100"},
            "IMGSERVE_MAX_HEADER_BYTES: Input should be greater than or equal to 1024 (got '100')",
        ),
        (
            {"IMGSERVE_GRPC_PORT": "70000"},
            "IMGSERVE_GRPC_PORT: Input should be less than or equal to 65535 (got '70000')",
        ),
    ],
)
def test_bad_values_fail_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    described = describe_settings_errors(excinfo.value)
    assert described.startswith("invalid settings (1 error(s)):\n  ")
    assert message in described
    assert "bad key" not in described
