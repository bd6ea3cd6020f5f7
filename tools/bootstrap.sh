#!/usr/bin/env bash
# Prepares this checkout to run the demo and the tests on a fresh Debian machine:
# OpenSSH's sshd, PostgreSQL and MariaDB from Debian (when missing) and a virtualenv in .venv with the project,
# glance (the real glance-api the tests and demo run), gunicorn and the test tools.
# Idempotent: a second run only checks; delete .venv to rebuild it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PYTHON=${PYTHON:-python3}

apt_updated=
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then $SUDO apt-get update -q; apt_updated=1; fi
    $SUDO apt-get install -y -q --no-install-recommends "$@"
}

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    echo "bootstrap: installing openssh-server (sshd is missing)"
    apt_install openssh-server openssh-client
fi
# Debian's own python3 has no ensurepip (so no venv) without python3-venv.
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
    echo "bootstrap: installing python3-venv ($PYTHON cannot create a virtualenv)"
    apt_install python3-venv
fi
# The journal's tests on real database servers (tests/harness/sqlserver.py) start their own
# PostgreSQL and MariaDB in a temporary directory: only the binaries are needed. Debian's
# packages create a system cluster too; on a host without systemd (CI containers) it stays down.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v mariadb-install-db >/dev/null 2>&1; then
    echo "bootstrap: installing postgresql and mariadb-server (the journal's server tests)"
    apt_install postgresql mariadb-server
fi
if ! command -v ssh-keygen >/dev/null 2>&1; then
    echo "bootstrap: installing openssh-client (ssh-keygen is missing)"
    apt_install openssh-client
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
