"""Who a Glance Sync deployment's services are in keystone: accounts, roles, policy, openrc files.

:func:`keystone_accounts` are the accounts of a deployment (one per service, each with
only the role it needs, see doc/keystone.md) and :func:`region_policy` the regional
glance policy line that goes with them; a :class:`Catalog` is what
tests.harness.keystone's ``KeystoneServer.provision`` registers.  :func:`write_private`
and :func:`openrc_env` keep the passwords in files of mode 0600 and hand an openrc's
variables to a CLI.  Plain data, no server: the topologies and the demo read it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "Default"


@dataclass(frozen=True)
class Account:
    """A keystone user with its roles on one project (domain ``Default``)."""

    username: str
    password: str
    project: str
    roles: tuple[str, ...]

    def auth(self, auth_url: str) -> dict[str, str]:
        """keystoneauth1 ``password`` options (glance_store.yaml ``auth:``, [cascading_glance])."""
        return {
            "auth_type": "password",
            "auth_url": auth_url,
            "username": self.username,
            "password": self.password,
            "project_name": self.project,
            "user_domain_name": DOMAIN,
            "project_domain_name": DOMAIN,
        }


@dataclass
class Catalog:
    """What :meth:`KeystoneServer.provision` registers: regions, image endpoints, accounts."""

    image_endpoints: dict[str, str]  # keystone region -> glance-api URL
    accounts: list[Account] = field(default_factory=list)


def keystone_accounts(regions: Sequence[str]) -> dict[str, Account]:
    """The keystone accounts of a deployment, by role; random passwords.

    glance's default policy lets only ``admin`` read or write other projects'
    images, so the coordinator (sees every project's images, adds locations) and
    the cascaded:// driver (reads regional images of any project) are admins of
    the ``service`` project.  Each agent (creates copies owned by the image's
    project) holds a role of its own, :func:`agent_role`, which only its region's
    glance makes an admin role (:func:`region_policy`): keystone roles hold in
    every region, and an agent's token must not.  glance's own user only
    validates tokens (``service``); ``demo`` is an ordinary project member.
    """
    def account(username: str, project: str, role: str) -> Account:
        return Account(username, secrets.token_urlsafe(18), project, (role,))

    accounts = {
        "glance": account("glance", "service", "service"),
        "coordinator": account("glance-sync-coordinator", "service", "admin"),
        "driver": account("glance-sync-driver", "service", "admin"),
        "demo": account("demo", "demo", "member"),
    }
    for region in regions:
        accounts[f"agent-{region}"] = account(f"glance-sync-agent-{region.lower()}", "service",
                                              agent_role(region))
    return accounts


def agent_role(region: str) -> str:
    """The keystone role of ``region``'s agent: admin in that region's glance only."""
    return f"sync-agent-{region.lower()}"


def region_policy(region: str) -> str:
    """A regional glance's policy file (keystone topologies): its agent's role counts as admin there."""
    return (f"# {region}'s agent creates copies owned by other projects: admin here, nowhere else.\n"
            f'"context_is_admin": "role:admin or role:{agent_role(region)}"\n')


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (parents made), mode 0600 from the start: it holds a password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)
    return path


def openrc_env(openrc: str) -> dict[str, str]:
    """Our environment without its ``OS_*`` variables, plus those an ``openrc`` text exports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    for line in openrc.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env
