"""The descriptor's validator, in two passes, for parsed and in-memory descriptors alike (:func:`validate_descriptor`,
:func:`validate_inventory`): pass 1 checks each record's own fields (syntax, formats, ranges, enums, paths without
``..``, ``/.``, NUL or control characters); pass 2 the references between records and the geometry (partitions
inside their disk and apart, one filesystem per partition, one root mount, the ESP is vfat on an ESP partition,
archives for every backed-up filesystem...), and the storage graph of format 3 (:class:`_Graph`: references,
one holder per block device, no cycles, LV sizes in whole extents).  Errors name file, section, record and
field; the parser adds the line (:mod:`recovery_env.model.sif`).  ``asr backup`` runs it before it writes anything."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import typing
from collections.abc import Mapping

from recovery_env.errors import DescriptorError
from recovery_env.model.descriptor import (
    BTRFS_FIRST_SUBVOLUME,
    BTRFS_TOP_LEVEL,
    FAT_VOLID_RE,
    FORMAT_VERSIONS,
    GPT_ATTR_LEGACY_BIOS_BOOTABLE,
    GPT_BIOS_BOOT,
    GPT_ESP,
    GPT_NAME_MAX,
    GRAPH_FORMAT,
    KEY_RE,
    LVM_UUID_RE,
    MBR_ESP,
    MBR_EXTENDED,
    MBR_ID_RE,
    MBR_MAX_SECTORS,
    MBR_TYPE_RE,
    MD_MISSING,
    MD_UUID_RE,
    PNP_FORMAT_VERSION,
    SHA256_RE,
    UUID_RE,
    BackupSet,
    BlockDevice,
    BootloaderKind,
    Descriptor,
    DeviceInventory,
    Disk,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    LuksDevice,
    LvmLv,
    LvmPv,
    LvmVg,
    LvType,
    MdArray,
    Mount,
    PartFlag,
    Partition,
    Subvolume,
    TableType,
    describe_block_device,
    path_problem,
)

SECTOR_SIZES = (512, 4096)


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


_MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")


_ARCH_RE = re.compile(r"^[a-z0-9_]+$")


_CAPTURED_AT_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


_MBR_PARTUUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{2}$")


_FEATURE_RE = re.compile(r"^\^?[a-z0-9_]+$")


_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:+@%~-]+$")


_BUS_RE = re.compile(r"^[a-z0-9_]+$")


_HEX4_RE = re.compile(r"^[0-9a-f]{4}$")


_CLASS_RE = re.compile(r"^0x[0-9a-f]{6}$")


_MODALIAS_RE = re.compile(r"^[a-z0-9_]+:\S+$")


_MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+$")


# LVM volume group and logical volume names (lvm(8) VALID NAMES): these characters, not starting with '-'
_LVM_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
# parts of a logical volume name LVM keeps for itself (its hidden sub-volumes)
_LVM_RESERVED = ("_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta", "_tdata",
                 "_tmeta", "_vorigin", "_vdata")  # fmt: skip
# device-mapper names as crypttab and /dev/mapper take them (udev's safe characters)
_DM_NAME_RE = re.compile(r"^[A-Za-z0-9#+.:=@_-]{1,127}$")
# an MD array name: "homehost:name" in the 32 bytes of a 1.x superblock
_MD_NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,32}$")
MD_METADATA = ("0.90", "1.0", "1.1", "1.2")
LUKS_VERSIONS = (1, 2)
_MIB = 1 << 20

# values of the btrfs property compression (an algorithm, optionally with a level: "zstd:3")
_COMPRESSION_RE = re.compile(r"^(zlib|lzo|zstd)(:[0-9]{1,2})?$")


class _Checker:
    """Raises the first problem found, located by section, record and field."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, section: str, record: int | None, field: str | None, message: str) -> typing.NoReturn:
        raise DescriptorError(message, file=self.file, section=section, record=record, field=field)

    def need(self, ok: bool, section: str, record: int | None, field: str | None, message: str) -> None:
        if not ok:
            self.fail(section, record, field, message)


def validate_descriptor(d: Descriptor, *, file: str = "ASR.SIF") -> None:
    """Check a descriptor, field by field (pass 1), then references and geometry (pass 2).
    DescriptorError naming section, record (1-based within the section) and field of the first problem."""
    c = _Checker(file)
    _check_fields(d, c)
    _check_references(d, c)


def _is_abs_path(p: str) -> bool:
    return p.startswith("/") and "//" not in p and (p == "/" or not p.endswith("/")) and "\n" not in p


def _check_path(p: str, c: _Checker, section: str, record: int | None, field: str) -> None:
    problem = path_problem(p)
    c.need(not problem, section, record, field, problem)


def _is_file_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and name.isprintable()


def _check_fields(d: Descriptor, c: _Checker) -> None:
    s = d.system
    c.need(
        d.version in FORMAT_VERSIONS,
        "VERSION",
        None,
        "format",
        f"format {d.version} is not one of {', '.join(map(str, FORMAT_VERSIONS))}",
    )
    c.need(bool(s.tool_version), "VERSION", None, "tool", "the tool version is empty")
    c.need(bool(_HOSTNAME_RE.match(s.hostname)), "SYSTEM", None, "hostname", f"{s.hostname!r} is not a host name")
    c.need(
        s.machine_id == "" or bool(_MACHINE_ID_RE.match(s.machine_id)),
        "SYSTEM",
        None,
        "machine_id",
        f"{s.machine_id!r} is not a machine id (32 lower-case hex digits)",
    )
    c.need(
        bool(_ARCH_RE.match(s.architecture)),
        "SYSTEM",
        None,
        "architecture",
        f"{s.architecture!r} is not an architecture",
    )
    c.need(
        _is_utc_time(s.captured_at),
        "SYSTEM",
        None,
        "captured_at",
        f"{s.captured_at!r} is not a UTC time like 2026-01-01T00:00:00Z",
    )

    for i, disk in enumerate(d.disks, start=1):
        _check_disk(disk, i, c)
    disks = {disk.key: disk for disk in d.disks}
    for i, p in enumerate(d.partitions, start=1):
        _check_partition(p, disks.get(p.disk), i, c)
    for i, f in enumerate(d.filesystems, start=1):
        _check_filesystem(f, i, c)
        c.need(
            d.version >= 2 or f.default_subvolume == 0,
            "FILESYSTEMS",
            i,
            "default_subvolume",
            f"format {d.version} has no default_subvolume (format 2 has)",
        )
    for i, m in enumerate(d.mounts, start=1):
        _check_mount(m, i, c)
    _check_graph_fields(d, c)
    for i, sv in enumerate(d.subvolumes, start=1):
        c.need(d.version >= 2, "SUBVOLUMES", i, None, f"format {d.version} has no subvolumes (format 2 has)")
        _check_subvolume(sv, i, c)
    b = d.bootloader
    c.need(b.disk == "" or bool(KEY_RE.match(b.disk)), "BOOTLOADER", None, "disk", f"{b.disk!r} is not a disk key")
    c.need(
        b.esp_mountpoint == "" or _is_abs_path(b.esp_mountpoint),
        "BOOTLOADER",
        None,
        "esp_mountpoint",
        f"{b.esp_mountpoint!r} is not an absolute path",
    )
    _check_path(b.esp_mountpoint, c, "BOOTLOADER", None, "esp_mountpoint")
    c.need(
        b.efi_directory == "" or bool(_TOKEN_RE.match(b.efi_directory)),
        "BOOTLOADER",
        None,
        "efi_directory",
        f"{b.efi_directory!r} is not a directory name under EFI/",
    )
    if d.backup is not None:
        _check_backup(d.backup, c)
    for i, cmd in enumerate(d.commands, start=1):
        c.need(cmd.order >= 1, "COMMANDS", i, "order", f"order {cmd.order} must be 1 or more")
        c.need(bool(cmd.command.strip()), "COMMANDS", i, "command", "the command is empty")
        c.need("\n" not in cmd.command, "COMMANDS", i, "command", "a command is one line")


def _is_utc_time(text: str) -> bool:
    if not _CAPTURED_AT_RE.match(text):
        return False
    try:
        dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def _check_disk(disk: Disk, i: int, c: _Checker) -> None:
    sec = "DISKS"
    c.need(bool(KEY_RE.match(disk.key)), sec, i, "key", f"{disk.key!r} is not a key (a-z, 0-9, _; a letter first)")
    c.need(
        disk.logical_sector_size in SECTOR_SIZES,
        sec,
        i,
        "logical_sector_size",
        f"{disk.logical_sector_size} is not a sector size (512 or 4096)",
    )
    c.need(
        disk.physical_sector_size in SECTOR_SIZES,
        sec,
        i,
        "physical_sector_size",
        f"{disk.physical_sector_size} is not a sector size (512 or 4096)",
    )
    c.need(
        disk.physical_sector_size >= disk.logical_sector_size,
        sec,
        i,
        "physical_sector_size",
        f"physical sector size {disk.physical_sector_size} is smaller than the logical {disk.logical_sector_size}",
    )
    c.need(disk.size_bytes > 0, sec, i, "size_bytes", f"size {disk.size_bytes} must be more than 0")
    c.need(
        disk.size_bytes % disk.logical_sector_size == 0,
        sec,
        i,
        "size_bytes",
        f"size {disk.size_bytes} is not a whole number of {disk.logical_sector_size}-byte sectors",
    )
    if disk.table is TableType.GPT:
        c.need(
            bool(UUID_RE.match(disk.disk_id)),
            sec,
            i,
            "disk_id",
            f"{disk.disk_id!r} is not a GPT disk GUID (lower case)",
        )
        c.need(
            disk.size_sectors > 2 * disk.first_usable,
            sec,
            i,
            "size_bytes",
            f"size {disk.size_bytes} is too small for a GPT",
        )
    else:
        c.need(
            bool(MBR_ID_RE.match(disk.disk_id)),
            sec,
            i,
            "disk_id",
            f"{disk.disk_id!r} is not an MBR disk signature like 0x1234abcd",
        )
    _check_path(disk.device, c, sec, i, "device")
    c.need(disk.device == "" or _is_abs_path(disk.device), sec, i, "device", f"{disk.device!r} is not a device path")
    for name in disk.by_id:
        c.need(_is_file_name(name), sec, i, "by_id", f"{name!r} is not a /dev/disk/by-id name")


def _check_partition(p: Partition, disk: Disk | None, i: int, c: _Checker) -> None:
    sec = "PARTITIONS"
    c.need(bool(KEY_RE.match(p.disk)), sec, i, "disk", f"{p.disk!r} is not a disk key")
    c.need(p.number >= 1, sec, i, "number", f"partition number {p.number} must be 1 or more")
    c.need(p.start >= 1, sec, i, "start", f"start {p.start} must be 1 or more")
    c.need(p.size > 0, sec, i, "size", f"size {p.size} must be more than 0")
    c.need(len(set(p.flags)) == len(p.flags), sec, i, "flags", "a flag is listed twice")
    if disk is None:
        return  # pass 2 reports the missing disk
    if disk.table is TableType.GPT:
        c.need(
            bool(UUID_RE.match(p.type)),
            sec,
            i,
            "type",
            f"{p.type!r} is not a GPT type GUID (lower case; {disk.key} is GPT)",
        )
        c.need(p.partuuid == "" or bool(UUID_RE.match(p.partuuid)), sec, i, "partuuid", f"{p.partuuid!r} is not a GUID")
        c.need(
            len(p.name.encode("utf-16-le", "surrogatepass")) <= 2 * GPT_NAME_MAX,
            sec,
            i,
            "name",
            f"the name is longer than {GPT_NAME_MAX} characters",
        )
        c.need(0 <= p.attributes < 1 << 64, sec, i, "attributes", f"attributes {p.attributes:#x} are not 64 bits")
        c.need(
            PartFlag.BOOT not in p.flags or bool(p.attributes & GPT_ATTR_LEGACY_BIOS_BOOTABLE),
            sec,
            i,
            "flags",
            "flag boot on a GPT partition needs attribute bit 2 (LegacyBIOSBootable)",
        )
        c.need(
            PartFlag.BIOS_GRUB not in p.flags or p.type == GPT_BIOS_BOOT,
            sec,
            i,
            "flags",
            f"flag bios_grub needs the BIOS boot type {GPT_BIOS_BOOT}",
        )
        c.need(
            PartFlag.ESP not in p.flags or p.type == GPT_ESP,
            sec,
            i,
            "flags",
            f"flag esp needs the EFI System type {GPT_ESP}",
        )
    else:
        c.need(
            bool(MBR_TYPE_RE.match(p.type)),
            sec,
            i,
            "type",
            f"{p.type!r} is not an MBR type id (2 hex digits; {disk.key} is MBR)",
        )
        c.need(
            p.partuuid == "" or bool(_MBR_PARTUUID_RE.match(p.partuuid)),
            sec,
            i,
            "partuuid",
            f"{p.partuuid!r} is not an MBR PARTUUID like 1234abcd-01",
        )
        c.need(p.name == "", sec, i, "name", "MBR partitions have no name")
        c.need(p.attributes == 0, sec, i, "attributes", "MBR partitions have no attribute bits")
        c.need(
            PartFlag.BIOS_GRUB not in p.flags,
            sec,
            i,
            "flags",
            f"flag bios_grub is for GPT disks only ({disk.key} is MBR)",
        )
        c.need(PartFlag.ESP not in p.flags or p.type == MBR_ESP, sec, i, "flags", f"flag esp needs MBR type {MBR_ESP}")
        c.need(
            p.start < MBR_MAX_SECTORS and p.size < MBR_MAX_SECTORS, sec, i, "start", "an MBR entry holds 32-bit sectors"
        )


def _check_filesystem(f: Filesystem, i: int, c: _Checker) -> None:
    sec = "FILESYSTEMS"
    c.need(bool(KEY_RE.match(f.key)), sec, i, "key", f"{f.key!r} is not a key (a-z, 0-9, _; a letter first)")
    c.need(bool(f.partition), sec, i, "partition", "the partition is empty")
    if f.uuid:
        if f.type is FsType.VFAT:
            c.need(
                bool(FAT_VOLID_RE.match(f.uuid)), sec, i, "uuid", f"{f.uuid!r} is not a FAT volume id like ABCD-1234"
            )
        else:
            c.need(bool(UUID_RE.match(f.uuid)), sec, i, "uuid", f"{f.uuid!r} is not a UUID (lower case)")
    label_bytes = len(f.label.encode("utf-8", "surrogatepass"))
    c.need(
        label_bytes <= f.type.label_max,
        sec,
        i,
        "label",
        f"label {f.label!r} is {label_bytes} bytes; {f.type.value} allows {f.type.label_max}",
    )
    c.need(f.label.isprintable(), sec, i, "label", f"label {f.label!r} has a control character")
    c.need(
        f.block_size == 0 or (f.block_size >= 512 and f.block_size <= 65536 and f.block_size & (f.block_size - 1) == 0),
        sec,
        i,
        "block_size",
        f"block size {f.block_size} is not 0 or a power of two from 512 to 65536",
    )
    if f.type is FsType.VFAT:
        c.need(f.fat_size in (0, 12, 16, 32), sec, i, "fat_size", f"FAT size {f.fat_size} is not 12, 16 or 32")
    else:
        c.need(f.fat_size == 0, sec, i, "fat_size", f"fat_size is for vfat only (this is {f.type.value})")
    if f.type in (FsType.EXT2, FsType.EXT3, FsType.EXT4):
        c.need(
            f.inode_size == 0 or (128 <= f.inode_size <= 4096 and f.inode_size & (f.inode_size - 1) == 0),
            sec,
            i,
            "inode_size",
            f"inode size {f.inode_size} is not 0 or a power of two from 128 to 4096",
        )
    else:
        c.need(f.inode_size == 0, sec, i, "inode_size", f"inode_size is for ext2/3/4 only (this is {f.type.value})")
    for feat in f.features:
        c.need(bool(_FEATURE_RE.match(feat)), sec, i, "features", f"{feat!r} is not a feature name")
    if f.type is FsType.BTRFS:
        c.need(
            f.default_subvolume in (0, BTRFS_TOP_LEVEL) or f.default_subvolume >= BTRFS_FIRST_SUBVOLUME,
            sec,
            i,
            "default_subvolume",
            f"default subvolume {f.default_subvolume} is not {BTRFS_TOP_LEVEL} (the top level) or a subvolume id",
        )
    else:
        c.need(
            f.default_subvolume == 0,
            sec,
            i,
            "default_subvolume",
            f"default_subvolume is for btrfs only (this is {f.type.value})",
        )
    c.need(not (f.type is FsType.SWAP and f.features), sec, i, "features", "swap has no features")
    c.need(f.used_bytes >= 0, sec, i, "used_bytes", f"used bytes {f.used_bytes} is negative")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _need_power_of_two(n: int, least: int, c: _Checker, sec: str, i: int, field: str, what: str, unit: str) -> None:
    c.need(_power_of_two(n) and n >= least, sec, i, field, f"{what} is not a power of two of {least} {unit} or more")


def _lvm_name_problem(name: str, what: str) -> str:
    """Why ``name`` is no valid LVM volume group or logical volume name ("" when it is)."""
    if not _LVM_NAME_RE.match(name) or name in (".", ".."):
        return f"{name!r} is not a valid {what} name (A-Z a-z 0-9 + _ . -, not starting with '-', 1-127 characters)"
    return ""


def _check_graph_fields(d: Descriptor, c: _Checker) -> None:
    """Pass 1 of the format-3 records (MD, LUKS, LVM): each record's own fields; formats 1 and 2 have none."""
    for sec, records in (
        ("MD", d.md_arrays),
        ("LUKS", d.luks),
        ("LVM_PV", d.lvm_pvs),
        ("LVM_VG", d.lvm_vgs),
        ("LVM_LV", d.lvm_lvs),
    ):
        c.need(
            d.version >= GRAPH_FORMAT or not records,
            sec,
            1,
            None,
            f"format {d.version} has no [{sec}] (format {GRAPH_FORMAT} has)",
        )
    for i, a in enumerate(d.md_arrays, start=1):
        _check_md(a, i, c)
    for i, lk in enumerate(d.luks, start=1):
        _check_luks(lk, i, c)
    for i, pv in enumerate(d.lvm_pvs, start=1):
        _check_pv(pv, i, c)
    for i, vg in enumerate(d.lvm_vgs, start=1):
        _check_vg(vg, i, c)
    for i, lv in enumerate(d.lvm_lvs, start=1):
        _check_lv(lv, i, c)


def _check_md(a: MdArray, i: int, c: _Checker) -> None:
    sec = "MD"
    c.need(bool(KEY_RE.match(a.key)), sec, i, "key", f"{a.key!r} is not a key (a-z, 0-9, _; a letter first)")
    c.need(
        bool(MD_UUID_RE.match(a.uuid)),
        sec,
        i,
        "uuid",
        f"{a.uuid!r} is not an MD UUID like 0123abcd:4567ef01:89abcdef:01234567 (lower case)",
    )
    c.need(a.metadata in MD_METADATA, sec, i, "metadata", f"metadata {a.metadata!r} is not {', '.join(MD_METADATA)}")
    if a.metadata == "0.90":
        c.need(a.name == "", sec, i, "name", "a 0.90 superblock has no name")
    else:
        c.need(a.name == "" or bool(_MD_NAME_RE.match(a.name)), sec, i, "name", f"{a.name!r} is not an array name")
    for m in a.members:
        c.need(m == MD_MISSING or bool(KEY_RE.match(m)), sec, i, "members", f"{m!r} is not a block device key")
    least = a.level.min_devices
    c.need(
        a.raid_disks >= least,
        sec,
        i,
        "raid_disks",
        f"{a.level.value} needs {least} raid devices or more, not {a.raid_disks}",
    )
    c.need(
        len(a.members) == a.raid_disks,
        sec,
        i,
        "members",
        f"{len(a.members)} members listed for {a.raid_disks} raid devices (write 'missing' for an absent one)",
    )
    present = len(a.present)
    runs = a.level.min_present(a.raid_disks)
    c.need(
        present >= runs,
        sec,
        i,
        "members",
        f"{a.level.value} of {a.raid_disks} devices does not run with {present} of them (it needs {runs})",
    )
    if a.level.striped:
        _need_power_of_two(a.chunk_kib, 4, c, sec, i, "chunk_kib", f"chunk {a.chunk_kib} KiB", "KiB")
    else:
        c.need(a.chunk_kib == 0, sec, i, "chunk_kib", f"{a.level.value} has no chunk size (0, not {a.chunk_kib})")
    c.need(a.size_bytes >= 0, sec, i, "size_bytes", f"size {a.size_bytes} is negative")
    _check_path(a.device, c, sec, i, "device")
    c.need(a.device == "" or _is_abs_path(a.device), sec, i, "device", f"{a.device!r} is not a device path")


def _check_luks(lk: LuksDevice, i: int, c: _Checker) -> None:
    sec = "LUKS"
    c.need(bool(KEY_RE.match(lk.key)), sec, i, "key", f"{lk.key!r} is not a key (a-z, 0-9, _; a letter first)")
    c.need(bool(KEY_RE.match(lk.device)), sec, i, "device", f"{lk.device!r} is not a block device key")
    c.need(bool(UUID_RE.match(lk.uuid)), sec, i, "uuid", f"{lk.uuid!r} is not a UUID (lower case)")
    c.need(lk.version in LUKS_VERSIONS, sec, i, "version", f"LUKS version {lk.version} is not 1 or 2")
    c.need(
        bool(_DM_NAME_RE.match(lk.name)) and lk.name not in (".", ".."),
        sec,
        i,
        "name",
        f"{lk.name!r} is not a device-mapper name (A-Z a-z 0-9 # + - . : = @ _, 1-127 characters)",
    )
    _check_set_file(lk.header_file, c, sec, i, "header_file")


def _check_set_file(name: str, c: _Checker, sec: str, i: int, field: str) -> None:
    """A file of the backup set named by a record ("" = none)."""
    c.need(name == "" or _is_file_name(name), sec, i, field, f"{name!r} is not a file name")


def _check_pv(pv: LvmPv, i: int, c: _Checker) -> None:
    sec = "LVM_PV"
    c.need(bool(KEY_RE.match(pv.device)), sec, i, "device", f"{pv.device!r} is not a block device key")
    c.need(bool(LVM_UUID_RE.match(pv.uuid)), sec, i, "uuid", f"{pv.uuid!r} is not an LVM UUID like {_LVM_UUID_EG}")
    problem = _lvm_name_problem(pv.vg, "volume group")
    c.need(not problem, sec, i, "vg", problem)


_LVM_UUID_EG = "pV3x9a-Lk2m-0Qw1-Zx7c-Vb4n-Mm5q-a1B2c3"


def _check_vg(vg: LvmVg, i: int, c: _Checker) -> None:
    sec = "LVM_VG"
    problem = _lvm_name_problem(vg.name, "volume group")
    c.need(not problem, sec, i, "name", problem)
    c.need(bool(LVM_UUID_RE.match(vg.uuid)), sec, i, "uuid", f"{vg.uuid!r} is not an LVM UUID like {_LVM_UUID_EG}")
    e = vg.extent_size
    c.need(
        e >= 512 and e % 512 == 0 and (_power_of_two(e) or e % (128 << 10) == 0),
        sec,
        i,
        "extent_size",
        f"extent size {e} is not a power of two of 512 bytes or more, nor a multiple of 128 KiB",
    )
    _check_set_file(vg.metadata_file, c, sec, i, "metadata_file")


def _check_lv(lv: LvmLv, i: int, c: _Checker) -> None:
    sec = "LVM_LV"
    c.need(bool(KEY_RE.match(lv.key)), sec, i, "key", f"{lv.key!r} is not a key (a-z, 0-9, _; a letter first)")
    problem = _lvm_name_problem(lv.vg, "volume group")
    c.need(not problem, sec, i, "vg", problem)
    problem = _lvm_name_problem(lv.name, "logical volume")
    c.need(not problem, sec, i, "name", problem)
    reserved = next((r for r in _LVM_RESERVED if r in lv.name), None)
    c.need(reserved is None, sec, i, "name", f"{lv.name!r} holds {reserved!r}, which LVM keeps for itself")
    c.need(
        not lv.name.startswith(("snapshot", "pvmove")),
        sec,
        i,
        "name",
        f"{lv.name!r} starts with a prefix LVM keeps for itself (snapshot, pvmove)",
    )
    c.need(bool(LVM_UUID_RE.match(lv.uuid)), sec, i, "uuid", f"{lv.uuid!r} is not an LVM UUID like {_LVM_UUID_EG}")
    c.need(lv.size > 0, sec, i, "size", f"size {lv.size} must be more than 0")
    if lv.segtype is LvType.STRIPED:
        c.need(lv.stripes >= 2, sec, i, "stripes", f"a striped volume has 2 stripes or more, not {lv.stripes}")
        _need_power_of_two(lv.stripe_size, 4096, c, sec, i, "stripe_size", f"stripe size {lv.stripe_size}", "bytes")
    else:
        c.need(lv.stripes == 1, sec, i, "stripes", f"a {lv.segtype.value} volume has 1 stripe, not {lv.stripes}")
        c.need(lv.stripe_size == 0, sec, i, "stripe_size", f"a {lv.segtype.value} volume has no stripe size")
    if lv.segtype is LvType.THIN:
        problem = _lvm_name_problem(lv.pool, "thin pool")
        c.need(not problem, sec, i, "pool", problem)
    else:
        c.need(lv.pool == "", sec, i, "pool", f"a {lv.segtype.value} volume has no pool (thin volumes have)")


def _check_subvolume(sv: Subvolume, i: int, c: _Checker) -> None:
    sec = "SUBVOLUMES"
    c.need(bool(KEY_RE.match(sv.filesystem)), sec, i, "filesystem", f"{sv.filesystem!r} is not a filesystem key")
    _check_path(sv.path, c, sec, i, "path")
    c.need(
        bool(sv.path) and not sv.path.startswith("/") and not sv.path.endswith("/") and "//" not in sv.path,
        sec,
        i,
        "path",
        f"{sv.path!r} is not a path relative to the top level (like @home or @snapshots/1/snapshot)",
    )
    c.need(
        sv.id >= BTRFS_FIRST_SUBVOLUME,
        sec,
        i,
        "id",
        f"id {sv.id} is not a subvolume id ({BTRFS_FIRST_SUBVOLUME} or more)",
    )
    c.need(
        sv.parent == BTRFS_TOP_LEVEL or sv.parent >= BTRFS_FIRST_SUBVOLUME,
        sec,
        i,
        "parent",
        f"parent {sv.parent} is neither the top level ({BTRFS_TOP_LEVEL}) nor a subvolume id",
    )
    c.need(sv.parent != sv.id, sec, i, "parent", f"subvolume {sv.id} is its own parent")
    c.need(
        sv.compression == "" or bool(_COMPRESSION_RE.match(sv.compression)),
        sec,
        i,
        "compression",
        f"{sv.compression!r} is not a btrfs compression (zlib, lzo or zstd, with an optional :level)",
    )


def _check_subvolume_references(d: Descriptor, filesystems: Mapping[str, tuple[int, Filesystem]], c: _Checker) -> None:
    """Subvolumes name a btrfs filesystem of [FILESYSTEMS]; ids and paths are unique within it; a parent is the
    top level or a listed subvolume whose path holds the child's; the default subvolume is listed."""
    sec = "SUBVOLUMES"
    by_fs: dict[str, dict[int, tuple[int, Subvolume]]] = {}
    for i, sv in enumerate(d.subvolumes, start=1):
        c.need(
            sv.filesystem in filesystems, sec, i, "filesystem", f"filesystem {sv.filesystem!r} is not in [FILESYSTEMS]"
        )
        _, f = filesystems[sv.filesystem]
        c.need(
            f.type is FsType.BTRFS, sec, i, "filesystem", f"{f.key} is {f.type.value}, not btrfs: it has no subvolumes"
        )
        ids = by_fs.setdefault(sv.filesystem, {})
        first = ids.get(sv.id, (0,))[0]
        c.need(sv.id not in ids, sec, i, "id", f"{f.key} has two subvolumes with id {sv.id} (record {first})")
        same_path = next((n for n, o in ids.values() if o.path == sv.path), None)
        c.need(same_path is None, sec, i, "path", f"{f.key} has two subvolumes at {sv.path} (record {same_path})")
        ids[sv.id] = (i, sv)
    for fs_key, ids in by_fs.items():
        for i, sv in ids.values():
            if sv.parent == BTRFS_TOP_LEVEL:
                continue
            c.need(
                sv.parent in ids,
                sec,
                i,
                "parent",
                f"parent {sv.parent} of {sv.path} is not a subvolume of {fs_key} in [SUBVOLUMES]",
            )
            parent = ids[sv.parent][1]
            c.need(
                sv.path.startswith(parent.path + "/"),
                sec,
                i,
                "path",
                f"{sv.path} is not inside its parent subvolume {parent.path} (id {parent.id})",
            )
    for i, f in filesystems.values():
        if f.default_subvolume in (0, BTRFS_TOP_LEVEL):
            continue
        c.need(
            f.default_subvolume in by_fs.get(f.key, {}),
            "FILESYSTEMS",
            i,
            "default_subvolume",
            f"default subvolume {f.default_subvolume} is not a subvolume of {f.key} in [SUBVOLUMES]",
        )


def _check_mount(m: Mount, i: int, c: _Checker) -> None:
    sec = "MOUNTS"
    _check_path(m.mountpoint, c, sec, i, "mountpoint")
    c.need(
        m.mountpoint == "swap" or _is_abs_path(m.mountpoint),
        sec,
        i,
        "mountpoint",
        f"{m.mountpoint!r} is not an absolute path or 'swap'",
    )
    c.need(bool(m.filesystem), sec, i, "filesystem", "the filesystem is empty")
    c.need(
        bool(m.options) and not any(ch.isspace() for ch in m.options),
        sec,
        i,
        "options",
        f"options {m.options!r} must be non-empty, without blanks",
    )
    _check_path(m.device, c, sec, i, "device")
    c.need(not any(ch.isspace() for ch in m.device), sec, i, "device", f"device {m.device!r} has blanks")
    c.need(m.dump in (0, 1), sec, i, "dump", f"dump {m.dump} is not 0 or 1")
    c.need(0 <= m.passno <= 9, sec, i, "passno", f"passno {m.passno} is not 0 to 9")


def _check_backup(b: BackupSet, c: _Checker) -> None:
    sec = "BACKUP"
    _check_path(b.path, c, sec, None, "path")
    c.need(_is_abs_path(b.path), sec, None, "path", f"{b.path!r} is not an absolute path")
    c.need(
        b.media_uuid == "" or bool(UUID_RE.match(b.media_uuid) or FAT_VOLID_RE.match(b.media_uuid)),
        sec,
        None,
        "media_uuid",
        f"{b.media_uuid!r} is not a filesystem UUID",
    )
    c.need(_is_file_name(b.manifest), sec, None, "manifest", f"{b.manifest!r} is not a file name")
    c.need(
        bool(SHA256_RE.match(b.manifest_sha256)),
        sec,
        None,
        "manifest_sha256",
        "not a SHA-256 (64 lower-case hex digits)",
    )
    c.need(b.file_count >= 0, sec, None, "file_count", f"file count {b.file_count} is negative")
    for i, a in enumerate(b.archives, start=1):
        c.need(
            bool(KEY_RE.match(a.filesystem)), "ARCHIVES", i, "filesystem", f"{a.filesystem!r} is not a filesystem key"
        )
        c.need(_is_file_name(a.file), "ARCHIVES", i, "file", f"{a.file!r} is not a file name")
        c.need(
            a.file.endswith(b.compression.suffix),
            "ARCHIVES",
            i,
            "file",
            f"{a.file!r} does not end in {b.compression.suffix} (compression {b.compression.value})",
        )
        c.need(a.size > 0, "ARCHIVES", i, "size", f"size {a.size} must be more than 0")
        c.need(bool(SHA256_RE.match(a.sha256)), "ARCHIVES", i, "sha256", "not a SHA-256 (64 lower-case hex digits)")
        c.need(a.entries >= 0, "ARCHIVES", i, "entries", f"entries {a.entries} is negative")


def is_extended(p: Partition, disk: Disk) -> bool:
    """Whether ``p`` is an MBR extended partition (a container of logical partitions)."""
    return disk.table is TableType.MBR and p.type in MBR_EXTENDED


def is_esp(p: Partition) -> bool:
    return p.type in (GPT_ESP, MBR_ESP)


def _check_references(d: Descriptor, c: _Checker) -> None:
    disks: dict[str, Disk] = {}
    disk_ids: dict[str, str] = {}
    for i, disk in enumerate(d.disks, start=1):
        c.need(disk.key not in disks, "DISKS", i, "key", f"duplicate disk key {disk.key!r}")
        c.need(
            disk.disk_id not in disk_ids,
            "DISKS",
            i,
            "disk_id",
            f"disk id {disk.disk_id} is also {disk_ids.get(disk.disk_id)}'s",
        )
        disks[disk.key] = disk
        disk_ids[disk.disk_id] = disk.key

    parts: dict[str, tuple[int, Partition]] = {}
    partuuids: dict[str, str] = {}
    for i, p in enumerate(d.partitions, start=1):
        c.need(p.disk in disks, "PARTITIONS", i, "disk", f"disk {p.disk!r} is not in [DISKS]")
        disk = disks[p.disk]
        c.need(p.key not in parts, "PARTITIONS", i, "number", f"{p.disk} has two partitions number {p.number}")
        if p.partuuid:
            c.need(
                p.partuuid not in partuuids,
                "PARTITIONS",
                i,
                "partuuid",
                f"PARTUUID {p.partuuid} is also {partuuids.get(p.partuuid)}'s",
            )
            partuuids[p.partuuid] = p.key
            if disk.table is TableType.MBR:
                want = f"{disk.disk_id[2:]}-{p.number:02x}"
                c.need(
                    p.partuuid == want,
                    "PARTITIONS",
                    i,
                    "partuuid",
                    f"PARTUUID {p.partuuid} does not match {disk.key}'s signature: {want}",
                )
        parts[p.key] = (i, p)
    for disk in d.disks:
        _check_geometry(disk, [(i, p) for i, p in parts.values() if p.disk == disk.key], c)

    graph = _Graph(d, disks, parts, c)
    graph.check()

    filesystems: dict[str, tuple[int, Filesystem]] = {}
    fs_uuids: dict[str, str] = {}
    for i, f in enumerate(d.filesystems, start=1):
        c.need(f.key not in filesystems, "FILESYSTEMS", i, "key", f"duplicate filesystem key {f.key!r}")
        c.need(
            f.partition in parts or d.version >= GRAPH_FORMAT,
            "FILESYSTEMS",
            i,
            "partition",
            f"partition {f.partition!r} is not in [PARTITIONS]",
        )
        graph.use(f.partition, "FILESYSTEMS", i, "partition", f.key)
        if f.uuid:
            c.need(f.uuid not in fs_uuids, "FILESYSTEMS", i, "uuid", f"UUID {f.uuid} is also {fs_uuids.get(f.uuid)}'s")
            fs_uuids[f.uuid] = f.key
        filesystems[f.key] = (i, f)

    mountpoints: dict[str, int] = {}
    for i, m in enumerate(d.mounts, start=1):
        c.need(
            m.filesystem in filesystems,
            "MOUNTS",
            i,
            "filesystem",
            f"filesystem {m.filesystem!r} is not in [FILESYSTEMS]",
        )
        _, f = filesystems[m.filesystem]
        if m.mountpoint == "swap":
            c.need(f.type is FsType.SWAP, "MOUNTS", i, "mountpoint", f"{f.key} is {f.type.value}, not swap")
        else:
            c.need(f.type is not FsType.SWAP, "MOUNTS", i, "mountpoint", f"{f.key} is swap: its mountpoint is 'swap'")
            c.need(
                m.mountpoint not in mountpoints,
                "MOUNTS",
                i,
                "mountpoint",
                f"{m.mountpoint} is also mount record {mountpoints.get(m.mountpoint)}",
            )
            mountpoints[m.mountpoint] = i
        if m.spec is FstabSpec.UUID:
            c.need(bool(f.uuid), "MOUNTS", i, "spec", f"fstab names it by UUID but {f.key} has no UUID")
        elif m.spec is FstabSpec.LABEL:
            c.need(bool(f.label), "MOUNTS", i, "spec", f"fstab names it by LABEL but {f.key} has no label")
        elif m.spec in (FstabSpec.PARTUUID, FstabSpec.PARTLABEL):
            what = m.spec.value.upper()
            c.need(
                f.partition in parts,
                "MOUNTS",
                i,
                "spec",
                f"fstab names it by {what} but {f.partition} is not a partition",
            )
            _, p = parts[f.partition]
            if m.spec is FstabSpec.PARTUUID:
                c.need(bool(p.partuuid), "MOUNTS", i, "spec", f"fstab names it by PARTUUID but {p.key} has no PARTUUID")
            else:
                c.need(bool(p.name), "MOUNTS", i, "spec", f"fstab names it by PARTLABEL but {p.key} has no name")
    c.need("/" in mountpoints, "MOUNTS", None, None, "no mount of '/' (the root filesystem)")
    root_fs = filesystems[d.mounts[mountpoints["/"] - 1].filesystem][1]
    for root_disk in d.disks_under(root_fs.partition):
        c.need(
            disks[root_disk].critical,
            "DISKS",
            list(disks).index(root_disk) + 1,
            "critical",
            f"{root_disk} holds '/' and must be critical",
        )

    _check_subvolume_references(d, filesystems, c)
    _check_bootloader(d, disks, parts, filesystems, mountpoints, c)
    _check_archives(d, filesystems, c)

    orders: set[int] = set()
    for i, cmd in enumerate(d.commands, start=1):
        c.need(cmd.order not in orders, "COMMANDS", i, "order", f"order {cmd.order} is used twice")
        orders.add(cmd.order)


class _Graph:
    """Pass 2 of the storage graph (format 3): every reference resolves, keys are apart, each block device holds
    one thing (a filesystem, an array membership, a LUKS container or an LVM PV), logical volumes fit their group,
    and no device sits on itself."""

    def __init__(
        self, d: Descriptor, disks: Mapping[str, Disk], parts: Mapping[str, tuple[int, Partition]], c: _Checker
    ) -> None:
        self.d, self.c, self.disks = d, c, disks
        self.devices: dict[str, BlockDevice] = {**disks, **{k: p for k, (_, p) in parts.items()}}
        self.used: dict[str, str] = {}  # block device key -> what it holds

    def use(self, key: str, sec: str, i: int, field: str, holder: str) -> None:
        """``holder`` (in record ``i`` of ``sec``) sits on block device ``key``."""
        c = self.c
        c.need(
            key in self.devices,
            sec,
            i,
            field,
            f"{key!r} is not a block device: not in [PARTITIONS], [DISKS], [MD], [LUKS] or [LVM_LV]",
        )
        dev = self.devices[key]
        if isinstance(dev, Partition):
            c.need(not is_extended(dev, self.disks[dev.disk]), sec, i, field, f"{key} is an extended partition")
            c.need(dev.type != GPT_BIOS_BOOT, sec, i, field, f"{key} is a BIOS boot partition")
        elif isinstance(dev, Disk):
            has = next((p.key for p in self.d.partitions if p.disk == key), None)
            c.need(has is None, sec, i, field, f"{key} has partitions ({has}...): it cannot be used whole")
        elif isinstance(dev, LvmLv):
            c.need(
                dev.segtype is not LvType.THIN_POOL,
                sec,
                i,
                field,
                f"{key} ({dev.path}) is a thin pool: only thin volumes sit on it",
            )
        c.need(key not in self.used, sec, i, field, f"{key} already holds {self.used.get(key)}")
        self.used[key] = holder

    def check(self) -> None:
        d, c = self.d, self.c
        keyed: tuple[tuple[str, tuple[MdArray | LuksDevice | LvmLv, ...]], ...] = (
            ("MD", d.md_arrays),
            ("LUKS", d.luks),
            ("LVM_LV", d.lvm_lvs),
        )
        for sec, records in keyed:
            for i, r in enumerate(records, start=1):
                other = self.devices.get(r.key)
                c.need(
                    other is None,
                    sec,
                    i,
                    "key",
                    f"key {r.key} is also the {describe_block_device(other) if other else ''}'s",
                )
                self.devices[r.key] = r
        if d.md_arrays and MD_MISSING in self.devices:
            # an array's "missing" slot would be read as that device
            where = [(sec, i) for sec, records in keyed for i, r in enumerate(records, start=1) if r.key == MD_MISSING]
            sec, i = where[0] if where else ("DISKS", [k.key for k in d.disks].index(MD_MISSING) + 1)
            c.fail(sec, i, "key", f"{MD_MISSING!r} marks an absent slot of an MD array: it is no key")
        uuids: dict[str, str] = {}

        def unique_uuid(uuid: str, sec: str, i: int, who: str) -> None:
            c.need(uuid not in uuids, sec, i, "uuid", f"UUID {uuid} is also {uuids.get(uuid)}'s")
            uuids[uuid] = who

        dm_names: dict[str, str] = {}
        for i, a in enumerate(d.md_arrays, start=1):
            unique_uuid(a.uuid, "MD", i, a.key)
            for m in a.present:
                self.use(m, "MD", i, "members", f"a member of {a.key}")
        for i, lk in enumerate(d.luks, start=1):
            unique_uuid(lk.uuid, "LUKS", i, lk.key)
            c.need(lk.name not in dm_names, "LUKS", i, "name", f"dm name {lk.name} is also {dm_names.get(lk.name)}'s")
            dm_names[lk.name] = lk.key
            self.use(lk.device, "LUKS", i, "device", lk.key)
        vgs: dict[str, tuple[int, LvmVg]] = {}
        for i, vg in enumerate(d.lvm_vgs, start=1):
            c.need(vg.name not in vgs, "LVM_VG", i, "name", f"volume group {vg.name} is listed twice")
            unique_uuid(vg.uuid, "LVM_VG", i, f"volume group {vg.name}")
            vgs[vg.name] = (i, vg)
        with_pv: set[str] = set()
        for i, pv in enumerate(d.lvm_pvs, start=1):
            c.need(pv.vg in vgs, "LVM_PV", i, "vg", f"volume group {pv.vg!r} is not in [LVM_VG]")
            unique_uuid(pv.uuid, "LVM_PV", i, f"the PV on {pv.device}")
            self.use(pv.device, "LVM_PV", i, "device", f"a physical volume of {pv.vg}")
            with_pv.add(pv.vg)
        for name, (i, _) in vgs.items():
            c.need(name in with_pv, "LVM_VG", i, "name", f"volume group {name} has no physical volume in [LVM_PV]")
        self._check_lvs(vgs, unique_uuid)
        self._check_cycles()
        self._check_set_files()

    def _check_lvs(self, vgs: Mapping[str, tuple[int, LvmVg]], unique_uuid: typing.Callable[..., None]) -> None:
        c = self.c
        names: dict[tuple[str, str], LvmLv] = {}
        for i, lv in enumerate(self.d.lvm_lvs, start=1):
            c.need(lv.vg in vgs, "LVM_LV", i, "vg", f"volume group {lv.vg!r} is not in [LVM_VG]")
            c.need((lv.vg, lv.name) not in names, "LVM_LV", i, "name", f"{lv.path} is listed twice")
            unique_uuid(lv.uuid, "LVM_LV", i, lv.key)
            names[(lv.vg, lv.name)] = lv
            extent = vgs[lv.vg][1].extent_size
            c.need(
                lv.size % extent == 0,
                "LVM_LV",
                i,
                "size",
                f"size {lv.size} is not a whole number of {lv.vg}'s {extent}-byte extents",
            )
        for i, lv in enumerate(self.d.lvm_lvs, start=1):
            if lv.segtype is not LvType.THIN:
                continue
            pool = names.get((lv.vg, lv.pool))
            c.need(pool is not None, "LVM_LV", i, "pool", f"thin pool {lv.vg}/{lv.pool} is not in [LVM_LV]")
            assert pool is not None
            c.need(
                pool.segtype is LvType.THIN_POOL,
                "LVM_LV",
                i,
                "pool",
                f"{pool.path} ({pool.key}) is {pool.segtype.value}, not a thin pool",
            )

    def _check_cycles(self) -> None:
        """No block device sits on itself (through any path down the graph)."""
        d, c = self.d, self.c
        where = {
            **{a.key: ("MD", i, "members") for i, a in enumerate(d.md_arrays, start=1)},
            **{lk.key: ("LUKS", i, "device") for i, lk in enumerate(d.luks, start=1)},
            **{lv.key: ("LVM_LV", i, "pool" if lv.pool else "vg") for i, lv in enumerate(d.lvm_lvs, start=1)},
        }
        done: set[str] = set()

        def walk(key: str, path: list[str]) -> None:
            if key in done:
                return
            if key in path:
                loop = [*path[path.index(key) :], key]
                sec, i, field = where[key]
                c.fail(sec, i, field, f"{key} sits on itself: {' -> '.join(loop)}")
            for parent in d.parents_of(key):
                walk(parent, [*path, key])
            done.add(key)

        for key in where:
            walk(key, [])

    def _check_set_files(self) -> None:
        """LUKS header backups and VG metadata backups are files of the backup set, each named once."""
        d, c = self.d, self.c
        taken: dict[str, str] = {}
        if d.backup is not None:
            taken = {a.file: f"the archive of {a.filesystem}" for a in d.backup.archives}
            taken[d.backup.manifest] = "the manifest"
        for sec, field, records in (
            ("LUKS", "header_file", [(lk.header_file, lk.key) for lk in d.luks]),
            ("LVM_VG", "metadata_file", [(vg.metadata_file, f"volume group {vg.name}") for vg in d.lvm_vgs]),
        ):
            for i, (name, who) in enumerate(records, start=1):
                if not name:
                    continue
                c.need(d.backup is not None, sec, i, field, f"{name} names a file of the backup set, but there is none")
                c.need(name not in taken, sec, i, field, f"file {name} is also {taken.get(name)}")
                taken[name] = f"the {field.replace('_', ' ')} of {who}"


def _check_geometry(disk: Disk, parts: list[tuple[int, Partition]], c: _Checker) -> None:
    sec = "PARTITIONS"
    first, last = disk.first_usable, disk.last_usable
    extended: tuple[int, Partition] | None = None
    for i, p in parts:
        c.need(p.start >= first, sec, i, "start", f"start {p.start} is before {disk.key}'s first usable sector {first}")
        c.need(
            p.end - 1 <= last,
            sec,
            i,
            "start",
            f"start {p.start} + size {p.size} exceeds {disk.key} ({disk.size_sectors} sectors, last usable {last})",
        )
        if disk.table is TableType.MBR:
            if is_extended(p, disk):
                c.need(p.number <= 4, sec, i, "number", f"an extended partition is a primary one (1-4), not {p.number}")
                c.need(extended is None, sec, i, "type", f"{disk.key} has two extended partitions")
                extended = (i, p)
    if disk.table is TableType.MBR:
        logical = sorted((p.number, i, p) for i, p in parts if p.number > 4)
        for n, (number, i, p) in enumerate(logical, start=5):
            c.need(
                extended is not None,
                sec,
                i,
                "number",
                f"logical partition {number} needs an extended partition on {disk.key}",
            )
            assert extended is not None
            ext = extended[1]
            c.need(
                ext.start < p.start and p.end <= ext.end,
                sec,
                i,
                "start",
                f"logical partition {number} ({p.start}..{p.end - 1}) is not inside the extended partition "
                f"{ext.key} ({ext.start}..{ext.end - 1}, after its first sector)",
            )
            c.need(
                number == n, sec, i, "number", f"logical partitions are numbered 5, 6, ... without gaps: expected {n}"
            )
    # Overlaps: primaries (the extended one included) with each other; logical ones with each other.
    groups = [[(i, p) for i, p in parts if p.number <= 4 or disk.table is TableType.GPT]]
    if disk.table is TableType.MBR:
        groups.append([(i, p) for i, p in parts if p.number > 4])
    for group in groups:
        ordered = sorted(group, key=lambda ip: (ip[1].start, ip[0]))
        for (_, a), (i, b) in itertools.pairwise(ordered):
            c.need(
                b.start >= a.end,
                sec,
                i,
                "start",
                f"{b.key} ({b.start}..{b.end - 1}) overlaps {a.key} ({a.start}..{a.end - 1})",
            )
        if disk.table is TableType.MBR:
            boot = [i for i, p in group if PartFlag.BOOT in p.flags]
            c.need(
                len(boot) <= 1,
                sec,
                boot[-1] if boot else None,
                "flags",
                f"{disk.key} has more than one active (boot) partition",
            )


def _check_bootloader(
    d: Descriptor,
    disks: Mapping[str, Disk],
    parts: Mapping[str, tuple[int, Partition]],
    filesystems: Mapping[str, tuple[int, Filesystem]],
    mountpoints: Mapping[str, int],
    c: _Checker,
) -> None:
    b, sec = d.bootloader, "BOOTLOADER"
    if b.kind is BootloaderKind.NONE:
        c.need(b.disk == "", sec, None, "disk", "kind none has no disk")
    else:
        c.need(b.disk in disks, sec, None, "disk", f"disk {b.disk!r} is not in [DISKS]")
    if b.esp_mountpoint:
        c.need(b.esp_mountpoint in mountpoints, sec, None, "esp_mountpoint", f"{b.esp_mountpoint} is not in [MOUNTS]")
        m = d.mounts[mountpoints[b.esp_mountpoint] - 1]
        _, f = filesystems[m.filesystem]
        c.need(
            f.type is FsType.VFAT,
            sec,
            None,
            "esp_mountpoint",
            f"the ESP {b.esp_mountpoint} is {f.type.value} ({f.key}), not vfat",
        )
        c.need(
            f.partition in parts,
            sec,
            None,
            "esp_mountpoint",
            f"the ESP {b.esp_mountpoint} is on {f.partition}, not on a partition (the firmware reads partitions)",
        )
        _, p = parts[f.partition]
        c.need(
            is_esp(p),
            sec,
            None,
            "esp_mountpoint",
            f"the ESP {b.esp_mountpoint} is on {p.key}, whose type {p.type} is not EFI System",
        )
    if b.kind in (BootloaderKind.GRUB_EFI, BootloaderKind.SYSTEMD_BOOT):
        c.need(bool(b.esp_mountpoint), sec, None, "esp_mountpoint", f"{b.kind.value} needs the ESP's mount point")
        c.need(
            d.system.firmware is Firmware.UEFI,
            sec,
            None,
            "kind",
            f"{b.kind.value} does not boot with {d.system.firmware.value} firmware",
        )
    if b.kind is BootloaderKind.GRUB_BIOS:
        c.need(
            d.system.firmware is Firmware.BIOS,
            sec,
            None,
            "kind",
            f"grub-bios does not boot with {d.system.firmware.value} firmware",
        )
        if disks[b.disk].table is TableType.GPT:
            c.need(
                any(p.disk == b.disk and p.type == GPT_BIOS_BOOT for _, p in parts.values()),
                sec,
                None,
                "disk",
                f"grub-bios on GPT disk {b.disk} needs a BIOS boot partition there",
            )
    if d.system.firmware is Firmware.UEFI:
        c.need(
            any(is_esp(p) for _, p in parts.values()),
            "SYSTEM",
            None,
            "firmware",
            "uefi firmware needs an EFI system partition",
        )


def _check_archives(d: Descriptor, filesystems: Mapping[str, tuple[int, Filesystem]], c: _Checker) -> None:
    if d.backup is None:
        return
    archived: dict[str, int] = {}
    files: set[str] = set()
    for i, a in enumerate(d.backup.archives, start=1):
        c.need(
            a.filesystem in filesystems,
            "ARCHIVES",
            i,
            "filesystem",
            f"filesystem {a.filesystem!r} is not in [FILESYSTEMS]",
        )
        _, f = filesystems[a.filesystem]
        c.need(f.type.has_files, "ARCHIVES", i, "filesystem", f"{f.key} is {f.type.value}: it has no files to archive")
        c.need(f.backup, "ARCHIVES", i, "filesystem", f"{f.key} is not backed up (backup=no) but has an archive")
        c.need(a.filesystem not in archived, "ARCHIVES", i, "filesystem", f"{f.key} has two archives")
        c.need(
            a.file not in files and a.file != d.backup.manifest, "ARCHIVES", i, "file", f"file {a.file} is listed twice"
        )
        archived[a.filesystem] = i
        files.add(a.file)
    for i, f in filesystems.values():
        c.need(
            not (f.backup and f.type.has_files) or f.key in archived,
            "FILESYSTEMS",
            i,
            "backup",
            f"{f.key} is backed up (backup=yes) but [ARCHIVES] has no archive for it",
        )


def validate_inventory(inv: DeviceInventory, *, file: str = "ASRPNP.SIF") -> None:
    """Check a device inventory record by record.  DescriptorError naming section, record and field."""
    c = _Checker(file)
    c.need(
        inv.version == PNP_FORMAT_VERSION,
        "VERSION",
        None,
        "format",
        f"format {inv.version} is not {PNP_FORMAT_VERSION}",
    )
    c.need(bool(_HOSTNAME_RE.match(inv.hostname)), "SYSTEM", None, "hostname", f"{inv.hostname!r} is not a host name")
    seen: dict[tuple[str, str], int] = {}
    sec = "DEVICES"
    for i, dev in enumerate(inv.devices, start=1):
        c.need(bool(_BUS_RE.match(dev.bus)), sec, i, "bus", f"{dev.bus!r} is not a bus name")
        c.need(bool(dev.address) and dev.address.isprintable(), sec, i, "address", "the address is empty")
        c.need(
            (dev.bus, dev.address) not in seen,
            sec,
            i,
            "address",
            f"{dev.bus} {dev.address} is also device {seen.get((dev.bus, dev.address))}",
        )
        seen[(dev.bus, dev.address)] = i
        c.need(
            dev.vendor == "" or bool(_HEX4_RE.match(dev.vendor)),
            sec,
            i,
            "vendor",
            f"{dev.vendor!r} is not a 4-digit hex id",
        )
        c.need(
            dev.device == "" or bool(_HEX4_RE.match(dev.device)),
            sec,
            i,
            "device",
            f"{dev.device!r} is not a 4-digit hex id",
        )
        c.need(
            dev.device_class == "" or bool(_CLASS_RE.match(dev.device_class)),
            sec,
            i,
            "device_class",
            f"{dev.device_class!r} is not a class like 0x010601",
        )
        c.need(
            dev.modalias == "" or bool(_MODALIAS_RE.match(dev.modalias)),
            sec,
            i,
            "modalias",
            f"{dev.modalias!r} is not a modalias",
        )
        c.need(
            dev.driver == "" or bool(_MODULE_RE.match(dev.driver)),
            sec,
            i,
            "driver",
            f"{dev.driver!r} is not a driver name",
        )
        for mod in dev.modules:
            c.need(bool(_MODULE_RE.match(mod)), sec, i, "modules", f"{mod!r} is not a module name")
