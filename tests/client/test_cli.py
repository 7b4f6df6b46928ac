"""The command line's pieces that need no server: finding files, resuming, records, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from imgserve_client import ClassScore, ConnectionFailedError, Prediction, RejectedError, ServerBusyError
from imgserve_client.cli import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    Tally,
    UsageError,
    find_files,
    run,
)
from imgserve_client.output import (
    csv_header,
    done_in,
    format_for,
    format_record,
    open_output,
    prediction_record,
    rejection_record,
)
from imgserve_client.types import Result

PREDICTION = Prediction(
    top_k=(ClassScore(285, "Egyptian cat", 0.469), ClassScore(282, "tiger cat", 0.279)),
    filename="cat.jpg",
    model="efficientnet_lite0-imagenet1k",
    model_version="1",
)
REJECTED = RejectedError(422, "file #1 'notes.txt': not a decodable image")


def tree(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_find_files_in_folders_and_files_once_each_without_hidden_names(tmp_path: Path) -> None:
    tree(tmp_path, "b.jpg", "a.png", ".DS_Store", "sub/c.jpg", ".cache/d.jpg", "sub/.e.jpg", "labels.jsonl")
    root = str(tmp_path)
    assert find_files([root], recursive=False) == [f"{root}/a.png", f"{root}/b.jpg", f"{root}/labels.jsonl"]
    assert find_files([root, f"{root}/b.jpg"], recursive=True, exclude=tmp_path / "labels.jsonl") == [
        f"{root}/a.png",
        f"{root}/b.jpg",
        f"{root}/sub/c.jpg",
    ]
    with pytest.raises(UsageError, match="no such file or folder: nowhere"):
        find_files(["nowhere"], recursive=False)


def test_records_as_jsonl_csv_and_table_rows() -> None:
    record = prediction_record("photos/cat.jpg", PREDICTION)
    assert json.loads(format_record(record, "jsonl", 14)) == {
        "path": "photos/cat.jpg",
        "label": "Egyptian cat",
        "index": 285,
        "probability": 0.469,
        "top_k": [
            {"index": 285, "label": "Egyptian cat", "probability": 0.469},
            {"index": 282, "label": "tiger cat", "probability": 0.279},
        ],
        "model": "efficientnet_lite0-imagenet1k",
        "model_version": "1",
    }
    assert csv_header() == "path,label,index,probability,top_k,model,model_version,status,error"
    assert format_record(record, "csv", 14) == (
        'photos/cat.jpg,Egyptian cat,285,0.469,"[{""index"": 285, ""label"": ""Egyptian cat"", '
        '""probability"": 0.469}, {""index"": 282, ""label"": ""tiger cat"", ""probability"": 0.279}]",'
        "efficientnet_lite0-imagenet1k,1,,"
    )
    assert (
        format_record(record, "table", 16)
        == "photos/cat.jpg    Egyptian cat              46.9%   tiger cat 27.9%"
    )
    rejected = rejection_record("notes.txt", REJECTED)
    assert (
        format_record(rejected, "csv", 9) == "notes.txt,,,,,,,422,file #1 'notes.txt': not a decodable image"
    )
    assert (
        format_record(rejected, "table", 9)
        == "notes.txt  rejected: 422 file #1 'notes.txt': not a decodable image"
    )


def test_the_format_follows_the_output_files_suffix() -> None:
    assert (format_for(None, None), format_for(Path("a.csv"), None), format_for(Path("a.out"), None)) == (
        "table",
        "csv",
        "jsonl",
    )
    assert format_for(Path("a.csv"), "jsonl") == "jsonl"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_reads_complete_records_and_ignores_one_cut_short(tmp_path: Path, fmt: str) -> None:
    output = tmp_path / f"labels.{fmt}"
    lines = [csv_header()] if fmt == "csv" else []
    lines += [
        format_record(prediction_record("a.jpg", PREDICTION), fmt, 5),
        format_record(rejection_record("b.txt", REJECTED), fmt, 5),
    ]
    cut = format_record(prediction_record("c.jpg", PREDICTION), fmt, 5)[:40]
    output.write_text("\n".join([*lines, cut]))  # killed while writing c.jpg's record
    assert done_in(output, fmt) == {str(Path("a.jpg").resolve()), str(Path("b.txt").resolve())}
    stream, fresh = open_output(output)
    with stream:
        stream.write("next\n")
    assert not fresh and output.read_text().endswith(cut + "\nnext\n")
    assert done_in(tmp_path / "missing.jsonl", fmt) == set()


def test_exit_codes_rank_failed_over_busy_over_rejected() -> None:
    def tally(*errors: Exception | None) -> Tally:
        t = Tally(total=len(errors), skipped=0)
        for error in errors:
            t.add("x", Result("x", "x", prediction=None if error else PREDICTION, error=error))  # type: ignore[arg-type]
        return t

    busy = ServerBusyError(503, "overloaded", retry_after=1, attempts=11)
    down = ConnectionFailedError("ConnectError", 11)
    assert tally(None, None).exit_code() == EXIT_OK
    assert tally(None, REJECTED).exit_code() == EXIT_REJECTED
    assert tally(REJECTED, busy).exit_code() == EXIT_BUSY
    assert tally(REJECTED, busy, down).exit_code() == EXIT_FAILED


def test_usage_errors_exit_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["classify", str(tmp_path / "nowhere")]) == 2
    assert (
        capsys.readouterr().err == f"imgserve-client: error: no such file or folder: {tmp_path / 'nowhere'}\n"
    )
    assert run(["classify", str(tmp_path), "--format", "table", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err == (
        "imgserve-client: error: --format table is for the terminal; write jsonl or csv to --output\n"
    )
    assert run(["classify", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"imgserve-client: error: no files in {tmp_path} (try --recursive)\n"
