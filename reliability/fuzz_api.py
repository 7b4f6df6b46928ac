"""The full schemathesis run: all checks, every operation, against a live server, twice (API
keys off, then on), with a tiny model so that thousands of cases take minutes.

    python -m reliability.fuzz_api                         # >= 1,000 cases per run (default)
    python -m reliability.fuzz_api --max-examples 50       # a quicker one
    python -m reliability.fuzz_api --url http://127.0.0.1:8000 --header "X-API-Key: KEY"  # any server

Reports (JUnit, NDJSON) go to --report-dir (default runs/fuzz_api/). Exit status 0 only when
every run passes. Settings: reliability/schemathesis.toml.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.server import REPO_ROOT, ServerProcess
from harness.tiny_model import write_model

CONFIG = REPO_ROOT / "reliability" / "schemathesis.toml"
KEY = "k-fuzz-7d3e5a90b1"
LIMITS = {
    "IMGSERVE_MAX_UPLOAD_BYTES": "1000000",
    "IMGSERVE_MAX_IMAGES_PER_REQUEST": "4",
    "IMGSERVE_MAX_BATCH_SIZE": "8",
    "IMGSERVE_MAX_DELAY_MS": "2",
    "IMGSERVE_REQUEST_TIMEOUT_S": "5",
    # The cost budgets small enough that generated requests reach them (issue 16).
    "IMGSERVE_MAX_IMAGE_PIXELS": "4000000",
    "IMGSERVE_MAX_REQUEST_PIXELS": "8000000",
    "IMGSERVE_MAX_DECODING_PIXELS": "16000000",
    "IMGSERVE_MAX_BUFFERED_BODY_BYTES": "4000000",
}


def run_schemathesis(
    url: str, report_dir: Path, max_examples: int, seed: int | None, headers: list[str]
) -> int:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    # One worker: with two, hypothesis describing its filters calls ast.parse from two threads,
    # and CPython 3.11's AST recursion-depth check is not thread-safe ("SystemError: AST
    # constructor recursion depth mismatch"): runtime errors of the tool, not findings, in 2 of
    # 3 runs here with 2 workers (main's code too), none with 1.
    cmd = [cli, "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", "all",
           "--max-examples", str(max_examples), "--workers", "1", "--no-color",
           "--report", "junit,ndjson", "--report-dir", str(report_dir)]  # fmt: skip
    if seed is not None:
        cmd += ["--seed", str(seed)]
    for header in headers:
        cmd += ["--header", header]
    print("$", " ".join(cmd), flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    match = re.search(r"(\d+) generated[^\n]*", proc.stdout)
    cases = match.group(0) if match else "? cases"
    print(f"=> exit {proc.returncode}; {cases}; {time.monotonic() - start:.0f} s\n")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reliability.fuzz_api", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--max-examples", type=int, default=300, help="per operation and phase (default 300)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--report-dir", type=Path, default=REPO_ROOT / "runs" / "fuzz_api")
    parser.add_argument("--url", help="fuzz this server instead of starting two")
    parser.add_argument("--header", action="append", default=[], help="with --url: e.g. 'X-API-Key: KEY'")
    args = parser.parse_args(argv)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    if args.url:
        return run_schemathesis(args.url, args.report_dir, args.max_examples, args.seed, args.header)
    codes = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "model")
        for name, extra, headers in (
            ("open", {}, []),
            ("api-keys", {"IMGSERVE_API_KEYS": KEY}, [f"Authorization: Bearer {KEY}"]),
        ):
            env = {"IMGSERVE_MODEL_PATH": str(model), **LIMITS, **extra}
            with ServerProcess(env, Path(tmp) / f"server-{name}.log") as server:
                print(f"--- {name}: server pid {server.pid} on {server.base_url}", flush=True)
                codes.append(run_schemathesis(server.base_url, args.report_dir / name, args.max_examples,
                                              args.seed, headers))  # fmt: skip
                if server.proc is not None and server.proc.poll() is not None:
                    print(f"server died: {server.log()}")
                    codes.append(1)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
