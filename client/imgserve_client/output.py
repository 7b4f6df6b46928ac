"""The command line's output: one record per image as a table row, a JSON line or a CSV row;
and, to resume, the images an output file already holds."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO, Any

from imgserve_client.errors import APIError
from imgserve_client.types import Prediction

FORMATS = ("table", "jsonl", "csv")
CSV_FIELDS = ["path", "label", "index", "probability", "top_k", "model", "model_version", "status", "error"]
MAX_PATH_COLUMN = 60


def format_for(output: Path | None, chosen: str | None) -> str:
    """The format asked for, else the output file's suffix (``.csv``: csv), else jsonl to a file
    and a table to the terminal."""
    if chosen is not None:
        return chosen
    if output is None:
        return "table"
    return "csv" if output.suffix.lower() == ".csv" else "jsonl"


def resume_key(path: str) -> str:
    return os.path.abspath(path)


def done_in(output: Path, fmt: str) -> set[str]:
    """The images ``output`` already has a record of (classified or rejected), as resume keys.

    A last line cut short (the run was killed while writing it) is not counted.
    """
    if not output.exists():
        return set()
    text = output.read_text(encoding="utf-8", errors="replace")
    if fmt == "csv":
        # a row cut short lacks its last fields: model_version (classified) or error (rejected)
        rows: list[dict[str, Any]] = [
            row for row in csv.DictReader(io.StringIO(text)) if row.get("model_version") or row.get("error")
        ]
    else:
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return {resume_key(row["path"]) for row in rows if isinstance(row.get("path"), str) and row["path"]}


def prediction_record(path: str, prediction: Prediction) -> dict[str, Any]:
    return {
        "path": path,
        "label": prediction.label,
        "index": prediction.index,
        "probability": prediction.probability,
        "top_k": [
            {"index": s.index, "label": s.label, "probability": s.probability} for s in prediction.top_k
        ],
        "model": prediction.model,
        "model_version": prediction.model_version,
    }


def rejection_record(path: str, error: APIError) -> dict[str, Any]:
    return {"path": path, "status": error.status, "error": error.detail}


def csv_header() -> str:
    return _csv_line(CSV_FIELDS)


def format_record(record: dict[str, Any], fmt: str, path_width: int) -> str:
    """One record as one line (no newline) of ``fmt``."""
    if fmt == "jsonl":
        return json.dumps(record)
    if fmt == "csv":
        row = dict(record)
        if "top_k" in row:
            row["top_k"] = json.dumps(row["top_k"])
        return _csv_line([row.get(name, "") for name in CSV_FIELDS])
    path = record["path"].ljust(min(path_width, MAX_PATH_COLUMN))
    if "error" in record:
        return f"{path}  rejected: {record['status']} {record['error']}"
    first, *rest = record["top_k"]
    others = ", ".join(f"{s['label']} {s['probability']:.1%}" for s in rest)
    return f"{path}  {first['label']:<24} {first['probability']:6.1%}" + (f"   {others}" if others else "")


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def open_output(output: Path) -> tuple[IO[str], bool]:
    """The file to append to, and whether it needs a CSV header (it is new or empty).

    A last line cut short by a killed run is ended first, so the next record starts on its own line.
    """
    fresh = not output.exists() or output.stat().st_size == 0
    if not fresh:
        with output.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            ends_cleanly = f.read(1) == b"\n"
        if not ends_cleanly:
            with output.open("a", encoding="utf-8") as f:
                f.write("\n")
    return output.open("a", encoding="utf-8", newline=""), fresh
