#!/usr/bin/env bash
# Creates .venv and installs the project with the given extras, once per pyproject.toml
# version: a second call with nothing changed returns at once.
#   scripts/bootstrap.sh export,cpu          # what `make serve` needs
#   scripts/bootstrap.sh export,cpu,dev      # what `make test` needs
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-export,cpu}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  echo "Installing the project with extras [$extras] into .venv ..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
