"""glance.paged_images: the raw paged listing the reconciler reads instead of glanceclient's models.

A real glanceclient v2 client on a real keystoneauth1 session, whose transport is a fake
glance (a requests adapter mounted on the session) that pages like glance-api: ``limit``
capped at its api_limit_max, ``marker`` = the last id seen, a ``next`` link while more
remain, each image carrying its ``self`` link.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter

from glancesync import glance
from glancesync.exceptions import GlanceError
from glancesync.storemap import GlanceEndpoint

URL = "http://glance.test:9292"
MAX_PAGE = 7


def image(n: int, hidden: bool = False) -> dict[str, Any]:
    image_id = f"{n:08d}-0000-4000-8000-000000000000"
    return {"id": image_id, "name": f"img{n}", "status": "active" if n % 3 else "queued", "size": n,
            "visibility": "public" if n % 2 else "shared", "os_hidden": hidden, "tags": ["a", str(n)],
            "locations": [{"url": f"file:///s/{image_id}", "metadata": {"n": n}}], "min_disk": 0,
            "self": f"/v2/images/{image_id}", "file": f"/v2/images/{image_id}/file", "schema": "/v2/schemas/image"}


class FakeGlance(BaseAdapter):
    """glance-api's listing and schema, answered in memory; every request recorded."""

    def __init__(self, images: list[dict[str, Any]], broken: Any = None) -> None:
        super().__init__()
        self.images = sorted(images, key=lambda i: i["id"], reverse=True)  # glance: newest first
        self.broken = broken
        self.queries: list[dict[str, str]] = []

    def send(self, request: Any, **kwargs: Any) -> requests.Response:
        split = urlsplit(request.url)
        if split.path.startswith("/v2/schemas/"):
            return self._reply(request, {"name": "image", "properties": {}, "additionalProperties": True})
        assert split.path == "/v2/images", request.url
        query = dict(parse_qsl(split.query))
        self.queries.append(query)
        if self.broken is not None:
            return self._reply(request, self.broken)
        hidden = query.get("os_hidden", "false").lower() == "true"
        shown = [i for i in self.images if i["os_hidden"] == hidden]
        limit = min(int(query.get("limit", 25)), MAX_PAGE)
        ids = [i["id"] for i in shown]
        start = ids.index(query["marker"]) + 1 if "marker" in query else 0
        body: dict[str, Any] = {"images": [json.loads(json.dumps(i)) for i in shown[start:start + limit]],
                                "first": "/v2/images", "schema": "/v2/schemas/images"}
        if start + limit < len(shown):
            body["next"] = "/v2/images?" + urlencode({**query, "marker": shown[start + limit - 1]["id"]})
        return self._reply(request, body)

    @staticmethod
    def _reply(request: Any, body: Any) -> requests.Response:
        response = requests.Response()
        response.status_code, response.request, response.url = 200, request, request.url
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps(body).encode()
        return response

    def close(self) -> None:
        pass


def client_of(fake: FakeGlance) -> Any:
    endpoint = GlanceEndpoint(url=URL)
    sess = glance.make_session(endpoint)
    sess.session.mount(URL + "/", fake)
    return glance.make_client(endpoint, sess)


def test_the_raw_listing_pages_by_marker_and_yields_what_the_model_listing_yields() -> None:
    fake = FakeGlance([image(n) for n in range(23)] + [image(n, hidden=True) for n in range(100, 103)])
    client = client_of(fake)
    for hidden in (False, True):
        filters = {"visibility": "all", "os_hidden": hidden}
        models = [glance.image_to_dict(i) for i in client.images.list(filters=dict(filters), page_size=5)]
        fake.queries.clear()
        raw = list(glance.paged_images(client, filters, 5))
        assert raw == models and len(raw) == (3 if hidden else 23)
        assert all("self" not in i for i in raw)
        # One request per page of 5, each asking for the filters, the marker the previous page's last id.
        assert [q.get("marker") for q in fake.queries] == [None, *(raw[n]["id"] for n in range(4, len(raw) - 1, 5))]
        assert all(q["visibility"] == "all" and q["os_hidden"] == str(hidden).lower() and q["limit"] == "5"
                   for q in fake.queries)


def test_a_page_size_over_glances_cap_still_lists_everything() -> None:
    fake = FakeGlance([image(n) for n in range(20)])
    listed = list(glance.paged_images(client_of(fake), {"visibility": "all"}, 1000))
    assert sorted(i["id"] for i in listed) == sorted(image(n)["id"] for n in range(20))
    assert len(fake.queries) == 3  # glance served pages of MAX_PAGE and said where to go on


@pytest.mark.parametrize("body", [[], {"images": "x"}, {"next": "/v2/images"}])
def test_a_page_that_is_no_listing_is_a_glance_error(body: Any) -> None:
    client = client_of(FakeGlance([], broken=body))
    with pytest.raises(GlanceError, match="listing"):
        glance.call(lambda: list(glance.paged_images(client, {}, 10)), URL, [])


def test_a_next_link_without_progress_ends_in_an_error_not_a_loop() -> None:
    stuck = {"images": [{"id": "a"}], "next": "/v2/images?marker=a"}
    fake = FakeGlance([], broken=stuck)
    with pytest.raises(ValueError, match="marker"):
        list(glance.paged_images(client_of(fake), {}, 10))
    assert len(fake.queries) == 2
