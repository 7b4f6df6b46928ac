"""pip-audit over the serving dependencies only: the project's base dependencies plus the
``cpu`` extra (what the serving image installs), resolved by pip as a fresh install would be.

    python -m reliability.audit_deps                 # exit 1 on a known vulnerability with a fix
    python -m reliability.audit_deps --extra gpu     # the GPU image's set

Exit status: 0 clean (or only vulnerabilities without a fixed version, listed as warnings);
1 a vulnerability that has a fix; 2 the audit could not run or could not look up some
packages (a silent "no known vulnerabilities" for packages nobody checked is not a pass).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.server import REPO_ROOT


def resolve(extra: str, workdir: Path) -> list[tuple[str, str]]:
    """(name, version) of every package ``pip install .[extra]`` would install, minus the project."""
    report = workdir / "resolve.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), f"{REPO_ROOT}[{extra}]"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    installs = json.loads(report.read_text())["install"]
    return sorted(
        (i["metadata"]["name"], i["metadata"]["version"])
        for i in installs
        if i["metadata"]["name"] != "imgserve"
    )


def audit(pins: list[tuple[str, str]], workdir: Path) -> dict[str, object]:
    requirements = workdir / "requirements.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in pins))
    proc = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps", "--disable-pip",
         "--progress-spinner", "off", "--format", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    try:
        return json.loads(proc.stdout)  # type: ignore[no-any-return]
    except json.JSONDecodeError:
        raise RuntimeError(f"pip-audit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reliability.audit_deps", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--extra", default="cpu", help="the ONNX Runtime extra of the image (default cpu)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pins = resolve(args.extra, Path(tmp))
        print(f"serving dependencies (base + [{args.extra}]): {len(pins)} packages")
        try:
            result = audit(pins, Path(tmp))
        except RuntimeError as exc:
            print(exc)
            return 2
    fixable, unfixable, skipped = [], [], []
    for dep in result["dependencies"]:  # type: ignore[union-attr]
        if "skip_reason" in dep:
            skipped.append(f"{dep['name']}: {dep['skip_reason']}")
        for vuln in dep.get("vulns", []):
            fixed_in = ", ".join(vuln["fix_versions"]) or "-"
            line = f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed_in})"
            (fixable if vuln["fix_versions"] else unfixable).append(line)
    for line in unfixable:
        print(f"warning, no fix yet: {line}")
    for line in fixable:
        print(f"VULNERABLE: {line}")
    for line in skipped:
        print(f"NOT AUDITED: {line}")
    if fixable:
        return 1
    if skipped:
        print(
            f"{len(skipped)} of {len(pins)} packages could not be audited (is the vulnerability service up?)"
        )
        return 2
    print(f"no known vulnerabilities with a fix in {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
