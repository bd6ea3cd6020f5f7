"""Values that came from elsewhere (a peer's frame, glance, the command line): check, quote, show.

- ``is_image_id``: the one check of an image id wherever one enters (wire fields, CLI
  arguments).  Glance makes its ids with ``str(uuid4())`` and accepts a user-given id
  only in the same 8-4-4-4-12 hex form, so nothing else can name an image; the
  check also keeps ``../`` and ``?`` out of the URLs and paths built from ids.
- ``quote``: a short, ``repr``-escaped prefix of a bad value, for error replies and log
  lines, so a refused 1 MiB frame is never echoed back whole.
- ``printable`` / ``printable_data``: text that is safe on an operator's terminal.
  Control characters (C0, DEL, C1, so also every ESC sequence) and the Unicode
  bidi/line controls are escaped as ``\\x1b``-style text; tabs and line breaks
  become a space, because the text is shown inside one table cell or one line.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

# Glance's own pattern for the "id" property (upper-case hex is accepted by it too).
_IMAGE_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
IMAGE_ID_FORM = "a glance image id (a UUID such as 3f2c6a0e-8f1b-4c53-9d3e-2b7f5e6a9c10)"

# How much of a refused value an error message quotes.
QUOTE_LIMIT = 64

_WHITESPACE = "\t\n\r\v\f\x1c\x1d\x1e\x1f\x85\u2028\u2029"
# C0, DEL, C1; bidi embeddings/overrides/isolates, which can make a terminal show
# text in another order than it has.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")

_REPR = reprlib.Repr()
_REPR.maxstring = QUOTE_LIMIT
_REPR.maxother = QUOTE_LIMIT
_REPR.maxlevel = 2


def is_image_id(value: Any) -> bool:
    """True for a glance image id: a UUID string in the canonical 8-4-4-4-12 hex form."""
    return isinstance(value, str) and _IMAGE_ID.fullmatch(value) is not None


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of at most ``limit`` characters of ``value``, marked when cut."""
    if isinstance(value, (str, bytes)):
        shown = repr(value[:limit])
        return shown + (f"... ({len(value)} long)" if len(value) > limit else "")
    shown = _REPR.repr(value)
    return shown if len(shown) <= 2 * limit else shown[: 2 * limit] + "..."


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _WHITESPACE:
        return " "
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any) -> str:
    """``text`` (any value, as ``str``) with every terminal control character made harmless."""
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))


def printable_data(data: Any) -> Any:
    """``data`` with every string in it, map keys included, passed through ``printable``."""
    if isinstance(data, str):
        return printable(data)
    if isinstance(data, dict):
        return {printable_data(key): printable_data(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [printable_data(item) for item in data]
    return data
