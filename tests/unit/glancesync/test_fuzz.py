"""Fuzzing glancesync's decoders: only the documented error types may come out.

protocol.decode -> Message or ProtocolError; storemap.parse/load -> StoreMap or
ConfigError; glance.image_to_dict / copied_properties never raise on what
glanceclient hands back; the status renderers never raise on a decoded reply.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from glancesync import glance, protocol, status, status_render, storemap, untrusted
from glancesync.exceptions import ConfigError, ProtocolError, SourceRefused
from tests.unit.fuzz import FUZZ, IMAGE_ID, json_maps, nested, scalars, values

from .test_protocol import VALID

TYPES = sorted(protocol.SCHEMAS)


def _bounded(body: dict[str, Any]) -> None:
    """What every accepted body promises, whoever sent it."""
    for name, value in body.items():
        if isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value <= protocol.MAX_SIZE, name
        if isinstance(value, float) or name in ("elapsed", "occurred_at", "heartbeat_interval", "lease_timeout"):
            assert math.isfinite(value) and abs(value) <= protocol.MAX_SECONDS, name
        if isinstance(value, (str, list)):
            assert len(value) <= protocol.MAX_TEXT, name
        if name == "image_id" and value is not None:
            assert untrusted.is_image_id(value)


def _decoded(frame: bytes) -> protocol.Message | None:
    try:
        msg = protocol.decode(frame)
    except ProtocolError as exc:
        assert len(str(exc)) < 400  # a short, quoted prefix at most
        protocol.error_reply(exc, ref="m-1")  # and the refusal can always be answered
        return None
    _bounded(msg.body)
    # Anything decode accepts, encode accepts too, and the journal can pack.
    assert protocol.decode(protocol.encode(msg.type, msg.body)).body == msg.body
    msgpack.packb(msg.body, use_bin_type=True)
    return msg


@FUZZ
@given(frame=st.binary(max_size=512))
def test_decode_of_arbitrary_bytes(frame: bytes) -> None:
    _decoded(frame)
    assert protocol.refused_report(frame) is None or isinstance(protocol.refused_report(frame), dict)


envelopes = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 0, 2, "1", True, None]),
        "type": st.sampled_from(TYPES) | st.text(max_size=12),
        "id": st.sampled_from(["m-1", "", "x" * 65]) | st.text(max_size=70),
        "ts": st.floats() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.none(),
        "body": json_maps | values,
    },
)


@FUZZ
@given(envelope=envelopes | values)
def test_decode_of_structured_but_wrong_envelopes(envelope: Any) -> None:
    _decoded(msgpack.packb(envelope, use_bin_type=True))


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid body of some type with a few fields replaced, removed or nulled."""
    msg_type = draw(st.sampled_from(TYPES))
    body = copy.deepcopy(VALID[msg_type])
    names = sorted(protocol.SCHEMAS[msg_type]) + ["extra"]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        name = draw(st.sampled_from(names))
        action = draw(st.sampled_from(["replace", "drop", "null"]))
        if action == "drop":
            body.pop(name, None)
        else:
            body[name] = None if action == "null" else draw(values)
    return msg_type, body


@FUZZ
@given(case=near_valid())
def test_decode_of_near_valid_bodies_of_every_type(case: tuple[str, dict[str, Any]]) -> None:
    msg_type, body = case
    frame = msgpack.packb({"v": 1, "type": msg_type, "id": "m-1", "ts": 1.0, "body": body}, use_bin_type=True)
    _decoded(frame)
    try:
        protocol.encode(msg_type, body)
    except ProtocolError:
        pass


event_bodies = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["e-1", "", "e" * 65]) | st.text(max_size=70),
        "kind": st.sampled_from(protocol.EVENT_KINDS) | st.text(max_size=10),
        "image_id": st.sampled_from([IMAGE_ID, IMAGE_ID.upper(), f"../images/{IMAGE_ID}"]) | st.text(max_size=40),
    },
    optional={"image": json_maps | values, "changes": values, "context": json_maps | values,
              "occurred_at": scalars},
)


@FUZZ
@given(body=event_bodies)
def test_event_bodies(body: dict[str, Any]) -> None:
    msg = _decoded(msgpack.packb({"v": 1, "type": "event", "id": "m", "ts": 0, "body": body}, use_bin_type=True))
    if msg is not None:
        assert untrusted.is_image_id(msg.body["image_id"]) and msg.body["kind"] in protocol.EVENT_KINDS


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={"view": st.sampled_from(protocol.STATUS_VIEWS) | scalars,
                                                "image_id": st.sampled_from([IMAGE_ID, None]) | scalars}))
def test_status_queries(body: dict[str, Any]) -> None:
    msg = _decoded(msgpack.packb({"v": 1, "type": "status_query", "id": "m", "ts": 0, "body": body},
                                 use_bin_type=True))
    if msg is not None:
        assert msg.body["image_id"] is None or untrusted.is_image_id(msg.body["image_id"])


# -- glance_store.yaml ---------------------------------------------------------------------------

def _sample_inline() -> dict:
    """The sample glance_store.yaml with each region's glance_file replaced by an inline endpoint."""
    data = yaml.safe_load((Path(__file__).resolve().parents[3] / "etc" / "glance_store.yaml.sample").read_text())
    for region in data["regions"].values():
        if region.pop("glance_file", None):
            region["glance"] = {"url": "http://glance.example.com:9292"}
    return data


SAMPLE = _sample_inline()
PATHS = [("cascading",), ("cascading", "store"), ("cascading", "glance"), ("regions",),
         ("cascading", "store", "port"), ("cascading", "store", "store_dir"), ("cascading", "store", "scheme")]


@st.composite
def store_maps(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(SAMPLE)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS + [("regions", name) for name in SAMPLE["regions"]]))
        node = data
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[path[-1]] = draw(nested(keys=st.text(max_size=8) | st.integers()))
    return data


@FUZZ
@given(data=store_maps() | nested(keys=st.text(max_size=8) | st.integers() | st.none()))
def test_storemap_parse_only_raises_config_error(data: Any) -> None:
    try:
        storemap.parse(data)
    except ConfigError:
        pass


@pytest.mark.parametrize("content", [b"[" * 1200, b"\xff\xfe\x00 not utf-8", b"a: &a [*a]", b"{{{", b"- - -"])
def test_storemap_load_of_unreadable_yaml_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "glance_store.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        storemap.load(str(path))


# -- glance responses ----------------------------------------------------------------------------


class Model(dict):
    """Like glanceclient's warlock model: a dict whose values may be anything."""


odd_values = values | st.builds(object) | st.builds(bytes) | st.sets(st.integers(), max_size=3)


@FUZZ
@given(record=st.dictionaries(st.text(max_size=16) | st.integers(), odd_values, max_size=10))
def test_glance_image_records_become_packable_dicts(record: dict[Any, Any]) -> None:
    image = glance.image_to_dict(Model(record))
    msgpack.packb(image, use_bin_type=True)
    copied = glance.copied_properties(image)
    assert not set(copied) & glance.GLANCE_OWNED_FIELDS
    assert all(value is not None and not key.startswith("os_glance") for key, value in copied.items())


# -- status replies --------------------------------------------------------------------------------

region_rows = st.fixed_dictionaries({}, optional={k: scalars for k in (
    "state", "bytes_done", "bytes_total", "attempts", "last_error", "agent_id", "updated_at", "task_kind")})
replies = st.fixed_dictionaries({}, optional={
    "image_id": scalars, "known": scalars, "planned": scalars, "now": scalars,
    "coordinator": json_maps | values,
    "regions": st.dictionaries(st.text(max_size=10), region_rows | values, max_size=3) | values,
})


@FUZZ
@given(data=replies)
def test_status_rendering_is_a_text_or_one_line(data: dict[str, Any]) -> None:
    for render in (status_render.render_image, status_render.render_summary):
        try:
            text = status._shown(lambda r=render: r(untrusted.printable_data(data), status.coordinator_now(data)))
        except status.StatusFailure:
            continue
        assert isinstance(text, str) and "\x1b" not in text


@pytest.mark.parametrize("url", ["file://[/var/lib/glance/images/x", "file://[::1/x"])
def test_a_location_that_urlparse_refuses_is_a_refused_source(url: str) -> None:
    stores = storemap.parse(copy.deepcopy(SAMPLE))
    with pytest.raises(SourceRefused):
        stores.source_path(IMAGE_ID, url)
