"""A fast fake cascading glance and a fake regional glance for the control-plane benches.

Both answer only what the coordinator asks: the admin probe (``GET /v2/tasks``), the
image schema glanceclient fetches once, ``GET /v2/images/<id>``, the paged listing
the reconciler reads (``GET /v2/images?limit=&marker=``, with a ``next`` link as
glance gives it) and, on the cascading one, the ``PATCH`` that adds a location.
Every regional glance of a bench is this one server, each region under its own path
(``/region/<name>``): a GET shows any image as the verified copy (active, same size
and hashes), so every registration verifies; a region's listing shows the images
that name it in ``glance_sync_regions`` (all of them when none does).  No bytes exist
anywhere.

``serve(ids, store_dir, ready, targets)`` runs both servers in the calling process
until it is terminated; ``ready`` receives ``(cascading_port, regional_port)``;
``targets`` (image id -> region, or regions joined by commas) sets each image's ``glance_sync_regions``.
``GET /bench/patched`` on the cascading one answers the wall-clock time each location was
added at (url -> time), so a bench learns when a registration happened without polling.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

SCHEMA = {"name": "image", "properties": {}, "additionalProperties": True}
SIZE = 1024
# glance's api_limit_max: the largest page it serves whatever the client asks.
MAX_PAGE = 1000


def record(image_id: str, store_dir: str) -> dict[str, Any]:
    """The cascading record of a bench image: active, with a file:// location in ``store_dir``."""
    digest = hashlib.sha512(image_id.encode()).hexdigest()
    return {
        "id": image_id, "name": f"bench-{image_id[:8]}", "status": "active", "size": SIZE,
        "checksum": hashlib.md5(image_id.encode()).hexdigest(), "os_hash_algo": "sha512",  # noqa: S324
        "os_hash_value": digest, "disk_format": "raw", "container_format": "bare", "visibility": "public",
        "updated_at": "2026-11-30T00:00:00Z",
        "locations": [{"url": f"file://{store_dir}/{image_id}", "metadata": {}}],
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the coordinator's sessions reuse connections
    # TCP_NODELAY, as gunicorn sets for glance-api: the headers and the body go out in two writes,
    # and with Nagle's algorithm the body waited for the client's delayed ACK, 40 ms a request.
    disable_nagle_algorithm = True
    records: dict[str, dict[str, Any]] = {}
    # Sorted ids of every image, and of the images each region lists (regional server).
    order: list[str] = []
    by_region: dict[str, list[str]] = {}
    regional = False
    lock = threading.Lock()
    served: Counter[str] = Counter()
    rendered: dict[str, bytes] = {}  # image id -> its record's JSON as this server shows it
    patched: dict[str, float] = {}  # location url -> the wall-clock time a PATCH added it

    def _listing(self, region: str | None, query: dict[str, list[str]]) -> None:
        ids = self.by_region.get(region, []) if region is not None and self.by_region else self.order
        if query.get("os_hidden", ["false"])[0].lower() == "true":
            ids = []  # no hidden image in a bench
        limit = min(int(query.get("limit", ["20"])[0]), MAX_PAGE)
        start = bisect.bisect_right(ids, query["marker"][0]) if "marker" in query else 0
        page = ids[start:start + limit]
        links: dict[str, Any] = {"schema": "/v2/schemas/images", "first": "/v2/images"}
        if start + limit < len(ids):
            links["next"] = "/v2/images?" + urlencode({**{k: v[0] for k, v in query.items()}, "marker": page[-1]})
        # The page from each record's JSON rendered once (a PATCH renders it again): the bench
        # measures the coordinator, not this fake, which shares its cores.
        self._send(200, b'{"images": [' + b", ".join(self._rendered(i) for i in page) + b"], "
                   + json.dumps(links).encode()[1:])

    def _rendered(self, image_id: str) -> bytes:
        data = self.rendered.get(image_id)
        if data is None:
            data = self.rendered[image_id] = json.dumps(self._shown(self.records[image_id])).encode()
        return data

    def _shown(self, image: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            body = dict(image, locations=list(image["locations"]))
        if self.regional:
            body.pop("locations")
        return body

    def _reply(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _count(self, kind: str) -> None:
        with self.lock:
            self.served[kind] += 1

    def _by_ids(self, query: dict[str, list[str]]) -> None:
        wanted = query["id"][0]
        ids = sorted(set(wanted[3:].split(",")))
        limit = int(query.get("limit", ["25"])[0])
        if "marker" in query:
            ids = [i for i in ids if i > query["marker"][0]]
        page = [i for i in ids if i in self.records][:limit]
        body: dict[str, Any] = {"images": [self._shown(self.records[i]) for i in page]}
        if len(page) == limit and page:
            body["next"] = "/v2/images?" + urlencode({"id": wanted, "limit": limit, "marker": page[-1]})
        self._reply(200, body)

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        path, region = url.path, None
        if path.startswith("/region/"):
            _, _, region, path = path.split("/", 3)
            path = "/" + path
        if path == "/bench/requests":
            self._reply(200, dict(self.served))
        elif path == "/bench/patched":
            with self.lock:
                self._reply(200, dict(self.patched))
        elif path == "/v2/images":
            self._count("list")
            query = parse_qs(url.query)
            if query.get("id", [""])[0].startswith("in:"):
                self._by_ids(query)
            else:
                self._listing(region, query)
        elif path.startswith("/v2/tasks"):
            self._reply(200, {"tasks": []})
        elif path == "/v2/schemas/image":
            self._reply(200, SCHEMA)
        elif path.startswith("/v2/images/"):
            self._count("get")
            image = self.records.get(path.rsplit("/", 1)[-1])
            if image is None:
                self._reply(404, {"message": "not found"})
                return
            self._send(200, self._rendered(image["id"]))
        else:
            self._reply(404, {"message": "not served by the fake"})

    def do_PATCH(self) -> None:  # noqa: N802
        self._count("patch")
        patch = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"[]")
        image = self.records.get(self.path.rsplit("/", 1)[-1])
        if image is None or self.regional:
            self._reply(404, {"message": "not found"})
            return
        with self.lock:
            for op in patch:
                if op.get("op") == "add" and op.get("path") == "/locations/-":
                    image["locations"].append(op["value"])
                    self.patched[op["value"].get("url")] = time.time()
            self.rendered.pop(image["id"], None)
            body = dict(image, locations=list(image["locations"]))
        self._reply(200, body)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a coordinator killed mid-request (the restart bench): not worth a traceback


def _server(records: dict[str, dict[str, Any]], regional: bool,
            by_region: dict[str, list[str]] | None = None) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"records": records, "regional": regional, "order": sorted(records),
                                            "by_region": by_region or {}, "served": Counter(),
                                            "rendered": {}, "patched": {}})
    server = _Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


def serve(ids: list[str], store_dir: str, ready: Any, targets: dict[str, str] | None = None) -> None:
    records = {image_id: record(image_id, store_dir) for image_id in ids}
    by_region: dict[str, list[str]] = {}
    for image_id, region in sorted((targets or {}).items()):
        records[image_id]["glance_sync_regions"] = region
        for name in region.split(","):
            by_region.setdefault(name, []).append(image_id)
    cascading, regional = _server(records, False), _server(records, True, by_region)
    threading.Thread(target=regional.serve_forever, daemon=True).start()
    ready.send((cascading.server_address[1], regional.server_address[1]))
    cascading.serve_forever()
