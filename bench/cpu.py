"""CPU-seconds per GiB of one image copy, per process, for each fetch method and a plain baseline.

On a loopback topology (tests/harness: cascading glance + chrooted sshd + regional
glances) one random image of ``--size-mib`` is copied to a region three ways:

- ``baseline``: OpenSSH ``scp`` of the store file (the same pinned account), then a
  plain upload of that file to the regional glance with python-glanceclient;
- ``openssh``: the agent's worker (``agent.task.run_task``, fetch_method = openssh);
- ``paramiko``: the same worker with fetch_method = paramiko.

The worker's wall time is the whole copy: the fetch, the upload to the regional
glance (which follows the fetch: agent/pipeline.py) and the checks; the
baseline's is ``scp`` then the upload, one after the other.  ``--methods openssh``
skips the slow paramiko run, e.g. to compare wall times of two versions of the
agent on the same machine (``PYTHONPATH`` at each version's tree).

For every process involved it reads utime+stime (and the times of reaped children)
before and after: the worker or client processes through ``wait4`` (they include
their ``sftp``/``ssh`` children), sshd and the regional glance-api through
``/proc/<pid>/stat`` of their whole process tree.  It prints CPU-s per GiB per
process, the total, the ratio of each total to the baseline's, and the worker's
peak RSS.  The agent's own control loop is not in the figures: it only relays a
worker's progress.  The bytes are random, so nothing compresses.

Usage: ``.venv/bin/python bench/cpu.py [--size-mib 1024]`` (``--size-mib 64`` for a quick run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import sshconnect, transfer  # noqa: E402
from glancesync import glance, storemap  # noqa: E402
from tests.functional import helpers  # noqa: E402
from tests.harness.glance import admin_client  # noqa: E402
from tests.harness.topology import Topology  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
GIB = 1024**3


def _stat_fields() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, seconds of utime+stime+cutime+cstime) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        table[int(entry)] = (int(rest[1]), sum(int(v) for v in rest[11:15]) / TICK)
    return table


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, reaped ones included."""
    table = _stat_fields()
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0.0))[1]
        todo += [child for child, (parent, _) in table.items() if parent == pid]
    return total


def tree_size(root: int) -> int:
    table = _stat_fields()
    return sum(1 for parent, _ in table.values() if parent == root)


def run_measured(argv: list[str]) -> tuple[float, int, float]:
    """Run ``argv`` to its end: (CPU s of it and its reaped children, peak RSS KiB, wall s)."""
    started = time.monotonic()
    process = subprocess.Popen(argv)  # noqa: S603
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv[0]} {argv[1:3]} failed with {process.returncode}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss, time.monotonic() - started


def measure(topo: Topology, region: str, argv: list[str]) -> dict[str, float]:
    sshd, regional = topo.sshd.process.pid, topo.cascaded[region].process.pid
    before = {"sshd": tree_cpu(sshd), "glance-api": tree_cpu(regional)}
    own, rss, wall = run_measured(argv)
    deadline = time.monotonic() + 10
    while tree_size(sshd) and time.monotonic() < deadline:  # the session child is reaped: its time counts
        time.sleep(0.05)
    return {"client": own, "sshd": tree_cpu(sshd) - before["sshd"],
            "glance-api": tree_cpu(regional) - before["glance-api"], "rss_kib": rss, "wall": wall}


def worker(spec: dict[str, Any]) -> None:
    """The agent's worker function on one copy task (run in its own process)."""
    import logging

    from agent import task as task_mod

    logging.basicConfig(level=logging.WARNING)
    store_map = storemap.load(spec["store_yaml"], storemap.Role.AGENT, spec["region"])
    fetch = transfer.FetchOptions(method=spec["method"], sftp_binary=spec.get("sftp") or "sftp")
    settings = task_mod.WorkerSettings(store_map=store_map, region=spec["region"], fetch=fetch)
    result = task_mod.run_task(spec["task"], settings, lambda done, total: None)
    if result["outcome"] != "done":
        raise SystemExit(f"copy failed: {result}")


def upload(spec: dict[str, Any]) -> None:
    """A plain glanceclient upload of a local file (the baseline's second half)."""
    client = admin_client(spec["url"])
    image = client.images.create(name="bench-baseline", disk_format="raw", container_format="bare")
    with open(spec["file"], "rb") as data:
        client.images.upload(image["id"], data, image_size=os.path.getsize(spec["file"]))


def limited_sftp(base: Path, mbit: int) -> str:
    """An ``sftp`` that OpenSSH itself holds to ``mbit`` Mbit/s (``-l``): a WAN-like link for the fetch."""
    path = base / "sftp-limited"
    path.write_text(f'#!/bin/sh\nexec sftp -l {mbit * 1000} "$@"\n')
    path.chmod(0o755)
    return str(path)


def scp_argv(topo: Topology, store: storemap.SshStore, source: str, dest: str, mbit: int = 0) -> list[str]:
    limit = ["-l", str(mbit * 1000)] if mbit else []
    return ["scp", "-q", *limit, "-F", "/dev/null", "-P", str(store.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={store.known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={store.private_key_file}", "-o", "IdentityAgent=none",
            f"{store.user}@{store.host}:{sshconnect.remote_path(store, source)}", dest]


def self_argv(mode: str, spec: dict[str, Any], tmp: Path) -> list[str]:
    path = tmp / f"{mode}-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(spec))
    return [sys.executable, __file__, f"--{mode}", str(path)]


def run(size_mib: int, base: Path, methods: tuple[str, ...] = transfer.METHODS,
        limit_mbit: int = 0) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with Topology(base / "topo", regions=2) as topo:
        first, second = topo.region_names
        uploaded = helpers.upload_random(topo.cascading.client(), size_mib * helpers.MIB, name="bench-cpu")
        image = glance.image_to_dict(topo.cascading.client().images.get(uploaded.id))
        source = str(topo.cascading.data_dir / image["id"])
        store = storemap.load(str(topo.agent_store_yaml(first)), storemap.Role.AGENT, first).store
        local = base / "scp.img"
        scp = measure(topo, first, scp_argv(topo, store, source, str(local), limit_mbit))
        up = measure(topo, first, self_argv("upload", {"url": topo.cascaded[first].url, "file": str(local)}, base))
        results["baseline"] = {"client": scp["client"] + up["client"], "sshd": scp["sshd"],
                               "glance-api": up["glance-api"], "rss_kib": max(scp["rss_kib"], up["rss_kib"]),
                               "wall": scp["wall"] + up["wall"]}
        local.unlink()
        for method, region in zip(methods, (first, second), strict=False):
            task = {"task_id": f"bench-{method}", "attempt": 1, "kind": "copy", "image_id": image["id"],
                    "region": region, "image": image, "source": {"type": "sftp", "path": source}}
            spec = {"store_yaml": str(topo.agent_store_yaml(region)), "region": region, "method": method,
                    "task": task, "sftp": limited_sftp(base, limit_mbit) if limit_mbit else None}
            try:
                results[method] = measure(topo, region, self_argv("worker", spec, base))
            except SystemExit as exc:  # one method failing (a 500 from glance) keeps the others' figures
                print(f"{method}: {exc}", file=sys.stderr)
                results[method] = {"failed": 1.0}
    return results


def report(results: dict[str, dict[str, float]], size_mib: int) -> None:
    gib = size_mib * 1024 * 1024 / GIB
    print(f"\n{size_mib} MiB image, {time.strftime('%Y-%m-%d', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"{'CPU-s per GiB':<14}{'client/worker':>14}{'sshd':>8}{'glance-api':>12}{'total':>8}"
          f"{'vs baseline':>13}{'wall s':>8}{'peak RSS':>10}")
    base_total = sum(results["baseline"][k] for k in ("client", "sshd", "glance-api")) / gib
    for name, row in results.items():
        if "failed" in row:
            print(f"{name:<14}failed (see above)")
            continue
        per = {k: row[k] / gib for k in ("client", "sshd", "glance-api")}
        total = sum(per.values())
        print(f"{name:<14}{per['client']:>14.2f}{per['sshd']:>8.2f}{per['glance-api']:>12.2f}{total:>8.2f}"
              f"{total / base_total:>12.2f}x{row['wall']:>8.1f}{row['rss_kib'] / 1024:>7.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="image size in MiB (default 1024)")
    parser.add_argument("--methods", default=",".join(transfer.METHODS),
                        help="fetch methods to run the worker with, comma-separated (default: "
                        f"{','.join(transfer.METHODS)}); each copies to its own region")
    parser.add_argument("--limit-mbit", type=int, default=0,
                        help="hold scp and the openssh fetch to this many Mbit/s (OpenSSH's -l), like a WAN "
                        "link: the wall time then shows what overlapping the upload saves (default: no limit)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--upload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(Path(args.worker).read_text()))
    if args.upload:
        return upload(json.loads(Path(args.upload).read_text()))
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        methods = tuple(m for m in args.methods.split(",") if m)
        unknown = set(methods) - set(transfer.METHODS)
        if unknown or not methods or len(methods) > 2:
            parser.error(f"--methods: one or two of {', '.join(transfer.METHODS)}")
        report(run(args.size_mib, Path(tmp), methods, args.limit_mbit), args.size_mib)


if __name__ == "__main__":
    main()
