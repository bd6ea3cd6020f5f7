"""CPU and wall time of the agent running many small tasks: worker_mode = spawn against worker_mode = pool.

On the loopback topology of the tests (cascading glance + sshd serving its store,
one regional glance), ``--count`` small images (``--size-kib``) are uploaded per
mode.  Then, for each mode in turn, the agent's own pool (``agent.cmd.build_pool``,
``[agent] workers`` = ``--workers``) runs ``--count`` copy tasks, then as many
metadata updates of those copies, then as many deletes of them.  Each mode runs in
a process of its own, which reads utime+stime (with reaped children) of itself and
every process under it: the pool's loop and threads, the spawned workers, the fork
server and the workers it forks, and their ``sftp``/``ssh`` children.  Glance and
sshd are not counted: they do the same work in both modes.

``start-up`` is what a mode pays once per agent life (under ``pool`` the fork
server importing the task modules), outside the per-task rows.

Usage: ``.venv/bin/python bench/agent_pool.py [--count 50] [--size-kib 256] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import _stat_fields  # noqa: E402
from glancesync import glance, storemap  # noqa: E402
from tests.functional import helpers  # noqa: E402
from tests.harness.topology import Topology  # noqa: E402

PHASES = ("copy", "update", "delete")
MODES = ("spawn", "pool")


def tree_cpu(root: int) -> tuple[float, int]:
    """(CPU s of ``root`` and its descendants, reaped ones included; how many descendants are alive)."""
    table = _stat_fields()
    total, todo, alive = 0.0, [root], -1
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0.0))[1]
        alive += 1
        todo += [child for child, (parent, _) in table.items() if parent == pid]
    return total, alive


def settle(root: int, keep: int) -> float:
    """Wait until only ``keep`` descendants (fork server, resource tracker) are left; their CPU then."""
    deadline = time.monotonic() + 60
    while True:
        cpu, alive = tree_cpu(root)
        if alive <= keep or time.monotonic() > deadline:
            return cpu
        time.sleep(0.05)


def run_phase(pool: Any, tasks: list[dict[str, Any]]) -> tuple[float, int]:
    """Run ``tasks`` through ``pool`` as the agent's loop does: (wall s, failures)."""
    started, pending, failed, left = time.monotonic(), list(tasks), 0, len(tasks)
    while left:
        while pending and pool.free_slots() > 0:
            pool.start(pending.pop(0), time.monotonic())
        for event in pool.poll(time.monotonic()):
            if event.kind == "result":
                left -= 1
                if event.body["outcome"] != "done":
                    failed += 1
                    print(f"  {event.task['kind']} {event.task['image_id']} failed: {event.body['reason']}")
        time.sleep(0.005)
    return time.monotonic() - started, failed


def runner(spec: dict[str, Any]) -> dict[str, Any]:
    """One mode, in its own process: start-up, then every phase; CPU and wall of each."""
    from agent.cmd import build_pool
    from agent.task import WorkerSettings

    logging.basicConfig(level=logging.WARNING)
    store_map = storemap.load(spec["store_yaml"], storemap.Role.AGENT, spec["region"])
    settings = WorkerSettings(store_map=store_map, region=spec["region"])
    me, mode = os.getpid(), spec["mode"]
    out: dict[str, Any] = {}
    cpu0, wall0 = settle(me, 0), time.monotonic()
    pool = build_pool(mode, spec["workers"], 600.0, settings)  # with the fork server's start (pool)
    keep = 1 if mode == "spawn" else 2  # the resource tracker (and the fork server)
    cpu = settle(me, keep)
    out["start-up"] = {"cpu": cpu - cpu0, "wall": time.monotonic() - wall0, "failed": 0}
    for phase in PHASES:
        wall, failed = run_phase(pool, spec["tasks"][phase])
        while pool.exiting:
            pool.poll(time.monotonic())
            time.sleep(0.01)
        after = settle(me, keep)
        out[phase] = {"cpu": after - cpu, "wall": wall, "failed": failed}
        cpu = after
    pool.shutdown()
    return out


def tasks_for(topo: Topology, region: str, images: list[dict[str, Any]], mode: str) -> dict[str, list]:
    def task(kind: str, image: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        return {"task_id": f"{mode}-{kind}-{image['id']}", "attempt": 1, "kind": kind, "image_id": image["id"],
                "region": region, "image": record,
                "source": {"type": "sftp", "path": str(topo.cascading.data_dir / image["id"])}}

    return {"copy": [task("copy", i, i) for i in images],
            "update": [task("update", i, dict(i, name=f"bench-updated-{mode}", min_ram=64)) for i in images],
            "delete": [task("delete", i, i) for i in images]}


def run(args: argparse.Namespace, base: Path) -> dict[str, dict[str, Any]]:
    results = {}
    with Topology(base / "topo", regions=1) as topo:
        region = topo.region_names[0]
        client = topo.cascading.client()
        for mode in MODES:
            images = [glance.image_to_dict(client.images.get(
                helpers.upload_random(client, args.size_kib * 1024, name=f"bench-pool-{mode}-{n}").id))
                for n in range(args.count)]
            spec = {"mode": mode, "workers": args.workers, "region": region,
                    "store_yaml": str(topo.agent_store_yaml(region)), "tasks": tasks_for(topo, region, images, mode)}
            spec_file, out_file = base / f"{mode}.json", base / f"{mode}.out.json"
            spec_file.write_text(json.dumps(spec))
            with open(base / f"{mode}.log", "w") as log:  # the workers' log lines: shown only on failure
                code = subprocess.call([sys.executable, __file__, "--run", str(spec_file), str(out_file)],  # noqa: S603
                                       stderr=log)
            if code != 0:
                print((base / f"{mode}.log").read_text()[-4000:], file=sys.stderr)
                raise SystemExit(f"the {mode} run failed with {code}")
            results[mode] = json.loads(out_file.read_text())
    return results


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.count} tasks per row, {args.size_kib} KiB images, workers = {args.workers}; "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.node()}, {os.cpu_count()} CPUs")
    print(f"{'':<10}{'CPU-s spawn':>12}{'CPU-s pool':>12}{'ratio':>8}{'wall s spawn':>14}{'wall s pool':>13}"
          f"{'ms CPU/task spawn':>19}{'ms CPU/task pool':>18}")
    for phase in ("start-up", *PHASES):
        spawn, pool = results["spawn"][phase], results["pool"][phase]
        ratio = f"{spawn['cpu'] / pool['cpu']:.1f}x" if pool["cpu"] > 0 and phase != "start-up" else "-"
        per = "" if phase == "start-up" else (f"{spawn['cpu'] / args.count * 1000:>19.0f}"
                                               f"{pool['cpu'] / args.count * 1000:>18.0f}")
        failed = spawn["failed"] + pool["failed"]
        print(f"{phase:<10}{spawn['cpu']:>12.2f}{pool['cpu']:>12.2f}{ratio:>8}{spawn['wall']:>14.2f}"
              f"{pool['wall']:>13.2f}{per}{f'  ({failed} failed)' if failed else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50, help="tasks per kind and mode (default 50)")
    parser.add_argument("--size-kib", type=int, default=256, help="size of each image in KiB (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="[agent] workers (default 2)")
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        result = runner(json.loads(Path(args.run[0]).read_text()))
        Path(args.run[1]).write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        report(run(args, Path(tmp)), args)


if __name__ == "__main__":
    main()
