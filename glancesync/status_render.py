"""Text rendering of the coordinator's status replies, for ``glance-sync-status`` and the OSC plugin.

Pure functions from the reply's ``data`` (shapes in ``glancesync.status``) to
strings and table rows, with the current time passed in, so that every view is
unit-tested without a socket or a clock.  Nothing here prints: plain text for a
pipe comes from ``render_*``, the terminal's tables (``glancesync.status_live``)
and the plugin's columns (``glancesync.osc``) from the same ``*_rows``.

A region of the image view may carry ``phase`` (``fetching``, ``uploading``,
``registering``), ``rate`` (bytes per second) and ``eta`` (seconds) when the
coordinator reports them; a coordinator that does not is shown by state alone.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from glancesync.states import SyncState

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(num: int | float) -> str:
    """``1536`` -> ``1.5 KiB``: IEC units, as image sizes are usually quoted."""
    value = float(num)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def percent(done: int, total: int) -> str:
    # An image of size 0 (or not known yet) has no meaningful percentage.
    if total <= 0:
        return "-"
    return f"{min(100.0, 100.0 * done / total):.0f}%"


def progress(done: int, total: int) -> str:
    """``12.0 MiB/100.0 MiB (12%)``, or ``-`` before any byte is known."""
    if total <= 0 and done <= 0:
        return "-"
    return f"{size(done)}/{size(total)} ({percent(done, total)})"


def age(then: float | None, now: float) -> str:
    """Seconds since ``then``, as ``3s ago``; ``never`` for a missing time."""
    if not then:
        return "never"
    return f"{max(0, round(now - then))}s ago"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart; numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int) for row in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        lines.append(indent + "  ".join(parts).rstrip())
    return lines


def _stamp(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


SUMMARY_HEADERS = ("REGION", "QUEUED", "IN FLIGHT", "SYNCED", "FAILED", "AGENTS")
AGENT_HEADERS = ("AGENT", "STATUS", "LAST HEARTBEAT", "CAPACITY", "CREDITS", "TASKS")


def summary_head(data: Mapping[str, Any], now: float) -> list[str]:
    """The lines above the summary's table: the coordinator, and deletions held when there are any."""
    coord = data.get("coordinator") or {}
    started = coord.get("started_at")
    head = f"coordinator {coord.get('version', '?')}"
    if started:
        head += f", up {duration(now - started)} (since {_stamp(started)})"
    lines = [head]
    role = role_line(coord, now)
    if role:
        lines.append(role)
    if coord.get("sync_strategy"):
        lines.append(f"sync_strategy: {coord['sync_strategy']}")
    return lines + held_lines(data.get("deletions_held") or {}, now)


def role_line(coord: Mapping[str, Any], now: float) -> str | None:
    """``role: ...``: a single coordinator, or the pair's active one with its lease; None from an older one."""
    role = coord.get("role")
    if not role:
        return None
    if role == "single":
        return "role: single coordinator (no active/passive pair)"
    lease = coord.get("lease") or {}
    line = f"role: {role} member of a pair, lease held by {lease.get('holder') or 'nobody'}"
    if lease.get("generation") is not None:
        line += f" (generation {lease['generation']})"
    expires = lease.get("expires")
    if expires:
        left = expires - now
        line += f", expires in {duration(left)}" if left >= 0 else f", expired {duration(-left)} ago"
    return line


def summary_rows(data: Mapping[str, Any]) -> list[list[Any]]:
    """One row per region under SUMMARY_HEADERS, sorted by name."""
    regions: Mapping[str, Any] = data.get("regions") or {}
    rows = []
    for name in sorted(regions):
        info = regions[name]
        agents = info.get("agents") or []
        online = sum(1 for a in agents if a.get("online"))
        rows.append(
            [name, info.get("queued", 0), info.get("in_flight", 0), info.get("synced", 0),
             info.get("failed", 0), f"{online}/{len(agents)} online"]
        )
    return rows


def agent_rows(agents: Sequence[Mapping[str, Any]], now: float) -> list[list[Any]]:
    """One row per agent under AGENT_HEADERS, sorted by id."""
    return [
        [a.get("agent_id", "?"), "online" if a.get("online") else "offline", age(a.get("last_heartbeat"), now),
         a.get("capacity", 0), a.get("credits", 0), len(a.get("tasks") or [])]
        for a in sorted(agents, key=lambda a: str(a.get("agent_id", "")))
    ]


def render_summary(data: Mapping[str, Any], now: float) -> str:
    """The summary view: one row per region, then its agents."""
    lines = summary_head(data, now)
    regions: Mapping[str, Any] = data.get("regions") or {}
    if not regions:
        lines.append("no regions")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines += table(SUMMARY_HEADERS, summary_rows(data))
    for name in sorted(regions):
        lines.append("")
        lines += _agent_lines(name, regions[name].get("agents") or [], now)
    return "\n".join(lines) + "\n"


def held_lines(held: Mapping[str, Any], now: float) -> list[str]:
    """The reconciler's held deletions, when there are any (coordinator.status.deletions_held)."""
    count = held.get("images") or 0
    if not count:
        return []
    line = f"deletions held: {count} image(s) since {age(held.get('since'), now)}"
    confirmed = held.get("confirmed") or 0
    if confirmed >= count:
        return [line + ", confirmed: the next reconciler pass deletes those still gone"]
    return [line + " (reconciler safety limit; see 'glance-sync-manage reconcile')"]


def _agent_lines(region: str, agents: Sequence[Mapping[str, Any]], now: float) -> list[str]:
    if not agents:
        return [f"{region}: no agent has connected"]
    return [f"{region}:"] + table(AGENT_HEADERS, agent_rows(agents, now), "  ")


def image_head(data: Mapping[str, Any]) -> str | None:
    """The image view's only line when there is no table to show, else None."""
    image_id = data.get("image_id", "?")
    if not data.get("known"):
        return f"image {image_id}: not known to the coordinator"
    if not data.get("regions"):
        return f"image {image_id}: no region is to hold this image"
    return None


def has_motion(regions: Mapping[str, Any]) -> bool:
    """Whether any region reports a rate or an ETA (a coordinator that measures them)."""
    return any(key in (info or {}) for info in regions.values() for key in ("rate_bytes_per_s", "eta_seconds"))


def image_headers(regions: Mapping[str, Any]) -> list[str]:
    """The image table's headers: RATE and ETA only when the coordinator reports them (the phase is in STATE)."""
    motion = ["RATE", "ETA"] if has_motion(regions) else []
    return ["REGION", "STATE", "BYTES", *motion, "ATTEMPTS", "AGENT", "UPDATED", "LAST ERROR"]


def image_rows(regions: Mapping[str, Any], now: float) -> list[list[Any]]:
    """One row per region under image_headers(regions), sorted by name."""
    motion = has_motion(regions)
    rows = []
    for name in sorted(regions):
        r = regions[name]
        extra = [rate(r), eta(r)] if motion else []
        rows.append(
            [name, _state_cell(r), progress(r.get("bytes_done", 0), r.get("bytes_total", 0)), *extra,
             r.get("attempts", 0), r.get("agent_id"), age(r.get("updated_at"), now),
             _one_line(r.get("last_error"))]
        )
    return rows


def render_image(data: Mapping[str, Any], now: float) -> str:
    """The image view: one row per region with state, bytes, attempts, agent and last error."""
    head = image_head(data)
    targeting = [f"targeting: {_one_line(data['targeting_error'])}"] if data.get("targeting_error") else []
    targeting += [f"note: {_one_line(data['note'])}"] if data.get("note") else []
    if head is not None:
        return "\n".join([head, *targeting]) + "\n"
    regions: Mapping[str, Any] = data.get("regions") or {}
    lines = [f"image {data.get('image_id', '?')}", *targeting, ""]
    lines += table(image_headers(regions), image_rows(regions, now))
    return "\n".join(lines) + "\n"


# The two facts ``synced`` needs (doc/states.md), as the image view names them.
FACTS = (("copy_registered", "copy registered"), ("metadata_applied", "metadata applied"))


def rate(r: Mapping[str, Any]) -> str | None:
    """``55.0 MiB/s`` from ``rate_bytes_per_s``; None (shown as ``-``) when there is none."""
    value = r.get("rate_bytes_per_s")
    return f"{size(value)}/s" if isinstance(value, (int, float)) and value > 0 else None


def eta(r: Mapping[str, Any]) -> str | None:
    value = r.get("eta_seconds")
    return duration(value) if isinstance(value, (int, float)) else None


def phase(r: Mapping[str, Any]) -> str | None:
    """``fetching``, ``waiting: retry at 12:00:03 UTC``...: the ``phase`` of a region row, if any."""
    name = r.get("phase")
    if not name:
        return None
    retry_at = r.get("retry_at")
    if name == "waiting" and isinstance(retry_at, (int, float)):
        return f"waiting: retry at {_stamp(retry_at)[11:]}"
    return str(name)


def _state_cell(r: Mapping[str, Any]) -> str:
    """The state and its phase; for a failed region, which of the facts ``synced`` needs is missing."""
    state = str(r.get("state", "?"))
    if state != SyncState.FAILED:
        doing = phase(r)
        return f"{state} ({doing})" if doing and doing != state else state
    missing = [label for key, label in FACTS if key in r and not r[key]]
    return f"{state} (missing: {', '.join(missing)})" if missing else state


def _one_line(text: str | None, limit: int = 120) -> str | None:
    # Errors can carry tracebacks or long glance bodies; a table row stays one line.
    if not text:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def region_progress_line(region: str, info: Mapping[str, Any] | None) -> str:
    """One line of the --wait progress display for one region: state (phase), bytes, rate, ETA."""
    if info is None:
        return f"{region}: unknown"
    state = info.get("state", "?")
    line = f"{region}: {_state_cell(info) if state != SyncState.FAILED else state}"
    shown = progress(info.get("bytes_done", 0), info.get("bytes_total", 0))
    if shown != "-" and state not in (SyncState.SYNCED, SyncState.PENDING):
        line += f" {shown}"
        speed, left = rate(info), eta(info)
        line += f" at {speed}" if speed else ""
        line += f", ETA {left}" if left else ""
    return line


def evaluate(data: Mapping[str, Any]) -> tuple[str, str]:
    """("synced" | "failed" | "waiting", why) for one image reply."""
    image_id = data.get("image_id", "?")
    regions: Mapping[str, Any] = data.get("regions") or {}
    if not data.get("known"):
        return "waiting", f"image {image_id} is not known to the coordinator"
    # glance_sync_regions names a region that is not one: never a silent success.
    targeting = data.get("targeting_error")
    if not regions and data.get("settled"):
        if targeting:
            return "failed", f"image {image_id} is synced to no region: {targeting}"
        return "synced", f"image {image_id} is to be synced to no region (sync_strategy or its regions)"
    if not regions and data.get("planned"):
        # Created but not uploaded, or its import still runs: more events are on their way.
        return "waiting", f"image {image_id} is not active in the cascading glance yet"
    if not regions:
        return "waiting", f"no region is listed for image {image_id} yet"
    if all(regions[name].get("state") == SyncState.DELETED for name in regions):
        return "synced", f"image {image_id} is deleted in {', '.join(sorted(regions))}"
    failed = [name for name in sorted(regions)
              if regions[name].get("state") in (SyncState.FAILED, SyncState.CANCELLED)]
    if failed:
        errors = "; ".join(f"{name}: {_outcome(regions[name])}" for name in failed)
        return "failed", f"image {image_id} failed in {errors}"
    # A deleted region beside synced ones: removed from the image's targets, done there.
    behind = [name for name in sorted(regions)
              if regions[name].get("state") not in (SyncState.SYNCED, SyncState.DELETED)]
    held = ", ".join(name for name in sorted(regions) if regions[name].get("state") == SyncState.SYNCED)
    if not behind and targeting:
        return "failed", f"image {image_id} is synced in {held}, but {targeting}"
    if not behind:
        return "synced", f"image {image_id} is synced in {held}"
    shown = ", ".join(region_progress_line(name, regions[name]) for name in behind)
    return "waiting", f"image {image_id} not synced in {shown}"


def _outcome(r: Mapping[str, Any]) -> str:
    """A failed or cancelled region's last error, for ``--wait`` (a cancel says so)."""
    error = r.get("last_error") or "no error recorded"
    return f"cancelled: {error}" if r.get("state") == SyncState.CANCELLED else str(error)
