"""A real glance-api on 127.0.0.1 for the end-to-end tests and the demo.

:class:`GlanceServer` runs PyPI glance as the WSGI app ``glance.wsgi.api:application``
under gunicorn (see doc/glance-behaviour.md), with everything private to the instance: config
dir (``OS_GLANCE_CONFIG_DIR``), SQLite database, file store, staging dir, lock path
and gunicorn control socket.  By default no keystone: the paste ``default`` pipeline
uses ``context`` instead of ``unauthenticated-context``, so glance trusts the identity
headers keystonemiddleware would set; :data:`IDENTITY_HEADERS` are those of an admin.
Most functional tests run so, because forging headers lets one test act as any
project and role without a keystone user for each.  With ``keystone_authtoken=``
(keystonemiddleware's options, see tests/harness/keystone.py) glance runs the
``keystone`` flavor instead and only keystone tokens get in.

The database schema is made once per process (``glance-manage db_sync`` into a
template file, see :func:`db_template`) and copied for every server.

The cascading instance can load our paste filter (``sync_filter=True``, with the
loop-guard secret file ``internal_secret_file`` when given), our
``cascaded://`` store driver (``cascaded_store=True``) and a policy file
(``policy_file=``, e.g. :data:`POLICY_FILE`, the one we ship: location writes for
admin and service only), copied into its config dir as an operator would install it.
"""

from __future__ import annotations

import configparser
import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness.procs import LOOPBACK, ServiceError, ServiceProcess, free_port, read_tail

ADMIN_USER_ID = "5e1f0c1a9d6b4c1e8f2a3b4c5d6e7f80"
ADMIN_PROJECT_ID = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
ROLES = "admin,member,reader,service"
IDENTITY_HEADERS: dict[str, str] = {
    "X-Identity-Status": "Confirmed",
    "X-User-Id": ADMIN_USER_ID,
    "X-Project-Id": ADMIN_PROJECT_ID,
    "X-Roles": ROLES,
}

# The glance policy file the project ships for the cascading glance (doc/store-driver.md).
POLICY_FILE = Path(__file__).resolve().parents[2] / "etc" / "glance-policy.yaml"

VENV_BIN = Path(sys.executable).parent
GLANCE_ETC = VENV_BIN.parent / "etc" / "glance"
PASTE_SAMPLE = GLANCE_ETC / "glance-api-paste.ini"

_template_lock = threading.Lock()
_template: Path | None = None


def venv_bin(name: str) -> str:
    """Path of a console script installed next to the running Python."""
    path = VENV_BIN / name
    if not path.exists():
        raise ServiceError(f"{name} not found next to {sys.executable}")
    return str(path)


def _write_ini(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def db_template(work_dir: str | Path, timeout: float = 120.0) -> Path:
    """A glance SQLite file with the full schema, made once per process (thread-safe).

    The first call runs ``glance-manage db_sync`` into ``work_dir``; later calls return
    that file for as long as it exists, whatever ``work_dir`` they pass.
    """
    global _template
    with _template_lock:
        if _template is not None and _template.exists():
            return _template
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        db = work_dir / "glance-template.sqlite"
        conf = work_dir / "glance-manage.conf"
        _write_ini(conf, {"DEFAULT": {"debug": "False"}, "database": {"connection": f"sqlite:///{db}"}})
        db.unlink(missing_ok=True)
        result = subprocess.run(
            [venv_bin("glance-manage"), "--config-file", str(conf), "db_sync"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0 or not db.exists():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise ServiceError(f"glance-manage db_sync failed (exit {result.returncode}):\n{tail}")
        _template = db
        return db


def paste_ini(sync_filter: bool) -> str:
    """glance's sample paste ini with the trusted-headers ``default`` pipeline (and our filter).

    With ``sync_filter`` the ``keystone`` pipeline (``[paste_deploy] flavor = keystone``)
    gets our filter too, right after ``context`` as etc/glance-api-paste.ini.snippet says.
    """
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(PASTE_SAMPLE)
    for flavor in ("default", "keystone"):
        pipeline = parser.get("composite:api", flavor).split()
        if flavor == "default":
            pipeline[pipeline.index("unauthenticated-context")] = "context"
        if sync_filter:
            pipeline.insert(pipeline.index("context") + 1, "glancesync")
        parser.set("composite:api", flavor, " ".join(pipeline))
    if sync_filter:
        parser["filter:glancesync"] = {"paste.filter_factory": "glance_proxy.middleware:filter_factory"}
    lines: list[str] = []
    for section in parser.sections():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in parser.items(section)]
        lines.append("")
    return "\n".join(lines)


def admin_session(url: str, **extra_headers: str) -> Any:
    """A keystoneauth1 session to ``url`` sending the admin identity headers (and ``extra_headers``)."""
    from keystoneauth1 import noauth, session

    return session.Session(auth=noauth.NoAuth(endpoint=url),
                           additional_headers={**IDENTITY_HEADERS, **extra_headers})


def admin_client(url: str, **extra_headers: str) -> Any:
    """A python-glanceclient v2 Client talking to ``url`` as admin (a glance-api or a proxy in front)."""
    from glanceclient import client as glance_client

    return glance_client.Client("2", session=admin_session(url, **extra_headers), endpoint_override=url)


def signed_client(url: str, secret_file: str | Path) -> Any:
    """A glanceclient that signs every request with the loop-guard marker, as the coordinator does."""
    from glancesync import glance, marker
    from glancesync.storemap import GlanceEndpoint

    endpoint = GlanceEndpoint(url=url, headers=dict(IDENTITY_HEADERS),
                              internal_secret=marker.load_secret(str(secret_file)))
    return glance.make_client(endpoint)


class GlanceServer:
    """One glance-api under gunicorn, with its own config, database and file store."""

    def __init__(
        self,
        name: str,
        base_dir: str | Path,
        *,
        template_dir: str | Path | None = None,
        port: int | None = None,
        sync_filter: bool = False,
        sync_server_port: int | None = None,
        spool_dir: str | Path | None = None,
        cascaded_store: bool = False,
        store_config: str | Path | None = None,
        policy_file: str | Path | None = None,
        internal_secret_file: str | Path | None = None,
        keystone_authtoken: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.base_dir = Path(base_dir)
        self.template_dir = Path(template_dir) if template_dir else self.base_dir.parent / "glance-template"
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.conf_dir = self.base_dir / "etc"
        self.data_dir = self.base_dir / "images"
        self.staging_dir = self.base_dir / "staging"
        self.lock_dir = self.base_dir / "locks"
        self.db_path = self.base_dir / "glance.sqlite"
        self.log_path = self.base_dir / "glance-api.log"
        self.sync_filter = sync_filter
        self.sync_server_port = sync_server_port
        self.spool_dir = Path(spool_dir) if spool_dir else self.base_dir / "spool"
        self.cascaded_store = cascaded_store
        self.store_config = Path(store_config) if store_config else None
        self.policy_source = Path(policy_file) if policy_file else None
        self.policy_path = self.conf_dir / "glance-policy.yaml"
        self.internal_secret_file = Path(internal_secret_file) if internal_secret_file else None
        # keystonemiddleware's [keystone_authtoken] options: with them glance runs the
        # ``keystone`` pipeline and trusts only keystone tokens, no forged headers.
        self.keystone_authtoken = dict(keystone_authtoken) if keystone_authtoken else None
        # More options by section, set before start (e.g. the filter's [curve] keys).
        self.extra_sections: dict[str, dict[str, Any]] = {}
        self.process: ServiceProcess | None = None

    def __repr__(self) -> str:
        return f"<GlanceServer {self.name} {self.url}>"

    def conf_sections(self) -> dict[str, dict[str, Any]]:
        """The content of glance-api.conf, by section."""
        default: dict[str, Any] = {
            "debug": "True",
            "enabled_import_methods": "[glance-direct,web-download]",
            "show_multiple_locations": "True",
            "show_image_direct_url": "True",
            "node_staging_uri": f"file://{self.staging_dir}",
            "image_cache_dir": str(self.base_dir / "cache"),
        }
        stores = "file,http"
        store: dict[str, Any] = {"default_store": "file", "filesystem_store_datadir": str(self.data_dir)}
        sections: dict[str, dict[str, Any]] = {
            "DEFAULT": default,
            "database": {"connection": f"sqlite:///{self.db_path}"},
            "glance_store": store,
            "oslo_concurrency": {"lock_path": str(self.lock_dir)},
            "paste_deploy": {"flavor": ""},
            "import_filtering_opts": {"allowed_hosts": f"[{LOOPBACK}]"},
        }
        if self.sync_filter:
            if self.sync_server_port is None:
                raise ServiceError(f"{self.name}: sync_filter needs sync_server_port")
            default.update(
                sync_enabled="True", sync_server_host=LOOPBACK, sync_server_port=self.sync_server_port
            )
            sections["proxy"] = {"spool_dir": str(self.spool_dir)}
            if self.internal_secret_file:
                default["sync_internal_secret_file"] = str(self.internal_secret_file)
        if self.cascaded_store:
            if self.store_config is None:
                raise ServiceError(f"{self.name}: cascaded_store needs store_config")
            stores += ",cascaded"
            store["cascaded_store_config"] = str(self.store_config)
        store["stores"] = stores
        if self.keystone_authtoken is not None:
            sections["paste_deploy"] = {"flavor": "keystone"}
            sections["keystone_authtoken"] = self.keystone_authtoken
        if self.policy_source is not None:
            sections["oslo_policy"] = {"policy_file": str(self.policy_path)}
        for section, values in self.extra_sections.items():
            sections.setdefault(section, {}).update(values)
        return sections

    def write_config(self) -> None:
        """Create the directories, glance-api.conf, the paste ini and the database copy."""
        for path in (self.conf_dir, self.data_dir, self.staging_dir, self.lock_dir, self.spool_dir):
            path.mkdir(parents=True, exist_ok=True)
        _write_ini(self.conf_dir / "glance-api.conf", self.conf_sections())
        if self.keystone_authtoken is not None:
            (self.conf_dir / "glance-api.conf").chmod(0o640)  # glance's keystone password
        (self.conf_dir / "glance-api-paste.ini").write_text(paste_ini(self.sync_filter))
        if self.policy_source is not None:
            shutil.copyfile(self.policy_source, self.policy_path)
        if not self.db_path.exists():
            shutil.copyfile(db_template(self.template_dir), self.db_path)

    def control_socket(self) -> str:
        """gunicorn's control socket: in the instance dir, or under /tmp when that path is too long."""
        path = str(self.base_dir.resolve() / "gunicorn.ctl")
        if len(path) < 100:  # AF_UNIX paths are limited to 107 bytes
            return path
        digest = hashlib.sha1(path.encode()).hexdigest()[:16]
        return str(Path(tempfile.gettempdir()) / f"glance-gunicorn-{digest}.ctl")

    def command(self) -> list[str]:
        """The gunicorn command line of this instance."""
        return [
            venv_bin("gunicorn"),
            "-b", f"{LOOPBACK}:{self.port}",
            "-w", "1",
            # One request at a time: these glances keep their database in SQLite, where
            # two concurrent uploads fail with "database is locked" and glance then
            # leaves the image in 'saving' for ever (seen). Production glances use
            # MySQL or PostgreSQL and many threads.
            "--threads", "1",
            "--timeout", "900",
            "--control-socket", self.control_socket(),
            "glance.wsgi.api:application",
        ]  # fmt: skip

    def answers(self) -> bool:
        """True when GET /versions answers 200 or 300."""
        try:
            with urllib.request.urlopen(f"{self.url}/versions", timeout=2) as resp:
                return resp.status in (200, 300)
        except urllib.error.HTTPError as exc:
            return exc.code == 300
        except OSError:
            return False

    def start(self, timeout: float = 90.0) -> GlanceServer:
        """Write the config, start gunicorn and wait until the API answers."""
        self.write_config()
        if self.process is None:
            self.process = ServiceProcess(
                f"glance-api {self.name}",
                self.command(),
                self.log_path,
                env={"OS_GLANCE_CONFIG_DIR": str(self.conf_dir)},
                cwd=self.base_dir,
            )
        self.process.start()
        self.process.wait_ready(self.answers, timeout)
        return self

    def stop(self) -> None:
        """Stop gunicorn and its worker (idempotent)."""
        if self.process is not None:
            self.process.stop()

    def restart(self, timeout: float = 90.0) -> None:
        """Stop and start again with the same config, data and port."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 30) -> str:
        return read_tail(self.log_path, lines)

    def session(self) -> Any:
        """A keystoneauth1 session sending the admin identity headers to this glance."""
        return admin_session(self.url)

    def client(self) -> Any:
        """A python-glanceclient v2 Client for this glance, as admin."""
        return admin_client(self.url)
