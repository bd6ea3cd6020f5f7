"""``glance-sync-manage cancel | resync --failed | sync``: operator requests to the running coordinator.

::

    glance-sync-manage [--config-file F] cancel IMAGE_ID [--region R]... [--json]
    glance-sync-manage [--config-file F] resync --failed [--region R]... [--json]
    glance-sync-manage [--config-file F] sync IMAGE_ID --regions A,B [--json]

Each sends one ``operator`` message to the coordinator's client socket
(``sync_server_host``/``sync_server_port``, ``[curve]`` as glance-sync-status reads
them; under CURVE an ``operator`` key: ``--key-file``, else ``[curve]
status_secret_key_file``, else ``secret_key_file``) and prints its reply; the
coordinator's loop applies the request (coordinator/operator.py), so nothing here
writes the journal.  ``--json`` prints the reply's data as JSON, for scripts and the
``openstack image sync`` plugin.  Exit codes: 0 done; 1 the coordinator refused the
request or did not answer, or ``cancel`` found nothing to cancel; 2 a bad argument.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import zmq

from glancesync import cli, config, status, untrusted

PROG = "glance-sync-manage"
ANSWER_TIMEOUT = 10.0


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options every operator request shares."""
    parser.add_argument("--json", action="store_true", help="print the coordinator's reply as JSON")
    parser.add_argument("--key-file", metavar="FILE",
                        help="with [curve] enabled: the secret key file of an operator key (default: [curve] "
                        "status_secret_key_file, else secret_key_file)")
    parser.add_argument("--answer-timeout", type=cli.seconds(0.0, inclusive=False), metavar="S",
                        default=ANSWER_TIMEOUT, help=f"seconds to wait for the coordinator (default {ANSWER_TIMEOUT:g})")


def add_parsers(command: Callable[..., cli.Parser]) -> None:
    """cancel and sync; resync --failed shares the resync parser (coordinator/manage.py)."""
    cancel = command("cancel", "stop the in-flight copies of an image and remove their partial data",
                     "Ask the running coordinator to cancel IMAGE_ID's copies that are not registered yet (in "
                     "every region, or those given with --region): the agents kill the transfers and remove "
                     "their partial files, the regions become 'cancelled' and are not retried until 'resync' "
                     "or 'sync'.")
    cancel.add_argument("image_id", metavar="IMAGE_ID", help="id of the cascading image")
    cancel.add_argument("--region", action="append", default=[], metavar="R",
                        help="only this region (may be repeated)")
    add_client_options(cancel)
    sync = command("sync", "copy an image to the given regions now, whatever sync_strategy says",
                   "Ask the running coordinator to copy IMAGE_ID to the regions named by --regions (the only "
                   "way an image moves with sync_strategy = ON_DEMAND); regions that hold it already are "
                   "left alone, cancelled and failed ones start again.")
    sync.add_argument("image_id", metavar="IMAGE_ID", help="id of the cascading image")
    sync.add_argument("--regions", required=True, metavar="A,B", help="comma-separated region names")
    add_client_options(sync)


def _regions(values: list[str]) -> list[str]:
    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def request(conf_args: list[str], ns: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """Send one operator request; its reply's data, or one line and exit 1."""
    conf = config.load(conf_args, PROG, setup_logging=False)
    context = zmq.Context()
    try:
        return status.query_any(context, conf, status.coordinators(conf), body, ns.answer_timeout, ns.key_file,
                                msg_type="operator")
    except status.StatusFailure as exc:
        config.fail(PROG, f"{body['action']}: {untrusted.printable(exc)}")
    except Exception as exc:  # a key that does not load, a CURVE file missing: one line
        config.fail(PROG, f"{body['action']}: {type(exc).__name__}: {untrusted.printable(exc)}")
    finally:
        context.term()
    raise AssertionError("unreachable")


def _checked_id(action: str, value: str | None) -> str:
    if not value or not untrusted.is_image_id(value):
        config.fail(PROG, f"{action}: {untrusted.quote(value or '')} is not an image id: expected "
                    f"{untrusted.IMAGE_ID_FORM}", code=2)
    return str(value)


def cancel(conf_args: list[str], ns: argparse.Namespace) -> int:
    image_id = _checked_id("cancel", ns.image_id)
    data = request(conf_args, ns, {"action": "cancel", "image_id": image_id, "regions": _regions(ns.region)})
    if ns.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for item in data.get("cancelled", []):
            told = "agent told to stop" if item.get("agent_told") else "not running on an agent"
            print(untrusted.printable(f"{item.get('region')}: cancelled ({told})"))
        for item in data.get("not_cancelled", []):
            print(untrusted.printable(f"{item.get('region')}: not cancelled: {item.get('reason')}"))
    if not data.get("cancelled"):
        if not ns.json:
            print(f"nothing to cancel for image {image_id}")
        return 1
    return 0


def sync(conf_args: list[str], ns: argparse.Namespace) -> int:
    image_id = _checked_id("sync", ns.image_id)
    regions = _regions([ns.regions])
    if not regions:
        config.fail(PROG, "sync: --regions names no region", code=2)
    data = request(conf_args, ns, {"action": "sync", "image_id": image_id, "regions": regions})
    if ns.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(untrusted.printable(f"sync of image {image_id} to {', '.join(data.get('regions', []))} journaled "
                                  f"as event {data.get('event_id')}; follow it with glance-sync-status --wait "
                                  f"{image_id}"))
    return 0


def resync_failed(conf_args: list[str], ns: argparse.Namespace) -> int:
    data = request(conf_args, ns, {"action": "resync_failed", "regions": _regions(ns.region)})
    if ns.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    images = data.get("images", [])
    for item in images:
        print(untrusted.printable(f"{item.get('image_id')}: {', '.join(item.get('regions', []))} "
                                  f"(event {item.get('event_id')})"))
    print(f"resync of {len(images)} image(s) with failed regions journaled; the coordinator plans them next")
    return 0
