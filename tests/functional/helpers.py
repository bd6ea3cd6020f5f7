"""What the end-to-end tests do again and again: ask glance-sync-status, upload, wait.

Everything goes through the same doors a user or operator has: the status tool as
a process, python-glanceclient against the real glance-apis.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.glance import venv_bin
from tests.harness.topology import Topology

MIB = 1024 * 1024


def run_status(topo: Topology, *args: str, timeout: float = 30, conf: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv_bin("glance-sync-status"), "--config-file", str(conf or topo.service_conf), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
    )


def status(topo: Topology, *args: str, conf: Path | None = None) -> dict[str, Any]:
    """The --json output of a status view; AssertionError with stderr when it fails."""
    result = run_status(topo, *args, "--json", conf=conf)
    assert result.returncode == 0, f"glance-sync-status {' '.join(args)} failed: {result.stderr}"
    return json.loads(result.stdout)


def image_regions(topo: Topology, image_id: str, conf: Path | None = None) -> dict[str, dict[str, Any]]:
    return status(topo, "image", image_id, conf=conf).get("regions", {})


def online_agents(topo: Topology) -> dict[str, set[str]]:
    """Region -> ids of the agents the coordinator sees online."""
    regions = status(topo)["regions"]
    return {
        name: {a["agent_id"] for a in region.get("agents", []) if a.get("online")}
        for name, region in regions.items()
    }


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


def start_services(topo: Topology, timeout: float = 60) -> None:
    """Start the topology's coordinator and one agent per region; wait until every agent is online."""
    topo.start_coordinator()
    for region in topo.region_names:
        topo.start_agent(region)
    wait_until(lambda: all(online_agents(topo).get(r) for r in topo.region_names), timeout,
               "every region's agent online")


@contextmanager
def keystone_topology(base: Path, prepare: Callable[[Topology], None] | None = None,
                      **coordinator: Any) -> Iterator[Topology]:
    """A topology of its own with a real keystone (two regions, the filter and the ``cascaded://`` driver),
    its coordinator and agents running; stopped on exit.

    ``prepare(topo)`` runs once the glances and keystone answer, before our services start;
    ``coordinator`` adds ``[coordinator]`` options.  Heartbeats every 2 s (offline after 6 s of
    silence) rather than the harness's 1 s: with keystone beside them on a busy machine, agents
    were seen silent for a few seconds and their tasks requeued, again and again.
    """
    topo = Topology(base, regions=2, sync_filter=True, cascaded_store=True, keystone=True)
    try:
        topo.start()
        if prepare is not None:
            prepare(topo)
        topo.write_service_conf(coordinator={"heartbeat_interval": 2, **coordinator}, agent={"heartbeat_interval": 2})
        start_services(topo)
        yield topo
    finally:
        topo.stop()


def wait_states(topo: Topology, image_id: str, wanted: dict[str, str] | str, regions: list[str] | None = None,
                timeout: float = 120, conf: Path | None = None) -> dict[str, dict[str, Any]]:
    """Wait until each region of the image is in the wanted state."""
    names = regions or topo.region_names

    def reached() -> dict[str, dict[str, Any]] | None:
        view = image_regions(topo, image_id, conf)
        want = {r: wanted for r in names} if isinstance(wanted, str) else wanted
        ok = all(view.get(r, {}).get("state") == s for r, s in want.items())
        return view if ok else None

    try:
        return wait_until(reached, timeout, f"{image_id} to reach {wanted}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nview now: {image_regions(topo, image_id, conf)}") from None


@dataclass
class Uploaded:
    id: str
    size: int
    md5: str
    sha512: str


def upload_random(client: Any, size: int, name: str | None = None, **props: Any) -> Uploaded:
    """Create and upload ``size`` random bytes as a raw image, streamed from a temp file."""
    md5, sha = hashlib.md5(), hashlib.sha512()
    with tempfile.TemporaryFile() as data:
        left = size
        while left:
            chunk = os.urandom(min(left, MIB))
            md5.update(chunk)
            sha.update(chunk)
            data.write(chunk)
            left -= len(chunk)
        data.seek(0)
        image = client.images.create(
            name=name or f"e2e-{uuid.uuid4().hex[:8]}", disk_format="raw", container_format="bare", **props
        )
        client.images.upload(image["id"], data, image_size=size)
    return Uploaded(id=image["id"], size=size, md5=md5.hexdigest(), sha512=sha.hexdigest())
