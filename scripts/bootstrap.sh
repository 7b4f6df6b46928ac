#!/usr/bin/env bash
# Creates .venv and installs the project with the given extras, once per pyproject.toml
# version: a second call with nothing changed returns at once.
#   scripts/bootstrap.sh export,cpu          # what `make serve` needs
#   scripts/bootstrap.sh export,cpu,dev      # what `make test` needs (and the client, client/)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-export,cpu}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml client/pyproject.toml | sha256sum | cut -c1-16)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  echo "Installing the project with extras [$extras] into .venv ..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  # The client is its own distribution (client/pyproject.toml, httpx only); the tests and the
  # benchmarks run it, so the dev extra brings it along with its command line.
  case ",$extras," in
    *,dev,*) .venv/bin/python -m pip install -q -e "./client[cli]" ;;
  esac
  touch "$stamp"
fi
