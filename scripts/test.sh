#!/usr/bin/env bash
# The test command: installs what the tests need (Python packages into .venv; nginx and
# chromium from Debian's packages when running as root), then runs the whole pytest suite.
# Playwright drives that chromium (tests/e2e/test_page_browser.py); it never downloads a browser.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/app -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh export,cpu,dev

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v taskset >/dev/null || need_apt+=(util-linux)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing ${need_apt[*]} from Debian's packages ..."
    apt-get update -qq || echo "warning: apt-get update failed; installing from the package lists at hand" >&2
    # One at a time: a package that cannot be installed costs its own tests (skipped, with the
    # reason), not the whole run.
    for package in "${need_apt[@]}"; do
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null \
        || echo "warning: apt-get could not install $package: the tests that need it will be skipped" >&2
    done
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
