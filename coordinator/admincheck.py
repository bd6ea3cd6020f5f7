"""Start-up check: the coordinator's cascading credentials must be glance admin.

The coordinator decides that an image is gone from a 404 of the cascading glance
(before any regional delete, and in every reconciler pass).  Glance answers 404 for
an image the caller may not see, too: another project's private image looks
deleted to credentials that are not admin.  So the coordinator refuses to start
unless glance treats its credentials as admin.

The check asks glance itself, so it works alike with keystone tokens and with a
glance that trusts identity headers: ``GET /v2/tasks?limit=1``.  Glance's tasks
API is guarded by the ``tasks_api_access`` policy, by default
``rule:context_is_admin`` — the same rule by which glance shows a caller every
project's images.  Answers:

- 200: admin; the coordinator starts.
- 403 (not admin) or 401 (credentials refused): definite; the coordinator does not
  start (one log line, exit 1).
- 404: this glance has no tasks API (a release that removed it); the role cannot be
  checked this way, so the coordinator starts with a WARNING.
- anything else (no answer, 5xx, a timeout): the coordinator tries again with a
  growing delay (up to ``MAX_DELAY``) until glance answers or it is stopped; events
  meanwhile wait in the senders' outboxes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from glancesync import glance
from glancesync.exceptions import ConfigError, GlanceError

LOG = logging.getLogger(__name__)
ADMIN_PROBE = "/v2/tasks?limit=1"
FIRST_DELAY = 2.0
MAX_DELAY = 60.0
SOURCE = "[cascading_glance] credentials"


def check(client: Any, endpoint: str) -> bool:
    """True when glance treats ``client``'s credentials as admin, False when it cannot tell (404).

    Raises ConfigError when glance says they are not admin (403) or not valid (401), and
    GlanceError when glance gave no usable answer (worth trying again).
    """
    try:
        client.http_client.get(ADMIN_PROBE)
    except Exception as exc:
        status = getattr(exc, "code", None) or getattr(exc, "http_status", None)
        if status == 403:
            raise ConfigError(source=SOURCE, detail=(
                f"the cascading glance at {endpoint} does not treat them as admin (GET {ADMIN_PROBE} "
                "answered 403); the coordinator needs an admin role to see every project's images, or "
                "another project's private image would look deleted")) from None
        if status == 401:
            raise ConfigError(source=SOURCE, detail=f"refused by the cascading glance at {endpoint} (401)") from None
        if glance.is_not_found(exc):
            return False
        raise glance.translate(exc, endpoint) from None
    return True


def wait_until_checked(probe: Callable[[], bool], stop: threading.Event, endpoint: str) -> bool:
    """Run ``probe`` (``check`` bound to a client) until glance answers; False when stopped first.

    ConfigError (not admin) goes to the caller, which refuses to start.
    """
    delay = FIRST_DELAY
    while not stop.is_set():
        try:
            admin = probe()
        except GlanceError as exc:
            LOG.warning("cannot check the admin role of the cascading credentials yet (%s); "
                        "trying again in %.0f s", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, MAX_DELAY)
            continue
        if admin:
            LOG.info("the cascading glance at %s treats the coordinator's credentials as admin", endpoint)
        else:
            LOG.warning("the cascading glance at %s has no tasks API (GET %s answered 404): the admin role of "
                        "the coordinator's credentials cannot be checked; without it another project's "
                        "private image looks deleted", endpoint, ADMIN_PROBE)
        return True
    return False
