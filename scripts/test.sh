#!/usr/bin/env bash
# The test command: installs what the tests need (Python packages into .venv; nginx from
# Debian's packages when running as root), then runs the whole pytest suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/app -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh export,cpu,dev

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing ${need_apt[*]} from Debian's packages ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: ${need_apt[*]} missing and not root: the tests that need them will be skipped" >&2
  fi
fi

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "error: pytest collected no tests; a test run that tests nothing is a failure here" >&2
  exit 1
fi
exit "$rc"
