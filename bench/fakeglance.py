"""A fast fake cascading glance and a fake regional glance for the control-plane bench.

Both answer only what the coordinator asks: the admin probe (``GET /v2/tasks``), the
image schema glanceclient fetches once, ``GET /v2/images/<id>``, the listing filtered
by id as glance v2 serves it (``GET /v2/images?id=in:a,b,...&limit=N``, paged with
``marker`` and ``next``; any other listing is refused) and, on the cascading one, the
``PATCH`` that adds a location.  Every regional glance of the bench is this one
server: it shows each image as the verified copy (active, same size and hashes), so
every registration verifies.  No bytes exist anywhere.  ``GET /bench/requests`` answers
how many requests of each kind each server served (not a glance API).

``serve(ids, ready)`` runs both servers in the calling process until it is
terminated; ``ready`` receives ``(cascading_port, regional_port)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SCHEMA = {"name": "image", "properties": {}, "additionalProperties": True}
SIZE = 1024


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
    records: dict[str, dict[str, Any]] = {}
    regional = False
    lock = threading.Lock()
    served: Counter[str] = Counter()

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _count(self, kind: str) -> None:
        with self.lock:
            self.served[kind] += 1

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/bench/requests":
            self._reply(200, dict(self.served))
            return
        if path == "/v2/images":
            self._count("list")
            self._list()
            return
        if path.startswith("/v2/images/"):
            self._count("get")
        if path.startswith("/v2/tasks"):
            self._reply(200, {"tasks": []})
        elif path == "/v2/schemas/image":
            self._reply(200, SCHEMA)
        elif path.startswith("/v2/images/"):
            image = self.records.get(path.rsplit("/", 1)[-1])
            if image is None:
                self._reply(404, {"message": "not found"})
                return
            with self.lock:
                body = dict(image, locations=list(image["locations"]))
            if self.regional:
                body.pop("locations")
            self._reply(200, body)
        else:
            self._reply(404, {"message": "not served by the fake"})

    def _list(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        wanted = query.get("id", [""])[0]
        if not wanted.startswith("in:"):
            self._reply(400, {"message": "the fake lists by id=in: only"})
            return
        ids = sorted(set(wanted[3:].split(",")))
        limit = int(query.get("limit", ["25"])[0])
        marker = query.get("marker", [None])[0]
        if marker is not None:
            ids = [i for i in ids if i > marker]
        page = [i for i in ids if i in self.records][:limit]
        images = []
        with self.lock:
            for image_id in page:
                image = dict(self.records[image_id], locations=list(self.records[image_id]["locations"]))
                if self.regional:
                    image.pop("locations")
                images.append(image)
        body: dict[str, Any] = {"images": images}
        if len(page) == limit and page:
            body["next"] = f"/v2/images?id={wanted}&limit={limit}&marker={page[-1]}"
        self._reply(200, body)

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
            body = dict(image, locations=list(image["locations"]))
        self._reply(200, body)

    def log_message(self, *args: Any) -> None:
        pass


def _server(records: dict[str, dict[str, Any]], regional: bool) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"records": records, "regional": regional, "served": Counter()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


def serve(ids: list[str], store_dir: str, ready: Any) -> None:
    records = {image_id: record(image_id, store_dir) for image_id in ids}
    cascading, regional = _server(records, False), _server(records, True)
    threading.Thread(target=regional.serve_forever, daemon=True).start()
    ready.send((cascading.server_address[1], regional.server_address[1]))
    cascading.serve_forever()
