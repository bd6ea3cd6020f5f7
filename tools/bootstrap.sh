#!/usr/bin/env bash
# Prepares this checkout to run the demo and the tests on a fresh Debian machine:
# OpenSSH's sshd from Debian (when missing) and a virtualenv in .venv with the project,
# glance (the real glance-api the tests and demo run), gunicorn and the test tools.
# Idempotent: a second run only checks; delete .venv to rebuild it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PYTHON=${PYTHON:-python3}

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    echo "bootstrap: installing openssh-server (sshd is missing)"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends openssh-server openssh-client
fi
if ! command -v ssh-keygen >/dev/null 2>&1; then
    echo "bootstrap: ssh-keygen missing; install openssh-client" >&2
    exit 1
fi

stamp=.venv/.bootstrap-stamp
want=$(cat setup.py requirements*.txt 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
echo "bootstrap: installing glance, the project and test tools into .venv (about a minute)"
.venv/bin/pip install -q -r requirements-test.txt -e .
echo "$want" > "$stamp"
