"""The model repository on disk: which model files to serve, by model name and version.

Triton's layout: ``<repository>/<model>/<version>/model.onnx`` (with ``model.json``, the card,
beside it), where ``<version>`` is a positive integer, and an optional
``<repository>/<model>/config.toml`` that says which versions to serve::

    [version_policy]
    latest = 2              # the 2 highest versions (the default is latest = 1)
    # specific = [1, 3]     # exactly these versions
    # all = true            # every version in the folder
    # auto = true           # one version: the fastest variant that passed its accuracy gate
    #                       # and whose execution provider runs here; fp32 otherwise

A reduced-precision variant whose card says it failed its accuracy gate is never picked by
``latest``, ``all`` or ``auto``; only ``specific`` serves it, by its number.

A single model file (``IMGSERVE_MODEL_PATH``) is a repository of one model whose name and
version come from its card (:class:`SingleModelFile`). Both only read folders and small files;
loading sessions is :mod:`app.inference.control`'s work.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from app.inference.engine import provider_unavailable
from model_card import CardError, ModelCard, load_card

logger = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.toml"
_VERSION_DIR = re.compile(r"[1-9][0-9]{0,17}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_POLICY_KEYS = ("latest", "specific", "all", "auto")
_TRITON_POLICY_KEYS = ("latest", "specific", "all")


class RepositoryError(Exception):
    """The repository, a model folder or its config cannot be used; the message says why."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions to serve: the ``latest`` N, ``specific`` ones, or ``all``."""

    kind: Literal["latest", "specific", "all", "auto"] = "latest"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available``, ascending (``auto``: every candidate)."""
        ordered = sorted(set(available))
        if self.kind in ("all", "auto"):
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest :]

    def describe(self) -> str:
        if self.kind == "auto":
            return "the fastest version that passed its gate"
        if self.kind == "all":
            return "all versions"
        if self.kind == "specific":
            return f"versions {list(self.specific)}"
        return f"the latest {self.latest}" if self.latest > 1 else "the latest version"


def parse_version_policy(table: Any, source: str) -> VersionPolicy:
    """``{"latest": 2}``, ``{"specific": [1, 3]}`` or ``{"all": true}``; anything else is refused."""
    if not isinstance(table, dict):
        raise RepositoryError(f"{source}: version_policy must be a table, got {table!r}")
    unknown = [key for key in table if key not in _POLICY_KEYS]
    if unknown or len(table) != 1:
        raise RepositoryError(
            f"{source}: version_policy needs exactly one of {list(_POLICY_KEYS)}, got {sorted(table)}"
        )
    kind, value = next(iter(table.items()))
    if kind == "latest":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RepositoryError(f"{source}: version_policy.latest must be an integer >= 1, got {value!r}")
        return VersionPolicy("latest", latest=value)
    if kind == "specific":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise RepositoryError(
                f"{source}: version_policy.specific must be a non-empty list of version numbers >= 1, "
                f"got {value!r}"
            )
        return VersionPolicy("specific", specific=tuple(sorted(set(value))))
    if value is not True:
        raise RepositoryError(f"{source}: version_policy.{kind} must be true, got {value!r}")
    return VersionPolicy("auto" if kind == "auto" else "all")


def load_model_config(model_dir: Path) -> VersionPolicy:
    """The policy in ``model_dir/config.toml``, or serve-the-latest when there is no such file."""
    path = model_dir / CONFIG_FILENAME
    if not path.is_file():
        return VersionPolicy()
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RepositoryError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(key for key in config if key != "version_policy")
    if unknown:
        raise RepositoryError(f"{path}: unknown setting(s) {unknown}; the file holds only [version_policy]")
    if "version_policy" not in config:
        return VersionPolicy()
    return parse_version_policy(config["version_policy"], str(path))


def parse_triton_config(config_json: str, source: str) -> VersionPolicy:
    """The version policy of a Triton ``ModelConfig`` in JSON (the ``config`` load parameter):
    ``{"version_policy": {"latest": {"num_versions": 2}}}``, ``{"specific": {"versions": [1, 3]}}``
    or ``{"all": {}}``; other fields of a Triton config have no meaning here and are refused."""
    try:
        config = json.loads(config_json)
    except ValueError as exc:
        raise RepositoryError(f"{source} is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise RepositoryError(f"{source} must be a JSON object, got {config_json[:80]!r}")
    unknown = sorted(key for key in config if key not in ("name", "version_policy"))
    if unknown:
        raise RepositoryError(f"{source}: only 'version_policy' can be set here, got {unknown}")
    policy = config.get("version_policy", {"latest": {"num_versions": 1}})
    if not isinstance(policy, dict) or len(policy) != 1 or next(iter(policy)) not in _TRITON_POLICY_KEYS:
        raise RepositoryError(
            f"{source}: version_policy needs exactly one of {list(_TRITON_POLICY_KEYS)}, got {policy!r}"
        )
    kind, body = next(iter(policy.items()))
    body = body if isinstance(body, dict) else {}
    simple: dict[str, Any] = {
        "latest": {"latest": body.get("num_versions", 1)},
        "specific": {"specific": [_int_or_same(v) for v in body.get("versions", [])]},
        "all": {"all": True},
    }[kind]
    return parse_version_policy(simple, source)


def _int_or_same(value: Any) -> Any:
    """Triton's JSON writes int64 versions as strings ("1"); accept both."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


@dataclass(frozen=True)
class FileSignature:
    """What tells a model file changed on disk without reading it."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileSignature | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return cls(stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class VersionSource:
    """One model file to serve as ``name`` ``version``; None: the card's name or version."""

    name: str | None
    version: str | None
    path: Path

    @property
    def signature(self) -> FileSignature | None:
        return FileSignature.of(self.path)


class ModelSource(Protocol):
    """Where model files come from: a repository folder or a single file."""

    def describe(self) -> str: ...
    def model_names(self) -> list[str]: ...
    def models_to_start(self) -> list[str | None]: ...
    def plan(self, name: str | None, policy: VersionPolicy | None = None) -> list[VersionSource]: ...
    def versions_on_disk(self, name: str) -> list[str]: ...
    def adopt(self, name: str) -> None: ...


class DirectoryRepository:
    """``<root>/<model>/<version>/model.onnx``; a model's ``config.toml`` picks the versions."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"model repository {str(self.root)!r}"

    def check(self) -> None:
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {str(self.root)!r} is not a folder")

    def model_names(self) -> list[str]:
        """Every model folder, sorted; files and hidden folders are skipped."""
        self.check()
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and _MODEL_NAME.fullmatch(entry.name)
        )

    def models_to_start(self) -> list[str | None]:
        names = self.model_names()
        if not names:
            raise RepositoryError(
                f"{self.describe()} holds no model: expected <model>/<version>/{MODEL_FILENAME} in it"
            )
        return list(names)

    def adopt(self, name: str) -> None:
        """Nothing to remember: folder names are model names."""

    def model_dir(self, name: str | None) -> Path:
        if name is None or not _MODEL_NAME.fullmatch(name):
            raise RepositoryError(
                f"{name!r} is not a model name (letters, digits, '.', '_' and '-', up to 128 characters)"
            )
        path = self.root / name
        if not path.is_dir():
            raise RepositoryError(
                f"no model {name!r} in {self.describe()}; models there: {self.model_names() or 'none'}"
            )
        return path

    def versions_on_disk(self, name: str) -> list[str]:
        """The version folders of ``name`` that hold a model file, ascending."""
        try:
            model_dir = self.model_dir(name)
        except RepositoryError:
            return []
        return [str(v) for v in sorted(self._version_numbers(model_dir))]

    def plan(self, name: str | None, policy: VersionPolicy | None = None) -> list[VersionSource]:
        """The versions of ``name`` its policy serves (``policy`` overrides ``config.toml``)."""
        model_dir = self.model_dir(name)
        name = model_dir.name
        policy = policy or load_model_config(model_dir)
        available = self._version_numbers(model_dir)
        if not available:
            raise RepositoryError(
                f"model {name!r} has no version: expected {model_dir}/<version>/{MODEL_FILENAME} "
                "with <version> a positive integer"
            )
        if policy.kind != "specific":
            available = _passed_their_gate(model_dir, available)
        chosen = policy.select(available)
        if policy.kind == "auto" and chosen:
            chosen = [choose_fastest(model_dir, chosen)]
        if not chosen:
            raise RepositoryError(
                f"model {name!r}: its policy ({policy.describe()}) matches none of the versions "
                f"on disk {sorted(available)}"
            )
        return [VersionSource(name, str(v), model_dir / str(v) / MODEL_FILENAME) for v in chosen]

    def _version_numbers(self, model_dir: Path) -> list[int]:
        versions = []
        for entry in model_dir.iterdir():
            if not entry.is_dir() or not _VERSION_DIR.fullmatch(entry.name):
                continue
            if (entry / MODEL_FILENAME).is_file():
                versions.append(int(entry.name))
            else:
                logger.warning("skipping %s: no %s in it", entry, MODEL_FILENAME)
        return versions


def _version_card(model_dir: Path, version: int) -> ModelCard | None:
    try:
        return load_card(model_dir / str(version) / MODEL_FILENAME)
    except CardError:
        return None  # the load reports it, as for any version


def _passed_their_gate(model_dir: Path, versions: list[int]) -> list[int]:
    """``versions`` less the variants whose card says they failed their accuracy gate."""
    kept = []
    for version in versions:
        card = _version_card(model_dir, version)
        if card is not None and not card.gate_passed:
            logger.warning(
                "not serving %s version %d by default: it failed its accuracy gate (%s); "
                "a specific version policy can still serve it",
                model_dir.name,
                version,
                "; ".join(card.variant.gate.failures) if card.variant else "",
            )
            continue
        kept.append(version)
    return kept


def choose_fastest(model_dir: Path, versions: list[int]) -> int:
    """The version whose card measured the highest speed-up over fp32 among those whose execution
    provider (and precision) run here; fp32 counts 1.0 and wins ties, then the highest version."""

    def speed(version: int) -> tuple[float, int, int]:
        card = _version_card(model_dir, version)
        if card is None or card.variant is None:
            return (1.0, 1, version)
        if provider_unavailable(card) is not None:
            return (0.0, 0, version)
        return (float(card.variant.speed.get("speedup_vs_fp32", 0.0)), 0, version)

    best = max(versions, key=speed)
    logger.info(
        "auto version policy",
        extra={"model": model_dir.name, "version": best, "speed_vs_fp32": speed(best)[0]},
    )
    return best


class SingleModelFile:
    """One ONNX file as a repository of one model; its name and version come from its card.

    The name is the first loaded card's and stays; a file replaced by one whose card has another
    version is served as that version on the next load.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name: str | None = None

    def describe(self) -> str:
        return f"model file {str(self.path)!r}"

    def model_names(self) -> list[str]:
        return [self.name] if self.name is not None else []

    def models_to_start(self) -> list[str | None]:
        return [self.name]

    def adopt(self, name: str) -> None:
        self.name = name

    def versions_on_disk(self, name: str) -> list[str]:
        return []

    def plan(self, name: str | None, policy: VersionPolicy | None = None) -> list[VersionSource]:
        if self.name is not None and name != self.name:
            raise RepositoryError(f"no model {name!r}: this server serves {self.describe()} as {self.name!r}")
        if policy is not None and policy != VersionPolicy():
            raise RepositoryError(f"{self.describe()} holds one version: a version policy cannot apply to it")
        return [VersionSource(self.name, None, self.path)]
