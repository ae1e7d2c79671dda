"""Text-mode screens in the manner of XP Setup: a title bar, white on blue, a grey status line at the bottom.

Pure: a :class:`Screen` is data and :func:`render_screen` turns it into the bytes (ANSI) written to every
console; :func:`render_summary` turns a descriptor into the lines of the F2 summary.  Rows are painted top to
bottom and end with CR LF, so the serial log, stripped of its escape sequences, reads as plain lines.  Every text
painted (body, title, status, log line) goes through :func:`recovery_env.text.visible` first: a descriptor's
escape or control characters show as ``\x1b`` instead of acting on the terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recovery_env.text import format_size, visible

if TYPE_CHECKING:  # the descriptor model is imported by render_summary: the first screens do without it
    from recovery_env.model.descriptor import Descriptor, DeviceInventory

WIDTH = 80  # what the text is laid out for
HEIGHT = 24  # a serial terminal (which reports no size) has 24 rows
TITLE = "Automated System Recovery"

CSI = "\x1b["
BODY = CSI + "0;37;44m"  # white on blue
BRIGHT = CSI + "0;1;37;44m"  # bright white on blue
STATUS = CSI + "0;30;47m"  # black on grey
ERROR = CSI + "0;1;33;41m"  # yellow on red: the error box line
RESET = CSI + "0m"


@dataclass(frozen=True)
class Size:
    """A terminal's size; the blue background and the status line fill it, the text stays in 80 columns."""

    rows: int = HEIGHT
    cols: int = WIDTH

    @classmethod
    def of(cls, rows: int, cols: int) -> Size:
        """The size a terminal reports; 0 (a serial line does not know) or too small means 24 x 80."""
        return cls(rows if rows >= HEIGHT else HEIGHT, cols if cols >= WIDTH else WIDTH)

    @property
    def body_rows(self) -> int:
        return self.rows - 4  # title, rule ... blank, status


DEFAULT_SIZE = Size()


@dataclass(frozen=True)
class Screen:
    body: tuple[str, ...]
    status: str
    title: str = TITLE
    error: bool = False  # the first body line is an error heading


def fit(line: str, width: int = WIDTH - 1) -> str:
    """One row: cut to the width (never wrap: the row would spill into the next) and padded to it."""
    if len(line) > width:
        line = line[: width - 3] + "..."
    return line.ljust(width)


def wrap(text: str, width: int = WIDTH - 6) -> list[str]:
    """Break a paragraph into lines at spaces (long words are cut by :func:`fit` later)."""
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        current = ""
        for word in para.split(" "):
            if current and len(current) + 1 + len(word) > width:
                lines.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        lines.append(current)
    return lines


def render_status(text: str, size: Size = DEFAULT_SIZE) -> str:
    """Only the status line (for a countdown): move there, paint it, come back to the top."""
    return f"{CSI}{size.rows};1H{STATUS}{fit(' ' + visible(text), size.cols - 1)}{BODY}{CSI}1;1H"


def render_log_line(line: str, size: Size = DEFAULT_SIZE) -> str:
    """A plain log line on the row above the status line, so the screen stays readable on a terminal."""
    return f"{CSI}{size.rows - 1};1H{BODY}{CSI}K{visible(line)}\r\n"


def render_screen(screen: Screen, size: Size = DEFAULT_SIZE) -> str:
    body = list(screen.body)
    room = size.body_rows
    w = size.cols - 1
    if len(body) > room:
        hidden = len(body) - room + 1
        body = [*body[: room - 1], f"  ... {hidden} more lines (the serial console has them all)"]
    title = visible(screen.title)
    rows = [f"{BRIGHT}{fit(' ' + title, w)}", f"{BODY}{fit(' ' + '=' * (len(title) + 2), w)}"]
    for i, line in enumerate(body):
        colour = ERROR if screen.error and i == 0 else BODY
        rows.append(f"{colour}{fit('  ' + visible(line)).ljust(w)}{BODY}")
    out = [f"{CSI}?25l{BODY}{CSI}2J{CSI}1;1H"]  # hide the cursor, clear to blue
    out.extend(f"{CSI}{n};1H{row}\r\n" for n, row in enumerate(rows, start=1))
    out.append(render_status(screen.status, size))
    return "".join(out)


def render_summary(descriptor: Descriptor, inventory: DeviceInventory | None = None) -> list[str]:
    """The F2 summary of a descriptor: system, disks, partitions, filesystems (with mount points), backup set."""
    from recovery_env.model.descriptor import GPT_TYPES, MBR_TYPES, TableType

    d = descriptor
    s = d.system
    lines = [
        f"System:      {s.hostname}, {s.os_release}",
        f"             {s.architecture}, {s.firmware.value.upper()} firmware, kernel {s.kernel}",
        f"Captured:    {s.captured_at} by {s.tool_version}",
        f"Disks:       {len(d.disks)}",
    ]
    for disk in d.disks:
        was = ", ".join(x for x in (disk.device, disk.model) if x)
        lines.append(
            f"  {disk.key:<8} {format_size(disk.size_bytes, compact=True):>10}  {disk.table.value.upper():<4}"
            + ("  critical" if disk.critical else "")
            + (f"  (was {was})" if was else "")
        )
    lines.append(f"Partitions:  {len(d.partitions)}")
    for p in d.partitions:
        disk = d.disk(p.disk)
        kind = GPT_TYPES if disk.table is TableType.GPT else MBR_TYPES
        flags = " ".join(f.value for f in p.flags)
        lines.append(
            f"  {p.key:<8} {format_size(p.size * disk.logical_sector_size, compact=True):>10}  "
            f"{kind.get(p.type, p.type)}" + (f"  [{flags}]" if flags else "")
        )
    lines.append(f"Filesystems: {len(d.filesystems)}")
    for fs in d.filesystems:
        m = d.mount_of(fs.key)
        label = fs.label or "-"
        lines.append(
            f"  {fs.partition:<8} {fs.type.value:<5} {label:<11} {fs.uuid or '-':<36} {m.mountpoint if m else '-'}"
        )
    b = d.backup
    if b is None:
        lines.append("Backup set:  none recorded")
    else:
        medium = b.media_label or b.media_uuid or "any medium"
        lines.append(f"Backup set:  {b.path} on {medium}")
        lines.append(f"             {len(b.archives)} archives, {b.file_count} files, {b.compression.value}")
    bl = d.bootloader
    lines.append(f"Boot loader: {bl.kind.value}" + (f" on {bl.disk}" if bl.disk else ""))
    if inventory is not None:
        lines.append(f"Devices:     {len(inventory.devices)} in ASRPNP.SIF, {len(inventory.modules())} drivers")
    return lines


def summary_log_line(descriptor: Descriptor) -> str:
    """The one line tests and scripts match on the serial console."""
    return (
        f"summary: host={descriptor.system.hostname} disks={len(descriptor.disks)} "
        f"partitions={len(descriptor.partitions)} filesystems={len(descriptor.filesystems)}"
    )


PLAN_PROMPT = "To erase these disks and restore, press C.  To quit, press F3."


def plan_pages(lines: Sequence[str], size: Size = DEFAULT_SIZE) -> list[tuple[str, ...]]:
    """The plan screen's lines cut into pages that fit the screen with the prompt under them (nothing is hidden:
    every post-restore command and every warning is on some page)."""
    if len(lines) <= size.body_rows - 2:  # the lines, a blank row, the prompt
        return [tuple(lines)]
    room = size.body_rows - 3  # the lines, a blank row, the page row, the prompt
    return [tuple(lines[i : i + room]) for i in range(0, len(lines), room)]


def render_plan_page(pages: Sequence[tuple[str, ...]], page: int, *, confirmable: bool) -> Screen:
    """One page of the plan.  C is offered only once every page has been shown (``confirmable``)."""
    if len(pages) == 1:
        return Screen((*pages[0], "", PLAN_PROMPT), "C=Continue   F3=Quit")
    where = f"Page {page + 1} of {len(pages)} of the plan: N shows the next page, P the previous one."
    if confirmable:
        return Screen((*pages[page], "", where, PLAN_PROMPT), "C=Continue   F3=Quit")
    rest = "C is accepted once the last page of the plan has been shown."
    return Screen((*pages[page], "", where, rest), "N=Next page   P=Previous page   F3=Quit")
