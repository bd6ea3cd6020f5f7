"""The harness itself, against the real services: if these fail, no end-to-end result means anything.

Checks that the glances take uploads and compute the hashes we verify against, that
image ids can be reused across glances, that the cascading store is readable over
SFTP with a pinned host key (and refused with a wrong one), that our config files
load with the project's own loaders, and that a service that dies at start says why.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import paramiko
import pytest
from oslo_config import cfg

from glancesync import opts, storemap
from tests.harness import GlanceServer, ServiceError, ServiceProcess, Topology, free_port, procs, wait_tcp

MIB = 1024 * 1024


@dataclass
class Uploaded:
    id: str
    data: bytes
    image: dict


@pytest.fixture(scope="module")
def uploaded(topology: Topology) -> Uploaded:
    """1 MiB of random bytes uploaded to the cascading glance."""
    data = os.urandom(MIB)
    client = topology.cascading.client()
    image = client.images.create(
        name=f"harness-{uuid.uuid4().hex[:8]}", disk_format="raw", container_format="bare"
    )
    client.images.upload(image.id, io.BytesIO(data), image_size=len(data))
    return Uploaded(id=image.id, data=data, image=dict(client.images.get(image.id)))


def test_topology_has_its_own_ports(topology: Topology) -> None:
    assert topology.start_seconds is not None
    assert sorted(topology.cascaded) == ["RegionA", "RegionB"]
    ports = {g.port for g in topology.glances} | {
        topology.sshd.port,
        topology.client_port,
        topology.agent_port,
    }
    assert len(ports) == 6


def test_upload_hashes_match(uploaded: Uploaded) -> None:
    assert uploaded.image["status"] == "active"
    assert uploaded.image["size"] == MIB
    assert uploaded.image["checksum"] == hashlib.md5(uploaded.data).hexdigest()
    assert uploaded.image["os_hash_algo"] == "sha512"
    assert uploaded.image["os_hash_value"] == hashlib.sha512(uploaded.data).hexdigest()


def test_download_from_cascading(topology: Topology, uploaded: Uploaded) -> None:
    body = b"".join(topology.cascading.client().images.data(uploaded.id))
    assert body == uploaded.data


def test_same_id_in_cascaded_region(topology: Topology, uploaded: Uploaded) -> None:
    region = topology.cascaded["RegionA"].client()
    created = region.images.create(id=uploaded.id, name="copy", disk_format="raw", container_format="bare")
    assert created.id == uploaded.id
    region.images.upload(uploaded.id, io.BytesIO(uploaded.data))
    copy = region.images.get(uploaded.id)
    assert copy.status == "active"
    assert copy.os_hash_value == uploaded.image["os_hash_value"]
    # The other region never saw it: each glance has its own database.
    with pytest.raises(Exception, match="404|not found|Not Found"):
        topology.cascaded["RegionB"].client().images.get(uploaded.id)


def test_image_file_in_cascading_store(topology: Topology, uploaded: Uploaded) -> None:
    path = topology.cascading.data_dir / uploaded.id
    assert path.is_file()
    assert path.read_bytes() == uploaded.data
    urls = [loc["url"] for loc in uploaded.image.get("locations", [])]
    assert f"file://{path}" in urls


def test_sftp_reads_image_with_pinned_host_key(topology: Topology, uploaded: Uploaded) -> None:
    client = topology.sshd.connect()
    try:
        with (
            client.open_sftp() as sftp,
            sftp.open(topology.sshd.sftp_path(topology.cascading.data_dir / uploaded.id), "rb") as fh,
        ):
            data = fh.read()
    finally:
        client.close()
    assert hashlib.md5(data).hexdigest() == uploaded.image["checksum"]


def test_wrong_known_hosts_is_refused(topology: Topology) -> None:
    with pytest.raises((paramiko.BadHostKeyException, paramiko.SSHException)):
        topology.sshd.connect(topology.sshd.wrong_known_hosts_file).close()


def test_empty_known_hosts_is_refused(topology: Topology, tmp_path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        topology.sshd.connect(empty).close()


def test_each_hosts_store_files_load_with_project_loader(topology: Topology) -> None:
    coordinator = storemap.load(str(topology.store_yaml), storemap.Role.COORDINATOR)
    assert coordinator.store is not None and coordinator.store.store_dir == str(topology.cascading.data_dir)
    assert coordinator.store.private_key_file is None
    assert sorted(coordinator.regions) == ["RegionA", "RegionB"]
    assert coordinator.region("RegionB").glance.url == topology.cascaded["RegionB"].url
    assert coordinator.cascading_glance is not None and coordinator.cascading_glance.url == topology.cascading.url
    driver = storemap.load(str(topology.driver_store_yaml), storemap.Role.DRIVER)
    assert driver.store is None and driver.cascading_glance is None and sorted(driver.regions) == ["RegionA", "RegionB"]
    for region in topology.region_names:
        agent = storemap.load(str(topology.agent_store_yaml(region)), storemap.Role.AGENT, region)
        assert agent.store is not None and agent.store.port == topology.sshd.port
        assert list(agent.regions) == [region] and agent.cascading_glance is None
        # Nothing of another region, and no SSH key, on any host but the agent's.
        others = set(topology.region_names) - {region}
        text = "".join(p.read_text() for p in topology.agent_store_yaml(region).parent.rglob("*.yaml"))
        assert not any(topology.cascaded[o].url in text for o in others)
    for path in (topology.store_yaml, topology.driver_store_yaml):
        assert "private_key_file" not in path.read_text() and (path.stat().st_mode & 0o777) == 0o640


def test_service_conf_loads_with_project_options(topology: Topology) -> None:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(["--config-file", str(topology.service_conf)], project="glance-sync")
    assert conf.sync_server_port == topology.client_port
    assert conf.coordinator.agent_port == topology.agent_port
    assert conf.agent.coordinator_port == topology.agent_port
    assert conf.cascading_endpoint_url == topology.cascading.url
    assert conf.cascading_glance.identity_headers["X-Identity-Status"] == "Confirmed"
    assert conf.cascading_glance.identity_headers["X-Roles"] == "admin"
    assert conf.database.connection.endswith("journal.sqlite")


def test_child_pids_skips_a_thread_that_ends_between_the_listing_and_its_read(monkeypatch) -> None:
    child = subprocess.Popen(["sleep", "60"])  # a child of this (main) thread
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    task_dir, real_listdir = f"/proc/{os.getpid()}/task/{thread.native_id}", os.listdir

    def listdir_then_end_the_thread(path):
        names = real_listdir(path)
        stop.set()
        thread.join()
        deadline = time.monotonic() + 60
        while os.path.exists(task_dir) and time.monotonic() < deadline:
            pass  # the kernel's end of the thread follows Python's
        return names

    try:
        monkeypatch.setattr(os, "listdir", listdir_then_end_the_thread)
        assert child.pid in procs.child_pids(os.getpid())
    finally:
        monkeypatch.undo()
        child.kill()
        child.wait()


def test_early_exit_names_service_and_code(tmp_path) -> None:
    code = "import sys; print('boom', flush=True); sys.exit(3)"
    service = ServiceProcess("exploder", [sys.executable, "-c", code], tmp_path / "exploder.log").start()
    with pytest.raises(ServiceError) as info:
        service.wait_ready(lambda: False, timeout=10)
    message = str(info.value)
    assert "exploder" in message and "boom" in message and "code 3" in message


def test_timeout_names_service_and_log(tmp_path) -> None:
    code = "import time; print('still starting', flush=True); time.sleep(60)"
    service = ServiceProcess("sleeper", [sys.executable, "-c", code], tmp_path / "sleeper.log").start()
    try:
        with pytest.raises(ServiceError, match="(?s)sleeper.*not ready.*still starting"):
            service.wait_ready(lambda: False, timeout=1)
    finally:
        service.stop(grace=1)
    assert not service.running
    assert service.stop() is not None  # idempotent


def test_kill_restart_and_tcp(tmp_path) -> None:
    port = free_port()
    code = (
        f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
        "print('listening', flush=True); time.sleep(60)"
    )
    service = ServiceProcess("listener", [sys.executable, "-c", code], tmp_path / "listener.log").start()
    try:
        wait_tcp("127.0.0.1", port, timeout=10)
        service.kill(signal.SIGKILL)
        assert service.returncode == -signal.SIGKILL
        service.restart()
        wait_tcp("127.0.0.1", port, timeout=10)
        assert service.running
    finally:
        service.stop(grace=1)
    assert (tmp_path / "listener.log").read_text().splitlines().count("listening") == 2


def test_broken_filter_start_failure_quotes_the_error(tmp_path, monkeypatch) -> None:
    """A glance-api that cannot load its paste filter fails to start with the import error quoted."""
    from tests.harness import glance as harness_glance

    bogus = "no_such_module_for_test"
    real_paste = harness_glance.paste_ini
    monkeypatch.setattr(
        harness_glance, "paste_ini", lambda f: real_paste(f).replace("glance_proxy.middleware", bogus)
    )
    server = GlanceServer("broken", tmp_path / "broken", sync_server_port=free_port(), sync_filter=True)
    try:
        with pytest.raises(ServiceError, match=f"(?s)glance-api broken.*exited with code.*{bogus}"):
            server.start(timeout=60)
    finally:
        server.stop()


def test_glance_and_sshd_survive_kill_and_restart(topology: Topology, uploaded: Uploaded) -> None:
    region = topology.cascaded["RegionB"]
    image = region.client().images.create(name="before-crash", disk_format="raw", container_format="bare")
    assert region.process is not None
    region.process.kill(signal.SIGKILL)
    assert not region.answers()
    region.restart()
    assert region.client().images.get(image.id).name == "before-crash"

    sshd = topology.sshd
    assert sshd.process is not None
    sshd.process.kill(signal.SIGKILL)
    sshd.restart()
    client = sshd.connect()  # same port and pinned host key after the restart
    try:
        with client.open_sftp() as sftp:
            assert sftp.stat(topology.sshd.sftp_path(topology.cascading.data_dir / uploaded.id)).st_size == MIB
    finally:
        client.close()


def test_partial_start_failure_stops_everything(tmp_path) -> None:
    topo = Topology(tmp_path / "partial", regions=1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", topo.sshd.port))
        squatter.listen()
        with pytest.raises(ServiceError, match="(?s)topology start failed.*'sshd' exited"):
            topo.start(timeout=30)
    assert all(g.process is not None and not g.process.running for g in topo.glances)
    assert not any(g.answers() for g in topo.glances)
    topo.stop()  # idempotent
