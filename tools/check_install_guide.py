"""Runs the commands of doc/install.md in a temporary root, so a command of the guide that breaks fails CI.

A fenced ``sh`` block of the guide is run when the line just before it (blank lines
aside) is a marker comment::

    <!-- check -->                        run with the shared variables only
    <!-- check host=NAME -->              run with ROOT=<tmp>/hosts/NAME
    <!-- check host=NAME needs=CMD -->    the same, skipped (and said so) when CMD is not installed

Every checked block runs in order in one bash (``set -euo pipefail``), so the
variables of earlier blocks hold in later ones, as they do for an operator who
types them.  The check points the guide's variables at temporary places: ``ROOT``
per host, ``STAGE``, ``SRC`` (this tree), ``BIN`` (the scripts next to this
Python), and the service users at the user running the check.  Each host's root
is seeded with what an existing cloud already has there (glance's config files,
an sshd with a host key).  After the run a few facts the guide promises are
checked on the files it wrote (the store maps load for their roles, glance reads
the drop-in, the filter is in the pipeline, secrets are 0600).

It must run as root (the guide sets owners) and writes nothing outside its
temporary directory.  Exit 0: every block ran and every fact holds; 1: not, with
the block's line in doc/install.md and its output; 2: a bad guide (no checked block).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

GUIDE = ROOT_DIR / "doc" / "install.md"
MARKER = re.compile(r"^<!--\s*check(?P<args>(?:\s+[a-z]+=[\w.-]+)*)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
# Real paths the guide names for an operator: the check must never create them.
GUARDED = ("/etc/glance-sync", "/var/lib/glance-sync", "/etc/glance/glance-api.conf.d",
           "/etc/systemd/system/glance-sync-coordinator.service", "/etc/ssh/authorized_keys",
           "/root/glance-sync-stage", "/root/.glance-sync")


@dataclass
class Block:
    line: int  # of the opening fence in the guide, 1-based
    host: str | None
    needs: str | None
    text: str


class GuideError(Exception):
    """The guide cannot be checked (no marked block, a marker without a block)."""


def blocks(text: str) -> list[Block]:
    """The marked blocks of the guide, in order."""
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        i += 1
        if not marker:
            continue
        args = dict(a.split("=", 1) for a in marker.group("args").split())
        unknown = set(args) - {"host", "needs"}
        if unknown:
            raise GuideError(f"line {i}: unknown marker argument(s) {sorted(unknown)}")
        while i < len(lines) and not lines[i].strip():
            i += 1
        fence = FENCE.match(lines[i]) if i < len(lines) else None
        if not fence or fence.group("lang") not in ("sh", "bash"):
            raise GuideError(f"line {i}: a check marker must be followed by a ```sh block")
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise GuideError(f"line {start}: the block is not closed")
        i += 1
        found.append(Block(start, args.get("host"), args.get("needs"), "\n".join(body)))
    if not found:
        raise GuideError("no block is marked for checking (<!-- check ... --> before a ```sh block)")
    return found


def seed(hosts: Path) -> None:
    """What the existing cloud already has on each host before the guide starts."""
    glance_etc = hosts / "glance-api" / "etc" / "glance"
    glance_etc.mkdir(parents=True)
    stock = Path(sys.prefix) / "etc" / "glance"
    for name in ("glance-api.conf", "glance-api-paste.ini"):
        shutil.copy(stock / name, glance_etc / name)
    ssh_etc = hosts / "store" / "etc" / "ssh"
    ssh_etc.mkdir(parents=True)
    key = ssh_etc / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    (ssh_etc / "sshd_config").write_text(f"HostKey {key}\nPasswordAuthentication no\nSubsystem sftp internal-sftp\n")


def script(found: list[Block], hosts: Path) -> tuple[str, list[str]]:
    """One bash script running every block, and the blocks skipped for a missing command."""
    parts, skipped = ["set -euo pipefail"], []
    for block in found:
        if block.needs and shutil.which(block.needs) is None:
            skipped.append(f"line {block.line}: skipped, {block.needs} is not installed here")
            continue
        parts.append(f"echo '>>> doc/install.md block at line {block.line}' >&2")
        if block.host:
            parts.append(f"ROOT={hosts / block.host}")
        parts.append(block.text)
    return "\n".join(parts) + "\n", skipped


def environment(tmp: Path) -> dict[str, str]:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "GLANCE_"))}
    env.update(ROOT=str(tmp / "hosts" / "none"), SRC=str(ROOT_DIR), BIN=bin_dir, STAGE=str(tmp / "stage"),
               SYNC_USER=user, SYNC_GROUP=group, GLANCE_USER=user, GLANCE_GROUP=group, REGION="RegionOne",
               HOME=str(tmp / "home"), PATH=f"{bin_dir}:/usr/sbin:/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return env


def facts(hosts: Path) -> list[str]:
    """What the guide promises about the files it wrote; returns the broken promises."""
    from oslo_config import cfg

    from glancesync import opts, storemap

    broken: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            broken.append(what)

    coord, api, agent = hosts / "coordinator", hosts / "glance-api", hosts / "agent"
    for path, role, region in ((coord, storemap.Role.COORDINATOR, None), (api, storemap.Role.DRIVER, None),
                               (agent, storemap.Role.AGENT, "RegionOne")):
        try:
            loaded = storemap.load(str(path / "etc/glance-sync/glance_store.yaml"), role, region)
            expect("RegionOne" in loaded.regions, f"{path.name}: glance_store.yaml has no RegionOne")
        except Exception as exc:  # any failure to load is the finding
            broken.append(f"{path.name}: glance_store.yaml does not load for {role.name}: {exc}")
    expect((coord / "var/lib/glance-sync/journal.sqlite").is_file(), "coordinator: no journal after db_sync")
    for secret in (coord / "etc/glance-sync/internal.secret", coord / "etc/glance-sync/keys/coordinator.key_secret",
                   api / "etc/glance-sync/internal.secret", api / "etc/glance-sync/keys/glance-api-1.key_secret",
                   agent / "etc/glance-sync/keys/regionone-1.key_secret", agent / "etc/glance-sync/id_ed25519"):
        mode = stat.S_IMODE(secret.stat().st_mode) if secret.exists() else None
        expect(mode == 0o600, f"{secret.relative_to(hosts)}: mode {mode and oct(mode)}, expected 0o600")
    expect((coord / "etc/glance-sync/allowed/agent/RegionOne/regionone-1.key").is_file(),
           "coordinator: the agent key is not on the allow-list")
    broken += services_read_their_config(coord, agent)
    broken += status_tool_loads_its_keys(coord)
    # glance-api reads glance-api.conf, then its prog's config directory.
    conf = cfg.ConfigOpts()
    opts.register_filter_opts(conf)
    conf.register_opt(cfg.StrOpt("cascaded_store_config"), group="glance_store")
    conf([], project="glance", prog="glance-api", default_config_files=[str(api / "etc/glance/glance-api.conf")],
         default_config_dirs=[str(api / "etc/glance/glance-api.conf.d")])
    expect(conf.sync_enabled and conf.curve.enabled, "glance-api: the drop-in does not enable the filter")
    expect(conf.glance_store.cascaded_store_config == str(api / "etc/glance-sync/glance_store.yaml"),
           "glance-api: cascaded_store_config is not the driver's store map")
    paste = (api / "etc/glance/glance-api-paste.ini").read_text()
    pipelines = re.findall(r"^keystone\S* = (.*)$", paste, re.M)
    expect(bool(pipelines) and all(" context glancesync " in p for p in pipelines),
           "glance-api: glancesync is not right after context in every keystone pipeline")
    expect(paste.count("[filter:glancesync]") == 1, "glance-api: [filter:glancesync] missing or doubled")
    keys = (hosts / "store/etc/ssh/authorized_keys/glancesync").read_text().splitlines()
    expect(len(keys) == 1 and keys[0].startswith("restrict ssh-ed25519 "), "store: authorized key line wrong")
    return broken


def services_read_their_config(coord: Path, agent: Path) -> list[str]:
    """The coordinator and the agent find in their glance-sync.conf what the guide says they do."""
    from oslo_config import cfg

    from glancesync import opts

    broken = []
    for host, want in ((coord, {("coordinator", "bind_host"): "192.0.2.10", ("DEFAULT", "sync_server_port"): 9595,
                                ("database", "connection"): f"sqlite:///{coord}/var/lib/glance-sync/journal.sqlite",
                                ("curve", "enabled"): True}),
                       (agent, {("agent", "region"): "RegionOne", ("agent", "coordinator_host"): "192.0.2.10",
                                ("agent", "coordinator_port"): 9596, ("curve", "enabled"): True})):
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf([], project="glance-sync", default_config_files=[str(host / "etc/glance-sync/glance-sync.conf")],
             default_config_dirs=[])
        for (group, name), value in want.items():
            got = getattr(conf, name) if group == "DEFAULT" else getattr(getattr(conf, group), name)
            if got != value:
                broken.append(f"{host.name}: glance-sync.conf gives [{group}] {name} = {got!r}, expected {value!r}")
    return broken


def status_tool_loads_its_keys(coord: Path) -> list[str]:
    """glance-sync-status with the guide's config gets as far as asking (no coordinator runs here)."""
    status = Path(sys.executable).parent / "glance-sync-status"
    result = subprocess.run([str(status), "--config-file", str(coord / "root/.glance-sync/status.conf"),
                             "--host", "127.0.0.1", "--answer-timeout", "0.5"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    if result.returncode == 2 and "no answer from coordinator" in result.stderr:
        return []
    return [f"coordinator: glance-sync-status with status.conf: exit {result.returncode}: {result.stderr.strip()}"]


def untouched() -> dict[str, bool]:
    return {path: os.path.lexists(path) for path in GUARDED}


def check(guide: Path) -> int:
    try:
        found = blocks(guide.read_text())
    except (OSError, GuideError) as exc:
        print(f"check_install_guide: {guide}: {exc}", file=sys.stderr)
        return 2
    before = untouched()
    with tempfile.TemporaryDirectory(prefix="install-guide-") as name:
        tmp = Path(name)
        hosts = tmp / "hosts"
        (tmp / "home").mkdir()
        seed(hosts)
        text, skipped = script(found, hosts)
        result = subprocess.run(["bash", "-c", text], cwd=tmp, env=environment(tmp), capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=600)
        for line in skipped:
            print(f"check_install_guide: {line}")
        if result.returncode != 0:
            started = re.findall(r">>> (doc/install.md block at line \d+)", result.stderr)
            where = started[-1] if started else "before the first block"
            print(f"check_install_guide: FAILED in {where} (exit {result.returncode})", file=sys.stderr)
            print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
            return 1
        broken = facts(hosts)
    escaped = [path for path, existed in untouched().items() if existed != before[path]]
    broken += [f"{path} was created outside the temporary root" for path in escaped]
    if broken:
        for line in broken:
            print(f"check_install_guide: {line}", file=sys.stderr)
        return 1
    print(f"check_install_guide: {len(found) - len(skipped)} block(s) of {guide.name} ran in a temporary root; "
          "the files they wrote hold")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guide", type=Path, default=GUIDE, help="the guide to check (default doc/install.md)")
    args = parser.parse_args(argv)
    return check(args.guide)


if __name__ == "__main__":
    sys.exit(main())
