"""Text from outside (a descriptor, a disk's model, an fstab, a file name) on its way to a terminal or a JSON
document.  Standard library only, and nothing imported at start-up: the agent's first screen uses it.

- :func:`visible` is the one sanitiser for terminals: every character that is not printable is written as its
  Python escape, so it shows instead of acting: C0 controls and ESC (``\\x1b``), DEL (``\\x7f``), C1 controls
  (``\\x9b``, the 8-bit CSI), bidi overrides and other format characters (``\\u202e``), line and paragraph
  separators, and the lone surrogates that stand for undecodable bytes read with ``surrogateescape``
  (``\\udce9`` for the byte 0xE9).  Printable text, spaces and backslashes included, is unchanged.
- :func:`json_text` is the one writer of ``--json`` output: valid JSON in valid UTF-8 whatever the strings hold.
  Non-ASCII printable characters are written as they are; every non-printable character is written as a JSON
  ``\\uXXXX`` escape (a pair of them beyond U+FFFF).  A lone surrogate is therefore ``\\udcXX``: the document
  stays well-formed, a terminal shows it as text, and a reader gets the same string back (in Python,
  ``json.loads(...)[...].encode("utf-8", "surrogateescape")`` gives the original bytes).
"""

from __future__ import annotations


def _escape(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def visible(text: str) -> str:
    """``text`` safe to write to a terminal: non-printable characters as escapes (see the module docstring)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def visible_lines(text: str) -> str:
    """:func:`visible` for a message of several lines: its line feeds stay, everything else is escaped."""
    return "\n".join(visible(line) for line in text.split("\n"))


def _json_escape(c: str) -> str:
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def json_text(doc: object, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``doc`` as JSON text (no final newline), non-printable characters escaped (see the module docstring)."""
    import json

    text = json.dumps(doc, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    if text.isprintable():
        return text
    # outside strings there is only ASCII punctuation, digits, letters, spaces and the indent's line feeds: every
    # other non-printable character is inside a string, where an escape means the same character
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def format_size(size_bytes: int, *, compact: bool = False) -> str:
    """A size as people read it: ``1.0 GiB``, ``512.0 MiB``, ``2.0 TiB``; ``compact`` drops the decimal from 100
    up (``512 MiB``, ``1.5 GiB``), as the agent's screens show sizes."""
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.0f} {unit}" if compact and value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
