"""The loop-guard marker: an HMAC that proves a request to the cascading glance is the coordinator's own.

The coordinator's location registrations must not come back to it as image
events, so each of its requests carries ``X-Glance-Sync-Internal`` (see
``protocol.INTERNAL_REQUEST_HEADER``) and the glance_proxy filter and reverse
proxy make no event of a request that carries a *valid* one.  A bare header is
worth nothing: anyone could send it and switch events off for their own changes.

The value is ``v1:<unix seconds>:<hex HMAC-SHA256>``, the MAC taken with a secret
shared by the coordinator and glance_proxy over::

    v1 \\n METHOD \\n path?query \\n seconds

``path`` is percent-decoded and starts at the API version segment (``/v2/...``),
so a front end that mounts glance under a prefix (``/image/v2/...``) does not
break it; the query stays as sent.  A marker is accepted only within
``MAX_SKEW`` seconds of the checker's clock, and compared in constant time.

Within that window a marker seen on the wire could be replayed on the same
method and path; the coordinator therefore talks to glance over TLS when the
network between them is not trusted.

The secret is a file (``[DEFAULT] sync_internal_secret_file``) that only its owner
may read, like a CurveZMQ secret key; its content never reaches a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import urllib.parse

from glancesync.exceptions import KeyLoadError

VERSION = "v1"
# Clocks of the coordinator's host and glance-api's host may differ this much
# (seconds); an older or newer marker is refused.  Also bounds how long a marker
# seen on the wire could be replayed.
MAX_SKEW = 300
# At least 128 bits when written as hex; gensecret writes 256.
MIN_SECRET_LENGTH = 32
SECRET_BYTES = 32

_VALUE = re.compile(re.escape(VERSION) + r":(?P<ts>[0-9]{1,12}):(?P<mac>[0-9a-f]{64})")
_VERSION_SEGMENT = re.compile(rb"/v[0-9]+(?:\.[0-9]+)*(?:/|$)")


def request_target(path: bytes, query: str = "") -> bytes:
    """What the MAC covers of a request's URL: the decoded path from ``/vN`` on, and the query."""
    found = _VERSION_SEGMENT.search(path)
    if found:
        path = path[found.start():]
    return path + (b"?" + query.encode("latin-1") if query else b"")


def url_target(url: str) -> bytes:
    """``request_target`` of a URL as a client sends it (percent-encoded path)."""
    parts = urllib.parse.urlsplit(url)
    return request_target(urllib.parse.unquote_to_bytes(parts.path or "/"), parts.query)


def _mac(secret: bytes, method: str, target: bytes, timestamp: str) -> str:
    message = b"\n".join((VERSION.encode(), method.upper().encode("latin-1"), target, timestamp.encode()))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, target: bytes, now: float) -> str:
    """The header value for one request (``target`` from ``request_target`` or ``url_target``)."""
    timestamp = str(int(now))
    return f"{VERSION}:{timestamp}:{_mac(secret, method, target, timestamp)}"


def check(secret: bytes | None, value: str | None, method: str, target: bytes, now: float,
          max_skew: float = MAX_SKEW) -> tuple[bool, str]:
    """(trusted, reason): whether ``value`` is a valid marker for this request at time ``now``."""
    if value is None:
        return False, "no marker"
    if not secret:
        return False, "no secret configured"
    found = _VALUE.fullmatch(value.strip())
    if found is None:
        return False, "malformed marker"
    timestamp = found.group("ts")
    if abs(now - int(timestamp)) > max_skew:
        return False, f"marker time is {int(now) - int(timestamp)} s away from now (at most {max_skew:g})"
    if not hmac.compare_digest(_mac(secret, method, target, timestamp), found.group("mac")):
        return False, "wrong MAC"
    return True, "valid"


def _refused(path: str, detail: str) -> KeyLoadError:
    return KeyLoadError(f"sync_internal_secret_file {path}: {detail}", path=path, detail=detail)


def load_secret(path: str) -> bytes:
    """The shared secret from ``path``; KeyLoadError unless only its owner can read it and it is long enough."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _refused(path, "not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise _refused(path, f"mode {stat.S_IMODE(mode):o} lets others read it; chmod 600")
        with open(path, "rb") as handle:
            secret = handle.read(4096).strip()
    except OSError as exc:
        raise _refused(path, exc.strerror or str(exc)) from None
    if len(secret) < MIN_SECRET_LENGTH:
        raise _refused(path, f"holds {len(secret)} characters, at least {MIN_SECRET_LENGTH} are needed "
                       "('glance-sync-manage gensecret --file F' makes one)")
    return secret


def write_secret(path: str) -> None:
    """Write a new random secret (hex) to ``path``, mode 0600; never overwrites an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # whatever the umask
        handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
