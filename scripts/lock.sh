#!/usr/bin/env bash
# requirements.lock: every package the project and its client can install (all extras), pinned
# with the sha256 of each of its files, for CPython 3.11 on Linux x86_64 (the images and the
# machines that run `make serve` and `make test`). uv resolves it from PyPI's metadata in
# seconds; pip installs from it (scripts/bootstrap.sh, the Dockerfile), so a wheel that lies on
# a local mirror or find-links folder is used when its hash matches.
#
#   scripts/lock.sh                         # after editing dependencies: keeps every pin that still fits
#   scripts/lock.sh --upgrade               # every package to the newest version pyproject.toml allows
#   scripts/lock.sh --upgrade-package NAME  # one package (repeatable)
#   scripts/lock.sh --check                 # exit 1 if the lock does not match pyproject.toml (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
uv_version=0.13.10
tools=build/lock-tools
if ! "$tools/bin/uv" --version 2>/dev/null | grep -q "^uv $uv_version "; then
  "${PYTHON:-python3}" -m venv "$tools"
  "$tools/bin/python" -m pip install -q "uv==$uv_version"
fi
compile() {
  "$tools/bin/uv" pip compile --quiet --all-extras --generate-hashes --strip-extras \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "scripts/lock.sh" "$@" pyproject.toml client/pyproject.toml
}
if [ "${1:-}" = --check ]; then
  fresh=$(mktemp)
  trap 'rm -f "$fresh"' EXIT
  cp requirements.lock "$fresh"
  compile --output-file "$fresh"
  if ! diff -u requirements.lock "$fresh"; then
    echo "error: requirements.lock does not match pyproject.toml: run scripts/lock.sh (make lock) and commit it" >&2
    exit 1
  fi
  echo "requirements.lock matches pyproject.toml and client/pyproject.toml"
else
  compile --output-file requirements.lock "$@"
fi
