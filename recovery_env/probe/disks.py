"""Find the disks of the running machine that a restore could write to, and the ones it must never touch.

Standard library only: this runs on the minimal Python of the boot media.  The facts come from sysfs (size,
sector sizes, model, serial, WWN: no tool needed) and from ``blkid -p -o export`` (the current partition table
type and disk id).  Every parser here is a pure function of text, tested with output captured on real machines;
the thin readers (``read_*``, ``find_*``) only gather that text.

The disks that hold the boot medium (the device under /run/asr/media) and the backup medium are never restore
targets: :func:`find_media_disks` names them from /proc/self/mountinfo and sysfs, whatever the filesystem and
whatever lies between it and the disks: every member of a btrfs, the devices under device-mapper and MD, the disk
holding a loop device's backing file (nested loops too), a partition's disk.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from recovery_env.errors import MediaError
from recovery_env.model.descriptor import TableType
from recovery_env.probe.layout import read_blkid
from recovery_env.text import format_size

# Kernel name prefixes that are never restore targets unless named explicitly (``include``): loop devices, RAM
# disks, optical and floppy drives, compressed swap, device-mapper and MD arrays, network block devices.
SKIPPED_PREFIXES: tuple[str, ...] = ("loop", "ram", "sr", "fd", "zram", "dm-", "md", "nbd", "mtdblock")

# sysfs attributes read for each disk, relative to /sys/block/NAME (first one present wins for each fact).
SYSFS_FILES: tuple[str, ...] = (
    "dev",
    "size",
    "ro",
    "removable",
    "hidden",
    "queue/logical_block_size",
    "queue/physical_block_size",
    "device/model",
    "device/vendor",
    "device/serial",
    "serial",
    "device/wwid",
    "wwid",
    "loop/backing_file",
)

SYSFS_BINARY_FILES: tuple[str, ...] = ("device/vpd_pg80",)

SECTOR_UNIT = 512  # /sys/block/X/size counts 512-byte units whatever the logical sector size


def normalize_wwn(text: str) -> str:
    """A World Wide Name in one spelling: ``naa.5000C500A1B2C3D4``, ``0x5000c500a1b2c3d4`` → ``5000c500a1b2c3d4``.
    T10 vendor ids (``t10.ATA ...``) are not WWNs: they give ``""``."""
    t = text.strip().lower()
    for prefix in ("naa.", "eui.", "0x"):
        if t.startswith(prefix):
            t = t[len(prefix) :]
            break
    else:
        if "." in t or " " in t:
            return ""
    return t if t and all(c in "0123456789abcdef" for c in t) else ""


@dataclass(frozen=True)
class TargetDisk:
    """A disk of the running machine, as the matcher and the planner see it."""

    name: str  # kernel name: vda, sda, nvme0n1, loop0
    size_bytes: int
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    model: str = ""
    serial: str = ""
    wwn: str = ""  # normalized (see normalize_wwn)
    table: TableType | None = None  # current partition table, if any
    disk_id: str = ""  # current GPT disk GUID (lower case) or MBR signature "0x1234abcd"
    read_only: bool = False
    removable: bool = False
    dev_root: str = "/dev"

    @property
    def device(self) -> str:
        return f"{self.dev_root}/{self.name}"

    @property
    def size_sectors(self) -> int:
        return self.size_bytes // self.logical_sector_size

    def describe(self) -> str:
        """``/dev/vda (QEMU HARDDISK, 1.0 GiB)``: how errors and the plan screen name the disk."""
        what = ", ".join(x for x in (self.model, format_size(self.size_bytes)) if x)
        return f"{self.device} ({what})"

    def partition_device(self, number: int) -> str:
        return partition_device(self.device, number)


def partition_device(disk_device: str, number: int) -> str:
    """The kernel's name for partition ``number`` of a disk: ``/dev/vda`` → ``/dev/vda1``; a name ending in a
    digit takes a ``p``: ``/dev/nvme0n1`` → ``/dev/nvme0n1p1``, ``/dev/loop0`` → ``/dev/loop0p1``."""
    if number < 1:
        raise ValueError(f"partition number must be ≥ 1, not {number}")
    sep = "p" if disk_device[-1:].isdigit() else ""
    return f"{disk_device}{sep}{number}"


def is_skipped_name(name: str) -> bool:
    return name.startswith(SKIPPED_PREFIXES)


# ----------------------------------------------------------------------------------------------------- parsers


def parse_table_facts(blkid: Mapping[str, str]) -> tuple[TableType | None, str]:
    """Table type and disk id from parsed blkid output; an MBR id gets its ``0x`` (the descriptor's spelling)."""
    try:
        table = TableType.from_sfdisk(blkid.get("PTTYPE", ""))
    except KeyError:
        return None, ""
    ptuuid = blkid.get("PTUUID", "").lower()
    if table is TableType.MBR and ptuuid and not ptuuid.startswith("0x"):
        ptuuid = "0x" + ptuuid
    return table, ptuuid


def parse_vpd_pg80(data: bytes) -> str:
    """The unit serial number from a SCSI VPD page 0x80 (4-byte header, then ASCII, padded with blanks)."""
    if len(data) < 4 or data[1] != 0x80:
        return ""
    length = int.from_bytes(data[2:4], "big")
    return data[4 : 4 + length].decode("ascii", errors="replace").strip(" \x00")


def make_target_disk(
    name: str, files: Mapping[str, str], *, vpd_pg80: bytes = b"", blkid: Mapping[str, str] | None = None
) -> TargetDisk:
    """A TargetDisk from the texts of its sysfs files (keys of SYSFS_FILES) and its parsed blkid output."""

    def first(*keys: str) -> str:
        for k in keys:
            v = files.get(k, "").strip()
            if v:
                return v
        return ""

    size_units = int(first("size") or "0")
    logical = int(first("queue/logical_block_size") or "512")
    physical = int(first("queue/physical_block_size") or str(logical))
    serial = first("device/serial", "serial") or parse_vpd_pg80(vpd_pg80)
    table, disk_id = parse_table_facts(blkid or {})
    return TargetDisk(
        name=name,
        size_bytes=size_units * SECTOR_UNIT,
        logical_sector_size=logical,
        physical_sector_size=physical,
        model=" ".join(first("device/model").split()),
        serial=serial,
        wwn=normalize_wwn(first("device/wwid", "wwid")),
        table=table,
        disk_id=disk_id,
        read_only=first("ro") == "1",
        removable=first("removable") == "1",
    )


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    devno: str  # "major:minor" of the mounted device (0:N for virtual filesystems)
    root: str
    mountpoint: str
    fstype: str
    source: str


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountInfo]:
    """/proc/self/mountinfo → MountInfo records, in mount order."""
    mounts: list[MountInfo] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, sep, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if not sep or len(f) < 5 or len(r) < 2:
            raise MediaError(f"/proc/self/mountinfo: cannot parse line {line!r}")
        mounts.append(
            MountInfo(
                mount_id=int(f[0]),
                devno=f[2],
                root=_unescape_mountinfo(f[3]),
                mountpoint=_unescape_mountinfo(f[4]),
                fstype=r[0],
                source=_unescape_mountinfo(r[1]),
            )
        )
    return mounts


def find_mount_of(path: str, mounts: Iterable[MountInfo]) -> MountInfo | None:
    """The mount a path lives on: the last-mounted one with the longest mount point that is a prefix of it."""
    p = os.path.normpath(path)
    best: MountInfo | None = None
    for m in mounts:
        mp = m.mountpoint
        inside = p == mp or mp == "/" or p.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = m
    return best


MAX_NESTING = 16  # loop on a file on a loop-mounted filesystem on ...: the kernel itself stops far earlier


class _HoldingWalk:
    """The walk behind :func:`find_holding_disks`: from a path to the mount holding it, from a mount to its block
    device, from a block device down to the whole disks under it, through sysfs alone:

    - a partition (``partition`` file) → its disk, the directory above it;
    - device-mapper and MD (``slaves/*``, links to the devices under them) → each of them, recursively;
    - a loop device (``loop/backing_file``) → the filesystem holding that file → its devices, recursively;
    - a btrfs member (``fs/btrfs/<fsuuid>/devices/*``) → every member of that filesystem.

    btrfs shows an anonymous device number (0:NN) in mountinfo, so a mount whose number is not a block device is
    found by its source (``/dev/vdb1``, ``/dev/mapper/NAME``)."""

    def __init__(self, mounts: Sequence[MountInfo], sys_root: Path) -> None:
        self.mounts = mounts
        self.sys = sys_root
        self.held: dict[str, str] = {}  # whole disk name → why
        self.devices: dict[str, str] = {}  # "major:minor" of every block device met on the way → why
        self.seen: set[Path] = set()
        self.btrfs = [
            [e.resolve() for e in sorted((fs / "devices").iterdir())]
            for fs in (sorted((sys_root / "fs" / "btrfs").iterdir()) if (sys_root / "fs" / "btrfs").is_dir() else ())
            if (fs / "devices").is_dir()
        ]

    def node_of_devno(self, devno: str) -> Path | None:
        link = self.sys / "dev" / "block" / devno
        return link.resolve() if devno and link.exists() else None

    def node_of_device(self, device: str) -> Path | None:
        """The sysfs directory of ``/dev/NAME`` or ``/dev/mapper/NAME`` (None when there is none)."""
        if not device.startswith("/dev/"):
            return None
        name = os.path.basename(device)
        block = self.sys / "class" / "block"
        if device.startswith("/dev/mapper/"):
            for entry in sorted(block.iterdir()) if block.is_dir() else ():
                if _read_text(entry / "dm" / "name").strip() == name:
                    return entry.resolve()
            return None
        return (block / name).resolve() if (block / name).exists() else None

    def add_path(self, path: str, why: str, depth: int) -> None:
        m = find_mount_of(path, self.mounts)
        if m is None:
            return
        node = self.node_of_devno(m.devno) or self.node_of_device(m.source)
        if node is not None:
            self.add_node(node, why, depth)

    def add_node(self, node: Path, why: str, depth: int) -> None:
        if node in self.seen:
            return
        self.seen.add(node)
        self.devices.setdefault(_read_text(node / "dev").strip(), why)
        disk = node.parent if (node / "partition").is_file() else node
        self.held.setdefault(disk.name, why)
        for members in self.btrfs:
            if node in members:
                for member in members:
                    self.add_node(member, f"{why} (btrfs with {node.name})", depth)
        slaves = disk / "slaves"
        for below in sorted(slaves.iterdir()) if slaves.is_dir() else ():
            self.add_node(below.resolve(), f"{why} (under {disk.name})", depth)
        backing = _read_text(disk / "loop" / "backing_file").strip().removesuffix(" (deleted)")
        if backing and depth < MAX_NESTING:
            self.add_path(backing, f"holds {backing} (behind {why.removeprefix('holds ')})", depth + 1)


def find_holding_disks(
    paths: Iterable[str], mounts: Iterable[MountInfo], sys_root: Path = Path("/sys"), *, devices: Iterable[str] = ()
) -> dict[str, str]:
    """Which block devices hold the given paths and devices, down to the whole disks: ``{kernel name: why}``
    (``vdb``, and for a loop, MD or device-mapper device the device itself and every disk under it).  Reads only
    the sysfs tree at ``sys_root`` (a copy of a real kernel's in tests); ``devices`` are ``/dev`` paths, e.g. the
    device the agent itself mounted."""
    walk = _HoldingWalk(list(mounts), sys_root)
    for path in paths:
        walk.add_path(path, f"holds {path}", 0)
    for device in devices:
        node = walk.node_of_device(device)
        if node is not None:
            walk.add_node(node, f"holds {device}", 0)
    return walk.held


def find_holding_devices(
    path: str, *, sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")
) -> dict[str, str]:
    """Every block device a path depends on, by device number: ``{"7:1": "holds /mnt/x", "259:2": "holds
    /srv/a.img (behind /mnt/x)"}``: the device of its filesystem, and through loop devices (nested too), MD,
    device-mapper and btrfs the devices under it.  ``asr backup`` refuses a destination that depends on a
    filesystem it captures."""
    walk = _HoldingWalk(parse_mountinfo(_read_text(proc_root / "self" / "mountinfo")), sys_root)
    walk.add_path(path, f"holds {path}", 0)
    return walk.devices


# ----------------------------------------------------------------------------------------------------- readers


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def read_sysfs_files(sys_block_dir: Path) -> dict[str, str]:
    """The texts of SYSFS_FILES under /sys/block/NAME (missing files are left out)."""
    files: dict[str, str] = {}
    for rel in SYSFS_FILES:
        text = _read_text(sys_block_dir / rel)
        if text:
            files[rel] = text
    return files


def find_disks(
    *, include: Collection[str] = (), sys_root: Path = Path("/sys"), dev_root: str = "/dev", probe: bool = True
) -> list[TargetDisk]:
    """The disks of this machine that could be restore targets, by kernel name.  Loop devices, RAM disks, optical
    and floppy drives, zram, device-mapper and MD devices are skipped unless named in ``include`` (names or
    /dev paths); so are disks of size 0 and hidden (multipath) ones.  ``probe`` runs blkid for the table facts."""
    wanted = {os.path.basename(x) for x in include}
    disks: list[TargetDisk] = []
    block = sys_root / "block"
    for disk_dir in sorted(block.iterdir()) if block.is_dir() else []:
        name = disk_dir.name
        if is_skipped_name(name) and name not in wanted:
            continue
        files = read_sysfs_files(disk_dir)
        if files.get("hidden", "0").strip() == "1":
            continue
        try:
            vpd = (disk_dir / "device" / "vpd_pg80").read_bytes()
        except OSError:
            vpd = b""
        blkid = read_blkid(f"{dev_root}/{name}", strict=False) if probe else {}
        disk = make_target_disk(name, files, vpd_pg80=vpd, blkid=blkid)
        if disk.size_bytes == 0:
            continue
        disks.append(replace(disk, dev_root=dev_root))
    return disks


def find_media_disks(
    paths: Iterable[str],
    *,
    devices: Iterable[str] = (),
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
) -> dict[str, str]:
    """The disks holding the given paths (the boot medium's mount point, the backup set's directory) and devices
    (the ones the agent mounted): ``{"/dev/vdb": "holds /run/asr/backup"}``.  These are never restore targets.
    Device paths are resolved first (``/dev/disk/by-label/X`` → ``/dev/vdb1``)."""
    mounts = parse_mountinfo(_read_text(proc_root / "self" / "mountinfo"))
    real = [os.path.realpath(d) if d.startswith("/dev/") else d for d in devices]
    held = find_holding_disks(paths, mounts, sys_root, devices=real)
    return {f"/dev/{disk}": why for disk, why in held.items()}
