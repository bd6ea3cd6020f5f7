"""The metrics endpoints of real processes: the coordinator's and an agent's series move during a
sync, and /healthz says 503 (and the leader series 0) while the coordinator's loop has not started.

Each test stops the shared services and runs its own, with ``metrics_port`` set (metrics are off
by default); the ``sync`` fixture brings the shared ones back for the next test.  Scraped over HTTP
with urllib, parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.functional import helpers
from tests.harness.glance import venv_bin
from tests.harness.procs import ServiceProcess, free_port
from tests.harness.topology import Topology


def get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body) of GET path, or None while nothing answers on the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    answer = get(port, "/metrics")
    assert answer is not None and answer[0] == 200, answer
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer[1]) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def healthy(port: int) -> bool:
    answer = get(port, "/healthz")
    return answer is not None and answer[0] == 200


def test_series_move_during_a_sync(topology: Topology) -> None:
    topology.stop_services()  # the shared coordinator and agents hold the ports; `sync` restarts them later
    coordinator_port = free_port()
    agent_ports = {region: free_port() for region in topology.region_names}
    try:
        conf = topology.write_service_conf(topology.etc_dir / "metrics-coordinator.conf",
                                           coordinator={"metrics_port": coordinator_port})
        topology.start_coordinator(conf)
        for region, port in agent_ports.items():
            own = topology.write_service_conf(topology.etc_dir / f"metrics-{region}.conf",
                                              agent={"metrics_port": port})
            topology.start_agent(region, f"{region.lower()}-metrics", conf=own, ready=lambda p=port: healthy(p))
        helpers.wait_until(lambda: healthy(coordinator_port), 60, "coordinator /healthz 200")
        assert sample(scrape(coordinator_port), "glancesync_coordinator_leader") == 1  # its loop runs: it acts
        region, agent_port = "RegionA", agent_ports["RegionA"]
        agent = {"region": region, "agent": "regiona-metrics"}
        helpers.wait_until(lambda: sample(scrape(coordinator_port), "glancesync_agents_online", region=region) == 1,
                           60, "the coordinator's snapshot shows RegionA's agent online")
        before, agent_before = scrape(coordinator_port), scrape(agent_port)
        image = helpers.upload_random(topology.cascading.client(), 3 * helpers.MIB)
        helpers.wait_states(topology, image.id, "synced")

        def moved() -> bool:
            now = scrape(coordinator_port)
            return (sample(now, "glancesync_region_synced", region=region)
                    > sample(before, "glancesync_region_synced", region=region))

        helpers.wait_until(moved, 60, "the coordinator's synced count up")
        after = scrape(coordinator_port)
        moved_bytes = (sample(after, "glancesync_transferred_bytes_total", region=region)
                       - sample(before, "glancesync_transferred_bytes_total", region=region))
        assert moved_bytes >= image.size, (before, after)
        assert (sample(after, "glancesync_events_received_total", outcome="new")
                > sample(before, "glancesync_events_received_total", outcome="new"))
        assert sample(after, "glancesync_agent_up", region=region, agent="regiona-metrics") == 1
        assert sample(after, "glancesync_agent_last_heartbeat_timestamp_seconds", region=region,
                      agent="regiona-metrics") > 0
        assert sample(after, "glancesync_journal_size_bytes") > 0

        def agent_moved() -> bool:
            now = scrape(agent_port)
            return (sample(now, "glancesync_agent_tasks_finished_total", **agent, outcome="done")
                    > sample(agent_before, "glancesync_agent_tasks_finished_total", **agent, outcome="done"))

        helpers.wait_until(agent_moved, 60, "the agent's finished count up")
        agent_after = scrape(agent_port)
        assert (sample(agent_after, "glancesync_agent_transferred_bytes_total", **agent)
                - sample(agent_before, "glancesync_agent_transferred_bytes_total", **agent)) >= image.size
        assert sample(agent_after, "glancesync_agent_connected", **agent) == 1
        status, body = get(agent_port, "/healthz")
        assert status == 200 and body.startswith("ok: last iteration")
    finally:
        topology.stop_services()


def test_healthz_is_503_until_the_coordinators_loop_runs(topology: Topology) -> None:
    """The cascading glance does not answer: the coordinator waits for its admin check, loop not started."""
    topology.stop_services()
    port = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"
    conf = topology.write_service_conf(topology.etc_dir / "metrics-unready.conf",
                                       DEFAULT={"cascading_endpoint_url": nowhere},
                                       coordinator={"metrics_port": port})
    topology.run_manage("db_sync", conf=conf)
    argv = [venv_bin("glance-sync-coordinator"), "--config-file", str(conf)]
    service = ServiceProcess("coordinator (unready)", argv, topology.log_dir / "coordinator-unready.log",
                             cwd=topology.base_dir)
    topology.services.append(service)
    try:
        service.start()
        service.wait_ready(lambda: get(port, "/healthz") is not None, 30)
        status, body = get(port, "/healthz")
        assert status == 503, body
        assert body == f"not ready: checking that the cascading credentials are admin in {nowhere}\n"
        samples = scrape(port)  # not acting yet: no leader while the credentials are checked
        assert samples[("glancesync_coordinator_leader", ())] == 0, samples
        assert not topology.coordinator_ready()  # its sockets are not bound either
    finally:
        topology.stop_services()
