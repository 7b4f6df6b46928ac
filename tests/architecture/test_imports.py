"""The arrows that must never exist (docs/ARCHITECTURE.md), checked on every module's imports.

An AST walk over the source (every ``import`` and ``from ... import``, relative ones resolved,
including those inside functions), plus one fresh interpreter that imports the whole server
and proves PyTorch never loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HTTP_MODULES = ("fastapi", "starlette", "uvicorn", "h11", "httptools", "httpx", "http", "urllib", "grpc")
TRAINING_MODULES = ("torch", "torchvision", "timm", "onnx", "onnxscript", "tensorboard")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                found.add(node.module)
    return found


def package_imports(package: str) -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def is_in(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def violations(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in package_imports(package).items()
        for name in names
        if is_in(name, forbidden) and not is_in(name, allowed)
    )


def test_the_walk_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    """The checker itself: a violation hidden in a function or behind a relative import is found."""
    assert "app.inference.batcher" in imports_of(REPO_ROOT / "app" / "inference" / "model.py")
    assert "model_export.data" in imports_of(REPO_ROOT / "model_export" / "evaluate.py")
    source = REPO_ROOT / "app" / "inference" / "_probe_for_the_test.py"
    source.write_text("def f():\n    import fastapi\n    from ..api import deps\n")
    try:
        assert {"fastapi", "app.api"} <= imports_of(source)
        assert "app.inference._probe_for_the_test imports fastapi" in violations(
            "app/inference", HTTP_MODULES
        )
    finally:
        source.unlink()


def test_the_server_imports_no_training_code() -> None:
    assert violations("app", (*TRAINING_MODULES, "model_export", "harness", "bench", "tests")) == []


def test_the_inference_core_knows_no_protocol() -> None:
    """app.inference: no HTTP or gRPC module, and nothing of app outside the core."""
    assert violations("app/inference", (*HTTP_MODULES, "app"), allowed=("app.inference",)) == []


def test_the_export_stage_imports_nothing_from_the_server() -> None:
    assert violations("model_export", ("app", "harness", "bench", "tests")) == []


def test_the_card_package_imports_neither_stage() -> None:
    names = {name for found in package_imports("model_card").values() for name in found}
    third_party = {name.split(".")[0] for name in names if name.split(".")[0] not in sys.stdlib_module_names}
    assert third_party <= {"pydantic", "model_card"}, third_party


@pytest.mark.timeout(120)
def test_serving_never_loads_pytorch() -> None:
    code = (
        "import sys, app.main, app.server, app.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{(*TRAINING_MODULES, 'model_export')!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_client_needs_only_httpx_and_the_server_never_imports_it() -> None:
    """imgserve_client installs on its own: the standard library, httpx, and for the CLI tqdm and
    Pillow (the --explain overlays, imported only when they are drawn)."""
    names = {name for found in package_imports("client/imgserve_client").values() for name in found}
    third_party = {name.split(".")[0] for name in names if name.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == {"httpx", "tqdm", "PIL", "imgserve_client"}, third_party
    assert violations("app", ("imgserve_client",)) == []


@pytest.mark.timeout(120)
def test_the_client_loads_nothing_of_the_server() -> None:
    code = (
        "import sys, imgserve_client, imgserve_client.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'app', 'model_card', 'fastapi', 'starlette', 'pydantic', 'numpy', 'PIL', 'onnxruntime'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# The front ends and the code they share (docs/ARCHITECTURE.md, "Front ends over one dataplane").
FRONT_ENDS = ("app.api", "app.v2")
# REST's statuses once lived in app/errors.py, where shared code raised them: that name stays
# a front end's, should it come back.
REST_ERRORS = ("app.errors",)
PROTOCOL_FREE = ("app.dataplane", "app.security", "app.state")
# What assembles the app (routers, the lifespan that starts gRPC) may import every front end.
COMPOSITION = ("app.main", "app.lifespan", "app.server", "app.__main__")


def test_front_ends_are_peers() -> None:
    """No front end imports another: a new protocol is a new package, not a copy of an old one."""
    found = [
        f"{module} imports {name}"
        for front_end in FRONT_ENDS
        for module, names in package_imports(front_end.replace(".", "/")).items()
        for name in names
        if is_in(name, FRONT_ENDS) and not is_in(name, (front_end,))
    ]
    assert found == []


def test_shared_code_imports_no_front_end() -> None:
    """The dataplane, app/http, the core, and the budgets, keys and middleware they rest on."""
    shared = [module for module in package_imports("app") if not is_in(module, (*FRONT_ENDS, *COMPOSITION))]
    found = sorted(
        f"{module} imports {name}"
        for module, names in package_imports("app").items()
        if module in shared
        for name in names
        if is_in(name, (*FRONT_ENDS, *REST_ERRORS))
    )
    assert found == []


def test_the_request_path_knows_no_protocol() -> None:
    """The dataplane, the API keys and the app state: no web framework, no gRPC, no HTTP layer;
    each front end maps their errors to its own terms."""
    imports = package_imports("app")
    found = sorted(
        f"{module} imports {name}"
        for module in PROTOCOL_FREE
        for name in imports.get(module, set())
        if is_in(name, (*HTTP_MODULES, *FRONT_ENDS, "app.http", *REST_ERRORS))
    )
    assert found == []
