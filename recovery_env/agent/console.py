"""The agent's consoles: the VGA console (tty1) and the serial console (ttyS0), read together, written together.

Each terminal is opened with O_RDWR|O_NOCTTY and put in raw mode (no echo, no line buffering, no signals).
Keys are decoded per terminal by :class:`KeyDecoder`, which is table-driven (:data:`SEQUENCES`) because every
terminal kind sends its own bytes for a function key, and which copes with a sequence split across reads.
A terminal that cannot be opened (no serial port) is skipped with a note, not fatal.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

ESC = 0x1B
ESC_WAIT = 0.15  # seconds: an ESC with nothing after it for this long is the Escape key itself


class KeyName(StrEnum):
    F1 = "f1"
    F2 = "f2"
    F3 = "f3"
    ENTER = "enter"
    ESC = "esc"
    BACKSPACE = "backspace"
    TAB = "tab"
    UP = "up"
    DOWN = "down"
    LEFT = "left"
    RIGHT = "right"
    CHAR = "char"  # a printable character: see Key.char
    UNKNOWN = "unknown"  # an escape sequence or control byte we do not know

    @property
    def is_function_key(self) -> bool:
        return self in (KeyName.F1, KeyName.F2, KeyName.F3)


@dataclass(frozen=True)
class Key:
    name: KeyName
    char: str = ""  # the character for CHAR, the raw bytes (repr) for UNKNOWN
    console: str = ""  # which terminal it came from

    def label(self) -> str:
        if self.name is KeyName.CHAR:
            return repr(self.char)
        return self.name.value.upper() if self.name.is_function_key else self.name.value


# Escape sequences of the terminals the agent meets, as measured: the Linux VGA console (tty1, also what QMP
# send-key produces), xterm/vt100/vt220/screen/tmux, rxvt.  One table for every kind; order does not matter.
SEQUENCES: dict[bytes, KeyName] = {
    # Linux console
    b"\x1b[[A": KeyName.F1,
    b"\x1b[[B": KeyName.F2,
    b"\x1b[[C": KeyName.F3,
    # xterm, vt100, vt220, screen, tmux (SS3 form)
    b"\x1bOP": KeyName.F1,
    b"\x1bOQ": KeyName.F2,
    b"\x1bOR": KeyName.F3,
    # rxvt (and vt220 in some modes)
    b"\x1b[11~": KeyName.F1,
    b"\x1b[12~": KeyName.F2,
    b"\x1b[13~": KeyName.F3,
    # cursor keys, normal and application mode
    b"\x1b[A": KeyName.UP,
    b"\x1b[B": KeyName.DOWN,
    b"\x1b[C": KeyName.RIGHT,
    b"\x1b[D": KeyName.LEFT,
    b"\x1bOA": KeyName.UP,
    b"\x1bOB": KeyName.DOWN,
    b"\x1bOC": KeyName.RIGHT,
    b"\x1bOD": KeyName.LEFT,
}

# single control bytes
CONTROLS: dict[int, KeyName] = {
    0x0D: KeyName.ENTER,
    0x0A: KeyName.ENTER,
    0x09: KeyName.TAB,
    0x7F: KeyName.BACKSPACE,
    0x08: KeyName.BACKSPACE,
}

_PREFIXES = frozenset(seq[:i] for seq in SEQUENCES for i in range(1, len(seq)))
_LONGEST = max(len(s) for s in SEQUENCES)


class KeyDecoder:
    """Bytes of one terminal in, keys out.  Keeps an incomplete escape sequence until the next read.

    Call :meth:`flush` when no byte followed an incomplete sequence for :data:`ESC_WAIT` seconds: a lone ESC is
    then the Escape key.  CR LF (what some serial terminals send for Enter) is one Enter.
    """

    def __init__(self, console: str = "") -> None:
        self.console = console
        self._buf = b""
        self._after_cr = False

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> list[Key]:
        self._buf += data
        keys: list[Key] = []
        while self._buf:
            key, used = self._decode_one(self._buf)
            if used == 0:  # an incomplete escape sequence: wait for more bytes
                break
            self._buf = self._buf[used:]
            if key is not None:
                keys.append(key)
        return keys

    def flush(self) -> list[Key]:
        """The wait after an incomplete sequence is over: give out what is buffered."""
        keys = self.feed(b"")
        if self._buf == b"\x1b":
            keys.append(Key(KeyName.ESC, console=self.console))
        elif self._buf:
            keys.append(Key(KeyName.UNKNOWN, repr(self._buf), self.console))
        self._buf = b""
        return keys

    def _decode_one(self, buf: bytes) -> tuple[Key | None, int]:
        """Decode the key at the start of ``buf``: (key or None to drop, bytes used); 0 used = need more."""
        first = buf[0]
        after_cr, self._after_cr = self._after_cr, False
        if first == ESC:
            for length in range(min(len(buf), _LONGEST), 1, -1):
                name = SEQUENCES.get(buf[:length])
                if name is not None:
                    return Key(name, console=self.console), length
            if buf in _PREFIXES or buf == b"\x1b":
                self._after_cr = after_cr
                return None, 0
            if buf[1:2] in (b"\x1b",):  # ESC ESC: the first is the Escape key
                return Key(KeyName.ESC, console=self.console), 1
            return self._unknown_sequence(buf)
        if first == 0x0A and after_cr:
            return None, 1
        control = CONTROLS.get(first)
        if control is not None:
            self._after_cr = first == 0x0D
            return Key(control, console=self.console), 1
        if 0x20 <= first < 0x7F:
            return Key(KeyName.CHAR, chr(first), self.console), 1
        return Key(KeyName.UNKNOWN, repr(bytes([first])), self.console), 1

    def _unknown_sequence(self, buf: bytes) -> tuple[Key | None, int]:
        # ESC [ params final / ESC O x / ESC x: consume the whole unknown sequence so it does not turn into letters
        if buf[1:2] == b"[":
            i = 2
            if buf[2:3] == b"[":  # Linux console F-keys beyond our table: ESC [ [ X
                i = 3
            while i < len(buf) and not 0x40 <= buf[i] <= 0x7E:
                i += 1
            if i >= len(buf):
                return None, 0
            return Key(KeyName.UNKNOWN, repr(buf[: i + 1]), self.console), i + 1
        if buf[1:2] == b"O":
            if len(buf) < 3:
                return None, 0
            return Key(KeyName.UNKNOWN, repr(buf[:3]), self.console), 3
        return Key(KeyName.UNKNOWN, repr(buf[:2]), self.console), 2


@dataclass(frozen=True)
class ConsoleSpec:
    """A terminal to open: its path and whether it is the serial console (where plain log lines also go)."""

    path: str
    serial: bool = False

    @property
    def name(self) -> str:
        return self.path.removeprefix("/dev/")


DEFAULT_CONSOLES = (ConsoleSpec("/dev/tty1"), ConsoleSpec("/dev/ttyS0", serial=True))


class Terminal:
    """One open terminal in raw mode."""

    def __init__(self, spec: ConsoleSpec, fd: int, saved: list[Any] | None) -> None:
        self.spec = spec
        self.fd = fd
        self.saved = saved
        self.decoder = KeyDecoder(spec.name)
        self.rows, self.cols = read_size(fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            view = view[n:]


def read_size(fd: int) -> tuple[int, int]:
    """(rows, columns) the terminal reports; (0, 0) when it does not know (a serial line) or is no terminal."""
    try:
        import fcntl
        import struct
        import termios

        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except (ImportError, OSError):
        return 0, 0
    rows, cols, _, _ = struct.unpack("HHHH", packed)
    return rows, cols


def set_raw(fd: int) -> list[Any] | None:
    """Raw input (no echo, no line editing, no signals, 8 bit) and output processing kept (\\n → \\r\\n).

    TCSANOW, not TCSAFLUSH: a key pressed while the agent starts is kept.  Returns the old attributes."""
    try:
        import termios
    except ImportError:  # a Python without termios cannot do raw mode; the consoles still work line-wise
        return None
    try:
        old = termios.tcgetattr(fd)
    except termios.error:
        return None  # not a terminal (a file or a pipe in a test): nothing to set
    new = list(old)
    new[0] &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    new[1] |= termios.OPOST | termios.ONLCR
    new[2] = (new[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    new[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cc = list(new[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    new[6] = cc
    termios.tcsetattr(fd, termios.TCSANOW, new)
    return old


def restore_mode(fd: int, saved: list[Any] | None) -> None:
    if saved is None:
        return
    import termios

    try:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    except termios.error:
        pass


class Consoles:
    """All the terminals of the agent: write to every one, read keys from whichever has them."""

    def __init__(self, terminals: Sequence[Terminal], notes: Sequence[str] = ()) -> None:
        self.terminals = list(terminals)
        self.notes = list(notes)  # why a console was skipped
        self._queue: list[Key] = []

    @classmethod
    def open(cls, specs: Iterable[ConsoleSpec] = DEFAULT_CONSOLES) -> Consoles:
        terminals: list[Terminal] = []
        notes: list[str] = []
        for spec in specs:
            try:
                fd = os.open(spec.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as e:
                notes.append(f"console {spec.path} skipped: {e.strerror}")
                continue
            try:
                saved = set_raw(fd)
            except OSError as e:  # e.g. a serial port whose UART is absent (EIO)
                os.close(fd)
                notes.append(f"console {spec.path} skipped: {e.strerror}")
                continue
            terminals.append(Terminal(spec, fd, saved))
        return cls(terminals, notes)

    def close(self) -> None:
        for t in self.terminals:
            restore_mode(t.fd, t.saved)
            try:
                os.close(t.fd)
            except OSError:
                pass
        self.terminals = []

    def __enter__(self) -> Consoles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, text: str) -> None:
        """Write to every terminal; a terminal that fails (hung up) is dropped, the others go on."""
        self._write_to(self.terminals, text.encode("utf-8", errors="replace"))

    def write_sized(self, render: Callable[[int, int], str], *, serial_only: bool = False) -> None:
        """Write what ``render(rows, columns)`` gives for each terminal's own size (0, 0 = unknown)."""
        for t in list(self.terminals):
            if serial_only and not t.spec.serial:
                continue
            self._write_to([t], render(t.rows, t.cols).encode("utf-8", errors="replace"))

    def write_serial(self, text: str) -> None:
        """Write to the serial terminals only (plain log lines tests and people with a serial cable read)."""
        self._write_to([t for t in self.terminals if t.spec.serial], text.encode("utf-8", errors="replace"))

    def _write_to(self, terminals: Sequence[Terminal], data: bytes) -> None:
        for t in list(terminals):
            try:
                t.write(data)
            except OSError as e:
                self.notes.append(f"console {t.spec.path} dropped: {e.strerror}")
                self.terminals.remove(t)

    def read_key(self, timeout: float | None = None) -> Key | None:
        """The next key from any console, or None when ``timeout`` seconds pass without one (None = wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            if not self.terminals:
                if deadline is None:
                    raise OSError("no console left to read a key from")
                time.sleep(max(0.0, deadline - time.monotonic()))
                return None
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if any(t.decoder.pending for t in self.terminals):
                wait = ESC_WAIT if wait is None else min(wait, ESC_WAIT)
            ready, _, _ = select.select([t.fd for t in self.terminals], [], [], wait)
            if not ready:
                for t in self.terminals:
                    self._queue.extend(t.decoder.flush())
                if not self._queue and deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            for t in list(self.terminals):
                if t.fd in ready:
                    try:
                        data = os.read(t.fd, 256)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # hung up: keep going with the others
                        self.notes.append(f"console {t.spec.path} closed")
                        self.terminals.remove(t)
                        continue
                    self._queue.extend(t.decoder.feed(data))
        return self._queue.pop(0)

    def drain(self) -> None:
        """Forget keys typed ahead (before a question whose answer must be fresh)."""
        while self.read_key(0) is not None:
            pass
