"""requirements.lock agrees with pyproject.toml, and every install path uses it.

The resolver's own check (scripts/lock.sh --check: a fresh resolution must equal the lock)
needs PyPI and runs in .ci/run; these checks need nothing but the files.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.conftest import REPO_ROOT

LOCK = REPO_ROOT / "requirements.lock"
# Where the lock is read: the set-up behind make serve and make test, and the images.
INSTALLERS = [REPO_ROOT / "scripts" / "bootstrap.sh", REPO_ROOT / "Dockerfile"]


def locked() -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, sha256 hashes), from the lock's `name==version \\ --hash=...` stanzas."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    for stanza in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", stanza)
        if match:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", stanza)
            pins[canonicalize_name(match.group(1))] = (Version(match.group(2)), hashes)
    return pins


def declared(pyproject: Path) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return [Requirement(r) for r in requirements]


def test_every_declared_requirement_is_locked_at_a_version_it_allows() -> None:
    pins = locked()
    assert len(pins) > 100, "the lock looks truncated"
    wrong = []
    for pyproject in (REPO_ROOT / "pyproject.toml", REPO_ROOT / "client" / "pyproject.toml"):
        where = pyproject.relative_to(REPO_ROOT)
        for requirement in declared(pyproject):
            name = canonicalize_name(requirement.name)
            if name not in pins:
                wrong.append(f"{requirement} ({where}): not in the lock")
            elif not requirement.specifier.contains(pins[name][0], prereleases=True):
                wrong.append(f"{requirement} ({where}): locked at {pins[name][0]}")
    assert not wrong, "run scripts/lock.sh (make lock):\n" + "\n".join(wrong)


def test_every_pin_has_hashes() -> None:
    assert not [name for name, (_, hashes) in locked().items() if not hashes]


def test_the_lock_was_made_by_the_documented_command() -> None:
    assert "#    scripts/lock.sh\n" in LOCK.read_text()[:200]


@pytest.mark.parametrize("name", ["uvicorn", "httptools"])
def test_the_edge_pins_are_exact_and_locked(name: str) -> None:
    # app/edge.py relies on uvicorn's httptools protocol (tests/edge/test_uvicorn_contract.py).
    (requirement,) = [r for r in declared(REPO_ROOT / "pyproject.toml") if r.name == name]
    (spec,) = requirement.specifier
    assert spec.operator == "=="
    assert locked()[name][0] == Version(spec.version)


def test_the_install_paths_read_the_lock() -> None:
    for installer in INSTALLERS:
        text = installer.read_text()
        assert "requirements.lock" in text, installer
        assert re.search(r"(-c|--constraint) requirements\.lock", text), installer
    assert "!requirements.lock" in (REPO_ROOT / ".dockerignore").read_text().splitlines()
    # The stamp covers the lock, so a new lock installs again.
    assert "requirements.lock | sha256sum" in (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()


def test_the_license_is_an_spdx_expression() -> None:
    # A TOML table here is deprecated by setuptools and warns on every install.
    for pyproject in (REPO_ROOT / "pyproject.toml", REPO_ROOT / "client" / "pyproject.toml"):
        assert tomllib.loads(pyproject.read_text())["project"]["license"] == "Apache-2.0"
