"""A region whose copy was deleted gets it back once an operator purged the id there (doc/runbook.md).

Glance 33 never creates a deleted id again: ``POST /v2/images`` with it answers 409
("Image ID ... already exists!") while its soft-deleted row is kept, and ``GET`` answers
404 before and after a purge alike.  ``glance-manage db purge`` leaves the ``images``
table alone (OSSN-0075); ``glance-manage db purge_images_table`` removes the row, and
the id can be created again.  Here, on the real topology: a region taken out of an
image's targets loses its copy; named again, the reconciler's retry is refused with the
purge instruction; after the purge of that region's glance database, the next retry
copies it again under the same id and registers its location.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from glanceclient import exc as glance_exc

from glancesync.protocol import cascaded_url
from tests.functional import helpers
from tests.functional.services import SyncServices
from tests.functional.test_operator_commands import coordinator_with, locations
from tests.harness.glance import ADMIN_PROJECT_ID, GlanceServer, venv_bin
from tests.harness.topology import Topology


def purge_deleted_images(server: GlanceServer) -> None:
    """What the operator runs on the region's glance: the dependent rows first, then the images table."""
    conf = str(server.conf_dir / "glance-api.conf")
    for command in ("purge", "purge_images_table"):
        done = subprocess.run([venv_bin("glance-manage"), "--config-file", conf, "db", command, "--age_in_days", "0",
                               "--max_rows", "-1"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]


def test_a_region_targeted_again_gets_its_copy_back_once_the_id_is_purged(
        topology: Topology, sync: SyncServices, tmp_path: Path) -> None:
    a, b = "RegionA", "RegionB"
    # The other tests' images (owned by the admin project) stay targeted everywhere; failed and
    # deleted targets are tried again every 5 s instead of every hour.
    sections = {"DEFAULT": {"sync_strategy": "USER", "sync_user_rules": f"{ADMIN_PROJECT_ID}:{a};{b}"},
                "coordinator": {"reconcile_failed_retry_interval": 5}}
    with coordinator_with(topology, sync, tmp_path / "restore.conf", **sections):
        client = topology.cascading.client()
        image = helpers.upload_random(client, helpers.MIB, owner=uuid.uuid4().hex, glance_sync_regions=f"{a},{b}")
        helpers.wait_states(topology, image.id, "synced", regions=[a, b])
        client.images.update(image.id, glance_sync_regions=a)
        helpers.wait_states(topology, image.id, {a: "synced", b: "deleted"}, timeout=120)
        regional = topology.cascaded[b].client()

        client.images.update(image.id, glance_sync_regions=f"{a},{b}")
        # Not purged: the agent's create is refused, and the region says what the operator must do.
        view = helpers.wait_states(topology, image.id, {b: "failed"}, regions=[b], timeout=120)
        assert "was deleted in this region" in view[b]["last_error"]
        assert "glance-manage db purge_images_table" in view[b]["last_error"]
        with pytest.raises(glance_exc.HTTPNotFound):
            regional.images.get(image.id)
        assert helpers.run_status(topology, "--wait", image.id, "--timeout", "5").returncode == 1

        purge_deleted_images(topology.cascaded[b])
        helpers.wait_states(topology, image.id, "synced", regions=[a, b], timeout=180)
        copy = regional.images.get(image.id)
        assert (copy["status"], copy["size"], copy["checksum"]) == ("active", image.size, image.md5)
        assert copy["os_hash_value"] == image.sha512
        helpers.wait_until(lambda: sorted(locations(topology, image.id)) == [cascaded_url(a, image.id),
                                                                             cascaded_url(b, image.id)],
                           60, "RegionB's location registered again")
        assert helpers.status(topology, "image", image.id)["targeting_error"] is None
        assert helpers.run_status(topology, "--wait", image.id, "--timeout", "30").returncode == 0
