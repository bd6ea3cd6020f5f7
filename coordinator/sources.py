"""Where each copy fetches its bytes from: an image's distribution as a tree (doc/peers.md).

The cascading store is the root; a region that holds a verified copy in its
agent's cache is a source too, and so, with ``[coordinator] chain_sources``, is a
region whose own copy is still running: its agent relays the prefix it has
(a *chain* source, :class:`Relay` in a plan).  Each source serves at most ``fanout`` copies of
one image at a time (``[coordinator] max_source_fanout``; 0: no limit), so the
store sends an image ``fanout`` times and the regions that got it feed the rest.

A region *holds* an image once both facts are in: the coordinator registered its
copy after reading the regional image itself (the copy is ``synced``), and the
agent's ``done`` said the verified file went into its cache.  The journal keeps
both, so a restarted coordinator knows the holders again.  The copies in flight
per source are counted in memory; the journal knows which copies run but not
which source each was handed first.  At start (a restart, or a pair's takeover)
:meth:`Sourcing.restore` counts every running copy again, against *every* source
of its image (the store and each peer), until it ends: an unknown source is taken
as busy rather than free, so the fanout holds across the restart, at the cost of
fewer new copies of that image until the running ones end.

:func:`plan` is the pure choice; :class:`Sourcing` counts what is in flight and
turns a choice into the wire's ``task.sources``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from glancesync import protocol

LOG = logging.getLogger(__name__)

# The cascading store, as a source in plans and counts (regions are named by their name).
STORE: str | None = None
# Peers after the first choice that a task may fall back to before the store.
FALLBACK_PEERS = 2
# Seconds the holders of an image read from the journal are reused: a copy waiting for a
# source is looked at every loop iteration, the journal read at most this often.
HOLDERS_TTL = 1.0
# With a fanout, dispatch looks this many times further down a queue than the credits reach,
# so copies waiting for a source do not hold back the tasks behind them.
LOOKAHEAD = 4


class Relay(str):
    """A region named as a source while its own copy runs: the fetcher follows its growing file."""


class Flow(NamedTuple):
    """A copy handed out: its image, its first source, its region, whether that region relays it."""

    image_id: str
    source: str | None
    region: str
    relays: bool = False


def plan(region: str, holders: Sequence[str], busy: Mapping[str | None, int], fanout: int,
         fallbacks: int = FALLBACK_PEERS, store_first: bool = False, soon: int = 0,
         runners: Sequence[str] = ()) -> list[str | None] | None:
    """The sources ``region`` tries for one image, in order; None: wait, every source is at its fanout.

    ``holders``: regions holding a verified copy, earliest first; ``busy``: copies of
    the image each source serves now.  Once a peer holds the image the store is only
    the last fallback, so the store sends the image about ``fanout`` times in all.
    The fallbacks (a few other peers, then the store) are not counted: they serve
    only when the first choice fails.  ``store_first`` (a retry: the last attempt
    may have failed on a peer's bytes) asks the store first, peers after.  ``soon``:
    regions whose cached copy is being registered; rather than the store, the copy
    waits for them (a few seconds).  ``runners``: regions whose copy runs and is
    relayed, earliest first; one is chosen (a :class:`Relay`) only where the copy
    would otherwise wait, so the store still serves its ``fanout`` first copies.
    """
    peers = [name for name in holders if name != region]
    relays = [Relay(name) for name in runners if name != region and name not in peers]

    def free(source: str | None) -> bool:
        return fanout <= 0 or busy.get(source, 0) < fanout

    if store_first:
        return [STORE, *peers[:fallbacks]] if free(STORE) else None

    ready = sorted((name for name in peers if free(name)), key=lambda name: busy.get(name, 0))
    if not ready and not peers and not soon and free(STORE):
        return [STORE]
    if not ready:
        ready = sorted((name for name in relays if free(name)), key=lambda name: busy.get(name, 0))
    if not ready:
        return None
    first = ready[0]
    rest = [name for name in [*peers, *relays] if name != first][:fallbacks]
    return [first, *rest, STORE]


class Sourcing:
    """The copies in flight per (image, source), and the sources a task is handed."""

    def __init__(self, fanout: int, peer_regions: Iterable[str], chain: bool = False) -> None:
        self.fanout = fanout
        # Regions whose glance_store.yaml entry says how to reach their cache (a ``peer:``).
        self.peer_regions = frozenset(peer_regions)
        # [coordinator] chain_sources: running copies of relaying agents serve too.
        self.chain = chain
        # task_id -> the copy handed out.
        self.flows: dict[str, Flow] = {}
        self.lookahead = LOOKAHEAD if fanout > 0 else 1
        # image_id -> (read at, (holders, soon)) from the journal.
        self._holders: dict[str, tuple[float, tuple[list[str], list[str]]]] = {}
        # Flows read back from the journal at start (restore): their first source is unknown.
        self.restored: set[str] = set()
        # Until then a restored flow is kept whether or not an agent holds its task yet: its
        # agent has that long to reconnect (the leases a restart extends, service.py).
        self._restored_until = 0.0

    def restore(self, running: Callable[[], Iterable[tuple[str, str, str]]], until: float) -> int:
        """Count the copies a previous coordinator handed out, (task_id, image_id, region) each, as in flight.

        Their first source is not in the journal: each counts against every source of its
        image (see above).  Kept until ``until`` even while no agent holds them (their agents
        reconnect meanwhile), then as long as an agent does.  ``running`` is read only with a
        fanout.  Returns how many.
        """
        if self.fanout <= 0:
            return 0
        for task_id, image_id, region in running():
            if task_id not in self.flows:
                self.flows[task_id] = Flow(image_id, STORE, region)
                self.restored.add(task_id)
        self._restored_until = until
        if self.restored:
            LOG.info("%d running copies count against max_source_fanout again, as served by every source "
                     "of their image until they end", len(self.restored))
        return len(self.restored)

    def holders(self, image_id: str, now: float,
                read: Callable[[str], tuple[list[str], list[str]]]) -> tuple[list[str], list[str]]:
        """(holders, soon) of ``image_id`` (see Journal.cache_holders), read again after HOLDERS_TTL.

        Without any region serving peers there is nothing to read.
        """
        if not self.peer_regions:
            return [], []
        cached = self._holders.get(image_id)
        if cached is None or not 0 <= now - cached[0] < HOLDERS_TTL:
            if len(self._holders) > 10000:  # images no copy waits for any more
                self._holders = {k: v for k, v in self._holders.items() if 0 <= now - v[0] < HOLDERS_TTL}
            cached = self._holders[image_id] = (now, read(image_id))
        return cached[1]

    def prune(self, held: Callable[[str], bool], now: float | None = None) -> None:
        """Forget the flows of tasks no agent holds any more (finished, failed, requeued).

        The image's holders are read again too: the copy that just ended may be the next
        source, and a stale read would hand its freed store slot to the next copy.  A
        restored flow is kept regardless until its agents' time to reconnect is over.
        """
        grace = now is not None and now < self._restored_until
        for task_id in [t for t in self.flows if not held(t) and not (grace and t in self.restored)]:
            flow = self.flows.pop(task_id)
            self.restored.discard(task_id)
            self._holders.pop(flow.image_id, None)

    def busy(self, image_id: str, sources: Iterable[str] = ()) -> dict[str | None, int]:
        """Copies of ``image_id`` each source serves now; a restored one counts for the store and every one of ``sources``."""
        counts: dict[str | None, int] = {}
        unknown = 0
        for task_id, flow in self.flows.items():
            if flow.image_id != image_id:
                continue
            if task_id in self.restored:
                unknown += 1
            else:
                counts[flow.source] = counts.get(flow.source, 0) + 1
        if unknown:
            for name in {STORE, *sources}:
                counts[name] = counts.get(name, 0) + unknown
        return counts

    def serving(self, region: str) -> list[str]:
        """Image ids other regions fetch from ``region`` now (its agent must not evict them).

        A restored copy may be fetching from any region holding its image: kept too.
        """
        return sorted({flow.image_id for task_id, flow in self.flows.items()
                       if flow.source == region or (task_id in self.restored and flow.region != region)})

    def runners(self, image_id: str, region: str) -> list[str]:
        """Regions relaying their running copy of ``image_id`` that ``region`` may follow.

        A region whose copy is fed, through any number of links, by ``region`` is left
        out: two copies following each other would only wait for each other.
        """
        flows = [f for f in self.flows.values() if f.image_id == image_id]
        upstream = {f.region: f.source for f in flows}
        found = []
        for flow in flows:
            if not flow.relays or flow.region == region or flow.region not in self.peer_regions:
                continue
            seen, link = set(), flow.source
            while link is not None and link != region and link not in seen:
                seen.add(link)
                link = upstream.get(link)
            if link != region and flow.region not in found:
                found.append(flow.region)
        return found

    def choose(self, task_id: str, image_id: str, region: str, holders: Sequence[str],
               understands_sources: bool, retried: bool = False,
               soon: Sequence[str] = (), features: Iterable[str] = ()) -> list[str | None] | None:
        """The order of sources for one copy, counted as in flight from its first; None: wait.

        An agent without the "sources" feature can only fetch from the store: it
        waits for the store like the first copies do.  Only an agent with the
        "follow" feature is given a running copy to follow; only one with "chain"
        relays its own running copy to the next regions.
        """
        features = frozenset(features)
        usable = [name for name in holders if name in self.peer_regions] if understands_sources else []
        coming = [name for name in soon if name in self.peer_regions and name != region] if understands_sources else []
        follows = understands_sources and self.chain and protocol.FEATURE_FOLLOW in features
        running = self.runners(image_id, region) if follows else []
        busy = self.busy(image_id, [*usable, *running])
        order = plan(region, usable, busy, self.fanout, store_first=retried, soon=len(coming), runners=running)
        if order is not None:
            self.restored.discard(task_id)
            relays = self.chain and protocol.FEATURE_CHAIN in features
            self.flows[task_id] = Flow(image_id, None if order[0] is None else str(order[0]), region, relays)
        return order

    def drop(self, task_id: str) -> None:
        self.flows.pop(task_id, None)
        self.restored.discard(task_id)


def wire_sources(order: Sequence[str | None], store_source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``task.sources`` for ``order``: peers by region (a running copy ``growing``), the store as the task's own source."""
    return [dict(store_source) if name is None
            else {"type": "peer", "region": str(name), "growing": True} if isinstance(name, Relay)
            else {"type": "peer", "region": name} for name in order]


def source_name(name: str | None) -> str:
    """How a source is named in logs and reports."""
    return protocol.SOURCE_STORE if name is STORE else name
