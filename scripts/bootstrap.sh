#!/usr/bin/env bash
# Creates .venv and installs the project with the given extras, at the versions and hashes of
# requirements.lock, once per pyproject.toml and lock version: a second call with nothing
# changed returns at once.
#   scripts/bootstrap.sh export,cpu          # what `make serve` needs
#   scripts/bootstrap.sh export,cpu,dev      # what `make test` needs (and the client, client/)
# The lock is a constraints file: pip installs only what the extras need, each at its locked
# version, and refuses a file whose sha256 is not in the lock. `make lock` regenerates it
# (docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-export,cpu}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml client/pyproject.toml requirements.lock | sha256sum | cut -c1-16)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  echo "Installing the project with extras [$extras] into .venv from requirements.lock ..."
  # pip itself first, from its own lines of the lock: the venv's bundled pip may be too old to
  # combine a hashed constraint with a requirement.
  awk '/^pip==/{on=1; print; next} on && /^ /{print; next} {on=0}' requirements.lock > .venv/pip.lock
  .venv/bin/python -m pip install -q --require-hashes -r .venv/pip.lock
  # Then what the extras need, hash-checked against the lock (the constraints' hashes turn on
  # pip's hash-checking mode), and last the project itself, editable, with nothing more: an
  # editable install has no file to hash.
  requirements() { .venv/bin/python docker/requirements-from-pyproject.py "$@"; }
  {
    requirements pyproject.toml ${extras//,/ }
    echo setuptools  # the build backend of the editable installs below
    case ",$extras," in
      # The client is its own distribution (client/pyproject.toml, httpx only); the tests and
      # the benchmarks run it, so the dev extra brings it along with its command line.
      *,dev,*) requirements client/pyproject.toml cli ;;
    esac
  } > .venv/requirements.txt
  .venv/bin/python -m pip install -q --constraint requirements.lock -r .venv/requirements.txt
  editable=(-e .)
  case ",$extras," in *,dev,*) editable+=(-e ./client) ;; esac
  # (setuptools warns on every editable install that a folder named like the package would
  # shadow it: here that folder is the package itself.)
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation "${editable[@]}"
  touch "$stamp"
fi
