"""The commands of ``openstack image sync``: status, show, wait (the coordinator's view), resync, plan, cancel.

``status``, ``show`` and ``wait`` are cliff Listers, so ``-f table|json|yaml|csv|value``
and ``-c`` work as everywhere in the openstack CLI: one row per region, the values
of ``glance-sync-status --json`` in machine formats (byte counts, seconds, epoch
times) and ``glancesync.status_render``'s wording in a table.  ``wait`` draws its
progress on stderr (``glancesync.status_live``: live on a terminal, plain lines
otherwise) and prints the last rows on stdout.  ``resync``, ``plan`` and ``cancel``
run ``glance-sync-manage`` and pass on what it says.

None of them needs a keystone token: the coordinator answers a CURVE key of the
``status`` role.  Only an image given by name is looked up in the image service,
with the user's credentials.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cliff import columns
from osc_lib.command import command
from oslo_config import types

from glancesync import cli, status, status_live, status_render, untrusted
from glancesync.osc import client as sync_client


class Human(columns.FormattableColumn[Any]):
    """A value shown to people as ``text`` and kept as it is for machine formats."""

    def __init__(self, value: Any, text: str | None) -> None:
        super().__init__(value)
        self.text = text

    def human_readable(self) -> str:
        return "" if self.text is None else self.text


class SyncCommand(command.Command):
    """Options every subcommand shares: where the coordinator is and which key to show it."""

    # The coordinator authenticates a CURVE key, not a token (see the module's docstring).
    auth_required = False

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--sync-config", metavar="<file>", action="append",
            help=f"glance-sync.conf with sync_server_host, sync_server_port and [curve] (repeat to layer files; "
            f"default: ${sync_client.CONFIG_ENV}, else {status.DEFAULT_CONFIG_FILE} when it exists)")
        parser.add_argument("--sync-host", metavar="<host>", help="the coordinator's address (overrides the config)")
        parser.add_argument("--sync-port", metavar="<port>", type=cli.checked(types.Port(), "a port number (0-65535)"),
                            help="the coordinator's client port (overrides the config)")
        parser.add_argument(
            "--sync-key-file", metavar="<file>", default=os.environ.get(sync_client.KEY_ENV),
            help=f"with CURVE: this client's own secret key, of the status or operator role (default: "
            f"${sync_client.KEY_ENV}, else [curve] status_secret_key_file, else secret_key_file)")
        parser.add_argument(
            "--answer-timeout", metavar="<seconds>", type=cli.seconds(0.0, inclusive=False),
            default=status.DEFAULT_ANSWER_TIMEOUT,
            help=f"seconds the coordinator may take to answer one query (default {status.DEFAULT_ANSWER_TIMEOUT:g})")
        return parser

    def sync(self, parsed_args: argparse.Namespace) -> sync_client.SyncClient:
        return self.app.client_manager.glance_sync.configure(parsed_args)

    def image_id(self, value: str) -> str:
        """An image id as given, or the id of the image of that name in the image service."""
        if untrusted.is_image_id(value):
            return value
        manager = self.app.client_manager
        try:
            # Only a name needs keystone: the shell skipped authentication for this command.
            manager._auth_required = True
            manager.setup_auth()
            found = manager.image.find_image(value, ignore_missing=True)
        except Exception as exc:  # keystoneauth, openstacksdk and osc-lib each have their own errors
            raise sync_client.fail(f"cannot look up the image named {untrusted.quote(value)} (an image id needs "
                                   f"no credentials): {exc}") from None
        if found is None:
            raise sync_client.fail(f"no image named {untrusted.quote(value)} in the image service")
        return str(found.id)


def image_rows(data: Mapping[str, Any], long: bool) -> tuple[list[str], list[list[Any]]]:
    """The show/wait rows: one per region; machine formats keep the reply's values."""
    regions: Mapping[str, Any] = data.get("regions") or {}
    now = status.coordinator_now(data)
    headers = ["Region", "State", "Phase", "Bytes Done", "Bytes Total", "Rate", "ETA", "Attempts", "Agent",
               "Updated", "Last Error"]
    if long:
        headers += ["Task Kind", "Task ID", "Synced At", "Copy Registered", "Metadata Applied"]
    rows = []
    for name in sorted(regions):
        r = regions[name]
        done, total, updated = r.get("bytes_done"), r.get("bytes_total"), r.get("updated_at")
        row = [name, r.get("state"), r.get("phase"),
               Human(done, status_render.size(done or 0)), Human(total, status_render.size(total or 0)),
               Human(r.get("rate_bytes_per_s"), status_render.rate(r)),
               Human(r.get("eta_seconds"), status_render.eta(r)), r.get("attempts"), r.get("agent_id"),
               Human(updated, status_render.age(updated, now)), r.get("last_error")]
        if long:
            synced_at = r.get("synced_at")
            row += [r.get("task_kind"), r.get("task_id"),
                    Human(synced_at, status_render.age(synced_at, now) if synced_at else None),
                    r.get("copy_registered"), r.get("metadata_applied")]
        rows.append(row)
    return headers, rows


class ShowSyncStatus(SyncCommand, command.Lister):
    """Show the sync of every region: queued, in flight, synced and failed images, and the agents."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[list[str], list[list[Any]]]:
        sync = self.sync(parsed_args)
        try:
            data = untrusted.printable_data(sync.query("summary"))
        finally:
            sync.close()
        now = status.coordinator_now(data)
        for line in status_render.held_lines(data.get("deletions_held") or {}, now):
            self.app.stderr.write(f"warning: {line}\n")
        regions: Mapping[str, Any] = data.get("regions") or {}
        rows = []
        for name in sorted(regions):
            info = regions[name]
            agents = info.get("agents") or []
            text = ", ".join(f"{a.get('agent_id', '?')} ({'online' if a.get('online') else 'offline'}, "
                             f"{status_render.age(a.get('last_heartbeat'), now)})" for a in agents)
            rows.append([name, info.get("queued", 0), info.get("in_flight", 0), info.get("synced", 0),
                         info.get("failed", 0), Human(agents, text or "no agent has connected")])
        return ["Region", "Queued", "In Flight", "Synced", "Failed", "Agents"], rows


class ImageCommand(SyncCommand, command.Lister):
    """A Lister about one image: its argument, and --long."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("image", metavar="<image>", help="image (name or ID) in the cascading glance")
        parser.add_argument("--long", action="store_true", default=False,
                            help="also the task, when it became synced, and the two facts synced needs")
        return parser


class ShowImageSync(ImageCommand):
    """Show an image's sync in every region: state, phase, bytes, rate, ETA, attempts, last error."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[list[str], list[list[Any]]]:
        image_id = self.image_id(parsed_args.image)
        sync = self.sync(parsed_args)
        try:
            data = untrusted.printable_data(sync.query("image", image_id))
        finally:
            sync.close()
        if not data.get("known"):
            raise sync_client.fail(f"image {image_id} is not known to the coordinator")
        if not data.get("regions"):
            self.app.stderr.write(f"image {image_id}: no region is to hold this image\n")
        return image_rows(data, parsed_args.long)


class WaitImageSync(ImageCommand):
    """Wait until an image is synced in every region it is meant for; exit 1 when a region fails."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--timeout", metavar="<seconds>", type=cli.seconds(),
                            help="give up after this many seconds (exit 1); default: no limit, as a "
                            "transfer may take hours")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[list[str], list[list[Any]]]:
        image_id = self.image_id(parsed_args.image)
        sync = self.sync(parsed_args)
        err = self.app.stderr
        display = status_live.WaitDisplay(err, err.isatty(), parsed_args.timeout)
        try:
            self.exit_code, why, data = sync.wait(image_id, parsed_args.timeout, display.show)
        finally:
            display.close()
            sync.close()
        err.write(why + "\n")
        return image_rows(data, parsed_args.long)

    def run(self, parsed_args: argparse.Namespace) -> int:
        # The last rows are printed either way; a failed region or the timeout is exit 1.
        self.exit_code = 0
        return super().run(parsed_args) or self.exit_code


class ManageCommand(SyncCommand):
    """Runs one ``glance-sync-manage`` command and passes its output and exit code on."""

    def manage_argv(self, parsed_args: argparse.Namespace) -> Sequence[str]:
        raise NotImplementedError

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        sync = self.sync(parsed_args)
        result = sync.manage(*self.manage_argv(parsed_args))
        self.app.stdout.write(result.stdout)
        self.app.stderr.write(result.stderr)
        return result.returncode


class ResyncImage(ManageCommand):
    """Sync an image again wherever it failed or has no copy (glance-sync-manage resync)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("image", metavar="<image>", help="image (name or ID) in the cascading glance")
        return parser

    def manage_argv(self, parsed_args: argparse.Namespace) -> Sequence[str]:
        return ["resync", self.image_id(parsed_args.image)]


class CancelImageSync(ResyncImage):
    """Cancel an image's pending and running copies (glance-sync-manage cancel)."""

    def manage_argv(self, parsed_args: argparse.Namespace) -> Sequence[str]:
        return ["cancel", self.image_id(parsed_args.image)]


class ShowSyncPlan(ManageCommand):
    """Show what the coordinator would do, without doing it (glance-sync-manage plan)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("image", metavar="<image>", nargs="?", help="only this image (name or ID)")
        return parser

    def manage_argv(self, parsed_args: argparse.Namespace) -> Sequence[str]:
        return ["plan"] if parsed_args.image is None else ["plan", self.image_id(parsed_args.image)]
