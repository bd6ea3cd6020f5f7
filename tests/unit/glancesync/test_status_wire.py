"""The summary's rows form (glancesync/status_wire.py): the tool shows it exactly as the maps form,
and a row of the wrong shape is one clear error."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from glancesync import status, status_wire

from .test_status import SUMMARY, FakeCoordinator

FIELDS = {"region": list(status_wire.REGION_FIELDS), "agent": list(status_wire.AGENT_FIELDS)}


def as_rows(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (maps) in the rows form, as the coordinator packs it."""
    rows = [[name, *(value[f] for f in status_wire.REGION_FIELDS),
             [[agent[f] for f in status_wire.AGENT_FIELDS] for agent in value["agents"]]]
            for name, value in data["regions"].items()]
    return {**data, "fields": copy.deepcopy(FIELDS), "regions": rows}


def test_rows_become_the_maps_they_came_from_and_maps_pass_as_they_are() -> None:
    assert status_wire.maps(as_rows(SUMMARY)) == SUMMARY
    assert list(status_wire.maps(as_rows(SUMMARY))["regions"]) == list(SUMMARY["regions"])  # order kept
    assert status_wire.maps(SUMMARY) is SUMMARY


@pytest.mark.parametrize("broken", [
    lambda d: d["regions"].append("RegionX"),  # not a row
    lambda d: d["regions"][0].pop(1),  # a count missing
    lambda d: d["regions"][0].__setitem__(0, 7),  # a name that is no string
    lambda d: d["regions"][1][-1].append([1, 2]),  # a short agent row
    lambda d: d["regions"][1].__setitem__(-1, {}),  # agents that are no list
    lambda d: d.pop("fields"),
    lambda d: d["fields"].__setitem__("agent", "agent_id"),
    lambda d: d["fields"]["region"].append("agents"),
])
def test_a_row_of_the_wrong_shape_is_a_clear_error(broken) -> None:
    data = as_rows(SUMMARY)
    broken(data)
    with pytest.raises(status.ProtocolError, match="status_reply.data"):
        status_wire.maps(data)


def _rows(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data = as_rows(SUMMARY) if body.get("form") == "rows" else SUMMARY
    return "status_reply", {"view": "summary", "data": data}


def _bad_rows(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data = as_rows(SUMMARY)
    data["regions"][0] = ["RegionTwo", 1]
    return "status_reply", {"view": "summary", "data": data}


def shown(coordinator: FakeCoordinator, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = status.main(["--host", "127.0.0.1", "--port", str(coordinator.port), "--timeout", "5", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_tool_shows_rows_exactly_as_maps(capsys: pytest.CaptureFixture[str]) -> None:
    rows, maps = FakeCoordinator(_rows), FakeCoordinator(lambda body: _rows({}))
    try:
        for extra in ((), ("--json",)):
            assert shown(rows, capsys, *extra) == shown(maps, capsys, *extra)
        assert json.loads(shown(rows, capsys, "--json")[1]) == SUMMARY
        assert rows.queries[0]["form"] == "rows"
    finally:
        rows.close()
        maps.close()


def test_a_broken_row_ends_the_tool_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    bad = FakeCoordinator(_bad_rows)
    try:
        code, out, err = shown(bad, capsys)
    finally:
        bad.close()
    assert code == 2 and out == "" and err.count("\n") == 1 and "sent an invalid reply" in err
