"""Test harness: real glance-api, OpenSSH sshd and our services as processes on 127.0.0.1.

Used by tests/functional (through fixtures in its conftest) and by the demo script.
No pytest imports anywhere in this package.

- ``procs``: ServiceProcess (start, wait_ready, kill, stop, restart), free_port, wait_tcp.
- ``glance``: GlanceServer (gunicorn + glance.wsgi.api), IDENTITY_HEADERS.
- ``sshd``: SshServer (private sshd, host key pinned in known_hosts).
- ``keystone``: KeystoneServer (gunicorn + keystone, SQLite, fernet; prepared once per process).
- ``siteconfig``: SiteConfig (the servers of a deployment and every host's config files:
  glance_store.yaml per host, glance-sync.conf, the internal secret, keystone's catalog).
- ``topology``: Topology, a SiteConfig that runs (cascading + cascaded glances + sshd +
  coordinator/agents; with ``keystone=True`` a keystone too, every glance behind keystonemiddleware).
- ``faults`` and ``campaign``: the fault campaign (bench/faults.py, doc/faults.md).
"""

from tests.harness.glance import IDENTITY_HEADERS, GlanceServer
from tests.harness.keystone import KeystoneServer
from tests.harness.procs import ServiceError, ServiceProcess, free_port, wait_tcp
from tests.harness.sshd import SshServer
from tests.harness.topology import Topology

__all__ = [
    "IDENTITY_HEADERS",
    "GlanceServer",
    "KeystoneServer",
    "ServiceError",
    "ServiceProcess",
    "SshServer",
    "Topology",
    "free_port",
    "wait_tcp",
]
