"""A requests session that reads the environment's proxy settings once per host, not per request.

With ``trust_env`` (requests' default) every request scans the whole environment twice for
``*_proxy`` variables (``getproxies_environment``, one pass per call, in proportion to the
number of variables) and looks for a ``.netrc`` file: about 0.2 ms of a 1 ms GET to a local
glance (doc/glance-behaviour.md, "The environment of glance requests").  This session keeps
``trust_env`` off and does what it did, once: the proxies requests finds in the environment
for a URL (``http_proxy``, ``https_proxy``, ``all_proxy``, ``no_proxy`` with its host,
domain and CIDR entries) are looked up with requests' own function the first time the session
talks to a scheme, host and port, and kept; ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` is
read when the session is made and used where ``verify`` is left at True.  ``.netrc`` is not
read: glance and keystone are reached with tokens or fixed headers, never basic auth.
The environment of a running service does not change, so what requests would have found
on each request is what it finds on the first one.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.utils import get_environ_proxies

# Hosts whose proxies a session keeps (a glance, a keystone: a few); past it, looked up each time.
MAX_HOSTS = 64


class EnvironmentOnce(requests.Session):
    """``requests.Session`` with ``trust_env`` off, honouring the environment's proxies and CA bundle."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # no per-request environment scan, no .netrc
        self.ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._proxies: dict[tuple[str, str | None, int | None], dict[str, str]] = {}
        self._lock = threading.Lock()

    def environment_proxies(self, url: str) -> dict[str, str]:
        """What requests' ``trust_env`` would take from the environment for ``url`` (kept per host)."""
        parts = urlsplit(url)
        try:
            key = (parts.scheme, parts.hostname, parts.port)
        except ValueError:  # a port that is no number: requests reports the bad URL itself
            return {}
        found = self._proxies.get(key)
        if found is None:
            found = get_environ_proxies(url)
            with self._lock:
                if len(self._proxies) < MAX_HOSTS:
                    self._proxies[key] = found
        return found

    def merge_environment_settings(self, url: str, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> dict[str, Any]:
        # As requests does with trust_env: the caller's proxies first, the environment's beside them.
        if proxies is not None and proxies.get("no_proxy") is not None:
            env = get_environ_proxies(url, no_proxy=proxies["no_proxy"])  # a caller's own no_proxy: as asked
        else:
            env = self.environment_proxies(url)
        if env:
            proxies = {**env, **(proxies or {})}
        if (verify is True or verify is None) and self.ca_bundle:
            verify = self.ca_bundle
        return super().merge_environment_settings(url, proxies, stream, verify, cert)
