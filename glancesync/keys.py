"""CurveZMQ keys: files in zmq.auth format, an allow-list directory of client public keys.

Fails closed: a key that does not load, a secret key readable by others, or an
empty allow-list stops the service with a message naming the file, instead of
silently running unauthenticated.
"""

from __future__ import annotations

import os
import stat

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from glancesync.exceptions import KeyLoadError


def generate(directory: str, name: str) -> tuple[str, str]:
    """Create ``name.key`` and ``name.key_secret`` in ``directory``; the secret file is 0600."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(directory, name)
    os.chmod(secret_file, 0o600)
    return public_file, secret_file


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a secret key file that only its owner can read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyLoadError(path=path, detail=exc.strerror) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyLoadError(path=path, detail=f"mode {stat.S_IMODE(mode):o} lets others read it; chmod 600")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyLoadError(path=path, detail=str(exc)) from None
    if not secret:
        raise KeyLoadError(path=path, detail="holds no secret key")
    return public, secret


def load_public(path: str) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyLoadError(path=path, detail=str(exc)) from None
    return public


def start_authenticator(context: zmq.Context, allowed_dir: str) -> ThreadAuthenticator:
    """Allow CURVE clients whose public key file is in ``allowed_dir``; nobody else."""
    if not allowed_dir or not os.path.isdir(allowed_dir):
        raise KeyLoadError(path=allowed_dir or "<unset>", detail="allowed_clients_dir is not a directory")
    if not any(name.endswith(".key") for name in os.listdir(allowed_dir)):
        raise KeyLoadError(path=allowed_dir, detail="allowed_clients_dir holds no .key file")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=allowed_dir)
    return auth
