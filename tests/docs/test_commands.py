"""Every shell block of the README and the docs is run, or marked as an example.

A `bash` block is one of three kinds:

- plain: run here, in order, one shell per page (a page is read top to bottom, so a variable set
  in one block is there in the next), against a real server with the default model on a free
  port (``localhost:8000`` in the text). It must exit 0, and when a ``json`` block follows it
  (before the next shell block) that is the last JSON it prints, probabilities to 1e-4;
- ``{ data-test="tests/...py" }``: run by that test, which must exist and read that page;
- ``{ .illustrative }``: an example the tests do not run (a cluster, a container build, a long
  training run); the site shows it with an "example" label.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.server import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELLS = {"bash", "sh", "shell", "console"}
BLOCK_END = "@@imgserve-docs-block-end@@"


@dataclass
class Block:
    page: Path
    attributes: str
    text: str
    expected_json: str | None


def blocks(page: Path) -> list[Block]:
    """The page's shell blocks, each with the json block that follows it, if any."""
    found: list[Block] = []
    for match in FENCE.finditer(page.read_text()):
        language, attributes, text = match.groups()
        if language in SHELLS:
            found.append(Block(page, attributes.strip(), text, None))
        elif language == "json" and found and found[-1].expected_json is None:
            found[-1].expected_json = text
    return found


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if not b.attributes]


def name(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def test_every_shell_block_is_run_or_marked() -> None:
    unknown = [
        f"{name(b.page)}: {b.text.splitlines()[0]!r} has {b.attributes!r}"
        for page in PAGES
        for b in blocks(page)
        if b.attributes
        and b.attributes != "{ .illustrative }"
        and not b.attributes.startswith("{ data-test=")
    ]
    assert not unknown, unknown
    assert sum(len(runnable(page)) for page in PAGES) >= 4  # the README's curl among them


def test_blocks_run_by_another_test_name_a_test_that_reads_them() -> None:
    for page in PAGES:
        for block in blocks(page):
            match = re.fullmatch(r'\{ data-test="([^"]+)" \}', block.attributes)
            if match:
                test = REPO_ROOT / match.group(1)
                assert test.is_file(), f"{name(page)} names {test}, which does not exist"
                assert "README.md" in test.read_text(), test
                # a page repeating the README's block repeats it exactly
                readme = {b.text for b in blocks(REPO_ROOT / "README.md") if b.attributes == block.attributes}
                assert block.text in readme, f"{name(page)}: the block differs from the README's"


def same(expected: Any, got: Any) -> bool:
    if isinstance(expected, float) and isinstance(got, float):
        return math.isclose(expected, got, abs_tol=1e-4)
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(same(expected[k], got[k]) for k in expected)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(same(e, g) for e, g in zip(expected, got, strict=True))
    return bool(expected == got)


def last_json(output: str) -> Any:
    """The last JSON value of the output (curl ends its output with no newline, so two answers
    may share a line)."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while (start := output.find("{", index)) != -1:
        value, index = decoder.raw_decode(output, start)
        values.append(value)
    assert values, f"no JSON in {output!r}"
    return values[-1]


@pytest.fixture(scope="module")
def server(start_module_server: Any, default_model_path: Path) -> ServerProcess:
    server: ServerProcess = start_module_server(default_model_path)
    return server


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=name)
def test_the_pages_shell_blocks_run_as_written(page: Path, server: ServerProcess, tmp_path: Path) -> None:
    page_blocks = runnable(page)
    script = "set -euo pipefail\ncd " + str(REPO_ROOT) + "\n"
    for block in page_blocks:
        text = block.text.replace("localhost:8000", f"127.0.0.1:{server.port}")
        script += f"{text}\necho\necho {BLOCK_END}\n"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{name(page)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    outputs = done.stdout.split(BLOCK_END + "\n")[: len(page_blocks)]
    assert len(outputs) == len(page_blocks)
    for block, output in zip(page_blocks, outputs, strict=True):
        if block.expected_json is None:
            continue
        expected, got = json.loads(block.expected_json), last_json(output)
        assert same(expected, got), (
            f"{name(page)}: {block.text.splitlines()[-1]}\nshown: {expected}\nserved: {got}"
        )
