"""``imgserve-client``: classify a folder of photos, check a server, list its models.

imgserve-client classify photos/ --recursive --output labels.jsonl
imgserve-client health
imgserve-client models
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

from imgserve_client._base import DEFAULT_TIMEOUT_S, DEFAULT_URL, __version__
from imgserve_client.client import Client
from imgserve_client.errors import (
    APIError,
    ConnectionFailedError,
    ImageReadError,
    ImgserveError,
    ProtocolError,
    RejectedError,
    ServerBusyError,
)
from imgserve_client.output import (
    FORMATS,
    csv_header,
    done_in,
    format_for,
    format_record,
    open_output,
    prediction_record,
    rejection_record,
    resume_key,
)
from imgserve_client.overlay import write_overlay
from imgserve_client.retry import RetryStats
from imgserve_client.types import ModelInfo, Prediction, Result

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_REJECTED = 3
EXIT_BUSY = 4
EXIT_FAILED = 5
EXIT_INTERRUPTED = 130

URL_ENV = "IMGSERVE_CLIENT_URL"
API_KEY_ENV = "IMGSERVE_CLIENT_API_KEY"

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    every image classified (or already in the output file); health: ready
  {EXIT_USAGE}    bad arguments, no files, or a top-k the model cannot give
  {EXIT_REJECTED}    some images were rejected (not an image, too large, undecodable); the rest classified
  {EXIT_BUSY}    the server stayed busy (503/429 past the retries): some images not classified, run again
       to resume; health: alive but not ready
  {EXIT_FAILED}    the server failed or could not be reached (connection, 5xx, wrong API key)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); the output file keeps what was done
"""


class UsageError(Exception):
    """Bad arguments: exit 2 with the message."""


# -- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"server URL (${URL_ENV}; %(default)s)"
    )
    server.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV), help=f"API key (${API_KEY_ENV}; none by default)"
    )
    server.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per attempt (%(default)s)"
    )

    parser = argparse.ArgumentParser(
        prog="imgserve-client",
        description="Classify images with an imgserve server; 503 and 429 are retried as the server asks.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser(
        "classify",
        parents=[server],
        help="classify image files and folders",
        description="Classify every file under PATH (folders: their files; hidden files are skipped). "
        "Bad files are reported and do not stop the run. With --output, files already in the "
        "output file are skipped, so an interrupted run resumes.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    classify.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    classify.add_argument(
        "-k", "--top-k", type=_positive_int, default=5, help="classes per image (%(default)s)"
    )
    classify.add_argument(
        "-c", "--concurrency", type=_positive_int, default=8, help="requests in flight (%(default)s)"
    )
    classify.add_argument(
        "-f", "--format", choices=FORMATS, help="table (terminal default), jsonl (file default) or csv"
    )
    classify.add_argument(
        "-o", "--output", type=Path, help="append records here (jsonl or csv) and skip files already in it"
    )
    classify.add_argument(
        "--max-retries", type=_non_negative_int, default=10, help="retries per request (%(default)s)"
    )
    classify.add_argument(
        "--max-total-wait",
        type=float,
        default=120.0,
        help="most seconds one request waits between retries in all (%(default)s)",
    )
    classify.add_argument(
        "--images-per-request",
        type=_positive_int,
        help="images packed in one request (default: chosen from the server's limits and --concurrency)",
    )
    classify.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="also ask where the model looked, and write each photo with its top class's activation "
        "map laid over it to DIR/NAME.cam.png (needs Pillow, in the cli extra)",
    )
    classify.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )
    classify.set_defaults(handler=_classify_command)

    health = commands.add_parser(
        "health",
        parents=[server],
        help="is the server alive and ready?",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    health.set_defaults(handler=_health_command)

    models = commands.add_parser("models", parents=[server], help="the served models and their limits")
    models.add_argument("--json", action="store_true", help="the server's whole JSON description")
    models.set_defaults(handler=_models_command)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], Any] = args.handler
    try:
        return int(handler(args))
    except UsageError as exc:
        print(f"imgserve-client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _client(args: argparse.Namespace, **retries: Any) -> Client:
    # The blocking client (threads): per request it costs about half the CPU of httpx's asyncio
    # stack (docs/BENCHMARKS.md), and the command line has nothing else to do meanwhile.
    return Client(args.url, args.api_key, args.timeout, **retries)


# -- classify -------------------------------------------------------------------------------------


def find_files(paths: Sequence[str], recursive: bool, exclude: Path | None = None) -> list[str]:
    """Every file under ``paths`` (files as given, folders' files sorted; hidden names skipped),
    once each, without ``exclude`` (the output file may sit in the folder it describes)."""
    found: dict[str, str] = {}
    excluded = resume_key(str(exclude)) if exclude is not None else None
    for given in paths:
        root = Path(given)
        if root.is_file():
            candidates = [root]
        elif root.is_dir():
            entries = root.rglob("*") if recursive else root.iterdir()
            candidates = sorted(
                path
                for path in entries
                if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
            )
        else:
            raise UsageError(f"no such file or folder: {given}")
        for path in candidates:
            key = resume_key(str(path))
            if key != excluded:
                found.setdefault(key, str(path))
    return list(found.values())


@dataclass
class Tally:
    """What happened to each image, for the summary and the exit code."""

    total: int
    skipped: int
    classified: int = 0
    rejected: list[tuple[str, ImgserveError]] = field(default_factory=list)
    busy: list[tuple[str, ImgserveError]] = field(default_factory=list)
    failed: list[tuple[str, ImgserveError]] = field(default_factory=list)
    stopped: str | None = None

    def add(self, path: str, result: Result) -> None:
        error = result.error
        if error is None:
            self.classified += 1
        elif isinstance(error, RejectedError | ImageReadError):
            self.rejected.append((path, error))
        elif isinstance(error, ServerBusyError):
            self.busy.append((path, error))
        else:
            self.failed.append((path, error))

    def exit_code(self) -> int:
        if self.failed or self.stopped:
            return EXIT_FAILED
        if self.busy:
            return EXIT_BUSY
        return EXIT_REJECTED if self.rejected else EXIT_OK

    def summary(self, seconds: float, stats: RetryStats, output: Path | None) -> str:
        done = self.classified + len(self.rejected) + len(self.busy) + len(self.failed)
        rate = self.classified / seconds if seconds > 0 else 0.0
        lines = [
            f"classified {self.classified} of {self.total - self.skipped} images in {seconds:.1f} s "
            f"({rate:.1f} images/s); {len(self.rejected)} rejected, {len(self.busy)} not classified "
            f"(server busy), {len(self.failed)} failed"
        ]
        if self.skipped:
            lines.append(f"skipped {self.skipped} already in {output}")
        unfinished = self.total - self.skipped - done
        if unfinished:
            lines.append(f"not finished: {unfinished} (run again with the same --output to go on)")
        reasons = ", ".join(f"{count} x {reason}" for reason, count in sorted(stats.retries.items()))
        lines.append(
            f"retries: {stats.total}"
            + (f" ({reasons}), {stats.waited_s:.1f} s waited in all" if reasons else "")
        )
        for title, items in (
            ("rejected", self.rejected),
            ("server busy", self.busy),
            ("failed", self.failed),
        ):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {path}: {error}" for path, error in items]
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return "\n".join(lines)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, text: str, refresh: bool = True) -> None: ...

    def close(self) -> None: ...


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        print("(no progress bar: install imgserve-client[cli] for it)", file=sys.stderr)
        return _NoBar()
    # disable=None: no bar when stderr is not a terminal (a log file, CI)
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, disable=None)


def _stdout_writer(bar: Any) -> Callable[[str], None]:
    """Lines to stdout without breaking the progress bar on stderr."""
    if hasattr(bar, "write") and not getattr(bar, "disable", True):
        return lambda line: bar.write(line, file=sys.stdout)
    return lambda line: print(line, flush=True)


def _file_writer(stream: IO[str]) -> Callable[[str], None]:
    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()  # one record at a time: a killed run resumes after the last one

    return write


def _classify_command(args: argparse.Namespace) -> int:
    fmt = format_for(args.output, args.format)
    if fmt == "table" and args.output is not None:
        raise UsageError("--format table is for the terminal; write jsonl or csv to --output")
    files = find_files(args.paths, args.recursive, exclude=args.output)
    if not files:
        raise UsageError(
            f"no files in {' '.join(args.paths)}" + ("" if args.recursive else " (try --recursive)")
        )
    done = done_in(args.output, fmt) if args.output is not None else set()
    todo = [path for path in files if resume_key(path) not in done]
    if not todo:
        print(f"nothing to classify: all {len(files)} files are already in {args.output}", file=sys.stderr)
        return EXIT_OK
    tally = Tally(total=len(files), skipped=len(files) - len(todo))
    with _client(args, max_retries=args.max_retries, max_total_wait=args.max_total_wait) as client:
        model = _first_model(client)
        if model is None:
            return EXIT_FAILED
        if args.top_k > model.num_classes:
            raise UsageError(f"--top-k {args.top_k}: the model {model.name} has {model.num_classes} classes")
        if args.explain is not None and "explanation" in model.raw and not model.raw["explanation"]:
            raise UsageError(
                f"--explain: the model {model.name} {model.version} does not explain its answers"
            )
        print(
            f"{len(todo)} images to classify with {model.name} {model.version} at {args.url}"
            + (f" ({tally.skipped} already in {args.output})" if tally.skipped else ""),
            file=sys.stderr,
        )
        bar = _progress_bar(len(todo), args.progress)
        output = open_output(args.output) if args.output is not None else None
        write = _file_writer(output[0]) if output is not None else _stdout_writer(bar)
        if fmt == "csv" and (output is None or output[1]):
            write(csv_header())
        width = max(len(path) for path in files)
        start = time.monotonic()
        try:
            _classify(client, args, todo, tally, bar, lambda record: write(format_record(record, fmt, width)))
        finally:
            bar.close()
            if output is not None:
                output[0].close()
            print(tally.summary(time.monotonic() - start, client.stats, args.output), file=sys.stderr)
    return tally.exit_code()


def _first_model(client: Client) -> ModelInfo | None:
    """The served model (for its name, classes and limits); ``None`` after saying why not."""
    try:
        models = client.models()
    except ImgserveError as exc:
        print(f"imgserve-client: cannot use the server at {client.base_url}: {exc}", file=sys.stderr)
        return None
    if not models:
        print(f"imgserve-client: the server at {client.base_url} serves no model", file=sys.stderr)
        return None
    return models[0]


def _classify(
    client: Client,
    args: argparse.Namespace,
    todo: list[str],
    tally: Tally,
    bar: Any,
    write: Callable[[dict[str, Any]], None],
) -> None:
    overlays = OverlayWriter(args.explain) if args.explain is not None else None
    results = client.predict_many(
        todo,
        top_k=args.top_k,
        concurrency=args.concurrency,
        images_per_request=args.images_per_request,
        explain=overlays is not None,
    )
    try:
        with contextlib.closing(results):
            for result in results:
                path: str = result.image
                tally.add(path, result)
                if result.prediction is not None:
                    write(prediction_record(path, result.prediction))
                    if overlays is not None:
                        overlays.write(path, result.prediction)
                elif isinstance(result.error, RejectedError):
                    write(rejection_record(path, result.error))
                bar.update(1)
                bar.set_postfix_str(
                    f"retries={client.stats.total} rejected={len(tally.rejected)}", refresh=False
                )
                if isinstance(result.error, ConnectionFailedError):
                    tally.stopped = f"the server could not be reached ({result.error}); run again to resume"
                    return
    except APIError as exc:  # no image can get through (a wrong API key, a wrong URL)
        tally.stopped = str(exc)
    finally:
        if overlays is not None and overlays.written:
            print(f"wrote {overlays.written} overlay images to {overlays.folder}", file=sys.stderr)


class OverlayWriter:
    """Each photo with its top class's activation map over it, as FOLDER/NAME.cam.png (a name
    already used in this run gets -2, -3, ...)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written = 0
        self._used: set[str] = set()

    def write(self, path: str, prediction: Prediction) -> None:
        if prediction.explanation is None:
            raise ProtocolError(f"asked for an explanation of {path}, the server sent none")
        stem = Path(path).stem or "image"
        name, copy = f"{stem}.cam.png", 1
        while name in self._used:
            copy += 1
            name = f"{stem}-{copy}.cam.png"
        self._used.add(name)
        write_overlay(Path(path).read_bytes(), prediction.explanation, self.folder / name)
        self.written += 1


# -- health and models ---------------------------------------------------------------------------


def _health_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            alive = client.health()
            ready = client.ready() if alive else False
        except ConnectionFailedError as exc:
            print(f"{args.url}: unreachable: {exc}")
            return EXIT_FAILED
    print(f"{args.url}: {'alive' if alive else 'not alive'}, {'ready' if ready else 'not ready'}")
    return EXIT_OK if ready else EXIT_BUSY if alive else EXIT_FAILED


def _models_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            models = client.models()
        except ImgserveError as exc:
            print(f"imgserve-client: cannot list the models at {args.url}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        print(json.dumps([m.raw for m in models], indent=2))
        return EXIT_OK
    for m in models:
        limits = m.limits
        print(
            f"{m.name} {m.version}: {m.num_classes} classes on {m.execution_provider}; "
            f"up to {limits.max_images_per_request} images and {limits.max_upload_bytes} bytes per request, "
            f"{limits.max_image_pixels} pixels per image, formats {', '.join(limits.allowed_formats)}; "
            f"batches of up to {m.max_batch_size}, queue of {limits.max_queue_images} images"
        )
    return EXIT_OK
