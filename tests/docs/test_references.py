"""docs/reference/ is what scripts/references.py writes from the code today."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("references", REPO_ROOT / "scripts" / "references.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def references() -> ModuleType:
    return load_generator()


def test_the_committed_references_are_what_the_code_generates(references: ModuleType) -> None:
    stale = [
        str(path.relative_to(REPO_ROOT))
        for path, text in references.generate().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"{stale} differ from the code: run `make references` and commit them"


def test_every_setting_is_in_the_reference_with_a_description() -> None:
    from app.config import Settings

    text = (REPO_ROOT / "docs" / "reference" / "settings.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description (Field(description=...))"
        assert f"| `IMGSERVE_{name.upper()}` |" in text


def test_every_metric_is_in_the_reference(references: ModuleType) -> None:
    text = (REPO_ROOT / "docs" / "reference" / "metrics.md").read_text()
    rows = list(references.metric_rows())
    names = {name for name, _, _, _ in rows}
    assert {"imgserve_http_requests_total", "imgserve_model_info", "imgserve_ready"} <= names
    for name, kind, _labels, doc in rows:
        assert doc, f"{name} has no help text"
        assert f"| `{name}` | {kind} |" in text
    # labels come from the registry itself: the request counter's four
    labels_of = {name: labels for name, _, labels, _ in rows}
    assert labels_of["imgserve_http_requests_total"] == ["route", "method", "status", "protocol"]
    assert {"name", "provider", "version"} <= set(labels_of["imgserve_model_info"])


def test_every_openapi_route_is_in_the_reference(references: ModuleType) -> None:
    text = (REPO_ROOT / "docs" / "reference" / "routes.md").read_text()
    document = references.openapi_document()
    assert "/v2/repository/index" in document["paths"]
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"| `{method.upper()}` | `{path}` |" in text
