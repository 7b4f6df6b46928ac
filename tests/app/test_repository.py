"""The repository on disk: folder layout, config.toml's version policy, Triton's config JSON."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.inference.repository import (
    DirectoryRepository,
    RepositoryError,
    VersionPolicy,
    load_model_config,
    parse_triton_config,
)

from .repository_models import write_version


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), [7]),
        (VersionPolicy("latest", latest=2), [3, 7]),
        (VersionPolicy("latest", latest=9), [1, 2, 3, 7]),
        (VersionPolicy("specific", specific=(2, 5)), [2]),
        (VersionPolicy("all"), [1, 2, 3, 7]),
    ],
)
def test_policies_select_versions(policy: VersionPolicy, expected: list[int]) -> None:
    assert policy.select([3, 1, 7, 2]) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", VersionPolicy()),
        ("[version_policy]\nlatest = 3\n", VersionPolicy("latest", latest=3)),
        ("[version_policy]\nspecific = [3, 1, 3]\n", VersionPolicy("specific", specific=(1, 3))),
        ("version_policy = { all = true }\n", VersionPolicy("all")),
    ],
)
def test_config_toml(tmp_path: Path, text: str, expected: VersionPolicy) -> None:
    (tmp_path / "config.toml").write_text(text)
    assert load_model_config(tmp_path) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[version_policy\n", "is not valid TOML: "),
        (
            "max_batch_size = 4\n",
            "unknown setting(s) ['max_batch_size']; the file holds only [version_policy]",
        ),
        (
            "[version_policy]\nlates = 2\n",
            "version_policy needs exactly one of ['latest', 'specific', 'all', 'auto'], got ['lates']",
        ),
        (
            "[version_policy]\nlatest = 1\nall = true\n",
            "needs exactly one of ['latest', 'specific', 'all', 'auto'], got ['all', 'latest']",
        ),
        ("[version_policy]\nlatest = 0\n", "version_policy.latest must be an integer >= 1, got 0"),
        ("[version_policy]\nlatest = true\n", "version_policy.latest must be an integer >= 1, got True"),
        (
            "[version_policy]\nspecific = []\n",
            "specific must be a non-empty list of version numbers >= 1, got []",
        ),
        (
            "[version_policy]\nspecific = ['2']\n",
            "specific must be a non-empty list of version numbers >= 1, got ['2']",
        ),
        ("[version_policy]\nall = false\n", "version_policy.all must be true, got False"),
    ],
)
def test_bad_config_toml_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(RepositoryError, match=re.escape(f"{tmp_path / 'config.toml'}")) as error:
        load_model_config(tmp_path)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("{}", VersionPolicy()),
        ('{"version_policy": {"latest": {"num_versions": 2}}}', VersionPolicy("latest", latest=2)),
        (
            '{"name": "m", "version_policy": {"specific": {"versions": ["3", 1]}}}',
            VersionPolicy("specific", specific=(1, 3)),
        ),
        ('{"version_policy": {"all": {}}}', VersionPolicy("all")),
    ],
)
def test_triton_config_json(config: str, expected: VersionPolicy) -> None:
    assert parse_triton_config(config, "the config") == expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{", "the config is not JSON: "),
        ("[1]", "the config must be a JSON object, got '[1]'"),
        (
            '{"max_batch_size": 8}',
            "the config: only 'version_policy' can be set here, got ['max_batch_size']",
        ),
        (
            '{"version_policy": {"newest": {}}}',
            "version_policy needs exactly one of ['latest', 'specific', 'all']",
        ),
        ('{"version_policy": {"specific": {"versions": []}}}', "specific must be a non-empty list"),
    ],
)
def test_bad_triton_config_is_refused(config: str, message: str) -> None:
    with pytest.raises(RepositoryError) as error:
        parse_triton_config(config, "the config")
    assert message in str(error.value)


def test_the_layout_models_versions_and_what_is_skipped(tmp_path: Path) -> None:
    write_version(tmp_path, "colours", 1)
    write_version(tmp_path, "colours", 10)
    (tmp_path / "colours" / "2").mkdir()  # no model.onnx: not a version
    (tmp_path / "colours" / "03").mkdir()  # not a canonical number
    (tmp_path / "colours" / ".staging-11").mkdir()  # an export in progress
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    repository = DirectoryRepository(tmp_path)
    assert repository.model_names() == ["colours"]
    assert repository.versions_on_disk("colours") == ["1", "10"]
    (source,) = repository.plan("colours")
    assert (source.name, source.version, source.path) == (
        "colours",
        "10",
        tmp_path / "colours" / "10" / "model.onnx",
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("zebra", "no model 'zebra' in model repository '{root}'; models there: ['colours', 'empty']"),
        ("../etc", "'../etc' is not a model name (letters, digits, '.', '_' and '-', up to 128 characters)"),
        ("empty", "model 'empty' has no version: expected {root}/empty/<version>/model.onnx"),
    ],
)
def test_plan_errors_name_what_is_wrong(tmp_path: Path, name: str, message: str) -> None:
    write_version(tmp_path, "colours", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError) as error:
        DirectoryRepository(tmp_path).plan(name)
    assert message.format(root=tmp_path) in str(error.value)


def test_a_policy_matching_nothing_and_a_missing_repository(tmp_path: Path) -> None:
    write_version(tmp_path, "colours", 1)
    with pytest.raises(
        RepositoryError, match=re.escape("its policy (versions [4]) matches none of the versions on disk [1]")
    ):
        DirectoryRepository(tmp_path).plan("colours", VersionPolicy("specific", specific=(4,)))
    with pytest.raises(RepositoryError, match="is not a folder"):
        DirectoryRepository(tmp_path / "nowhere").model_names()
