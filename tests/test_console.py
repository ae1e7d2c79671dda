"""The agent's consoles and key decoding, on real pseudo-terminals (os.openpty) standing for tty1 and ttyS0."""

from __future__ import annotations

import os
import termios
import threading
import time
from collections.abc import Iterator

import pytest

from recovery_env.agent.console import SEQUENCES, Consoles, ConsoleSpec, Key, KeyDecoder, KeyName

# What each terminal kind sends for F2 and F3 (measured; see the platform notes)
TERMINALS = {
    "linux": (b"\x1b[[B", b"\x1b[[C"),
    "xterm": (b"\x1bOQ", b"\x1bOR"),
    "vt100": (b"\x1bOQ", b"\x1bOR"),
    "vt220": (b"\x1bOQ", b"\x1bOR"),
    "screen": (b"\x1bOQ", b"\x1bOR"),
    "tmux": (b"\x1bOQ", b"\x1bOR"),
    "rxvt": (b"\x1b[12~", b"\x1b[13~"),
}


class Pty:
    """One pseudo-terminal: the agent opens ``path``; the test types on and reads from ``master``."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_all(self, wait: float = 0.5) -> bytes:
        import select

        out = b""
        deadline = time.monotonic() + wait
        while True:
            r, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                return out
            try:
                out += os.read(self.master, 65536)
            except OSError:
                return out
            deadline = time.monotonic() + 0.1

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def ptys() -> Iterator[tuple[Pty, Pty]]:
    a, b = Pty(), Pty()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def consoles(ptys: tuple[Pty, Pty]) -> Iterator[Consoles]:
    vga, serial = ptys
    c = Consoles.open([ConsoleSpec(vga.path), ConsoleSpec(serial.path, serial=True)])
    yield c
    c.close()


def names(keys: list[Key]) -> list[KeyName]:
    return [k.name for k in keys]


# -- the decoder, pure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", sorted(TERMINALS))
def test_decoder_knows_f2_and_f3_of_every_terminal(terminal: str) -> None:
    f2, f3 = TERMINALS[terminal]
    d = KeyDecoder("t")
    assert names(d.feed(f2 + f3)) == [KeyName.F2, KeyName.F3]
    assert not d.pending


@pytest.mark.parametrize("seq", sorted(SEQUENCES))
def test_decoder_sequence_split_at_every_byte(seq: bytes) -> None:
    for cut in range(1, len(seq)):
        d = KeyDecoder()
        assert d.feed(seq[:cut]) == []
        assert d.pending
        assert names(d.feed(seq[cut:] + b"x")) == [SEQUENCES[seq], KeyName.CHAR]


def test_decoder_sequence_fed_byte_by_byte_among_letters() -> None:
    d = KeyDecoder()
    keys: list[Key] = []
    for byte in b"a\x1b[12~b\x1bOQ\x1b[[C1":
        keys += d.feed(bytes([byte]))
    assert names(keys) == [KeyName.CHAR, KeyName.F2, KeyName.CHAR, KeyName.F2, KeyName.F3, KeyName.CHAR]
    assert [k.char for k in keys if k.name is KeyName.CHAR] == ["a", "b", "1"]


def test_decoder_enter_variants_and_crlf_is_one_enter() -> None:
    d = KeyDecoder()
    assert names(d.feed(b"\r")) == [KeyName.ENTER]
    assert names(d.feed(b"\n")) == []  # the LF of a CR LF pair, even in the next read
    assert names(d.feed(b"\n\n")) == [KeyName.ENTER, KeyName.ENTER]
    assert names(d.feed(b"\r\r\n")) == [KeyName.ENTER, KeyName.ENTER]


def test_decoder_lone_escape_after_the_wait() -> None:
    d = KeyDecoder()
    assert d.feed(b"\x1b") == []
    assert names(d.flush()) == [KeyName.ESC]
    assert names(d.feed(b"\x1b\x1bOQ")) == [KeyName.ESC, KeyName.F2]


def test_decoder_unknown_sequences_do_not_become_letters() -> None:
    d = KeyDecoder()
    keys = d.feed(b"\x1b[15~\x1b[[E\x1bOS\x1b[1;5A" + b"q")
    assert names(keys) == [KeyName.UNKNOWN] * 4 + [KeyName.CHAR]
    assert d.feed(b"\x1b[5") == []
    assert names(d.flush()) == [KeyName.UNKNOWN]


# -- real pseudo-terminals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", sorted(TERMINALS))
@pytest.mark.parametrize("which", [0, 1])
def test_f2_from_either_console(ptys: tuple[Pty, Pty], consoles: Consoles, terminal: str, which: int) -> None:
    pty = ptys[which]
    pty.type(TERMINALS[terminal][0])
    key = consoles.read_key(5)
    assert key is not None
    assert key.name is KeyName.F2
    assert key.console == pty.path.removeprefix("/dev/")


def test_sequence_split_across_reads_on_a_pty(ptys: tuple[Pty, Pty], consoles: Consoles) -> None:
    vga, _ = ptys
    vga.type(b"\x1b[")
    timer = threading.Timer(0.03, vga.type, args=(b"[B",))
    timer.start()
    key = consoles.read_key(5)
    timer.join()
    assert key is not None and key.name is KeyName.F2


def test_lone_escape_on_a_pty(ptys: tuple[Pty, Pty], consoles: Consoles) -> None:
    ptys[1].type(b"\x1b")
    key = consoles.read_key(5)
    assert key is not None and key.name is KeyName.ESC


def test_timeout_without_a_key(consoles: Consoles) -> None:
    assert consoles.read_key(0.2) is None


def test_keys_from_both_consoles_in_turn(ptys: tuple[Pty, Pty], consoles: Consoles) -> None:
    vga, serial = ptys
    vga.type(b"1")
    serial.type(b"\x1bOR")
    got = {(k.name, k.console) for k in (consoles.read_key(5), consoles.read_key(5)) if k is not None}
    assert got == {(KeyName.CHAR, vga.path.removeprefix("/dev/")), (KeyName.F3, serial.path.removeprefix("/dev/"))}


def test_writes_go_to_both_consoles_and_log_lines_to_serial_only(ptys: tuple[Pty, Pty], consoles: Consoles) -> None:
    vga, serial = ptys
    consoles.write("Automated System Recovery\n")
    consoles.write_serial("ASR: serial only\n")
    assert vga.read_all() == b"Automated System Recovery\r\n"  # output processing kept: \n -> \r\n
    assert serial.read_all() == b"Automated System Recovery\r\nASR: serial only\r\n"


def test_raw_mode_no_echo_and_restored_on_close(ptys: tuple[Pty, Pty]) -> None:
    vga, serial = ptys
    before = termios.tcgetattr(vga.slave)
    c = Consoles.open([ConsoleSpec(vga.path), ConsoleSpec(serial.path, serial=True)])
    raw = termios.tcgetattr(vga.slave)
    assert not raw[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
    vga.type(b"x")
    key = c.read_key(5)
    assert key is not None and key.char == "x"
    assert vga.read_all(0.2) == b""  # no echo
    c.close()
    assert termios.tcgetattr(vga.slave) == before


def test_console_that_does_not_open_is_skipped(ptys: tuple[Pty, Pty]) -> None:
    vga, _ = ptys
    c = Consoles.open([ConsoleSpec(vga.path), ConsoleSpec("/dev/nonexistent-ttyS0", serial=True)])
    try:
        assert [t.spec.path for t in c.terminals] == [vga.path]
        assert any("nonexistent-ttyS0" in n and "skipped" in n for n in c.notes)
        vga.type(b"\x1b[[B")
        key = c.read_key(5)
        assert key is not None and key.name is KeyName.F2
    finally:
        c.close()


def test_hung_up_console_is_dropped_and_the_other_still_works(ptys: tuple[Pty, Pty], consoles: Consoles) -> None:
    vga, serial = ptys
    os.close(serial.master)  # the serial line goes away: the slave reads EOF/EIO
    vga.type(b"\x1bOQ")
    key = consoles.read_key(5)
    while key is not None and key.name is not KeyName.F2:
        key = consoles.read_key(5)
    assert key is not None and key.name is KeyName.F2
    assert [t.spec.path for t in consoles.terminals] == [vga.path]


def test_terminal_size_is_read_and_unknown_is_zero(ptys: tuple[Pty, Pty]) -> None:
    import fcntl
    import struct

    vga, serial = ptys
    fcntl.ioctl(vga.master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    c = Consoles.open([ConsoleSpec(vga.path), ConsoleSpec(serial.path, serial=True)])
    try:
        assert [(t.rows, t.cols) for t in c.terminals] == [(50, 160), (0, 0)]
        c.write_sized(lambda rows, cols: f"{rows}x{cols}\n")
        assert vga.read_all() == b"50x160\r\n"
        assert serial.read_all() == b"0x0\r\n"
    finally:
        c.close()
