"""Status on a terminal with ``rich``, plain lines elsewhere: the views and the ``--wait`` display.

``glance-sync-status`` prints its views with ``print_view`` and shows a wait with
``WaitDisplay``; the OSC plugin's ``openstack image sync wait`` uses the same
display on stderr.  On a terminal a view is a rich table and a wait is a live table
redrawn in place (a bar, bytes, rate and ETA per region); without one (a log, a
pipe, CI) a view is ``status_render``'s plain text and a wait is one line per state
change, plus a moving region's bytes at most every ``PROGRESS_EVERY`` seconds.

Every string reaching here was made printable by the caller
(``untrusted.printable_data``); rich's markup, emoji codes and highlighting are off
and every cell is a ``Text``, so a region named ``[bold]x`` is shown as typed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from glancesync import status_render
from glancesync.states import SyncState

# Without a terminal, a transfer that runs for an hour would print nothing between
# its state changes: its bytes are shown at most this often (seconds).
PROGRESS_EVERY = 60.0
# A last error folds on a narrow terminal, but never below this width.
ERROR_WIDTH = 40
# The bar takes what the other columns leave of the terminal's width, within these bounds.
BAR_WIDTH = (8, 30)


def console(out: TextIO, tty: bool) -> Console:
    """A rich console on ``out`` that interprets nothing in the text it is given."""
    return Console(file=out, force_terminal=tty, markup=False, emoji=False, highlight=False,
                   soft_wrap=False)


def rich_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    """A rich table of ``rows``; numbers right-aligned as in the plain tables.

    Only LAST ERROR folds on a narrow terminal: every other column keeps its width,
    as a region name or a byte count cut in two reads wrong.
    """
    cells = [["-" if cell is None else str(cell) for cell in row] for row in rows]
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for i, header in enumerate(headers):
        numeric = bool(rows) and all(isinstance(row[i], int) for row in rows)
        justify = "right" if numeric else "left"
        width = max([len(header)] + [len(row[i]) for row in cells])
        if header == "LAST ERROR":
            table.add_column(header, justify=justify, overflow="fold", min_width=min(width, ERROR_WIDTH))
        else:
            table.add_column(header, justify=justify, no_wrap=True, min_width=width)
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))
    return table


def summary_renderable(data: Mapping[str, Any], now: float) -> RenderableType:
    parts: list[RenderableType] = [Text(line) for line in status_render.summary_head(data, now)]
    regions: Mapping[str, Any] = data.get("regions") or {}
    if not regions:
        return Group(*parts, Text("no regions"))
    parts.append(rich_table(status_render.SUMMARY_HEADERS, status_render.summary_rows(data)))
    for name in sorted(regions):
        agents = regions[name].get("agents") or []
        if not agents:
            parts.append(Text(f"{name}: no agent has connected"))
            continue
        parts.append(rich_table(status_render.AGENT_HEADERS, status_render.agent_rows(agents, now),
                                title=f"{name} agents"))
    return Group(*parts)


def image_renderable(data: Mapping[str, Any], now: float) -> RenderableType:
    head = status_render.image_head(data)
    if head is not None:
        return Text(head)
    regions: Mapping[str, Any] = data.get("regions") or {}
    return Group(Text(f"image {data.get('image_id', '?')}"),
                 rich_table(status_render.image_headers(regions), status_render.image_rows(regions, now)))


def print_view(out: TextIO, tty: bool, view: str, data: Mapping[str, Any], now: float) -> None:
    """Print the ``summary`` or ``image`` view: a rich table on a terminal, plain text otherwise."""
    if not tty:
        render = status_render.render_image if view == "image" else status_render.render_summary
        out.write(render(data, now))
        return
    build = image_renderable if view == "image" else summary_renderable
    shown, con = build(data, now), console(out, tty)
    # Wider than the terminal: rich would drop whole columns; a terminal that wraps the
    # lines loses nothing.
    con.width = max(con.width, Measurement.get(con, con.options.update_width(100_000), shown).minimum)
    con.print(shown)


def progress_table(regions: Mapping[str, Any]) -> Table:
    """The live table of a wait: state (or phase), a bar, bytes, rate and ETA per region."""
    headers = ("REGION", "STATE", "PROGRESS", "BYTES", "RATE", "ETA")
    rows = []
    for name in sorted(regions):
        r = regions[name] or {}
        state = str(r.get("state", "?"))
        done, total = r.get("bytes_done", 0) or 0, r.get("bytes_total", 0) or 0
        if state == SyncState.SYNCED:
            done = total = max(total, 1)
        # A pulsing bar only for bytes moving towards a size not known yet; an empty one while waiting.
        pulse = total <= 0 and state == SyncState.TRANSFERRING
        bar = ProgressBar(total=None if pulse else float(max(total, 1)), completed=float(done))
        # The phase says more than the state it is part of (uploading, not transferring).
        rows.append([Text(name), Text(status_render.phase(r) or state), bar,
                     Text(status_render.progress(r.get("bytes_done", 0), r.get("bytes_total", 0))),
                     Text(status_render.rate(r) or "-"), Text(status_render.eta(r) or "-")])
    table = Table(box=None, pad_edge=False, header_style="bold")
    for i, header in enumerate(headers):
        if header == "PROGRESS":
            # The bar takes what the text leaves of the terminal's width: the text never shrinks.
            table.add_column(header, min_width=BAR_WIDTH[0], max_width=BAR_WIDTH[1])
            continue
        width = max([len(header)] + [len(row[i]) for row in rows])
        table.add_column(header, justify="right" if header in ("RATE", "ETA") else "left", no_wrap=True,
                         min_width=width)
    for row in rows:
        table.add_row(*row)
    return table


class WaitDisplay:
    """Progress while waiting for one image; call ``show`` with each reply and ``close`` at the end.

    On a terminal: a header with the time waited and a live table (rich), redrawn in
    place.  Otherwise: the header once, then one line per state change, and the bytes
    of a region still moving at most every PROGRESS_EVERY seconds.
    """

    def __init__(self, out: TextIO, tty: bool, limit: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.tty = tty
        self.limit = limit
        self.clock = clock
        self.started = clock()
        self.headed = False
        self.states: dict[str, str] = {}
        self.shown_at: dict[str, float] = {}
        self.live: Live | None = None

    def header(self, image_id: str) -> str:
        waited = status_render.duration(self.clock() - self.started)
        bound = f"at most {self.limit:g} s" if self.limit is not None else "no time limit"
        return f"waiting {waited} for image {image_id} ({bound}; Ctrl-C stops waiting)"

    def show(self, data: Mapping[str, Any]) -> None:
        regions: Mapping[str, Any] = data.get("regions") or {}
        image_id = str(data.get("image_id", "?"))
        if self.tty:
            body: RenderableType = progress_table(regions) if regions else Text(f"{image_id}: not known yet")
            shown = Group(Text(self.header(image_id)), body)
            if self.live is None:
                self.live = Live(shown, console=console(self.out, True), auto_refresh=False, transient=False)
                self.live.start(refresh=True)
            else:
                self.live.update(shown, refresh=True)
            return
        if not self.headed:
            self.headed = True
            self.out.write(self.header(image_id) + "\n")
        now = self.clock()
        for name in sorted(regions):
            state = str(regions[name].get("state", "?"))
            # A new phase (fetching, then uploading to the region) is news as much as a new state.
            step = f"{state}/{status_render.phase(regions[name]) or ''}"
            moving = now - self.shown_at.get(name, now) >= PROGRESS_EVERY and state != SyncState.SYNCED
            if self.states.get(name) != step or moving:
                self.states[name] = step
                self.shown_at[name] = now
                self.out.write(status_render.region_progress_line(name, regions[name]) + "\n")
        self.out.flush()

    def close(self) -> None:
        """Leave the last live table on the screen (a terminal) and stop redrawing."""
        if self.live is not None:
            self.live.stop()
            self.live = None
