"""One base exception with message templates; every error we raise derives from it.

Library errors (paramiko, glanceclient, SQLAlchemy, zmq) are translated into these
at the call site, so callers decide on ``retryable`` without knowing the library.
"""

from __future__ import annotations

from typing import Any


class GlanceSyncError(Exception):
    """Base error: ``message`` is a template filled from the keyword arguments."""

    message = "An unknown error occurred"
    retryable = False

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.message % kwargs
            except (KeyError, TypeError, ValueError):
                message = f"{self.message} {kwargs}"
        if "retryable" in kwargs:
            self.retryable = bool(kwargs["retryable"])
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0] if self.args else self.message


class ProtocolError(GlanceSyncError):
    """A frame that does not follow glancesync.protocol."""

    message = "%(code)s: %(detail)s"

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(code=code, detail=detail)


class ConfigError(GlanceSyncError):
    """Configuration that cannot be used; the service refuses to start."""

    message = "%(source)s: %(detail)s"


class KeyLoadError(ConfigError):
    """A CurveZMQ or SSH key that does not load: fail closed."""

    message = "cannot load key %(path)s: %(detail)s"


class TransferError(GlanceSyncError):
    """Fetching image bytes failed."""

    message = "transfer of %(image_id)s failed: %(detail)s"
    retryable = True


class VerificationError(TransferError):
    """Bytes arrived but do not match the cascading image."""

    message = "image %(image_id)s: %(detail)s"
    retryable = True


class SourceRefused(TransferError):
    """A source that policy forbids (path outside the store, unknown host key)."""

    message = "image %(image_id)s: source refused: %(detail)s"
    retryable = False


class GlanceError(GlanceSyncError):
    """A glance API call failed."""

    message = "glance %(endpoint)s: %(detail)s"
    retryable = True


class JournalError(GlanceSyncError):
    """The journal could not be read or written."""

    message = "journal: %(detail)s"
    retryable = True


class StaleAttempt(GlanceSyncError):
    """A report for an attempt that is no longer current (late done, lapsed lease)."""

    message = "task %(task_id)s attempt %(attempt)s is not current"
