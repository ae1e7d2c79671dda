"""The storage layout of a machine, read from its own tools' output and turned into descriptor records.

Two halves, as everywhere in asr:

- pure functions from tool output (text) to model objects: :func:`parse_sfdisk_json`, :func:`parse_lsblk_json`,
  :func:`parse_blkid_export`, :func:`parse_dumpe2fs`, :func:`parse_findmnt_json`, :func:`parse_fstab`,
  :func:`parse_os_release`, and :func:`plan_layout`, which turns the facts of the chosen disks plus /etc/fstab into
  disks, partitions, filesystems, mounts and the boot loader.  Tests feed them real output of the tools run on
  image files.
- thin readers that run the tools through :func:`recovery_env.run.run`: :func:`read_disk_facts`,
  :func:`read_fstab`, :func:`read_boot_facts`, :func:`read_system_info`, :func:`read_layout`.

Where facts come from:

- lsblk (``--json --bytes``): the disk's size, sector sizes, model, serial, WWN, and its children's types (a
  ``crypt``/``lvm``/``raid*`` child means device-mapper or MD on top of the disk);
- ``sfdisk --json``: the partition table (label, disk GUID / MBR signature, start, size, type, PARTUUID, name,
  attributes, bootable);
- ``blkid -p -o export`` per partition (a low-level probe, no cache, no udev): filesystem type, UUID, label, FAT
  version; ``LVM2_member``/``linux_raid_member``/``crypto_LUKS`` mark a partition capture refuses;
- ``dumpe2fs -h`` for ext2/3/4: block size, inode size, feature list;
- /etc/fstab under the captured root: which filesystem is mounted where, and how fstab names it;
- findmnt (``--json --real``): what is mounted where now (the source directories of the archives).

Firmware: on a live capture (root ``/``) it is UEFI when /sys/firmware/efi exists; for a capture of another root
(``--root``) it is what ``--firmware`` says, else UEFI when fstab mounts an ESP and the root has grub's
x86_64-efi modules or an ESP loader, else BIOS.  The descriptor records the result.

Standard library only: this module also runs inside the boot media (offline capture).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recovery_env.errors import InputError, LayoutError, ToolError, UnsupportedLayoutError
from recovery_env.model.descriptor import (
    GPT_BIOS_BOOT,
    GPT_ESP,
    MBR_ESP,
    Bootloader,
    BootloaderKind,
    Disk,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    Mount,
    PartFlag,
    Partition,
    SystemInfo,
    TableType,
    path_problem,
)
from recovery_env.run import run

# Mount points whose filesystems make up "the system": their disks are critical, their filesystems archived.
CRITICAL_MOUNTS: tuple[str, ...] = ("/", "/boot", "/boot/efi", "/usr", "/var")

# fstab types that are not on a disk partition (never resolved to a captured filesystem).
PSEUDO_FSTYPES = frozenset(
    {"proc", "sysfs", "devpts", "tmpfs", "devtmpfs", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
     "efivarfs", "mqueue", "hugetlbfs", "configfs", "fusectl", "pstore", "bpf", "autofs", "overlay", "nfs", "nfs4",
     "cifs", "smb3", "binfmt_misc", "ramfs", "squashfs", "fuse", "9p", "virtiofs"}
)

# blkid TYPE values that capture refuses, with what they are.
SIGNATURE_OFFENDERS: dict[str, str] = {
    "LVM2_member": "LVM physical volume (LVM2_member)",
    "linux_raid_member": "MD RAID member (linux_raid_member)",
    "isw_raid_member": "Intel firmware RAID member (isw_raid_member)",
    "ddf_raid_member": "DDF firmware RAID member (ddf_raid_member)",
    "crypto_LUKS": "LUKS encrypted volume (crypto_LUKS)",
    "zfs_member": "ZFS pool member (zfs_member)",
    "bcache": "bcache backing device (bcache)",
}

# lsblk TYPE values (of a disk or anything below it) that capture refuses.
LSBLK_TYPE_OFFENDERS: dict[str, str] = {
    "lvm": "LVM logical volume",
    "crypt": "dm-crypt mapping",
    "dm": "device-mapper device",
    "mpath": "multipath device",
    "md": "MD RAID array",
    "raid0": "MD RAID0 array",
    "raid1": "MD RAID1 array",
    "raid4": "MD RAID4 array",
    "raid5": "MD RAID5 array",
    "raid6": "MD RAID6 array",
    "raid10": "MD RAID10 array",
    "linear": "MD linear array",
}

# GPT attribute names as sfdisk prints them → bit numbers ("GUID:N" is bit N).
GPT_ATTR_BITS: dict[str, int] = {"RequiredPartition": 0, "NoBlockIOProtocol": 1, "LegacyBIOSBootable": 2}

FAT_VERSIONS: dict[str, int] = {"FAT12": 12, "FAT16": 16, "FAT32": 32}

# dumpe2fs lists these state flags among the features; they are not features mke2fs -O can make.
EXT_STATE_FLAGS = frozenset({"needs_recovery", "orphan_present"})

LSBLK_COLUMNS = "NAME,KNAME,PATH,TYPE,SIZE,LOG-SEC,PHY-SEC,MODEL,SERIAL,WWN,MAJ:MIN,PKNAME,MOUNTPOINTS"


# --------------------------------------------------------------------------------------------------------------
# Tool output → records (pure)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockDevice:
    """One row of ``lsblk --json --bytes``, with its children."""

    name: str
    path: str
    type: str  # disk, part, loop, lvm, crypt, raid1, rom...
    size: int
    logical_sector_size: int
    physical_sector_size: int
    model: str = ""
    serial: str = ""
    wwn: str = ""
    maj_min: str = ""
    mountpoints: tuple[str, ...] = ()
    children: tuple[BlockDevice, ...] = ()

    def walk(self) -> Iterable[BlockDevice]:
        yield self
        for c in self.children:
            yield from c.walk()


def parse_lsblk_json(text: str) -> tuple[BlockDevice, ...]:
    """``lsblk --json --bytes -o LSBLK_COLUMNS`` → block devices (top level, with children)."""
    data = _load_json(text, "lsblk")
    return tuple(_block_device(row) for row in data.get("blockdevices", []))


def _block_device(row: Mapping[str, Any]) -> BlockDevice:
    def s(key: str) -> str:
        v = row.get(key)
        return "" if v is None else str(v).strip()

    mps = row.get("mountpoints")
    if mps is None:
        mps = [row.get("mountpoint")]
    return BlockDevice(
        name=s("name"),
        path=s("path") or "/dev/" + s("name"),
        type=s("type"),
        size=int(row.get("size") or 0),
        logical_sector_size=int(row.get("log-sec") or 512),
        physical_sector_size=int(row.get("phy-sec") or 512),
        model=s("model"),
        serial=s("serial"),
        wwn=s("wwn"),
        maj_min=s("maj:min"),
        mountpoints=tuple(str(m) for m in mps if m),
        children=tuple(_block_device(c) for c in row.get("children", []) or []),
    )


@dataclass(frozen=True)
class SfdiskPartition:
    node: str
    number: int
    start: int
    size: int
    type: str  # lower case: MBR id "83" or GPT GUID
    uuid: str = ""  # GPT partition GUID, lower case
    name: str = ""
    attributes: int = 0
    bootable: bool = False


@dataclass(frozen=True)
class SfdiskTable:
    label: TableType
    id: str  # GPT disk GUID (lower case) or MBR signature "0x1234abcd"
    sector_size: int
    partitions: tuple[SfdiskPartition, ...]


def parse_gpt_attrs(text: str, where: str = "sfdisk") -> int:
    """sfdisk's ``attrs`` ("RequiredPartition LegacyBIOSBootable GUID:60") → attribute bits."""
    bits = 0
    for word in text.replace(",", " ").split():
        if word in GPT_ATTR_BITS:
            bits |= 1 << GPT_ATTR_BITS[word]
        elif word.startswith("GUID:") and word[5:].isdigit() and int(word[5:]) < 64:
            bits |= 1 << int(word[5:])
        else:
            raise InputError(f"{where}: unknown GPT attribute {word!r}")
    return bits


def parse_sfdisk_json(text: str, where: str = "sfdisk --json") -> SfdiskTable:
    """``sfdisk --json DEV`` → the partition table."""
    data = _load_json(text, where).get("partitiontable")
    if not isinstance(data, dict):
        raise InputError(f"{where}: no 'partitiontable' object")
    try:
        label = TableType.from_sfdisk(str(data["label"]))
    except KeyError as e:
        raise InputError(f"{where}: unsupported partition table label {data.get('label')!r}") from e
    unit = data.get("unit", "sectors")
    if unit != "sectors":
        raise InputError(f"{where}: unit {unit!r}, expected sectors")
    raw_id = str(data.get("id", "")).lower()
    parts = []
    for i, p in enumerate(data.get("partitions", []), 1):
        node = str(p.get("node", ""))
        m = re.search(r"(\d+)$", node)
        if m is None:
            raise InputError(f"{where}: partition {i}: no number in node name {node!r}")
        ptype = str(p.get("type", "")).lower()
        if label is TableType.MBR:
            ptype = ptype.zfill(2)  # sfdisk prints "5" for the extended type; the model spells MBR ids "05"
        parts.append(
            SfdiskPartition(
                node=node,
                number=int(m.group(1)),
                start=int(p["start"]),
                size=int(p["size"]),
                type=ptype,
                uuid=str(p.get("uuid", "")).lower(),
                name=str(p.get("name", "")),
                attributes=parse_gpt_attrs(str(p.get("attrs", "")), f"{where}: partition {node}"),
                bootable=bool(p.get("bootable", False)),
            )
        )
    return SfdiskTable(label=label, id=raw_id, sector_size=int(data.get("sectorsize", 512)), partitions=tuple(parts))


def parse_blkid_export(text: str) -> dict[str, str]:
    """``blkid -p -o export`` → {KEY: value}.  Empty output (nothing found) → {}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class ExtFacts:
    """What ``dumpe2fs -h`` says of an ext2/3/4 filesystem that mkfs needs to make it alike."""

    block_size: int
    inode_size: int
    features: tuple[str, ...]


def parse_dumpe2fs(text: str, where: str = "dumpe2fs -h") -> ExtFacts:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    try:
        return ExtFacts(
            block_size=int(fields["Block size"]),
            inode_size=int(fields.get("Inode size", "0") or 0),
            features=tuple(f for f in fields.get("Filesystem features", "").split() if f not in EXT_STATE_FLAGS),
        )
    except (KeyError, ValueError) as e:
        raise InputError(f"{where}: no usable 'Block size' line") from e


@dataclass(frozen=True)
class FstabEntry:
    spec: str  # first field as written
    file: str  # mount point ("none"/"swap" for swap)
    vfstype: str
    options: str = "defaults"
    dump: int = 0
    passno: int = 0
    line: int = 0

    @property
    def kind(self) -> FstabSpec:
        """How the first field names the device."""
        head = self.spec.split("=", 1)[0].upper()
        if "=" in self.spec and head in FSTAB_SPEC_PREFIXES:
            return FSTAB_SPEC_PREFIXES[head]
        return FstabSpec.PATH

    @property
    def value(self) -> str:
        """The UUID / label / path the first field names (tag prefix and quotes removed)."""
        if self.kind is FstabSpec.PATH:
            return _fstab_unescape(self.spec)
        return _fstab_unescape(self.spec.split("=", 1)[1]).strip('"')

    @property
    def mountpoint(self) -> str:
        return "swap" if self.vfstype == "swap" else _fstab_unescape(self.file)


FSTAB_SPEC_PREFIXES: dict[str, FstabSpec] = {
    "UUID": FstabSpec.UUID,
    "LABEL": FstabSpec.LABEL,
    "PARTUUID": FstabSpec.PARTUUID,
    "PARTLABEL": FstabSpec.PARTLABEL,
}


def _fstab_unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def parse_fstab(text: str, where: str = "/etc/fstab") -> tuple[FstabEntry, ...]:
    entries = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 3:
            raise InputError(f"{where} line {n}: expected at least 3 fields, got {len(f)}: {raw!r}")
        try:
            dump = int(f[4]) if len(f) > 4 else 0
            passno = int(f[5]) if len(f) > 5 else 0
        except ValueError as e:
            raise InputError(f"{where} line {n}: dump and pass must be numbers: {raw!r}") from e
        entries.append(FstabEntry(f[0], f[1], f[2], f[3] if len(f) > 3 else "defaults", dump, passno, n))
    return tuple(entries)


@dataclass(frozen=True)
class MountedFs:
    """One row of ``findmnt --json --real --list``: what is mounted where now."""

    target: str
    source: str
    fstype: str
    options: str = ""


def parse_findmnt_json(text: str) -> tuple[MountedFs, ...]:
    data = _load_json(text, "findmnt")
    out: list[MountedFs] = []

    def visit(rows: Iterable[Mapping[str, Any]]) -> None:
        for r in rows:
            out.append(MountedFs(str(r.get("target", "")), str(r.get("source", "")), str(r.get("fstype", "")),
                                 str(r.get("options", ""))))
            visit(r.get("children", []) or [])

    visit(data.get("filesystems", []))
    return tuple(out)


def parse_os_release(text: str) -> str:
    """/etc/os-release → PRETTY_NAME (or NAME VERSION)."""
    kv = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            kv[k.strip()] = v.strip().strip('"').strip("'")
    return kv.get("PRETTY_NAME") or " ".join(x for x in (kv.get("NAME", ""), kv.get("VERSION", "")) if x)


def _load_json(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: output is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object")
    return data


# --------------------------------------------------------------------------------------------------------------
# Facts of one disk → records (pure)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskFacts:
    """Everything the tools said about one disk."""

    device: str  # /dev/sda (or the image file in tests)
    size_bytes: int
    logical_sector_size: int
    physical_sector_size: int
    table: SfdiskTable | None  # None: no partition table
    whole_probe: Mapping[str, str] = field(default_factory=dict)  # blkid of the whole disk
    probes: Mapping[int, Mapping[str, str]] = field(default_factory=dict)  # partition number → blkid export
    ext: Mapping[int, ExtFacts] = field(default_factory=dict)  # partition number → dumpe2fs facts
    model: str = ""
    serial: str = ""
    wwn: str = ""
    by_id: tuple[str, ...] = ()
    holders: tuple[tuple[str, str], ...] = ()  # (device, lsblk type) of everything below the disk

    def node(self, number: int) -> str:
        if self.table is not None:
            for p in self.table.partitions:
                if p.number == number:
                    return p.node
        return f"{self.device}{number}"


def find_offenders(disks: Sequence[DiskFacts]) -> tuple[tuple[str, str], ...]:
    """Every device of the chosen disks that capture cannot record: (device, what it is)."""
    found: dict[str, str] = {}
    for d in disks:
        whole = d.whole_probe.get("TYPE", "")
        if whole in SIGNATURE_OFFENDERS:
            found[d.device] = SIGNATURE_OFFENDERS[whole]
        elif d.table is None:
            found[d.device] = "no partition table" + (f" (whole-disk {whole})" if whole else "")
        for number, probe in sorted(d.probes.items()):
            t = probe.get("TYPE", "")
            if t in SIGNATURE_OFFENDERS:
                found[d.node(number)] = SIGNATURE_OFFENDERS[t]
        for dev, typ in d.holders:
            if typ in LSBLK_TYPE_OFFENDERS:
                found.setdefault(dev, LSBLK_TYPE_OFFENDERS[typ])
    return tuple(found.items())


def choose_default_disks(disks: Sequence[DiskFacts], fstab: Sequence[FstabEntry]
                         ) -> tuple[tuple[DiskFacts, ...], tuple[str, ...]]:  # fmt: skip
    """The disks a capture without ``--disk`` records, and a note for each one left out.  Left out: a disk with no
    partition table that the system does not use -- no filesystem at all (an empty floppy drive, a blank disk) or
    a whole-disk filesystem that fstab does not name (a backup disk, a stick).  Anything else stays, so LVM, MD,
    LUKS and a whole-disk filesystem in fstab are still refused by :func:`check_supported`.  Pure."""
    named = {(e.kind, e.value.lower()) for e in fstab}
    chosen: list[DiskFacts] = []
    notes: list[str] = []
    for d in disks:
        whole = d.whole_probe
        kind = whole.get("TYPE", "")
        if d.table is not None or kind in SIGNATURE_OFFENDERS or d.holders:
            chosen.append(d)
            continue
        keys = {(FstabSpec.UUID, whole.get("UUID", "").lower()), (FstabSpec.LABEL, whole.get("LABEL", "").lower()),
                (FstabSpec.PATH, d.device.lower())}  # fmt: skip
        if kind and named & keys:
            chosen.append(d)
            continue
        what = f"whole-disk {kind} {whole.get('LABEL', '') or '-'} {whole.get('UUID', '')}".rstrip() if kind else (
            "nothing on it")
        notes.append(f"{d.device}: no partition table ({what}), not in /etc/fstab: not recorded")
    return tuple(chosen), tuple(notes)


def check_supported(disks: Sequence[DiskFacts]) -> None:
    """Raise UnsupportedLayoutError listing every LVM/MD/LUKS/... device of the chosen disks."""
    offenders = find_offenders(disks)
    if offenders:
        raise UnsupportedLayoutError(offenders)


def make_disk(key: str, facts: DiskFacts, critical: bool) -> Disk:
    assert facts.table is not None
    return Disk(
        key=key,
        size_bytes=facts.size_bytes,
        logical_sector_size=facts.logical_sector_size,
        physical_sector_size=facts.physical_sector_size,
        table=facts.table.label,
        disk_id=facts.table.id,
        critical=critical,
        device=facts.device,
        model=facts.model,
        serial=facts.serial,
        wwn=facts.wwn,
        by_id=facts.by_id,
    )


def make_partition(disk_key: str, table: SfdiskTable, p: SfdiskPartition) -> Partition:
    flags: list[PartFlag] = []
    if table.label is TableType.GPT:
        partuuid = p.uuid
        if p.attributes & (1 << GPT_ATTR_BITS["LegacyBIOSBootable"]):
            flags.append(PartFlag.BOOT)
        if p.type == GPT_ESP:
            flags.append(PartFlag.ESP)
        if p.type == GPT_BIOS_BOOT:
            flags.append(PartFlag.BIOS_GRUB)
    else:
        partuuid = f"{table.id.removeprefix('0x')}-{p.number:02x}"
        if p.bootable:
            flags.append(PartFlag.BOOT)
        if p.type == MBR_ESP:
            flags.append(PartFlag.ESP)
    return Partition(
        disk=disk_key,
        number=p.number,
        start=p.start,
        size=p.size,
        type=p.type,
        partuuid=partuuid,
        name=p.name,
        attributes=p.attributes,
        flags=tuple(flags),
    )


def make_filesystem(
    key: str, partition_key: str, probe: Mapping[str, str], ext: ExtFacts | None, backup: bool
) -> Filesystem | None:
    """A Filesystem record from a partition's blkid probe (+ dumpe2fs facts for ext*); None if not a known fs."""
    try:
        fstype = FsType(probe.get("TYPE", ""))
    except ValueError:
        return None
    fat_size = FAT_VERSIONS.get(probe.get("VERSION", ""), 0) if fstype is FsType.VFAT else 0
    return Filesystem(
        key=key,
        partition=partition_key,
        type=fstype,
        uuid=probe.get("UUID", ""),
        label=probe.get("LABEL", ""),
        block_size=ext.block_size if ext else 0,
        features=ext.features if ext else (),
        fat_size=fat_size,
        inode_size=ext.inode_size if ext else 0,
        backup=backup and fstype.has_files,
    )


# --------------------------------------------------------------------------------------------------------------
# The whole layout (pure)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootFacts:
    """What the captured root shows of its boot loader."""

    grub_platforms: tuple[str, ...] = ()  # directories of /boot/grub like "i386-pc", "x86_64-efi"
    esp_loaders: tuple[str, ...] = ()  # EFI/<dir> names of the ESP that hold grubx64.efi or shimx64.efi
    esp_has_systemd_boot: bool = False  # ESP has loader/ and EFI/systemd/


@dataclass(frozen=True)
class Layout:
    disks: tuple[Disk, ...]
    partitions: tuple[Partition, ...]
    filesystems: tuple[Filesystem, ...]
    mounts: tuple[Mount, ...]
    bootloader: Bootloader
    devices: Mapping[str, str] = field(default_factory=dict)  # filesystem key → partition device node
    notes: tuple[str, ...] = ()  # what was seen but not recorded

    def mountpoint_of(self, fs_key: str) -> str | None:
        for m in self.mounts:
            if m.filesystem == fs_key:
                return m.mountpoint
        return None


def plan_layout(
    disks: Sequence[DiskFacts],
    fstab: Sequence[FstabEntry],
    *,
    firmware: Firmware,
    boot: BootFacts = BootFacts(),
    include_mounts: Sequence[str] = (),
) -> Layout:
    """The descriptor records of the chosen disks: refuse LVM/MD/LUKS, resolve fstab, mark the critical ones."""
    check_supported(disks)
    notes: list[str] = []
    partitions: list[Partition] = []
    fs_candidates: list[tuple[str, Filesystem]] = []  # (disk key, filesystem without its final key/backup)
    node_of: dict[str, str] = {}
    n_fs = 0
    for i, d in enumerate(disks, 1):
        assert d.table is not None  # check_supported refused tables that are missing
        dkey = f"disk{i}"
        for sp in d.table.partitions:
            part = make_partition(dkey, d.table, sp)
            partitions.append(part)
            probe = d.probes.get(sp.number, {})
            fs = make_filesystem("", part.key, probe, d.ext.get(sp.number), backup=False)
            if fs is None:
                if probe.get("TYPE"):
                    notes.append(f"{sp.node}: filesystem type {probe['TYPE']!r} is not recorded")
                continue
            n_fs += 1
            fs = replace(fs, key=f"fs{n_fs}")
            fs_candidates.append((dkey, fs))
            node_of[fs.key] = sp.node

    by_part = {p.key: p for p in partitions}
    include = [_norm_mountpoint(m) for m in include_mounts]
    mounts: list[Mount] = []
    mounted: dict[str, str] = {}  # fs key → its first mount point
    mounted_at: dict[str, list[str]] = {}  # fs key → every mount point (several for a btrfs)
    fs_types = {fs.key: fs.type for _, fs in fs_candidates}
    for e in fstab:
        if e.vfstype in PSEUDO_FSTYPES or (e.file.lower() == "none" and e.vfstype != "swap"):
            continue
        if "bind" in e.options.split(","):
            continue
        fs_key = _resolve_fstab(e, fs_candidates, by_part, node_of)
        mp = e.mountpoint if e.vfstype == "swap" else _norm_mountpoint(e.mountpoint)
        problem = path_problem(mp) or path_problem(e.spec) or path_problem(e.value)
        if problem:
            raise LayoutError(f"/etc/fstab line {e.line}: {problem}: such a path is not recorded")
        if fs_key is None:
            if mp in CRITICAL_MOUNTS:
                raise LayoutError(
                    f"/etc/fstab line {e.line}: {mp} is on {e.spec}, which is not a filesystem of the captured "
                    f"disks ({', '.join(d.device for d in disks) or 'none'})"
                )
            notes.append(f"/etc/fstab line {e.line}: {mp} ({e.spec}) is not on the captured disks")
            continue
        if fs_key in mounted and fs_types[fs_key] is not FsType.BTRFS:
            notes.append(f"/etc/fstab line {e.line}: {mp} mounts {fs_key} again (first at {mounted[fs_key]})")
            continue
        # a btrfs is mounted once per subvolume (subvol=@ at /, subvol=@home at /home): every line is recorded
        mounted.setdefault(fs_key, mp)
        mounted_at.setdefault(fs_key, []).append(mp)
        mounts.append(Mount(mp, fs_key, e.options, e.kind, e.spec, e.dump, e.passno))
    if not any("/" in mps for mps in mounted_at.values()):
        raise LayoutError("/etc/fstab has no entry for / on the captured disks")
    every_mountpoint = {mp for mps in mounted_at.values() for mp in mps}
    for mp in include:
        if mp not in every_mountpoint:
            raise InputError(f"--include-mount {mp}: no such mount point in /etc/fstab on the captured disks")

    backed_up = set(CRITICAL_MOUNTS) | set(include)
    filesystems: list[Filesystem] = []
    critical_disks: set[str] = set()
    for dkey, fs in fs_candidates:
        fs_mps = set(mounted_at.get(fs.key, ()))
        backup = bool(fs_mps & backed_up) and fs.type.has_files
        if fs_mps & set(CRITICAL_MOUNTS) or backup:  # a disk holding a backed-up filesystem is re-created too
            critical_disks.add(dkey)
        filesystems.append(replace(fs, backup=backup))

    disk_records = tuple(
        make_disk(f"disk{i}", d, critical=f"disk{i}" in critical_disks) for i, d in enumerate(disks, 1)
    )
    mounts.sort(key=lambda m: (m.mountpoint == "swap", m.mountpoint.count("/") if m.mountpoint != "/" else 0,
                               m.mountpoint))
    fs_tuple = tuple(filesystems)
    bootloader = find_bootloader(firmware, tuple(mounts), fs_tuple, tuple(partitions), boot)
    return Layout(disk_records, tuple(partitions), fs_tuple, tuple(mounts), bootloader, node_of, tuple(notes))


def _norm_mountpoint(mp: str) -> str:
    mp = "/" + mp.strip("/")
    return mp


def _resolve_fstab(
    e: FstabEntry,
    fs_candidates: Sequence[tuple[str, Filesystem]],
    by_part: Mapping[str, Partition],
    node_of: Mapping[str, str],
) -> str | None:
    kind, value = e.kind, e.value
    if kind is FstabSpec.PATH:
        for prefix, k in (("/dev/disk/by-uuid/", FstabSpec.UUID), ("/dev/disk/by-label/", FstabSpec.LABEL),
                          ("/dev/disk/by-partuuid/", FstabSpec.PARTUUID),
                          ("/dev/disk/by-partlabel/", FstabSpec.PARTLABEL)):
            if value.startswith(prefix):
                kind, value = k, value[len(prefix):]
                break
    for _, fs in fs_candidates:
        part = by_part[fs.partition]
        if (
            (kind is FstabSpec.UUID and fs.uuid and fs.uuid.lower() == value.lower())
            or (kind is FstabSpec.LABEL and fs.label and fs.label == value)
            or (kind is FstabSpec.PARTUUID and part.partuuid and part.partuuid.lower() == value.lower())
            or (kind is FstabSpec.PARTLABEL and part.name and part.name == value)
            or (kind is FstabSpec.PATH and _same_node(node_of[fs.key], value))
        ):
            return fs.key
    return None


def _same_node(node: str, path: str) -> bool:
    if node == path:
        return True
    try:
        return os.path.realpath(path) == os.path.realpath(node)
    except OSError:
        return False


def find_bootloader(
    firmware: Firmware,
    mounts: Sequence[Mount],
    filesystems: Sequence[Filesystem],
    partitions: Sequence[Partition],
    boot: BootFacts,
) -> Bootloader:
    """Which boot loader the captured system uses, on which disk.

    UEFI prefers systemd-boot (loader/ in the ESP), then grub-efi (grubx64.efi in the ESP or grub's x86_64-efi
    modules); BIOS prefers grub-bios (grub's i386-pc modules).  Each falls back to the other kind when only that
    one is installed; nothing found → none.
    """
    fs_by_key = {f.key: f for f in filesystems}
    part_by_key = {p.key: p for p in partitions}

    def disk_of(mountpoint: str) -> str:
        for m in mounts:
            if m.mountpoint == mountpoint:
                return part_by_key[fs_by_key[m.filesystem].partition].disk
        return ""

    esp_mp = ""
    for m in mounts:
        fs = fs_by_key[m.filesystem]
        if fs.type is FsType.VFAT and PartFlag.ESP in part_by_key[fs.partition].flags:
            esp_mp = m.mountpoint
            break
    boot_disk = disk_of("/boot") or disk_of("/")
    efi_dir = next((d for d in boot.esp_loaders if d.upper() != "BOOT"), boot.esp_loaders[0] if boot.esp_loaders
                   else "")
    has_efi = bool(esp_mp) and (bool(boot.esp_loaders) or "x86_64-efi" in boot.grub_platforms)
    has_bios = "i386-pc" in boot.grub_platforms

    def efi(kind: BootloaderKind) -> Bootloader:
        return Bootloader(kind, disk_of(esp_mp), esp_mp,
                          "systemd" if kind is BootloaderKind.SYSTEMD_BOOT else (efi_dir or "debian"))

    if firmware is Firmware.UEFI:
        if esp_mp and boot.esp_has_systemd_boot:
            return efi(BootloaderKind.SYSTEMD_BOOT)
        if has_efi:
            return efi(BootloaderKind.GRUB_EFI)
        if has_bios:
            return Bootloader(BootloaderKind.GRUB_BIOS, boot_disk)
    else:
        if has_bios:
            return Bootloader(BootloaderKind.GRUB_BIOS, boot_disk)
        if has_efi:
            return efi(BootloaderKind.GRUB_EFI)
    return Bootloader(BootloaderKind.NONE)


def find_firmware_for_root(fstab_has_esp: bool, boot: BootFacts) -> Firmware:
    """Firmware of a system captured through --root without --firmware (see the module docstring)."""
    if fstab_has_esp and (boot.esp_loaders or "x86_64-efi" in boot.grub_platforms or boot.esp_has_systemd_boot):
        return Firmware.UEFI
    return Firmware.BIOS


# --------------------------------------------------------------------------------------------------------------
# Readers (thin: run the tools, hand the text to the pure functions)
# --------------------------------------------------------------------------------------------------------------


def read_block_devices(devices: Sequence[str] = ()) -> tuple[BlockDevice, ...]:
    return parse_lsblk_json(run(["lsblk", "--json", "--bytes", "-o", LSBLK_COLUMNS, *devices]).stdout)


def list_disk_paths() -> tuple[str, ...]:
    """The whole disks of this machine (lsblk TYPE disk), as device paths."""
    return tuple(b.path for b in read_block_devices() if b.type == "disk")


def read_blkid(target: str, offset: int | None = None, size: int | None = None, *, strict: bool = True
               ) -> dict[str, str]:  # fmt: skip
    """Low-level probe (``blkid -p -o export``) of a device, or of an image file's ``size`` bytes at byte
    ``offset``; ``{}`` when nothing is found (exit 2).  Any other failure is a ToolError, or ``{}`` too when not
    ``strict`` (the disk matcher: an unreadable disk counts as blank, which only weakens a disk-id match)."""
    argv = ["blkid", "-p", "-o", "export"]
    if offset is not None:
        argv += ["-O", str(offset)]
    if size is not None:
        argv += ["-S", str(size)]
    proc = run([*argv, target], check=False)
    if proc.returncode == 2:  # nothing found
        return {}
    if proc.returncode != 0:
        if not strict:
            return {}
        raise ToolError(proc.args, proc.returncode, proc.stdout, proc.stderr)
    return parse_blkid_export(proc.stdout)


def read_by_id(device: str, by_id_dir: Path = Path("/dev/disk/by-id")) -> tuple[str, ...]:
    if not by_id_dir.is_dir():
        return ()
    real = os.path.realpath(device)
    return tuple(sorted(p.name for p in by_id_dir.iterdir() if os.path.realpath(p) == real))


def read_disk_facts(device: str) -> DiskFacts:
    """Run lsblk, sfdisk, blkid and dumpe2fs on one disk."""
    problem = path_problem(device)
    if problem:
        raise LayoutError(f"--disk {problem}: such a device path is not recorded")
    rows = read_block_devices([device])
    if not rows:
        raise InputError(f"--disk {device}: lsblk does not list it")
    bd = rows[0]
    if bd.type not in ("disk", "loop"):
        raise InputError(f"--disk {device}: it is a {bd.type!r}, not a whole disk")
    whole = read_blkid(device)
    table: SfdiskTable | None = None
    if whole.get("PTTYPE") or not whole.get("TYPE"):
        proc = run(["sfdisk", "--json", device], check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            table = parse_sfdisk_json(proc.stdout, f"sfdisk --json {device}")
    probes: dict[int, dict[str, str]] = {}
    ext: dict[int, ExtFacts] = {}
    if table is not None:
        for p in table.partitions:
            if not os.path.exists(p.node):
                raise LayoutError(f"{device}: partition node {p.node} does not exist (run partx -a {device}?)")
            probes[p.number] = read_blkid(p.node)
            if probes[p.number].get("TYPE") in ("ext2", "ext3", "ext4"):
                ext[p.number] = parse_dumpe2fs(run(["dumpe2fs", "-h", p.node]).stdout, f"dumpe2fs -h {p.node}")
    holders = tuple((b.path, b.type) for b in bd.walk() if b is not bd)
    return DiskFacts(
        device=device,
        size_bytes=bd.size,
        logical_sector_size=bd.logical_sector_size,
        physical_sector_size=bd.physical_sector_size,
        table=table,
        whole_probe=whole,
        probes=probes,
        ext=ext,
        model=bd.model,
        serial=bd.serial,
        wwn=bd.wwn,
        by_id=read_by_id(device),
        holders=holders,
    )


def read_fstab(root: Path) -> tuple[FstabEntry, ...]:
    path = root / "etc/fstab"
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")  # paths as they are, whatever their bytes
    except FileNotFoundError as e:
        raise LayoutError(f"{path}: no fstab in the captured root") from e
    return parse_fstab(text, str(path))


def read_mounts() -> tuple[MountedFs, ...]:
    return parse_findmnt_json(run(["findmnt", "--json", "--real", "--list", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"])
                              .stdout)


def read_boot_facts(root: Path, esp_dir: Path | None) -> BootFacts:
    grub = root / "boot/grub"
    platforms = tuple(sorted(p.name for p in grub.iterdir() if p.is_dir() and "-" in p.name)) if grub.is_dir() else ()
    loaders: list[str] = []
    sd_boot = False
    if esp_dir is not None and (esp_dir / "EFI").is_dir():
        for d in sorted((esp_dir / "EFI").iterdir()):
            names = {p.name.lower() for p in d.iterdir()} if d.is_dir() else set()
            if names & {"grubx64.efi", "shimx64.efi"}:
                loaders.append(d.name)
        sd_boot = (esp_dir / "loader").is_dir() and (esp_dir / "EFI/systemd").is_dir()
    return BootFacts(platforms, tuple(loaders), sd_boot)


def read_firmware_live(sys_dir: Path = Path("/sys")) -> Firmware:
    return Firmware.UEFI if (sys_dir / "firmware/efi").is_dir() else Firmware.BIOS


def read_kernel(root: Path) -> str:
    if root.resolve() == Path("/"):
        return os.uname().release
    mods = root / "lib/modules"
    names = sorted((p.name for p in mods.iterdir() if p.is_dir()), key=_version_key) if mods.is_dir() else []
    return names[-1] if names else ""


def _version_key(s: str) -> list[tuple[int, str]]:
    return [(int(t), "") if t.isdigit() else (-1, t) for t in re.split(r"[.-]", s)]


def read_system_info(root: Path, firmware: Firmware, tool_version: str) -> SystemInfo:
    def text(rel: str) -> str:
        try:
            return (root / rel).read_bytes().decode("utf-8", "surrogateescape").strip()
        except (FileNotFoundError, NotADirectoryError):
            return ""

    hostname = text("etc/hostname") or (os.uname().nodename if root.resolve() == Path("/") else "")
    os_release = parse_os_release(text("etc/os-release") or text("usr/lib/os-release"))
    return SystemInfo(
        hostname=hostname or "localhost",
        machine_id=text("etc/machine-id"),
        architecture=os.uname().machine,
        firmware=firmware,
        kernel=read_kernel(root),
        os_release=os_release,
        captured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        tool_version=tool_version,
    )


def read_layout(
    root: Path,
    devices: Sequence[str],
    *,
    include_mounts: Sequence[str] = (),
    firmware: Firmware | None = None,
) -> tuple[Layout, Firmware, tuple[DiskFacts, ...]]:
    """Read and plan the layout of ``devices`` (default: every disk the system uses, :func:`choose_default_disks`)
    for the system at ``root``."""
    fstab = read_fstab(root)
    facts = tuple(read_disk_facts(d) for d in (devices or list_disk_paths()))
    left_out: tuple[str, ...] = ()
    if not devices:
        facts, left_out = choose_default_disks(facts, fstab)
    check_supported(facts)
    # the ESP as fstab mounts it, for the boot loader facts (read through the mounted directory when it is)
    esp_entry = next((e for e in fstab if e.vfstype == "vfat" and e.mountpoint in ("/boot/efi", "/efi", "/boot")),
                     None)
    esp_dir = root / esp_entry.mountpoint.lstrip("/") if esp_entry else None
    boot = read_boot_facts(root, esp_dir)
    if firmware is None:
        firmware = read_firmware_live() if root.resolve() == Path("/") else find_firmware_for_root(
            esp_entry is not None, boot)
    layout = plan_layout(facts, fstab, firmware=firmware, boot=boot, include_mounts=include_mounts)
    return replace(layout, notes=left_out + layout.notes), firmware, facts
