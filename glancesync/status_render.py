"""Text rendering of the coordinator's status replies, for ``glance-sync-status``.

Pure functions from the reply's ``data`` (shapes in ``glancesync.status``) to
strings, with the current time passed in, so that every view is unit-tested
without a socket or a clock.  Nothing here prints.
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


def render_summary(data: Mapping[str, Any], now: float) -> str:
    """The summary view: one row per region, then its agents."""
    coord = data.get("coordinator") or {}
    started = coord.get("started_at")
    head = f"coordinator {coord.get('version', '?')}"
    if started:
        head += f", up {duration(now - started)} (since {_stamp(started)})"
    lines = [head]
    lines += _held_lines(data.get("deletions_held") or {}, now)
    regions: Mapping[str, Any] = data.get("regions") or {}
    if not regions:
        lines.append("no regions")
        return "\n".join(lines) + "\n"
    rows = []
    for name in sorted(regions):
        info = regions[name]
        agents = info.get("agents") or []
        online = sum(1 for a in agents if a.get("online"))
        rows.append(
            [name, info.get("queued", 0), info.get("in_flight", 0), info.get("synced", 0),
             info.get("failed", 0), f"{online}/{len(agents)} online"]
        )
    lines.append("")
    lines += table(["REGION", "QUEUED", "IN FLIGHT", "SYNCED", "FAILED", "AGENTS"], rows)
    for name in sorted(regions):
        lines.append("")
        lines += _agent_lines(name, regions[name].get("agents") or [], now)
    return "\n".join(lines) + "\n"


def _held_lines(held: Mapping[str, Any], now: float) -> list[str]:
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
    rows = [
        [a.get("agent_id", "?"), "online" if a.get("online") else "offline", age(a.get("last_heartbeat"), now),
         a.get("capacity", 0), a.get("credits", 0), len(a.get("tasks") or [])]
        for a in sorted(agents, key=lambda a: str(a.get("agent_id", "")))
    ]
    return [f"{region}:"] + table(["AGENT", "STATUS", "LAST HEARTBEAT", "CAPACITY", "CREDITS", "TASKS"], rows, "  ")


def render_image(data: Mapping[str, Any], now: float) -> str:
    """The image view: one row per region with state, bytes, attempts, agent and last error."""
    image_id = data.get("image_id", "?")
    if not data.get("known"):
        return f"image {image_id}: not known to the coordinator\n"
    regions: Mapping[str, Any] = data.get("regions") or {}
    lines = [f"image {image_id}"]
    if not regions:
        lines.append("no region is to hold this image")
        return "\n".join(lines) + "\n"
    rows = []
    for name in sorted(regions):
        r = regions[name]
        rows.append(
            [name, _state_cell(r), progress(r.get("bytes_done", 0), r.get("bytes_total", 0)), rate(r), eta(r),
             r.get("attempts", 0), r.get("agent_id"), age(r.get("updated_at"), now),
             _one_line(r.get("last_error"))]
        )
    lines.append("")
    lines += table(["REGION", "STATE", "BYTES", "RATE", "ETA", "ATTEMPTS", "AGENT", "UPDATED", "LAST ERROR"], rows)
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
    """One line of the --wait progress display for one region."""
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
