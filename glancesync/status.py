"""``glance-sync-status``: ask the coordinator how the sync is going, and wait for an image.

Usage (``--help`` for all options; doc/status.md for the views, exit codes and JSON fields)::

    glance-sync-status [--config-file F] [--host H] [--port P] [--json] [summary]
    glance-sync-status [...] image <image-id>
    glance-sync-status [...] --wait <image-id> [--timeout S] [--answer-timeout S]

It sends one ``status_query`` to the coordinator's client socket
(``sync_server_host``/``sync_server_port`` and ``[curve]`` from the same config
file as the services, ``--host``/``--port`` override them) over a zmq DEALER and
prints the ``status_reply``; the shapes of its ``data`` are those of
``coordinator.status``.  With CURVE it needs a key of its own whose public half is
in the coordinator's ``allowed_clients_dir/status/`` (or ``operator/``):
``--key-file``, else ``[curve] status_secret_key_file``, else ``secret_key_file``.

Time: each answer gets ``--answer-timeout`` (5 s); ``--wait`` has no overall limit
unless ``--timeout`` sets one, because a normal transfer takes minutes to hours.

An image id must be a glance id (a UUID); anything else is refused before the
coordinator is asked.  Every string of a reply (region and agent names, errors,
image names) reaches the terminal with its control characters escaped
(``glancesync.untrusted.printable``); ``--json`` output is escaped by JSON itself.

Exit codes: 0 success; 1 ``--wait`` saw a failed region or ran out of time;
2 no answer, an ``error`` reply, a bad argument or a configuration error.  Every
failure is one line on stderr, never a usage block or a traceback (``cli.Parser``).
Rendering lives in ``glancesync.status_render`` (plain) and ``glancesync.status_live``
(rich tables and the live wait display on a terminal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import zmq
from oslo_config import cfg, types

from glancesync import (
    __version__,
    cli,
    config,
    opts,
    protocol,
    status_live,
    status_render,
    transport,
    untrusted,
)
from glancesync.exceptions import GlanceSyncError, ProtocolError

PROG = "glance-sync-status"
DEFAULT_CONFIG_FILE = "/etc/glance-sync/glance-sync.conf"
# The coordinator answers a status query from memory: an answer that takes longer
# than this means it is down, unreachable or stuck, not busy.
DEFAULT_ANSWER_TIMEOUT = 5.0
# Two polls a second: progress looks live, and the coordinator answers a status
# query from memory, so this costs it next to nothing.
POLL_INTERVAL = 0.5
# While waiting, one query gets at least this long even if the overall deadline is
# closer, so that a slow last answer reads as "not synced", not "coordinator down".
MIN_QUERY_TIMEOUT = 1.0

DESCRIPTION = """\
Ask the glance sync coordinator how the sync is going, or wait for one image.

views:
  (none) or summary   every region: queued, in flight, synced, failed; its agents
  image IMAGE_ID      one image: state, bytes, attempts and last error per region
"""
EPILOG = """\
exit codes:
  0  done; --wait: synced where it is meant to be, deleted everywhere, or meant for no region
  1  --wait only: a region failed or was cancelled, glance_sync_regions names a region
     that is not one, or --timeout ran out
  2  no answer from the coordinator, an error reply, a bad argument or configuration

Details, and the fields of --json: doc/status.md.
"""


def build_parser() -> cli.Parser:
    """The command line of glance-sync-status."""
    parser = cli.Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("view", nargs="*", metavar="VIEW", help="nothing or 'summary', or 'image IMAGE_ID'")
    cli.add_config_options(parser)
    parser.add_argument("--host", type=cli.checked(types.HostAddress(), "a host name or IP address"),
                        help="the coordinator's address; overrides sync_server_host")
    parser.add_argument("--port", type=cli.checked(types.Port(), "a port number (0-65535)"),
                        help="the coordinator's client port; overrides sync_server_port")
    parser.add_argument("--key-file", metavar="FILE",
                        help="with [curve] enabled: this tool's own secret key file (a status or operator key); "
                        "overrides [curve] status_secret_key_file and secret_key_file")
    parser.add_argument("--json", action="store_true", help="print the reply's data as JSON instead of a table")
    parser.add_argument("--wait", metavar="IMAGE_ID",
                        help="wait until IMAGE_ID is synced in every region it is meant for (or failed)")
    parser.add_argument("--timeout", type=cli.seconds(), metavar="S",
                        help="give up after S seconds: with --wait, on the whole wait (default: no limit); "
                        "otherwise on the coordinator's answer (default: --answer-timeout)")
    parser.add_argument("--answer-timeout", type=cli.seconds(0.0, inclusive=False), metavar="S",
                        help="seconds the coordinator may take to answer one query; no answer in time ends "
                        f"the command with exit code 2 (default {DEFAULT_ANSWER_TIMEOUT:g})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


class StatusFailure(Exception):
    """Ends the command with one line on stderr and ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class NoAnswer(StatusFailure):
    """No reply in time: the coordinator is down, or is a pair's passive one (it binds nothing)."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; StatusFailure (exit 2) for anything wrong with it."""
    try:
        # Intermixed: "image ID --json" and "--json image ID" alike.
        return build_parser().parse_intermixed_args(list(argv))
    except cli.UsageError as exc:
        raise StatusFailure(str(exc)) from None


def load_conf(args: argparse.Namespace) -> cfg.ConfigOpts:
    """The services' options, read from the files that ``args`` names (or the default file)."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    # An operator on the coordinator's host types just "glance-sync-status".
    defaults = [DEFAULT_CONFIG_FILE] if os.path.isfile(DEFAULT_CONFIG_FILE) else []
    try:
        conf(cli.config_argv(args.config_file, args.config_dir), project="glance-sync", prog=PROG,
             version=__version__, default_config_files=defaults)
        config.check_values(conf)
    except (cfg.Error, ValueError) as exc:
        raise StatusFailure(f"configuration error: {exc}") from None
    return conf


def query(
    context: zmq.Context, conf: cfg.ConfigOpts, host: str, port: int, body: Mapping[str, Any], timeout: float,
    key_file: str | None = None, msg_type: str = "status_query",
) -> dict[str, Any]:
    """Send one status_query (or operator request) and return the reply's data; StatusFailure when none."""
    where = transport.tcp_endpoint(host, port)
    no_answer = NoAnswer(f"no answer from coordinator at {where} within {timeout:g} s")
    # A fresh socket per query: a reply that arrives after we gave up on it can
    # never be taken for the answer to the next query.
    curve = conf.curve
    sock = transport.connect_client(context, zmq.DEALER, host, port, conf,
                                    key_file or curve.status_secret_key_file or curve.secret_key_file)
    try:
        try:
            sock.send(protocol.encode(msg_type, body), flags=zmq.NOBLOCK)
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
            if msg.type in ("status_reply", "operator_reply"):
                return msg.body["data"]
            # Anything else is not meant for us: keep waiting for the reply.
    finally:
        sock.close()


def query_any(context: zmq.Context, conf: cfg.ConfigOpts, targets: transport.Failover, body: Mapping[str, Any],
              timeout: float, key_file: str | None = None, msg_type: str = "status_query") -> dict[str, Any]:
    """:func:`query` to the coordinators of ``targets`` in turn, from the last that answered, until one answers."""
    for _ in targets.targets[1:]:
        try:
            return query(context, conf, *targets.current, body, timeout, key_file, msg_type)
        except NoAnswer:
            targets.advance()
    return query(context, conf, *targets.current, body, timeout, key_file, msg_type)


def coordinators(conf: cfg.ConfigOpts, host: str | None = None, port: int | None = None) -> transport.Failover:
    """The coordinators to ask: ``host``/``port`` when given, else ``sync_servers`` (a pair) or the single one."""
    if host or port is not None:
        return transport.Failover([(host or conf.sync_server_host, conf.sync_server_port if port is None else port)])
    return transport.Failover(transport.addresses(conf.sync_servers, conf.sync_server_host, conf.sync_server_port))


def coordinator_now(data: Mapping[str, Any]) -> float:
    """The coordinator's clock from a reply (ages are shown against it), else ours."""
    now = data.get("now") or (data.get("coordinator") or {}).get("now")
    return float(now) if isinstance(now, (int, float)) else time.time()




def _query_timeout(answer_timeout: float, remaining: float | None) -> float:
    """One answer's time: ``answer_timeout``, cut to what is left of the wait, but never below a floor."""
    if remaining is None:
        return answer_timeout
    return min(answer_timeout, max(remaining, min(MIN_QUERY_TIMEOUT, answer_timeout)))


def wait_for_image(
    fetch: Callable[[float], Mapping[str, Any]],
    timeout: float | None,
    display: Callable[[Mapping[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
) -> tuple[int, str, Mapping[str, Any]]:
    """Poll ``fetch(query_timeout)`` until synced, failed or ``timeout``: (exit code, why, last data).

    ``timeout`` None waits as long as the sync takes (a transfer may take an hour);
    each answer still gets at most ``answer_timeout``, so a dead coordinator ends the
    wait at once (``fetch`` raises) instead of never.
    """
    deadline = None if timeout is None else clock() + timeout
    while True:
        remaining = None if deadline is None else deadline - clock()
        data = fetch(_query_timeout(answer_timeout, remaining))
        if display is not None:
            display(data)
        outcome, why = status_render.evaluate(data)
        if outcome == "synced":
            return 0, why, data
        if outcome == "failed":
            return 1, why, data
        if deadline is None:
            sleep(POLL_INTERVAL)
            continue
        if clock() >= deadline:
            return 1, f"timed out after {timeout:g} s: {why}", data
        sleep(max(0.0, min(POLL_INTERVAL, deadline - clock())))


def _request(args: argparse.Namespace) -> tuple[str, str | None]:
    """(view, image_id) from the positional arguments."""
    words = list(args.view or [])
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


def run(args: argparse.Namespace, conf: cfg.ConfigOpts, context: zmq.Context, out: TextIO) -> int:
    """Serve one invocation; raises StatusFailure for an exit with a message."""
    targets = coordinators(conf, args.host, args.port)
    answer_timeout = args.answer_timeout or DEFAULT_ANSWER_TIMEOUT

    def fetch(view: str, image_id: str | None, timeout: float) -> dict[str, Any]:
        return query_any(context, conf, targets, {"view": view, "image_id": image_id}, timeout, args.key_file)

    if args.wait:
        if args.view:
            raise StatusFailure("--wait takes no view: glance-sync-status --wait <image-id>")
        return _wait(args, fetch, answer_timeout, out)
    view, image_id = _request(args)
    # A view is one answer: --timeout, when given, bounds it too.
    limits = [t for t in (args.timeout, args.answer_timeout) if t is not None]
    data = fetch(view, image_id, min(limits) if limits else DEFAULT_ANSWER_TIMEOUT)
    if args.json:
        # json.dumps escapes every control character itself.
        _shown(_print_json, data, out)
        return 0
    shown = untrusted.printable_data(data)
    _shown(status_live.print_view, out, out.isatty(), view, shown, coordinator_now(shown))
    return 0


def _wait(args: argparse.Namespace, fetch: Callable[..., dict[str, Any]], answer_timeout: float,
          out: TextIO) -> int:
    image_id = checked_image_id(args.wait)
    display = None if args.json else status_live.WaitDisplay(out, out.isatty(), args.timeout)

    def fetch_shown(timeout: float) -> Mapping[str, Any]:
        # Text for the terminal: every string of the reply made printable first.
        data = fetch("image", image_id, timeout)
        return data if args.json else untrusted.printable_data(data)

    try:
        code, why, data = _shown(wait_for_image, fetch_shown, args.timeout, display and display.show,
                                 time.monotonic, time.sleep, answer_timeout)
    finally:
        if display is not None:
            display.close()
    if args.json:
        _shown(_print_json, data, out)
    if code:
        raise StatusFailure(why, code=code)
    if not args.json:
        out.write(why + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point: returns the exit code."""
    context = zmq.Context()
    try:
        try:
            args = parse_args(sys.argv[1:] if argv is None else argv)
        except SystemExit as exc:  # --help or --version: printed already
            return int(exc.code or 0)
        conf = load_conf(args)
        return run(args, conf, context, sys.stdout)
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
