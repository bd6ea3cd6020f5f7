#!/usr/bin/env bash
# The project's test command (README, CI): prepare the machine, lint, run every test.
# Works on a fresh Debian machine with python3.11, as root, without stdin (CI=true):
# tools/bootstrap.sh installs sshd (when missing) and the .venv with glance and the tools.
# Extra arguments go to pytest (e.g. tools/test.sh -m "not functional").
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/bootstrap.sh </dev/null

echo "test.sh: ruff check"
.venv/bin/ruff check .

echo "test.sh: pytest"
set +e
.venv/bin/python -m pytest tests -q -ra --timeout=600 -p no:cacheprovider "$@" </dev/null
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: FAILED: pytest collected no tests (exit code 5); the suite must not be empty" >&2
    exit 5
fi
if [ "$rc" -ne 0 ]; then
    echo "test.sh: FAILED: pytest exit code $rc" >&2
fi
exit "$rc"
