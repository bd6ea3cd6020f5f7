"""CurveZMQ key files in zmq.auth format: make a pair, load a secret or a public key.

Fails closed: a key that does not load or a secret key readable by others stops the
service with a message naming the file, instead of silently running
unauthenticated.  The allow-list of client keys and their roles is glancesync.roles.
"""

from __future__ import annotations

import os
import stat

import zmq.auth

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
