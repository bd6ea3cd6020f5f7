"""The status summary's rows form: what it is, and how a client turns it back into maps.

The summary's ``data`` (coordinator/status.py, doc/status.md) lists every region as a
map of its counts and its agents, each agent a map of six fields.  With 500 regions
that is about 2,000 maps and 6,000 keys, which a client unpacks and checks key by key
(``protocol.decode``) for about 1.5 ms.  A ``status_query`` that carries
``"form": "rows"`` gets the same data as rows instead::

    {"coordinator": {...}, "deletions_held": {...},
     "fields": {"region": REGION_FIELDS, "agent": AGENT_FIELDS},
     "regions": [[name, queued, in_flight, synced, failed, [[agent_id, online, ...], ...]], ...]}

The field names travel once; each row holds values only.  ``maps`` turns it back into
the documented form (what ``--json`` prints and the tables read); a coordinator that
does not know ``form`` ignores it and answers maps, which ``maps`` passes through.
A row of the wrong shape is refused with a ProtocolError naming it, like any other
reply that does not fit the protocol.
"""

from __future__ import annotations

from typing import Any

from glancesync import untrusted
from glancesync.exceptions import ProtocolError
from glancesync.messages import STATUS_FORMS

FORM_ROWS = STATUS_FORMS[1]
# The order of a row's values.  The coordinator sends the names with the rows, and the
# client reads them from there: a newer coordinator may add one.
REGION_FIELDS = ("queued", "in_flight", "synced", "failed")
AGENT_FIELDS = ("agent_id", "online", "last_heartbeat", "capacity", "credits", "tasks")


def _refuse(detail: str) -> ProtocolError:
    return ProtocolError(code="bad_field", detail=f"status_reply.data: {detail}")


def _names(fields: Any, which: str) -> list[str]:
    names = fields.get(which) if isinstance(fields, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise _refuse(f"fields.{which} must be a list of names")
    if which == "region" and "agents" in names:
        raise _refuse("fields.region must not name agents")
    return names


def maps(data: dict[str, Any]) -> dict[str, Any]:
    """The summary ``data`` in its documented form: rows turned into maps; maps as they came."""
    rows = data.get("regions")
    if not isinstance(rows, list):
        return data  # the maps form (an older coordinator, or the image view)
    region_fields, agent_fields = _names(data.get("fields"), "region"), _names(data.get("fields"), "agent")
    width, agent_width = len(region_fields) + 2, len(agent_fields)
    regions: dict[str, Any] = {}
    for row in rows:
        if type(row) is not list or len(row) != width or type(row[0]) is not str or type(row[-1]) is not list:
            raise _refuse(f"region row {untrusted.quote(row)} is not [name, {len(region_fields)} counts, agents]")
        for agent in row[-1]:
            if type(agent) is not list or len(agent) != agent_width:
                raise _refuse(f"agent row {untrusted.quote(agent)} of {untrusted.quote(row[0])} has not "
                              f"{agent_width} values")
        entry = dict(zip(region_fields, row[1:-1], strict=True))
        entry["agents"] = [dict(zip(agent_fields, agent, strict=True)) for agent in row[-1]]
        regions[row[0]] = entry
    shown = {name: value for name, value in data.items() if name != "fields"}
    shown["regions"] = regions
    return shown
