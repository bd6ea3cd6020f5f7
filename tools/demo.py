"""The local demo: keystone, a cascading glance, regional glances, sshd, coordinator and agents on 127.0.0.1.

It starts everything as real processes (the same harness the end-to-end tests use),
prints where each service listens, uploads a random image to the cascading glance with
python-glanceclient as the non-admin ``demo`` user would, shows per-region progress with
``glance-sync-status --wait`` until every region is synced, and prints the cascading
image's locations.  Each run keeps its own directory ``<dir>/<UTC time>/`` (``--dir``,
default ``demo-run/``; ``<dir>/latest`` names the newest, the oldest beyond ``--runs-kept``
are removed), among it ``openrc`` (keystone's admin) and ``openrc-demo`` (the ``demo``
project's user): source one and the ``openstack`` and ``glance`` CLIs work against the
cascading glance (keep the services running with ``--keep``).  ``--no-keystone`` runs the glances without
keystone, trusting forged identity headers, as most functional tests do.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.glance import venv_bin  # noqa: E402
from tests.harness.rundirs import LATEST, new_run_dir  # noqa: E402
from tests.harness.topology import CASCADING_REGION, Topology  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(ROOT / "demo-run"),
                        help="where the runs go: one directory per run (configs, data, logs), DIR/latest the newest")
    parser.add_argument("--runs-kept", type=int, default=5,
                        help="runs kept under --dir, this one included; older ones are removed (0: keep all)")
    parser.add_argument("--regions", type=int, default=2, help="number of cascaded regions (default 2)")
    parser.add_argument("--size-mib", type=int, default=64, help="size of the random image (default 64)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the sync")
    parser.add_argument("--keep", action="store_true", help="keep the services running until Ctrl-C")
    parser.add_argument("--no-keystone", action="store_true",
                        help="no keystone: glances trust identity headers (the openstack/glance CLIs cannot log in)")
    return parser.parse_args()


def print_topology(topo: Topology) -> None:
    print("Services (all on 127.0.0.1):")
    if topo.keystone is not None:
        print(f"  keystone               {topo.keystone.auth_url}   (every glance-api runs behind "
              "keystonemiddleware)")
    print(f"  cascading glance-api   {topo.cascading.url}   (glancesync filter + cascaded:// store)")
    for name, server in topo.cascaded.items():
        print(f"  {name:<22} {server.url}")
    print(f"  sshd (cascading store) 127.0.0.1:{topo.sshd.port}   store dir {topo.cascading.data_dir}")
    if topo.sshd.chroot_dir is not None:
        print(f"                         account {topo.sshd.user}: chrooted into the store dir, read-only SFTP, "
              "no shell, no TTY, no forwarding")
    print(f"  coordinator            events+status tcp://127.0.0.1:{topo.client_port}, "
          f"agents tcp://127.0.0.1:{topo.agent_port}")
    print(f"  config                 {topo.service_conf}")
    print("  glance_store.yaml, one per host (doc/least-privilege.md):")
    print(f"    coordinator          {topo.store_yaml}   (every region, no SSH key)")
    print(f"    glance-api (driver)  {topo.driver_store_yaml}   (regions only)")
    for name in topo.region_names:
        print(f"    agent of {name:<11} {topo.agent_store_yaml(name)}   (its region, the SSH key)")
    print(f"  glance policy          {topo.cascading.policy_path}   (cascading: location writes "
          "for admin/service only)")
    if topo.keystone is not None:
        for name in topo.region_names:
            print(f"  glance policy {name:<8} {topo.region_policy_file(name)}   (its agent's role is admin there "
                  "only)")
    print(f"  logs                   {topo.log_dir}/")
    sys.stdout.flush()


def status_json(topo: Topology) -> str:
    result = subprocess.run(
        [venv_bin("glance-sync-status"), "--config-file", str(topo.service_conf), "--json"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )
    return result.stdout


def print_openrc(files: dict[str, Path], keep: bool) -> None:
    print("\nCredentials for the openstack and glance CLIs (keystone region "
          f"{CASCADING_REGION} is the cascading glance):")
    for account, path in files.items():
        who = "keystone's admin" if account == "admin" else "user demo, member of project demo"
        print(f"  {path}   ({who})")
    demo = files.get("demo")
    print("In another shell, while the services run:")
    print(f"  source {demo}")
    print("  openstack image create --file <some file> --disk-format raw --container-format bare my-image")
    print("  openstack image list        # or: glance image-list")
    if "admin" in files:
        print(f"  source {files['admin']}; openstack image sync status   # the sync, per region (admin)")
    if not keep:
        print("(this run stops its services at the end: start it with --keep to try them)")
    sys.stdout.flush()


def upload_image(topo: Topology, size_mib: int) -> str:
    client = topo.client(topo.cascading, "demo" if topo.keystone is not None else "admin")
    with tempfile.NamedTemporaryFile(dir=topo.base_dir, suffix=".img") as data:
        for _ in range(size_mib):
            data.write(os.urandom(1024 * 1024))
        data.flush()
        data.seek(0)
        # Private to its project: a member may not publish images (glance's default policy).
        image = client.images.create(name="demo-image", disk_format="raw", container_format="bare")
        print(f"\nUploading {size_mib} MiB as image {image['id']} to the cascading glance ...")
        started = time.monotonic()
        client.images.upload(image["id"], data, image_size=size_mib * 1024 * 1024)
        print(f"  upload returned in {time.monotonic() - started:.1f} s")
    return image["id"]


def show_locations(topo: Topology, image_id: str) -> None:
    image = topo.client(topo.cascading).images.get(image_id)
    print(f"\nCascading image {image_id}: size {image['size']}, checksum {image['checksum']}")
    print("Locations:")
    for location in image.get("locations", []):
        print(f"  {location['url']}   {location.get('metadata') or ''}")


def run(args: argparse.Namespace) -> int:
    try:
        base = new_run_dir(Path(args.dir), datetime.now(UTC), keep=max(args.runs_kept, 0))
    except OSError as exc:
        print(f"demo: cannot make a run directory under {args.dir}: {exc}", file=sys.stderr)
        return 2
    print(f"This run's configs, data and logs: {base}/ (also {Path(args.dir) / LATEST}/)")
    keystone = not args.no_keystone
    topo = Topology(base, regions=args.regions, sync_filter=True, cascaded_store=True, keystone=keystone)
    print(f"Starting {'keystone, ' if keystone else ''}glance-api x{args.regions + 1} and sshd"
          f"{' (preparing keystone takes a minute)' if keystone else ''} ...")
    sys.stdout.flush()
    topo.start()
    try:
        openrc = {}
        if keystone:
            topo.write_openrc(base / "openrc")
            # The admin's shell also reaches the coordinator: `openstack image sync ...` (doc/osc-plugin.md).
            with open(base / "openrc", "a", encoding="utf-8") as rc:
                rc.write(f"export OS_GLANCE_SYNC_CONFIG={topo.service_conf}\n")
            topo.write_openrc(base / "openrc-demo", "demo")
            # Named through latest: the lines printed stay right for whichever run is the newest.
            latest = Path(args.dir) / LATEST
            openrc = {"admin": latest / "openrc", "demo": latest / "openrc-demo"}
        topo.start_coordinator()
        for region in topo.region_names:
            topo.start_agent(region)
        print_topology(topo)
        topo.wait_for(lambda: status_json(topo).count('"online": true') >= args.regions,
                      timeout=60, what="every agent online")
        subprocess.run([venv_bin("glance-sync-status"), "--config-file", str(topo.service_conf)],
                       stdin=subprocess.DEVNULL)
        image_id = upload_image(topo, args.size_mib)
        print("\nSync progress per region (glance-sync-status --wait):")
        sys.stdout.flush()
        waited = subprocess.run(
            [venv_bin("glance-sync-status"), "--config-file", str(topo.service_conf),
             "--wait", image_id, "--timeout", str(args.timeout)],
            stdin=subprocess.DEVNULL,
        )
        show_locations(topo, image_id)
        subprocess.run([venv_bin("glance-sync-status"), "--config-file", str(topo.service_conf),
                        "image", image_id], stdin=subprocess.DEVNULL)
        if waited.returncode != 0:
            print(f"\nThe sync did not complete; logs are in {topo.log_dir}/", file=sys.stderr)
            return waited.returncode
        print("\nEvery region holds a verified copy.")
        if openrc:
            print_openrc(openrc, args.keep)
        if args.keep:
            print("Services keep running; Ctrl-C stops them.")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("Stopping services ...")
        topo.stop()


if __name__ == "__main__":
    sys.exit(run(parse_args()))
