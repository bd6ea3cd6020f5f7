#!/usr/bin/env bash
# The README's demo command: installs what it needs, then runs a whole local
# topology on 127.0.0.1 and syncs one image across it (see tools/demo.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
exec .venv/bin/python tools/demo.py "$@"
