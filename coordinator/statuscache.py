"""The status summary, packed in pieces that are packed again only when they change.

With 500 regions and 500 agents the summary is a 65 KB msgpack map; building the dicts
and packing them took about 2 ms of the loop's CPU per ``status_query`` (doc/status.md).
Almost none of it changes between two queries: a heartbeat changes one agent's entry, a
task's state the counts of one region.  So each agent's entry is kept packed, each
region's value (its counts and its agents' entries) too, and the map of every region
as one piece; a query packs only the coordinator's few fields (its clock moves) and
``deletions_held``, and joins the pieces.

What changed comes from who changes it: ``Agents.touched`` (routing ids whose entry may
differ: heard, credits, tasks, online, a session added or dropped) and the journal's
count watcher (regions whose committed counts moved; None when the counts were read
afresh).  The bytes equal ``msgpack.packb(status.summary(...))`` up to the order of map
keys, which msgpack readers ignore; the unit tests hold the two side by side after every
kind of change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from coordinator import status
from coordinator.agents import Agents
from coordinator.journal import Journal
from coordinator.leadership import LeaseView

_PACK = msgpack.Packer(use_bin_type=True)


def _header(entries: int) -> bytes:
    return _PACK.pack_map_header(entries)


class SummaryCache:
    """The packed ``data`` of the summary ``status_reply``; one per coordinator loop."""

    def __init__(self, journal: Journal, agents: Agents) -> None:
        self.journal = journal
        self.agents = agents
        self._counts_changed = journal.watch_counts()
        # routing id -> (region, agent_id, packed entry) of every session listed.
        self._entries: dict[bytes, tuple[str, str, bytes]] = {}
        # region -> its packed name and value, as one piece of the regions map.
        self._regions: dict[str, bytes] = {}
        # Regions whose piece is to be packed again.
        self._stale: set[str] = set()
        self._names: list[str] = []
        self._packed_regions = _header(0)
        self._held: tuple[Any, bytes] | None = None
        # How many pieces were packed: what the tests look at to see that nothing more was.
        self.packed_entries = self.packed_regions = 0

    def data(self, regions: Iterable[str], started_at: float, now: float, strategy: str = "",
             lease: LeaseView | None = None) -> bytes:
        """The summary's ``data``, packed: as ``status.summary`` with the same arguments."""
        coordinator = _PACK.pack(status.coordinator(started_at, now, strategy, lease))
        return b"".join((_header(3), _PACK.pack("coordinator"), coordinator, _PACK.pack("regions"),
                         self.regions(regions), _PACK.pack("deletions_held"), self._deletions_held()))

    def regions(self, regions: Iterable[str]) -> bytes:
        """The packed ``regions`` map: the listed regions, then any other an agent announced."""
        self._refresh_entries()
        self._refresh_counts()
        names = list(regions)
        listed = set(names)
        names += sorted(name for name in self.agents.regions() if name not in listed)
        stale = self._stale
        if names != self._names or stale:
            for name in names:
                if name in stale or name not in self._regions:
                    self._regions[name] = self._pack_region(name)
            stale.clear()
            if names != self._names:
                for name in set(self._regions).difference(names):
                    del self._regions[name]
                self._names = names
            self._packed_regions = b"".join((_header(len(names)), *(self._regions[name] for name in names)))
        return self._packed_regions

    def _refresh_entries(self) -> None:
        touched = self.agents.touched
        if not touched:
            return
        sessions = self.agents.sessions
        for rid in touched:
            former = self._entries.pop(rid, None)
            if former is not None:
                self._stale.add(former[0])
            session = sessions.get(rid)
            if session is not None:
                self._entries[rid] = (session.region, session.agent_id, _PACK.pack(session.status()))
                self._stale.add(session.region)
                self.packed_entries += 1
        touched.clear()

    def _refresh_counts(self) -> None:
        # Counts dropped from memory are read here, which marks every region changed at once
        # rather than in the middle of packing them.
        self.journal.region_count("")
        changed = self._counts_changed
        if not changed:
            return
        if None in changed:  # read afresh: any region may differ
            self._regions.clear()
            self._names = []
        self._stale.update(name for name in changed if name is not None)
        changed.clear()

    def _pack_region(self, name: str) -> bytes:
        self.packed_regions += 1
        counts = self.journal.region_count(name)
        sessions = sorted(self.agents.in_region(name), key=lambda s: s.agent_id)
        entries = [self._entry(session.routing_id) for session in sessions]
        body = _PACK.pack(counts)
        # The counts' map (4 keys: a one-byte header) with one more key, "agents", holding the packed entries.
        return b"".join((_PACK.pack(name), _header(len(counts) + 1), body[1:], _PACK.pack("agents"),
                         _PACK.pack_array_header(len(entries)), *entries))

    def _entry(self, rid: bytes) -> bytes:
        cached = self._entries.get(rid)
        if cached is None:  # listed before its first touch was seen (a session made before this cache)
            session = self.agents.sessions[rid]
            cached = (session.region, session.agent_id, _PACK.pack(session.status()))
            self._entries[rid] = cached
            self.packed_entries += 1
        return cached[2]

    def _deletions_held(self) -> bytes:
        held = self.journal.held_deletes_known()
        # The journal replaces the list whenever it changes: the same list, the same bytes.
        if self._held is None or self._held[0] is not held:
            self._held = (held, _PACK.pack(status.deletions_held(self.journal)))
        return self._held[1]
