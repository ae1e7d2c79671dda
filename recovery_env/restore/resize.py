"""The resize solver: where each partition of an original disk goes on a target disk of another size.  Pure.

:func:`disk_items` says what each partition is (fixed, swap, growable, extended) and the least its data needs;
:func:`solve` places them on a target of any size and says why each got its size; :func:`minimum_disk_bytes` is
the smallest target :func:`solve` accepts (what :mod:`recovery_env.restore.match` calls "holds the data").

The rules (the README's "Restoring onto disks of other sizes" says the same):

- **Fixed** items keep their size: the BIOS boot partition and the ESP (boot firmware and GRUB's core image do
  not grow with the disk), ``/boot`` (kernels, of a known count), a partition that holds no filesystem asr makes
  (its content is not restored), an extended partition without logical ones.
- **Swap** keeps its size on a larger disk (memory sets it, not the disk).  On a disk too small for everything it
  gives up space after the growable items have reached their minimum, down to :data:`SWAP_CAP_BYTES`.
- **Growable** items -- every other filesystem with files: ``/``, ``/home``, ``/srv``, a data FAT -- share the
  difference between the target's usable space and the original's in proportion to their original sizes; on a
  smaller disk they give up the missing space in the same proportion, none below the least its data needs
  (:func:`minimum_bytes`: the used bytes the capture recorded plus a margin; without a record, its original size).
- Free space the original left (between partitions, after the last one) stays free; on a smaller disk the free
  space after the last partition is given up first.
- Order, numbers and the gaps between partitions are kept (MBR: the EBR gap before each logical partition); an
  extended partition spans its logical ones as it did (its offset to the first, its tail after the last).
- A start that moves is rounded up to a 1 MiB boundary (:data:`ALIGN_BYTES`); a resized size is a whole number of
  MiB; nothing passes the usable end of the table (the backup GPT; the 2 TiB limit of an MBR entry), rounded down
  to 1 MiB.  The same usable space (or a disk with ``grow_last=no``) keeps every start and size as captured.
- Deterministic: integer arithmetic only; a share's rounding remainder goes to the largest fractions, ties to the
  earlier partition.

A target too small for the data is :class:`~recovery_env.errors.DataDoesNotFitError`, naming each item's least
size and how much is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from recovery_env.errors import DataDoesNotFitError, InternalError
from recovery_env.model.descriptor import (
    GPT_BIOS_BOOT,
    GPT_ENTRY_ARRAY_BYTES,
    GPT_ESP,
    MBR_ESP,
    MBR_EXTENDED,
    Descriptor,
    Disk,
    Filesystem,
    FsType,
    PartFlag,
    TableType,
)
from recovery_env.text import format_size

MIB = 1 << 20
ALIGN_BYTES = MIB  # moved starts and resized sizes are whole MiB, as partitioning tools align them
SWAP_CAP_BYTES = 1 << 30  # on a disk too small for everything, swap shrinks to this (or its size, if smaller)

#: The margin on the captured used bytes: the restored files take whole blocks of the new filesystem (tar counts
#: 512-byte records), files may have changed between the measure and the archive, and the restored system must be
#: able to write at its first boot (logs, journal files, an initramfs rebuild).
USED_MARGIN_PERCENT = 10


@dataclass(frozen=True)
class FsRoom:
    """What a fresh filesystem of one type keeps for itself, and the least its mkfs makes."""

    floor: int  # bytes: mkfs refuses (or makes nothing usable) below it
    fixed: int  # bytes kept whatever the size (journal, log, metadata chunks)
    percent: int  # share of the filesystem kept (inode tables, reserved blocks, metadata)


#: Per type: ext4's journal (64 MiB from a 1 GiB filesystem up to 16 GiB), its inode tables (one 256-byte inode per
#: 16 KiB: 1.6%) and the 5% reserved for root; xfs's log and its 300 MiB minimum (xfsprogs >= 5.19); btrfs's
#: system and metadata chunks (metadata DUP) and its ~256 MiB minimum with them; FAT's two tables and FAT32's
#: 65525-cluster minimum (33 MiB); swap's header.
FS_ROOM: dict[FsType, FsRoom] = {
    FsType.EXT2: FsRoom(16 * MIB, 8 * MIB, 7),
    FsType.EXT3: FsRoom(16 * MIB, 64 * MIB, 7),
    FsType.EXT4: FsRoom(16 * MIB, 64 * MIB, 7),
    FsType.XFS: FsRoom(300 * MIB, 64 * MIB, 2),
    FsType.BTRFS: FsRoom(256 * MIB, 128 * MIB, 10),
    FsType.VFAT: FsRoom(1 * MIB, 1 * MIB, 1),
    FsType.SWAP: FsRoom(1 * MIB, 0, 0),
}
FAT32_FLOOR = 33 * MIB


class ItemKind(StrEnum):
    FIXED = "fixed"
    SWAP = "swap"
    GROWABLE = "growable"
    EXTENDED = "extended"  # an MBR extended partition with logical ones: placed around them


@dataclass(frozen=True)
class Item:
    """One partition as the solver sees it (sizes in logical sectors)."""

    number: int
    start: int
    size: int
    kind: ItemKind
    name: str  # "/ (disk1p3, ext4)"
    minimum: int = 0  # sectors its data needs (growable), its size otherwise
    note: str = ""  # fixed: why; growable: how its minimum was found

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Placement:
    """Where one partition goes on the target, and why it has that size."""

    number: int
    start: int
    size: int
    original_start: int
    original_size: int
    reason: str

    @property
    def resized(self) -> bool:
        return self.size != self.original_size


@dataclass(frozen=True)
class DiskResize:
    disk: str
    sector_size: int
    target_bytes: int
    usable_end: int  # first sector past the space partitions may use on the target
    partitions: tuple[Placement, ...]  # in partition-number order

    def of(self, number: int) -> Placement:
        return next(p for p in self.partitions if p.number == number)


def _up(n: int, grain: int) -> int:
    return -(-n // grain) * grain


def _down(n: int, grain: int) -> int:
    return n // grain * grain


def minimum_bytes(fs: Filesystem, original_bytes: int) -> tuple[int, str]:
    """The least bytes ``fs`` may be made with, and how that was found: the used bytes the capture recorded plus
    :data:`USED_MARGIN_PERCENT`, plus what the new filesystem keeps for itself (:data:`FS_ROOM`), at least the type's
    floor -- and never more than it had (its files fitted there).  Not recorded (``used_bytes`` 0): its size."""
    if fs.used_bytes <= 0:
        return original_bytes, "no used size recorded: at least its original size"
    room = FS_ROOM[fs.type]
    floor = FAT32_FLOOR if fs.type is FsType.VFAT and fs.fat_size == 32 else room.floor
    data = fs.used_bytes * (100 + USED_MARGIN_PERCENT) // 100 + room.fixed
    need = max(floor, -(-data * 100 // (100 - room.percent)))
    if need >= original_bytes:
        return original_bytes, f"{format_size(fs.used_bytes)} used: at least its original size"
    return need, (f"{format_size(fs.used_bytes)} used + {USED_MARGIN_PERCENT}% + {fs.type.value}'s own "
                  f"{format_size(room.fixed)} and {room.percent}%")


def disk_items(descriptor: Descriptor, disk: Disk) -> tuple[Item, ...]:
    """Each partition of ``disk`` as a solver item, in partition-number order."""
    parts = descriptor.partitions_of(disk.key)
    ss = disk.logical_sector_size
    esp_mount = descriptor.bootloader.esp_mountpoint
    has_logicals = any(p.number >= 5 for p in parts) and disk.table is TableType.MBR
    out = []
    for p in parts:
        fs = next((f for f in descriptor.filesystems if f.partition == p.key), None)
        mount = descriptor.mount_of(fs.key) if fs is not None else None
        mp = mount.mountpoint if mount is not None and mount.mountpoint != "swap" else ""
        name = f"{mp} ({p.key}, {fs.type.value})" if mp and fs else f"{p.key} ({fs.type.value})" if fs else p.key
        ptype = p.type.lower()

        def fixed(why: str) -> Item:
            return Item(p.number, p.start, p.size, ItemKind.FIXED, name, p.size, f"fixed: {why}")  # noqa: B023

        if disk.table is TableType.MBR and ptype in MBR_EXTENDED:
            out.append(Item(p.number, p.start, p.size, ItemKind.EXTENDED, name, p.size,
                            "extended: spans its logical partitions") if has_logicals
                       else fixed("an extended partition without logical ones"))
        elif PartFlag.BIOS_GRUB in p.flags or ptype == GPT_BIOS_BOOT:
            out.append(fixed("BIOS boot partition"))
        elif PartFlag.ESP in p.flags or ptype in (GPT_ESP, MBR_ESP) or (esp_mount and mp == esp_mount):
            out.append(fixed("ESP"))
        elif fs is None:
            out.append(fixed("no filesystem asr makes on it"))
        elif fs.type is FsType.SWAP:
            out.append(Item(p.number, p.start, p.size, ItemKind.SWAP, name, p.size))
        elif mp == "/boot":
            out.append(fixed("/boot"))
        else:
            least, note = minimum_bytes(fs, p.size * ss)
            out.append(Item(p.number, p.start, p.size, ItemKind.GROWABLE, name, -(-least // ss), note))
    return tuple(out)


def _share(total: int, weights: Sequence[int], lows: Sequence[int]) -> list[int]:
    """``total`` units shared in proportion to ``weights``, none below its low (a clamped item takes its low and the
    rest is shared again); integers, the remainder to the largest fractions (ties: the earlier item).  Needs
    ``sum(lows) <= total``."""
    n = len(weights)
    clamped: dict[int, int] = {}
    while True:
        free = [i for i in range(n) if i not in clamped]
        rest = total - sum(clamped.values())
        wsum = sum(weights[i] for i in free) or 1
        low = [i for i in free if rest * weights[i] < lows[i] * wsum]
        if not low:
            break
        clamped.update((i, lows[i]) for i in low)
    out = [clamped.get(i, 0) for i in range(n)]
    quotas = {i: rest * weights[i] // wsum for i in free}
    left = rest - sum(quotas.values())
    for i in sorted(free, key=lambda i: (-(rest * weights[i] % wsum), i))[:left]:
        quotas[i] += 1
    for i, q in quotas.items():
        out[i] = q
    return out


def usable_end(disk: Disk, size_bytes: int) -> int:
    """First sector past the space partitions may use on a disk of ``size_bytes`` with ``disk``'s table, rounded
    down to :data:`ALIGN_BYTES` (GPT: before the backup header and entries; MBR: 2 TiB with 512-byte sectors)."""
    grain = max(ALIGN_BYTES // disk.logical_sector_size, 1)
    return _down(replace(disk, size_bytes=size_bytes).last_usable + 1, grain)


def _place(items: Sequence[Item], sizes: Mapping[int, int], grain: int) -> dict[int, tuple[int, int]]:
    """(start, size) of each item: the original gaps kept, a start that moves rounded up to ``grain``; an extended
    partition around its logical ones."""
    data = sorted((i for i in items if i.kind is not ItemKind.EXTENDED), key=lambda i: i.start)
    out: dict[int, tuple[int, int]] = {}
    prev_orig = prev_new = 0
    for it in data:
        pos = prev_new + (it.start - prev_orig)
        start = it.start if pos == it.start else _up(pos, grain)
        out[it.number] = (start, sizes[it.number])
        prev_orig, prev_new = it.end, start + sizes[it.number]
    for ext in (i for i in items if i.kind is ItemKind.EXTENDED):
        logicals = [i for i in data if ext.start <= i.start < ext.end]
        if not logicals:  # pragma: no cover - disk_items makes an extended partition without logicals fixed
            raise InternalError(f"extended partition {ext.name} without logical partitions")
        first, last = logicals[0], logicals[-1]
        start = out[first.number][0] - (first.start - ext.start)
        end = sum(out[last.number]) + (ext.end - last.end)
        out[ext.number] = (start, end - start)
    return out


def _least_sizes(items: Sequence[Item], ss: int) -> dict[int, int]:
    """The least size of each item: growables at their minimum, swap at :data:`SWAP_CAP_BYTES` (both in whole
    grains, never more than they were), the others as they were."""
    grain = max(ALIGN_BYTES // ss, 1)
    out = {}
    for it in items:
        least = it.size
        if it.kind is ItemKind.GROWABLE:
            least = _up(it.minimum, grain)
        elif it.kind is ItemKind.SWAP:
            least = _up(min(it.size, SWAP_CAP_BYTES // ss), grain)
        out[it.number] = min(least, it.size)
    return out


def minimum_disk_bytes(disk: Disk, items: Sequence[Item]) -> int:
    """The smallest target (bytes) :func:`solve` places ``items`` on: every item at its least size."""
    ss = disk.logical_sector_size
    grain = max(ALIGN_BYTES // ss, 1)
    if not disk.grow_last:
        return disk.size_bytes if not items else _need_bytes(disk, max(i.end for i in items), 1)
    placed = _place(items, _least_sizes(items, ss), grain)
    return _need_bytes(disk, max((s + n for s, n in placed.values()), default=0), grain)


def _need_bytes(disk: Disk, end: int, grain: int) -> int:
    """Bytes of the smallest disk whose usable end (rounded down to ``grain``) is at or past ``end``."""
    tail = 0 if disk.table is TableType.MBR else 1 + -(-GPT_ENTRY_ARRAY_BYTES // disk.logical_sector_size)
    return (_up(end, grain) + tail) * disk.logical_sector_size


def _describe_target(target: str, size_bytes: int) -> str:
    return target or f"a disk of {format_size(size_bytes)}"


def solve(disk: Disk, items: Sequence[Item], target_bytes: int, *, target: str = "") -> DiskResize:
    """Every partition of ``disk`` placed on a target of ``target_bytes`` (``target``: its name, for messages).
    DataDoesNotFitError when even the least sizes do not fit."""
    ss = disk.logical_sector_size
    grain = max(ALIGN_BYTES // ss, 1)
    orig = {it.number: it.size for it in items}
    if not disk.grow_last:
        end = replace(disk, size_bytes=target_bytes).last_usable + 1
        _check_fits(disk, items, _place(items, orig, grain), end, target, target_bytes, resizing=False)
        why = "kept: this disk's partitions are never resized (grow_last=no)"
        return _result(disk, items, orig, grain, target_bytes, end, dict.fromkeys(orig, why))
    end = usable_end(disk, target_bytes)
    least = _least_sizes(items, ss)
    _check_fits(disk, items, _place(items, least, grain), end, target, target_bytes, resizing=True)
    orig_end = max([usable_end(disk, disk.size_bytes), *(it.end for it in items)])
    last_end = max((it.end for it in items), default=0)
    delta = end - orig_end  # > 0: space to share; < 0: space to give up (after the free tail)
    if delta < 0:
        delta = min(0, delta + (orig_end - last_end))
    for _ in range(len(items) + 8):  # a start rounded up to 1 MiB can push the end over: give that up and retry
        sizes, reasons = _allocate(items, delta, least, grain)
        placed = _place(items, sizes, grain)
        over = max((s + n for s, n in placed.values()), default=0) - end
        if over <= 0:
            return _result(disk, items, sizes, grain, target_bytes, end, reasons)
        delta -= _up(over, grain)
    sizes = least  # pragma: no cover - the least sizes fit (checked above); the loop ends well before
    return _result(disk, items, sizes, grain, target_bytes, end, dict.fromkeys(orig, "shrinks to its least size"))


def _check_fits(disk: Disk, items: Sequence[Item], placed: Mapping[int, tuple[int, int]], end: int, target: str,
                target_bytes: int, *, resizing: bool) -> None:
    reach = max((s + n for s, n in placed.values()), default=0)
    if reach <= end:
        return
    ss = disk.logical_sector_size
    # how much larger the target must be: the least disk these sizes fit on, minus the target
    missing = _need_bytes(disk, reach, max(ALIGN_BYTES // ss, 1) if resizing else 1) - target_bytes
    shown = sorted((i for i in items if i.kind is not ItemKind.EXTENDED),
                   key=lambda i: (-placed[i.number][1], i.number))
    each = "; ".join(
        f"{i.name} {format_size(placed[i.number][1] * ss)}" + (f" ({why})" if why else "")
        for i in shown
        for why in ("swap at its cap" if i.kind is ItemKind.SWAP else i.note,)
    )
    how = "at the least their data needs" if resizing else "as captured (grow_last=no)"
    raise DataDoesNotFitError(
        f"the data of {disk.key} (was {disk.device + ', ' if disk.device else ''}{format_size(disk.size_bytes)}) "
        "does not fit on "
        f"{_describe_target(target, target_bytes)}: {format_size(missing)} ({missing} bytes) missing; its partitions "
        f"{how}: {each}"
    )


def _allocate(items: Sequence[Item], delta: int, least: Mapping[int, int], grain: int
              ) -> tuple[dict[int, int], dict[int, str]]:
    """The sizes for a change of ``delta`` sectors in the resizable items' total, and the reason of each."""
    sizes = {it.number: it.size for it in items}
    reasons = {it.number: it.note for it in items}
    growable = [it for it in items if it.kind is ItemKind.GROWABLE]
    swaps = [it for it in items if it.kind is ItemKind.SWAP]
    for it in swaps:
        reasons[it.number] = "fixed: swap keeps its size (memory sets it, not the disk)"
    for it in growable:
        reasons[it.number] = "kept: the target offers the space it had"
    if delta > 0:
        lows = [-(-it.size // grain) for it in growable]
        total = (sum(it.size for it in growable) + delta) // grain
        if not growable or sum(lows) > total:
            return sizes, reasons
        shares = _share(total, [it.size for it in growable], lows)
        added = sum(g * grain for g in shares) - sum(it.size for it in growable)
        for it, g in zip(growable, shares, strict=True):
            sizes[it.number] = g * grain
            pct = (g * grain - it.size) * 100 // added if added else 0
            reasons[it.number] = (f"grows: {it.name} takes {pct}% of the {format_size(added * _ss(grain))} added, "
                                  "in proportion to its size")
        return sizes, reasons
    if delta == 0:
        return sizes, reasons
    cut = -delta
    for group, what in ((growable, "growable"), (swaps, "swap")):
        movable = [it for it in group if least[it.number] < it.size]
        if not movable:
            continue
        room = sum(it.size - least[it.number] for it in movable)
        if room <= cut:  # all of them to their least
            for it in movable:
                sizes[it.number] = least[it.number]
                reasons[it.number] = _shrunk(it, what, least[it.number], grain, at_least=True)
            cut -= room
            if cut <= 0:
                break
            continue
        total = (sum(it.size for it in movable) - cut) // grain
        shares = _share(total, [it.size for it in movable], [least[it.number] // grain for it in movable])
        for it, g in zip(movable, shares, strict=True):
            sizes[it.number] = g * grain
            reasons[it.number] = _shrunk(it, what, g * grain, grain, at_least=g * grain == least[it.number])
        break
    return sizes, reasons


def _ss(grain: int) -> int:
    return ALIGN_BYTES // grain


def _shrunk(it: Item, what: str, size: int, grain: int, *, at_least: bool) -> str:
    ss = _ss(grain)
    if what == "swap":
        return f"swap capped at {format_size(size * ss)} to fit" if at_least else "swap shrinks to fit"
    if at_least:
        return f"shrinks to fit, to the least its data needs: {it.note}"
    return (f"shrinks to fit: gives up {format_size((it.size - size) * ss)} in proportion to its size "
            f"(its data needs {format_size(it.minimum * ss)})")


def _result(disk: Disk, items: Sequence[Item], sizes: Mapping[int, int], grain: int, target_bytes: int, end: int,
            reasons: Mapping[int, str]) -> DiskResize:
    placed = _place(items, sizes, grain)
    return DiskResize(
        disk.key,
        disk.logical_sector_size,
        target_bytes,
        end,
        tuple(Placement(it.number, *placed[it.number], it.start, it.size, reasons[it.number])
              for it in sorted(items, key=lambda i: i.number)),
    )


def solve_disk(descriptor: Descriptor, disk: Disk, target_bytes: int, *, target: str = "") -> DiskResize:
    """:func:`solve` for one disk of a descriptor."""
    return solve(disk, disk_items(descriptor, disk), target_bytes, target=target)


def descriptor_minimum_bytes(descriptor: Descriptor, disk: Disk) -> int:
    """:func:`minimum_disk_bytes` for one disk of a descriptor."""
    return minimum_disk_bytes(disk, disk_items(descriptor, disk))
