"""Fault campaign: correctness of the sync under crashes, stops, restarts and a full disk.

Starts one real topology (cascading glance-api with our filter and store driver, two
regional glance-apis, sshd, coordinator, one agent per region; each region's work_dir
on its own tmpfs when run as root) and runs ``--trials`` trials on it.  In each, 5 to
10 images of mixed sizes are uploaded while one random fault strikes (kill -9 of the
coordinator, an agent or an agent's worker; SIGSTOP of an agent past lease_timeout;
restart of a regional glance-api or of sshd; a full work_dir; kill -9 of the
coordinator while a copy is being registered).  Then every (image, region) is checked:
same id, same bytes, one location, synced.  See doc/faults.md.

Prints the figures (trials, faults by kind, lost, corrupt, stuck, failed, time to
converge p50/p95) and writes them with every trial's details to ``<dir>/results.json``.
Exit status 1 when anything was lost, corrupt, stuck, failed, mislocated or refused.

Usage: ``.venv/bin/python bench/faults.py [--trials N] [--seed S] [--kinds a,b] [--keep] [--dir D]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.campaign import MIB, Campaign, Trial, ok, render, summarize  # noqa: E402
from tests.harness.faults import INJECTORS, Site  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="number of trials (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    parser.add_argument("--kinds", default="", help=f"comma-separated fault kinds (default all: {', '.join(INJECTORS)})")
    parser.add_argument("--max-mib", type=float, default=40, help="largest image in MiB (default 40)")
    parser.add_argument("--converge-timeout", type=float, default=600,
                        help="seconds a trial waits for convergence before its tasks count as stuck (default 600)")
    parser.add_argument("--heartbeat-interval", type=float, default=None,
                        help="[coordinator] and [agent] heartbeat_interval (default: the harness's 1 s; an "
                             "agent silent for 3 intervals is offline)")
    parser.add_argument("--dir", default=None, help="run directory (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, journal, results.json)")
    return parser.parse_args()


def write_results(base: Path, seed: int, trials: list[Trial]) -> None:
    """results.json, rewritten after every trial so that an interrupted campaign keeps its figures."""
    results = {"seed": seed, "summary": summarize(trials), "trials": [dataclasses.asdict(t) for t in trials]}
    (base / "results.json").write_text(json.dumps(results, indent=1, default=str))


def main() -> int:
    args = parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in INJECTORS]
    if unknown:
        print(f"unknown fault kind(s): {', '.join(unknown)}; known: {', '.join(INJECTORS)}", file=sys.stderr)
        return 2
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="glance-sync-faults-"))
    if args.dir and base.exists() and any(base.iterdir()):
        if not (base / "etc" / "glance-sync.conf").exists():
            print(f"{base} is not empty and holds no earlier run: not removing it", file=sys.stderr)
            return 2
        shutil.rmtree(base)
    print(f"seed {seed}, {args.trials} trials, run dir {base}", flush=True)
    site = Site(base, heartbeat_interval=args.heartbeat_interval)
    started = time.monotonic()
    trials: list[Trial] = []
    try:
        site.start()
        if not site.can_fill_disk:
            print("not root: no tmpfs work_dir, so no disk_full faults", flush=True)
        campaign = Campaign(site, seed=seed, kinds=kinds or None, sizes=(4096, int(args.max_mib * MIB)),
                            converge_timeout=args.converge_timeout,
                            log=lambda line: print(line, flush=True))
        trials = campaign.trials
        try:
            campaign.run(args.trials, after=lambda done: write_results(base, seed, done))
        finally:
            campaign.close()
    except KeyboardInterrupt:
        print(f"interrupted after {len(trials)} trial(s)", file=sys.stderr)
    except Exception as exc:  # the harness itself failed (a service that would not restart): say so
        print(f"campaign stopped after {len(trials)} trial(s): {type(exc).__name__}: {exc}", file=sys.stderr)
        args.keep = True
    finally:
        site.stop()
    summary = summarize(trials)
    print(f"\nFault campaign, seed {seed}, {time.monotonic() - started:.0f} s:")
    print(render(summary))
    write_results(base, seed, trials)
    if args.keep:
        print(f"run directory kept: {base} (results.json, logs/)")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok(summary) and len(trials) == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
