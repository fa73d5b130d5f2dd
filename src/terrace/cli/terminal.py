"""Text from elsewhere (the API, git, files) made safe to print on a terminal.

A server, or a name someone chose, must not be able to move the cursor, clear the screen, set
the window title or reorder what the user reads: C0 and C1 control characters, DEL and Unicode
bidi controls become visible escapes such as ``\\x1b`` and ``\\u202e``. ``--json`` output does not
go through here: it stays the API's JSON.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls, DEL, C1 controls, and the Unicode Bidi_Control characters (ALM, LRM, RLM, the
# embeddings and overrides U+202A-U+202E, the isolates U+2066-U+2069).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_NEWLINES = re.compile("\r\n?")


def _escape(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control character escaped; ``multiline`` keeps newlines and tabs
    (a carriage return then counts as a newline)."""
    if multiline:
        text = _NEWLINES.sub("\n", text)
        return _UNSAFE.sub(lambda m: m[0] if m[0] in "\n\t" else _escape(m[0]), text)
    return _UNSAFE.sub(lambda m: _escape(m[0]), text)
