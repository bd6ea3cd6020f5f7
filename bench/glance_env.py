"""What reading the environment costs a glance request: requests' ``trust_env`` against httpenv.py.

Two keystoneauth1 sessions on the same fake glance (bench/fakeglance.py, one image):
``base`` is what keystoneauth1 makes by itself (a requests session with ``trust_env``:
every request scans the environment for proxies and looks for ``.netrc``), ``new`` is
``glancesync.glance.make_session`` (the environment read once per host).  GETs of the
image alternate between them (ABBA), so the machine's load falls on both alike; it prints
the quartiles of each and their difference, and what one environment scan costs here.

The fake glance writes its headers and its body separately; without ``TCP_NODELAY`` on
its side Nagle's algorithm and the client's delayed ACK add about 40 ms to most answers,
so the bench turns it on.

Usage: ``.venv/bin/python bench/glance_env.py [--requests N] [--extra-variables K]``
(``--extra-variables`` adds K unrelated variables, as a container's environment has).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keystoneauth1 import noauth, session  # noqa: E402
from requests import utils  # noqa: E402

from bench import fakeglance  # noqa: E402
from glancesync import glance  # noqa: E402
from glancesync.storemap import GlanceEndpoint  # noqa: E402

IMAGE = "5d9c0c1e-7a52-4b4e-9d1a-0c2f3e4a5b60"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=6000, help="GETs in all, half for each session")
    parser.add_argument("--extra-variables", type=int, default=0, help="unrelated environment variables to add")
    args = parser.parse_args()
    for n in range(args.extra_variables):
        os.environ[f"GLANCE_ENV_BENCH_{n}"] = "x" * 20
    fakeglance._Handler.disable_nagle_algorithm = True
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=fakeglance.serve, args=([IMAGE], tempfile.gettempdir(), child),
                                     daemon=True)
    server.start()
    url = f"http://127.0.0.1:{parent.recv()[0]}"
    target = f"{url}/v2/images/{IMAGE}"
    sessions = {"base": session.Session(auth=noauth.NoAuth(endpoint=url)),
                "new": glance.make_session(GlanceEndpoint(url=url))}
    for sess in sessions.values():
        for _ in range(100):
            sess.get(target)
    took: dict[str, list[float]] = {name: [] for name in sessions}
    order = ("base", "new", "new", "base")
    for i in range(args.requests):
        name = order[i % 4]
        started = time.perf_counter()
        sessions[name].get(target)
        took[name].append((time.perf_counter() - started) * 1e6)
    server.terminate()
    scan = timeit.timeit(lambda: utils.get_environ_proxies(target), number=5000) / 5000 * 1e6
    print(f"{len(os.environ)} environment variables; load average {os.getloadavg()[0]:.2f}")
    for name, values in took.items():
        q = statistics.quantiles(values, n=4)
        print(f"{name:>4}: {len(values)} GETs, µs p25 {q[0]:.0f}  median {q[1]:.0f}  p75 {q[2]:.0f}")
    print(f"median difference base - new: {statistics.median(took['base']) - statistics.median(took['new']):.0f} µs;"
          f" one environment proxy lookup alone: {scan:.0f} µs")


if __name__ == "__main__":
    main()
