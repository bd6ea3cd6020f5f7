"""A real keystone on 127.0.0.1 for the keystone end-to-end tests and the demo.

:class:`KeystoneServer` runs PyPI keystone's WSGI app under gunicorn with a SQLite
database and fernet tokens, everything private to the instance (``OS_KEYSTONE_CONFIG_DIR``).

Preparing keystone is slow (each ``keystone-manage`` call imports all of keystone,
about 15 s on a busy machine), so :func:`keystone_template` does it once per process:
``db_sync``, ``fernet_setup`` and ``credential_setup`` in parallel, then ``bootstrap``
(the ``admin`` user and project, the admin/member/reader/service roles); every server
copies the database and the key repositories.  The catalog (regions, services,
endpoints) and the accounts a deployment needs are made through the API once the
server runs (:meth:`KeystoneServer.provision`), because the URLs are only known then; the
accounts themselves are tests.harness.identity's.  :meth:`KeystoneServer.openrc`
writes what users source for the CLIs.

keystone's WSGI module parses ``sys.argv`` with oslo.config when imported, and
gunicorn's own arguments make that fail, so gunicorn loads the app through
:func:`wsgi_application`, which empties ``argv`` first.  No pytest imports: the
demo uses this module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.identity import DOMAIN, Account, Catalog
from tests.harness.procs import LOOPBACK, ServiceError, ServiceProcess, free_port, read_tail

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN_USER = "admin"
ADMIN_PROJECT = "admin"
# bcrypt's minimum cost: keystone's default (12) makes every password check and
# user creation cost a quarter second of CPU. Never lower it in a deployment.
PASSWORD_HASH_ROUNDS = 4

_template_lock = threading.Lock()
_template: KeystoneTemplate | None = None


@dataclass(frozen=True)
class KeystoneTemplate:
    """A bootstrapped keystone database and its key repositories, to copy."""

    db: Path
    fernet_keys: Path
    credential_keys: Path
    admin_password: str


def _write_ini(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def _conf_sections(db: Path, fernet_keys: Path, credential_keys: Path) -> dict[str, dict[str, Any]]:
    return {
        "DEFAULT": {"debug": "False", "use_stderr": "True"},
        "database": {"connection": f"sqlite:///{db}"},
        "token": {"provider": "fernet"},
        "fernet_tokens": {"key_repository": str(fernet_keys)},
        "fernet_receipts": {"key_repository": str(fernet_keys)},
        "credential": {"key_repository": str(credential_keys)},
        # bcrypt reads 72 bytes at most; saying so keeps keystone from warning at every hash.
        "identity": {"password_hash_rounds": PASSWORD_HASH_ROUNDS, "max_password_length": 72},
    }


def _manage(conf: Path, *args: str, timeout: float, env: dict[str, str] | None = None) -> None:
    argv = [str(VENV_BIN / "keystone-manage"), "--config-file", str(conf), *args]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ServiceError(f"keystone-manage {args[0]} failed (exit {result.returncode}):\n{tail}")


def keystone_template(work_dir: str | Path, timeout: float = 300.0) -> KeystoneTemplate:
    """A bootstrapped keystone (database + fernet and credential keys), made once per process.

    Later calls return the first one for as long as its files exist, whatever
    ``work_dir`` they pass.  Thread-safe.
    """
    global _template
    with _template_lock:
        if _template is not None and _template.db.exists():
            return _template
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        db = work_dir / "keystone-template.sqlite"
        fernet_keys, credential_keys = work_dir / "fernet-keys", work_dir / "credential-keys"
        conf = work_dir / "keystone-manage.conf"
        _write_ini(conf, _conf_sections(db, fernet_keys, credential_keys))
        db.unlink(missing_ok=True)
        owner = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
        for keys in (fernet_keys, credential_keys):
            shutil.rmtree(keys, ignore_errors=True)
            keys.mkdir(mode=0o700)
        # Neither key setup touches the database: all three run side by side.
        with ThreadPoolExecutor(max_workers=3) as pool:
            jobs = [
                pool.submit(_manage, conf, "db_sync", timeout=timeout),
                pool.submit(_manage, conf, "fernet_setup", *owner, timeout=timeout),
                pool.submit(_manage, conf, "credential_setup", *owner, timeout=timeout),
            ]
            for job in jobs:
                job.result()
        password = secrets.token_urlsafe(18)
        # The password goes through the environment: never on a command line, so never in an error.
        _manage(conf, "bootstrap", "--bootstrap-username", ADMIN_USER, "--bootstrap-project-name", ADMIN_PROJECT,
                timeout=timeout, env={"OS_BOOTSTRAP_PASSWORD": password})
        _template = KeystoneTemplate(db, fernet_keys, credential_keys, password)
        return _template


def wsgi_application() -> Any:
    """keystone's WSGI app for gunicorn (``tests.harness.keystone:wsgi_application()``).

    keystone parses ``sys.argv`` at import; gunicorn's arguments are not keystone's.
    """
    del sys.argv[1:]
    from keystone.wsgi import api

    return api.application


class KeystoneServer:
    """One keystone under gunicorn, with its own config, database and key repositories."""

    def __init__(self, base_dir: str | Path, *, template_dir: str | Path | None = None,
                 port: int | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.template_dir = Path(template_dir) if template_dir else self.base_dir.parent / "keystone-template"
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.auth_url = f"{self.url}/v3"
        self.conf_dir = self.base_dir / "etc"
        self.db_path = self.base_dir / "keystone.sqlite"
        self.fernet_keys = self.base_dir / "fernet-keys"
        self.credential_keys = self.base_dir / "credential-keys"
        self.log_path = self.base_dir / "keystone.log"
        self.admin_password: str | None = None
        self.process: ServiceProcess | None = None
        self._session: Any = None
        self._ids: dict[tuple[str, str], str] = {}  # (collection, name) -> id, as provisioned

    def __repr__(self) -> str:
        return f"<KeystoneServer {self.url}>"

    @property
    def admin(self) -> Account:
        """The bootstrap admin (admin role on the ``admin`` project)."""
        if self.admin_password is None:
            raise ServiceError("keystone: not prepared yet (start() it first)")
        return Account(ADMIN_USER, self.admin_password, ADMIN_PROJECT, ("admin",))

    def prepare(self) -> None:
        """Copy the template's database and keys (making the template if needed), write keystone.conf."""
        template = keystone_template(self.template_dir)
        self.admin_password = template.admin_password
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        if not self.db_path.exists():
            shutil.copyfile(template.db, self.db_path)
            for source, target in ((template.fernet_keys, self.fernet_keys),
                                   (template.credential_keys, self.credential_keys)):
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
        _write_ini(self.conf_dir / "keystone.conf",
                   _conf_sections(self.db_path, self.fernet_keys, self.credential_keys))

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "gunicorn"),
            "-b", f"{LOOPBACK}:{self.port}",
            "-w", "1",
            "--threads", "4",
            "--timeout", "120",
            "--pythonpath", str(ROOT),
            "tests.harness.keystone:wsgi_application()",
        ]  # fmt: skip

    def answers(self) -> bool:
        """True when GET /v3 answers 200."""
        try:
            with urllib.request.urlopen(self.auth_url, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 300.0) -> KeystoneServer:
        """Prepare, start gunicorn and wait until the API answers."""
        self.prepare()
        if self.process is None:
            self.process = ServiceProcess(
                "keystone", self.command(), self.log_path,
                env={"OS_KEYSTONE_CONFIG_DIR": str(self.conf_dir)}, cwd=self.base_dir,
            )
        self.process.start()
        self.process.wait_ready(self.answers, timeout)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log_tail(self, lines: int = 30) -> str:
        return read_tail(self.log_path, lines)

    # -- the API, as the bootstrap admin --------------------------------------

    def session(self, account: Account | None = None) -> Any:
        """A keystoneauth1 session authenticated as ``account`` (default: the admin)."""
        from keystoneauth1 import loading, session

        options = (account or self.admin).auth(self.auth_url)
        loader = loading.get_plugin_loader(options.pop("auth_type"))
        return session.Session(auth=loader.load_from_options(**options))

    def _api(self, method: str, path: str, **body: Any) -> dict[str, Any]:
        if self._session is None:
            self._session = self.session()
        kwargs = {"json": body} if body else {}
        resp = self._session.request(f"{self.auth_url}{path}", method, raise_exc=False, **kwargs)
        if resp.status_code >= 400:
            raise ServiceError(f"keystone {method} {path}: HTTP {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else {}

    def _id(self, collection: str, name: str, **create: Any) -> str:
        """The id of the ``collection`` entry called ``name``, created with ``create`` when absent."""
        key = (collection, name)
        if key not in self._ids:
            found = self._api("GET", f"/{collection}?name={name}")[collection]
            singular = collection[:-1]
            self._ids[key] = (found[0]["id"] if found else self._api(
                "POST", f"/{collection}", **{singular: {"name": name, **create}})[singular]["id"])
        return self._ids[key]

    def provision(self, catalog: Catalog) -> None:
        """Register the regions, their public image endpoints and keystone's (in the first region); add the accounts."""
        identity = self._service("identity", "keystone")
        image = self._service("image", "glance")
        regions = {r["id"] for r in self._api("GET", "/regions")["regions"]}
        for n, (region, glance_url) in enumerate(catalog.image_endpoints.items()):
            if region not in regions:
                self._api("POST", "/regions", region={"id": region})
            self._endpoint(image, "public", region, glance_url)
            if n == 0:
                # keystonemiddleware looks for the internal identity endpoint; one
                # keystone, listed in the first region, serves every region.
                for interface in ("public", "internal", "admin"):
                    self._endpoint(identity, interface, region, self.auth_url)
        for account in catalog.accounts:
            self.add_account(account)

    def _endpoint(self, service: str, interface: str, region: str, url: str) -> None:
        self._api("POST", "/endpoints", endpoint={"service_id": service, "interface": interface,
                                                  "region_id": region, "url": url})

    def set_image_endpoint(self, region: str, url: str, interface: str = "public") -> None:
        """Point ``region``'s image endpoint of ``interface`` at ``url`` (a catalog changed under a running service)."""
        image = self._service("image", "glance")
        found = self._api("GET", f"/endpoints?service_id={image}&interface={interface}&region_id={region}")
        for endpoint in found["endpoints"]:
            self._api("PATCH", f"/endpoints/{endpoint['id']}", endpoint={"url": url})
        if not found["endpoints"]:
            raise ServiceError(f"keystone: no {interface} image endpoint in {region}")

    def _service(self, service_type: str, name: str) -> str:
        found = self._api("GET", f"/services?type={service_type}")["services"]
        if found:
            return found[0]["id"]
        return self._api("POST", "/services", service={"type": service_type, "name": name})["service"]["id"]

    def add_account(self, account: Account) -> str:
        """Create the project (if needed) and the user, grant the roles; the user's id."""
        project = self._id("projects", account.project, domain_id="default")
        user = self._api("POST", "/users", user={"name": account.username, "password": account.password,
                                                 "domain_id": "default", "default_project_id": project})
        user_id = user["user"]["id"]
        for role in account.roles:
            role_id = self._id("roles", role)
            self._api("PUT", f"/projects/{project}/users/{user_id}/roles/{role_id}")
        return user_id

    def openrc(self, account: Account, region: str) -> str:
        """An openrc file's text for ``account``: the ``openstack`` and ``glance`` CLIs read it."""
        values = {
            "OS_AUTH_URL": self.auth_url,
            "OS_IDENTITY_API_VERSION": "3",
            "OS_AUTH_TYPE": "password",
            "OS_USERNAME": account.username,
            "OS_PASSWORD": account.password,
            "OS_PROJECT_NAME": account.project,
            "OS_USER_DOMAIN_NAME": DOMAIN,
            "OS_PROJECT_DOMAIN_NAME": DOMAIN,
            "OS_REGION_NAME": region,
            "OS_INTERFACE": "public",
            "OS_IMAGE_API_VERSION": "2",
        }
        return "".join(f"export {key}={value}\n" for key, value in values.items())
