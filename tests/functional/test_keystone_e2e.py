"""A deployment with a real keystone: users log in with openrc files, services with their own accounts.

This module starts its own topology (``Topology(keystone=True)``): keystone holds the
catalog and one account per service, every glance-api runs behind keystonemiddleware,
so forged identity headers get nowhere, and everything below goes through tokens:
the ``openstack`` and ``glance`` CLIs as processes with an openrc environment, and
our coordinator, agents and ``cascaded://`` driver with the service users of their
own host's files.  The session topology of the other modules is untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.functional import helpers
from tests.harness.glance import venv_bin
from tests.harness.topology import Topology

SIZE = 2 * helpers.MIB


@dataclass
class CliImage:
    id: str
    path: Path
    md5: str


def cli(topo: Topology, account: str, *argv: str, timeout: float = 180) -> str:
    """Run a CLI (``openstack``, ``glance``) as a user who sourced ``account``'s openrc; its stdout."""
    result = subprocess.run([venv_bin(argv[0]), *argv[1:]], env=topo.cli_env(account), capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-2000:]}"
    return result.stdout


def glance_as(topo: Topology, account: str, url: str) -> Any:
    """A glanceclient for the glance at ``url`` with a keystone token of ``account``."""
    server = next(g for g in topo.glances if g.url == url)
    return topo.client(server, account)


@pytest.fixture(scope="module")
def ks_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """keystone + cascading and two regional glances + sshd, coordinator and one agent per region."""
    with helpers.keystone_topology(tmp_path_factory.mktemp("keystone-topology")) as topo:
        yield topo


@pytest.fixture(scope="module")
def demo_image(ks_topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> CliImage:
    """An image the non-admin ``demo`` user created with ``openstack image create --file``."""
    path = tmp_path_factory.mktemp("cli") / "demo.img"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    out = cli(ks_topology, "demo", "openstack", "image", "create", "--file", str(path), "--disk-format", "raw",
              "--container-format", "bare", "keystone-demo", "-f", "json")
    return CliImage(json.loads(out)["id"], path, hashlib.md5(data).hexdigest())


def test_openstack_cli_upload_of_a_project_user_syncs_to_every_region(ks_topology: Topology,
                                                                      demo_image: CliImage) -> None:
    topo = ks_topology
    helpers.wait_states(topo, demo_image.id, "synced")
    demo_project = glance_as(topo, "demo", topo.cascading.url).images.get(demo_image.id)["owner"]
    cascading = glance_as(topo, "admin", topo.cascading.url).images.get(demo_image.id)
    urls = {loc["url"] for loc in cascading["locations"]}
    for region, server in topo.cascaded.items():
        assert f"cascaded://{region}/{demo_image.id}" in urls
        copy = glance_as(topo, "admin", server.url).images.get(demo_image.id)
        assert (copy["status"], copy["checksum"], copy["size"]) == ("active", demo_image.md5, SIZE)
        assert copy["owner"] == demo_project


def test_the_filter_sees_the_upload_in_the_keystone_pipeline(ks_topology: Topology, demo_image: CliImage) -> None:
    """Our paste filter runs in glance's ``keystone`` pipeline: its ``uploaded`` event reaches the coordinator."""
    coordinator = next(s for s in ks_topology.services if s.name == "coordinator")
    # The filter's events have uuid ids; the reconciler's own are "reconcile-uploaded-<n>".
    from_filter = re.compile(rf"event [0-9a-f]{{32}} \(uploaded of {demo_image.id}\)")
    helpers.wait_until(lambda: from_filter.search(coordinator.log_path.read_text(errors="replace")),
                       60, "the filter's uploaded event in the coordinator's log")


def test_glance_and_openstack_cli_list_the_image_with_the_openrc(ks_topology: Topology,
                                                                 demo_image: CliImage) -> None:
    assert demo_image.id in cli(ks_topology, "demo", "glance", "image-list")
    listed = json.loads(cli(ks_topology, "admin", "openstack", "image", "list", "-f", "json"))
    assert demo_image.id in {image["ID"] for image in listed}


def test_forged_identity_headers_are_refused(ks_topology: Topology) -> None:
    """What the other tests do to act as admin gets a 401 here: only tokens count."""
    for server in ks_topology.glances:
        resp = server.session().get(f"{server.url}/v2/images", raise_exc=False)
        assert resp.status_code == 401, (server.name, resp.status_code)


def test_each_host_logs_in_as_its_own_service_user(ks_topology: Topology) -> None:
    topo = ks_topology

    def users(host_dir: Path) -> set[str]:
        return {yaml.safe_load(f.read_text())["glance"]["auth"]["username"]
                for f in (host_dir / "regions.d").glob("*.yaml")}

    assert users(topo.host_etc("coordinator")) == {"glance-sync-coordinator"}
    assert users(topo.host_etc("glance-api")) == {"glance-sync-driver"}
    for region in topo.region_names:
        assert users(topo.host_etc(f"agent-{region}")) == {f"glance-sync-agent-{region.lower()}"}
    conf = topo.service_conf.read_text()
    assert topo.service_conf.stat().st_mode & 0o777 == 0o640  # it holds the coordinator's password
    assert "username = glance-sync-coordinator" in conf and "identity_headers" not in conf.split(
        "[cascading_glance]")[1]


def test_each_account_holds_only_its_role_on_its_project(ks_topology: Topology) -> None:
    """Service users are admins of ``service`` only, glance's user a ``service``, demo a plain member."""
    assert ks_topology.keystone is not None
    sess = ks_topology.keystone.session()
    url = f"{ks_topology.keystone.auth_url}/role_assignments?include_names=true"
    held: dict[str, set[tuple[str, str]]] = {}
    for grant in sess.get(url).json()["role_assignments"]:
        scope = grant["scope"].get("project", {}).get("name") or "system"
        held.setdefault(grant["user"]["name"], set()).add((scope, grant["role"]["name"]))
    expected = {account.username: {(account.project, role) for role in account.roles}
                for account in ks_topology.accounts.values()}
    assert {user: held.get(user) for user in expected} == expected
    assert expected["demo"] == {("demo", "member")} and expected["glance"] == {("service", "service")}


def test_an_agent_is_admin_in_its_own_region_only(ks_topology: Topology) -> None:
    """RegionA's agent token creates an image for another project in RegionA, not in RegionB."""
    from glanceclient import exc as glance_exc

    topo = ks_topology
    assert topo.keystone is not None
    projects = topo.keystone.session().get(f"{topo.keystone.auth_url}/projects?name=demo").json()["projects"]
    other_project = projects[0]["id"]
    own = topo.client(topo.cascaded["RegionA"], "agent-RegionA")
    created = own.images.create(name="agent-probe", owner=other_project)
    assert created["owner"] == other_project
    own.images.delete(created["id"])
    with pytest.raises(glance_exc.HTTPForbidden):
        topo.client(topo.cascaded["RegionB"], "agent-RegionA").images.create(name="agent-probe",
                                                                            owner=other_project)


def test_driver_serves_a_download_from_a_region_with_its_own_user(ks_topology: Topology,
                                                                  demo_image: CliImage, tmp_path: Path) -> None:
    """With only cascaded:// locations left, ``openstack image save`` of the demo user still gets the bytes."""
    topo = ks_topology
    helpers.wait_states(topo, demo_image.id, "synced")
    admin = glance_as(topo, "admin", topo.cascading.url)
    file_urls = {loc["url"] for loc in admin.images.get(demo_image.id)["locations"]
                 if loc["url"].startswith("file://")}
    assert file_urls
    admin.images.delete_locations(demo_image.id, file_urls)
    assert all(loc["url"].startswith("cascaded://") for loc in admin.images.get(demo_image.id)["locations"])
    target = tmp_path / "saved.img"
    cli(topo, "demo", "openstack", "image", "save", "--file", str(target), demo_image.id)
    assert hashlib.md5(target.read_bytes()).hexdigest() == demo_image.md5
