"""``glance-sync-status``: ask the coordinator how the sync is going, and wait for an image.

Usage::

    glance-sync-status [--config-file F] [--host H] [--port P] [--timeout S] [--json]
    glance-sync-status [...] image <image-id>
    glance-sync-status [...] --wait <image-id>

It sends one ``status_query`` to the coordinator's client socket
(``sync_server_host``/``sync_server_port`` and ``[curve]`` from the same config
file as the services, ``--host``/``--port`` override them) over a zmq DEALER and
prints the ``status_reply``.  With CURVE it needs a key of its own whose public half
is in the coordinator's ``allowed_clients_dir/status/`` (or ``operator/``):
``--key-file``, else ``[curve] status_secret_key_file``, else ``secret_key_file``.  The coordinator's reply ``data``:

- summary: ``{"coordinator": {"version", "started_at", "now"}, "regions": {<region>:
  {"queued", "in_flight", "synced", "failed", "agents": [{"agent_id", "online",
  "last_heartbeat", "capacity", "credits", "tasks"}]}}}``
- image: ``{"image_id", "known", "planned", "settled", "now", "regions": {<region>: {"state", "task_kind",
  "task_id", "bytes_done", "bytes_total", "attempts", "last_error", "agent_id",
  "updated_at", "synced_at", "copy_registered", "metadata_applied"}}}``; ``settled``: planned from
  an active record or deleted, so ``--wait`` may succeed (doc/states.md)

An image id must be a glance id (a UUID); anything else is refused before the
coordinator is asked.  Every string of a reply (region and agent names, errors,
image names) reaches the terminal with its control characters escaped
(``glancesync.untrusted.printable``); ``--json`` output is escaped by JSON itself.

Exit codes: 0 success; 1 ``--wait`` saw a failed region or ran out of time;
2 no answer, an ``error`` reply, or a configuration error.  Every failure is one
line on stderr, never a traceback.  Rendering lives in ``glancesync.status_render``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import zmq
from oslo_config import cfg

from glancesync import __version__, config, opts, protocol, status_render, transport, untrusted
from glancesync.exceptions import GlanceSyncError, ProtocolError
from glancesync.states import SyncState

PROG = "glance-sync-status"
DEFAULT_CONFIG_FILE = "/etc/glance-sync/glance-sync.conf"
# Two polls a second: progress looks live, and the coordinator answers a status
# query from memory, so this costs it next to nothing.
POLL_INTERVAL = 0.5
# While waiting, one query gets at least this long even if the overall deadline is
# closer, so that a slow last answer reads as "not synced", not "coordinator down".
MIN_QUERY_TIMEOUT = 1.0

cli_opts = [
    cfg.MultiStrOpt(
        "view",
        positional=True,
        required=False,
        metavar="VIEW",
        help="Nothing for the summary of every region, or 'image IMAGE_ID' for one image.",
    ),
    cfg.HostAddressOpt("host", help="Coordinator address; overrides sync_server_host."),
    cfg.PortOpt("port", help="Coordinator client port; overrides sync_server_port."),
    cfg.FloatOpt(
        "timeout",
        default=5.0,
        min=0.0,
        help="Seconds to wait for the coordinator's answer; with --wait, for the image to be synced.",
    ),
    cfg.BoolOpt("json", default=False, help="Print the reply's data as JSON instead of a table."),
    cfg.StrOpt("wait", metavar="IMAGE_ID", help="Wait until IMAGE_ID is synced in every region it is meant for."),
    cfg.StrOpt("key-file", metavar="FILE",
               help="With [curve] enabled: this tool's own secret key file (a status or operator key); "
               "overrides [curve] status_secret_key_file and secret_key_file."),
]


class StatusFailure(Exception):
    """Ends the command with one line on stderr and ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load_conf(argv: Sequence[str]) -> cfg.ConfigOpts:
    """The services' options plus this tool's CLI options, parsed from ``argv``."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf.register_cli_opts(cli_opts)
    # An operator on the coordinator's host types just "glance-sync-status".
    defaults = [DEFAULT_CONFIG_FILE] if os.path.isfile(DEFAULT_CONFIG_FILE) else []
    try:
        conf(list(argv), project="glance-sync", prog=PROG, version=__version__, default_config_files=defaults)
        config.check_values(conf)
    except (cfg.Error, ValueError) as exc:
        raise StatusFailure(f"configuration error: {exc}") from None
    return conf


def query(
    context: zmq.Context, conf: cfg.ConfigOpts, host: str, port: int, body: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Send one status_query and return the reply's data; StatusFailure when there is none."""
    where = transport.tcp_endpoint(host, port)
    no_answer = StatusFailure(f"no answer from coordinator at {where} within {timeout:g} s")
    # A fresh socket per query: a reply that arrives after we gave up on it can
    # never be taken for the answer to the next query.
    curve = conf.curve
    sock = transport.connect_client(context, zmq.DEALER, host, port, conf,
                                    conf.key_file or curve.status_secret_key_file or curve.secret_key_file)
    try:
        try:
            sock.send(protocol.encode("status_query", body), flags=zmq.NOBLOCK)
        except zmq.Again:
            raise no_answer from None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
                raise no_answer
            # A ROUTER may put an empty delimiter before the payload (REQ style).
            frame = sock.recv_multipart()[-1]
            try:
                msg = protocol.decode(frame)
            except ProtocolError as exc:
                raise StatusFailure(f"coordinator at {where} sent an invalid reply: {exc}") from None
            if msg.type == "error":
                raise StatusFailure(f"coordinator error {msg.body['code']}: {msg.body['reason']}")
            if msg.type == "status_reply":
                return msg.body["data"]
            # Anything else is not meant for us: keep waiting for the reply.
    finally:
        sock.close()


def coordinator_now(data: Mapping[str, Any]) -> float:
    """The coordinator's clock from a reply (ages are shown against it), else ours."""
    now = data.get("now") or (data.get("coordinator") or {}).get("now")
    return float(now) if isinstance(now, (int, float)) else time.time()


def evaluate(data: Mapping[str, Any]) -> tuple[str, str]:
    """("synced" | "failed" | "waiting", why) for one image reply."""
    image_id = data.get("image_id", "?")
    regions: Mapping[str, Any] = data.get("regions") or {}
    if not data.get("known"):
        return "waiting", f"image {image_id} is not known to the coordinator"
    if not regions and data.get("settled"):
        return "synced", f"image {image_id} is to be synced to no region (sync_strategy or its regions)"
    if not regions and data.get("planned"):
        # Created but not uploaded, or its import still runs: more events are on their way.
        return "waiting", f"image {image_id} is not active in the cascading glance yet"
    if not regions:
        return "waiting", f"no region is listed for image {image_id} yet"
    if all(regions[name].get("state") == SyncState.DELETED for name in regions):
        return "synced", f"image {image_id} is deleted in {', '.join(sorted(regions))}"
    failed = [name for name in sorted(regions) if regions[name].get("state") == SyncState.FAILED]
    if failed:
        errors = "; ".join(f"{name}: {regions[name].get('last_error') or 'no error recorded'}" for name in failed)
        return "failed", f"image {image_id} failed in {errors}"
    behind = [name for name in sorted(regions) if regions[name].get("state") != SyncState.SYNCED]
    if not behind:
        return "synced", f"image {image_id} is synced in {', '.join(sorted(regions))}"
    shown = ", ".join(status_render.region_progress_line(name, regions[name]) for name in behind)
    return "waiting", f"image {image_id} not synced in {shown}"


class _Display:
    """Progress while waiting: redrawn lines on a TTY, one line per state change otherwise."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.drawn = 0
        self.states: dict[str, str] = {}

    def show(self, data: Mapping[str, Any]) -> None:
        regions: Mapping[str, Any] = data.get("regions") or {}
        if self.tty:
            lines = [status_render.region_progress_line(n, regions[n]) for n in sorted(regions)]
            lines = lines or [f"{data.get('image_id', '?')}: not known yet"]
            # Move back to the first line drawn last time and overwrite each line.
            prefix = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(prefix + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        else:
            for name in sorted(regions):
                state = str(regions[name].get("state", "?"))
                if self.states.get(name) != state:
                    self.states[name] = state
                    self.out.write(status_render.region_progress_line(name, regions[name]) + "\n")
        self.out.flush()


def wait_for_image(
    fetch: Callable[[float], Mapping[str, Any]],
    timeout: float,
    display: Callable[[Mapping[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, str, Mapping[str, Any]]:
    """Poll ``fetch(query_timeout)`` until synced, failed or ``timeout``: (exit code, why, last data)."""
    deadline = clock() + timeout
    while True:
        remaining = deadline - clock()
        data = fetch(max(remaining, min(timeout, MIN_QUERY_TIMEOUT)))
        if display is not None:
            display(data)
        outcome, why = evaluate(data)
        if outcome == "synced":
            return 0, why, data
        if outcome == "failed":
            return 1, why, data
        if clock() >= deadline:
            return 1, f"timed out after {timeout:g} s: {why}", data
        sleep(max(0.0, min(POLL_INTERVAL, deadline - clock())))


def _request(conf: cfg.ConfigOpts) -> tuple[str, str | None]:
    """(view, image_id) from the positional arguments."""
    words = list(conf.view or [])
    if not words or words == ["summary"]:
        return "summary", None
    if len(words) == 2 and words[0] == "image":
        return "image", checked_image_id(words[1])
    if words == ["image"]:
        raise StatusFailure("'image' needs an image id: glance-sync-status image <image-id>")
    raise StatusFailure(f"unknown view {untrusted.quote(' '.join(words))}; use no argument or 'image <image-id>'")


def checked_image_id(value: str) -> str:
    """``value`` if it is an image id; else StatusFailure, before anything is asked."""
    if not untrusted.is_image_id(value):
        raise StatusFailure(f"{untrusted.quote(value)} is not an image id: expected {untrusted.IMAGE_ID_FORM}")
    return value


def _shown(render: Callable[..., Any], *args: Any) -> Any:
    # A reply passed the protocol's checks but may still not have the shape this
    # version of the tool expects (a newer or broken coordinator): one line, no traceback.
    try:
        return render(*args)
    except (AttributeError, LookupError, TypeError, ValueError, OverflowError) as exc:
        raise StatusFailure(f"cannot show the coordinator's reply ({type(exc).__name__})") from None


def _print_json(data: Mapping[str, Any], out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def run(conf: cfg.ConfigOpts, context: zmq.Context, out: TextIO) -> int:
    """Serve one invocation; raises StatusFailure for an exit with a message."""
    host = conf.host or conf.sync_server_host
    port = conf.port if conf.port is not None else conf.sync_server_port

    def fetch(view: str, image_id: str | None, timeout: float) -> dict[str, Any]:
        return query(context, conf, host, port, {"view": view, "image_id": image_id}, timeout)

    if conf.wait:
        image_id = checked_image_id(conf.wait)
        display = None if conf.json else _Display(out, out.isatty()).show

        def fetch_shown(timeout: float) -> Mapping[str, Any]:
            # Text for the terminal: every string of the reply made printable first.
            data = fetch("image", image_id, timeout)
            return data if conf.json else untrusted.printable_data(data)

        code, why, data = _shown(wait_for_image, fetch_shown, conf.timeout, display)
        if conf.json:
            _shown(_print_json, data, out)
        if code:
            raise StatusFailure(why, code=code)
        if not conf.json:
            out.write(why + "\n")
        return 0
    view, image_id = _request(conf)
    data = fetch(view, image_id, conf.timeout)
    if conf.json:
        # json.dumps escapes every control character itself.
        _shown(_print_json, data, out)
        return 0
    shown = untrusted.printable_data(data)
    render = status_render.render_image if view == "image" else status_render.render_summary
    out.write(_shown(lambda: render(shown, coordinator_now(shown))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point: returns the exit code."""
    context = zmq.Context()
    try:
        conf = load_conf(sys.argv[1:] if argv is None else argv)
        return run(conf, context, sys.stdout)
    except StatusFailure as exc:
        # Messages may quote the coordinator's words (an error's reason, a last_error).
        sys.stderr.write(f"{PROG}: {untrusted.printable(exc)}\n")
        return exc.code
    except GlanceSyncError as exc:
        # A key that does not load, a CURVE file missing: the config is at fault.
        sys.stderr.write(f"{PROG}: {untrusted.printable(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    finally:
        context.term()
