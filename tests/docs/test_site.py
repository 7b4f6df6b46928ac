"""The documentation site builds with `mkdocs build --strict` (make docs), and reaches every page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
yaml = pytest.importorskip("yaml")


def mkdocs() -> str:
    found = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("mkdocs not installed (the dev extra brings it)")
    return found


def build(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mkdocs(), "build", "--strict", "--config-file", str(config), "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )


def test_the_site_builds_strict(tmp_path: Path) -> None:
    done = build(tmp_path, REPO_ROOT / "mkdocs.yml")
    assert done.returncode == 0, done.stderr[-4000:]
    for page in ("index.html", "kserve/index.html", "reference/settings/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    assert "IMGSERVE_MAX_QUEUE_IMAGES" in settings


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    # The strictness is real: a copy of the docs with one link to a page that does not exist.
    docs = tmp_path / "docs"
    shutil.copytree(REPO_ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((REPO_ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}"))
    done = build(tmp_path, config)
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr


def test_every_page_is_in_the_nav_and_the_readme_links_every_topic() -> None:
    config = yaml.load((REPO_ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        return []

    listed = pages(config["nav"])
    in_nav = set(listed)
    assert len(listed) == len(in_nav), "a page is in the nav twice"
    on_disk = {str(p.relative_to(REPO_ROOT / "docs")) for p in (REPO_ROOT / "docs").rglob("*.md")}
    assert on_disk == in_nav
    readme = (REPO_ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)", readme))
    assert in_nav - {"index.md"} <= linked, in_nav - {"index.md"} - linked
    assert len(readme.encode()) <= 10 * 1024
