"""The restore planner: descriptor + the matched disks of this machine → a plan, as data.

Pure: no I/O, no subprocess (the tests run it under ``ASR_FORBID_SUBPROCESS=1``).  The disks come matched
(:mod:`recovery_env.restore.match`); :func:`plan_restore` turns them into a :class:`RestorePlan`: per disk the wipe
argv, the sfdisk script text and argv; per filesystem the mkfs argv (from :data:`MKFS_TABLE`); mounts in
mount-point order under the target root; archive extractions; fstab changes; boot loader commands; post-restore
commands; and what the plan screen shows (:attr:`RestorePlan.disks_to_wipe`, :func:`render_plan`).
:meth:`RestorePlan.steps` orders it all into named steps, which :mod:`recovery_env.restore.execute` runs and
nothing else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from recovery_env.errors import (
    PlanError,
)
from recovery_env.model.descriptor import (
    BTRFS_FIRST_SUBVOLUME,
    BTRFS_TOP_LEVEL,
    GPT_TYPES,
    MBR_EXTENDED,
    MBR_TYPES,
    BlockKind,
    BootloaderKind,
    Descriptor,
    Disk,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    Mount,
    PartFlag,
    Partition,
    Subvolume,
    TableType,
    describe_block_device,
)
from recovery_env.model.manifest import DECOMPRESSORS, TAR_EXTRACT_OPTIONS
from recovery_env.probe.disks import TargetDisk, partition_device
from recovery_env.restore.match import DiskMatch, describe_disk
from recovery_env.restore.newids import ID_DIRECTORIES, ID_FILES, IdChange, NewIds, apply_new_ids
from recovery_env.restore.rehearsal import SYSTEMD_MARKS, UNIT_NAME, CheckFile
from recovery_env.restore.resize import DiskResize, solve_disk
from recovery_env.text import format_size, visible_lines

# ------------------------------------------------------------------------------------------------ tool tables


@dataclass(frozen=True)
class MkfsFacts:
    """How one mkfs tool is told each fact.  ``{}`` in a template is replaced by the value."""

    argv: tuple[str, ...]  # the tool and its fixed options; "{type}" is the filesystem type
    uuid: tuple[str, ...]
    label: tuple[str, ...]
    block_size: tuple[str, ...] = ()
    inode_size: tuple[str, ...] = ()
    features: tuple[str, ...] = ()  # "{}" gets the comma-joined feature list
    fat_size: tuple[str, ...] = ()

    def render(self, fs: Filesystem, device: str) -> tuple[str, ...]:
        def fill(template: tuple[str, ...], value: object) -> list[str]:
            return [part.replace("{}", str(value)) for part in template]

        argv = [part.replace("{type}", fs.type.value) for part in self.argv]
        if fs.uuid:
            uuid = fs.uuid.replace("-", "").upper() if fs.type is FsType.VFAT else fs.uuid.lower()
            argv += fill(self.uuid, uuid)
        if fs.label:
            argv += fill(self.label, fs.label)
        if fs.block_size and self.block_size:
            argv += fill(self.block_size, fs.block_size)
        if fs.inode_size and self.inode_size:
            argv += fill(self.inode_size, fs.inode_size)
        features = [f for f in fs.features if f not in EXT_RUNTIME_FEATURES]
        if features and self.features:
            argv += fill(self.features, ",".join(features))
        if fs.fat_size and self.fat_size:
            argv += fill(self.fat_size, fs.fat_size)
        return (*argv, device)


# ext features that describe a state, not a choice (a mounted filesystem shows needs_recovery): never passed on.
EXT_RUNTIME_FEATURES = frozenset({"needs_recovery", "journal_dev"})

_EXT = MkfsFacts(
    argv=("mke2fs", "-F", "-t", "{type}"),
    uuid=("-U", "{}"),
    label=("-L", "{}"),
    block_size=("-b", "{}"),
    inode_size=("-I", "{}"),
    features=("-O", "none,{}"),  # "none" first: exactly the recorded features, not mke2fs.conf's on top of them
)

MKFS_TABLE: dict[FsType, MkfsFacts] = {
    FsType.EXT2: _EXT,
    FsType.EXT3: _EXT,
    FsType.EXT4: _EXT,
    # xfs/btrfs feature names are recorded for information only: their mkfs spellings differ (-m/-n/-i k=v).
    FsType.XFS: MkfsFacts(
        argv=("mkfs.xfs", "-f"),
        uuid=("-m", "uuid={}"),
        label=("-L", "{}"),
        block_size=("-b", "size={}"),
        inode_size=("-i", "size={}"),
    ),
    FsType.BTRFS: MkfsFacts(argv=("mkfs.btrfs", "-f"), uuid=("-U", "{}"), label=("-L", "{}")),
    FsType.VFAT: MkfsFacts(argv=("mkfs.vfat",), uuid=("-i", "{}"), label=("-n", "{}"), fat_size=("-F", "{}")),
    FsType.SWAP: MkfsFacts(argv=("mkswap", "-f"), uuid=("-U", "{}"), label=("-L", "{}")),
}

# mount options for the restore mounts (the rescue kernel ships nls_cp437 and nls_iso8859-1, not nls_ascii).
# Mount options of the restore mounts.  FAT: the rescue kernel ships nls_cp437 and nls_iso8859-1, not nls_ascii;
# ``quiet`` makes the chmod/chown that FAT cannot store succeed silently (tar would fail on them otherwise).
MOUNT_OPTIONS: dict[FsType, tuple[str, ...]] = {FsType.VFAT: ("codepage=437", "iocharset=iso8859-1", "quiet")}
# Options of the original fstab line kept for the restore mount: on FAT they make the modes and owners that the
# MANIFEST recorded (a FAT file's mode and owner come from the mount, not from the disk).
KEPT_MOUNT_OPTIONS: dict[FsType, frozenset[str]] = {
    FsType.VFAT: frozenset({"umask", "fmask", "dmask", "uid", "gid", "shortname", "allow_utime"}),
    FsType.BTRFS: frozenset({"subvol", "subvolid"}),  # the subvolume fstab mounts there
}


def plan_mount_options(fstype: FsType, original: str) -> str:
    """``-o`` value of a restore mount: the table's options plus the kept ones of the original fstab line."""
    kept = KEPT_MOUNT_OPTIONS.get(fstype, frozenset())
    extra = [o for o in original.split(",") if o.split("=", 1)[0] in kept]
    return ",".join((*MOUNT_OPTIONS.get(fstype, ()), *extra))

# GNU tar options per filesystem kind: POSIX filesystems take the manifest model's extraction options (the same set the
# archives were made with: numeric owners, xattrs, ACLs, SELinux labels, sparse); FAT has no owners, modes or
# xattrs, and its root directory (a mount point) must not be touched.
TAR_FAT = ("--no-same-owner", "--no-same-permissions", "--no-overwrite-dir")
TAR_OPTIONS: dict[FsType, tuple[str, ...]] = {
    FsType.EXT2: TAR_EXTRACT_OPTIONS,
    FsType.EXT3: TAR_EXTRACT_OPTIONS,
    FsType.EXT4: TAR_EXTRACT_OPTIONS,
    FsType.XFS: TAR_EXTRACT_OPTIONS,
    FsType.BTRFS: TAR_EXTRACT_OPTIONS,
    FsType.VFAT: TAR_FAT,
}

# GPT attribute bits sfdisk can write, by name; bits 48-63 are "GUID:N".
GPT_ATTR_NAMES: dict[int, str] = {0: "RequiredPartition", 1: "NoBlockIOProtocol", 2: "LegacyBIOSBootable"}
GPT_ATTR_LEGACY_BIOS_BOOTABLE = 2


def render_gpt_attrs(bits: int, where: str) -> str:
    """Attribute bits → sfdisk's ``attrs=`` value (``LegacyBIOSBootable,GUID:63``)."""
    names: list[str] = []
    for bit in range(64):
        if not bits & (1 << bit):
            continue
        if bit in GPT_ATTR_NAMES:
            names.append(GPT_ATTR_NAMES[bit])
        elif bit >= 48:
            names.append(f"GUID:{bit}")
        else:
            raise PlanError(f"{where}: GPT attribute bit {bit} is reserved; sfdisk cannot write it")
    return ",".join(names)


# ------------------------------------------------------------------------------------------------ plan data


class Phase(StrEnum):
    """The parts of a restore, in order.  A UI may run them separately (e.g. write its log before UNMOUNT)."""

    PARTITION = "partition"
    FORMAT = "format"
    RESTORE = "restore"
    BOOTLOADER = "bootloader"
    COMMANDS = "commands"
    UNMOUNT = "unmount"

    @property
    def heading(self) -> str:
        return {
            "partition": "Re-creating the partition tables",
            "format": "Formatting",
            "restore": "Restoring files",
            "bootloader": "Installing the boot loader",
            "commands": "Running post-restore commands",
            "unmount": "Finishing",
        }[self.value]


@dataclass(frozen=True)
class RunStep:
    """Run one command.  ``writes``: the devices it writes to (checked against the plan before it runs)."""

    name: str
    phase: Phase
    argv: tuple[str, ...]
    input: str = ""  # stdin text (the sfdisk script)
    writes: tuple[str, ...] = ()
    optional: bool = False  # a failure is logged and the restore goes on
    only_if_any: tuple[str, ...] = ()  # run only when one of these paths exists
    unless_any: tuple[str, ...] = ()  # skip when one of these paths exists
    only_if_all: tuple[str, ...] = ()  # and run only when every one of these paths exists


@dataclass(frozen=True)
class WaitPartitions:
    """Wait until the kernel shows the new partitions (/sys/class/block) and their /dev nodes exist."""

    name: str
    phase: Phase
    disk: str
    partitions: tuple[str, ...]
    extents: tuple[tuple[int, int], ...] = ()  # (start, size) of each, in 512-byte units as sysfs shows them;
    # size -1: not compared (an MBR extended partition)
    timeout: float = 15.0


@dataclass(frozen=True)
class CheckTable:
    """Read the written table back (``sfdisk --json``) and compare it with the plan."""

    name: str
    phase: Phase
    disk: DiskPlan


@dataclass(frozen=True)
class CheckFilesystem:
    """Probe a new filesystem (``blkid -p``) and compare type, UUID and label with the plan."""

    name: str
    phase: Phase
    filesystem: FilesystemPlan


@dataclass(frozen=True)
class MakeDir:
    name: str
    phase: Phase
    path: str


@dataclass(frozen=True)
class Extract:
    """Feed an archive file through ``decompress | tar`` into a directory, with progress."""

    name: str
    phase: Phase
    extraction: ExtractionPlan


@dataclass(frozen=True)
class EditFstab:
    name: str
    phase: Phase
    path: str
    changes: tuple[FstabChange, ...]


@dataclass(frozen=True)
class CheckManifest:
    """Compare the restored files with the backup set's MANIFEST: the entries of ``filesystems`` only (``()``:
    all), but none of ``skip`` (filesystems compared on their own, e.g. a btrfs top level)."""

    name: str
    phase: Phase
    root: str
    manifest: str
    filesystems: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()


BY_UUID_DIR = "/dev/disk/by-uuid"


@dataclass(frozen=True)
class WriteFiles:
    """Write whole files under the target root (each path resolved inside it; a temporary file and a rename).
    Skipped unless one of ``only_if_any`` exists there."""

    name: str
    phase: Phase
    files: tuple[tuple[str, str, int], ...]  # (path under the target root, text, mode)
    only_if_any: tuple[str, ...] = ()
    only_if_all: tuple[str, ...] = ()
    unless_any: tuple[str, ...] = ()


@dataclass(frozen=True)
class LinkByUuid:
    """``/dev/disk/by-uuid/<UUID>`` links to the restored filesystems, made in the rescue system's /dev (bound into
    the chroot) as udev makes them on a running system.  The restored system's update-grub writes ``root=UUID=...``
    only where that link exists (grub-mkconfig's 10_linux tests it); without it, the kernel command line would
    name the rescue system's device (``root=/dev/vda3``), which is not the name the disk has on another bus or in
    another order, and the restored system would not find its root."""

    name: str
    phase: Phase
    links: tuple[tuple[str, str], ...]  # (filesystem UUID as blkid shows it, device)
    directory: str = BY_UUID_DIR


@dataclass(frozen=True)
class ReplaceIds:
    """A restore with new ids (:mod:`recovery_env.restore.newids`): in each of ``files`` under the target root (and
    each ``*.cfg`` of ``directories``) that exists, every old id replaced by its new one."""

    name: str
    phase: Phase
    files: tuple[str, ...]  # under the target root
    directories: tuple[str, ...]
    replacements: tuple[tuple[str, str], ...]  # (old, new)


Step = (RunStep | WaitPartitions | CheckTable | CheckFilesystem | MakeDir | Extract | EditFstab | CheckManifest
        | WriteFiles | LinkByUuid | ReplaceIds)


@dataclass(frozen=True)
class PartitionPlan:
    key: str  # disk1p2
    number: int
    device: str  # /dev/vda2
    start: int  # sectors
    size: int  # sectors
    type: str
    partuuid: str = ""
    name: str = ""
    attributes: int = 0
    bootable: bool = False  # MBR active flag
    original_size: int = 0
    original_start: int = 0
    reason: str = ""  # the resize solver's: "fixed: ESP", "grows: / takes 100% of the 1.0 GiB added, ..."

    @property
    def resized(self) -> bool:
        return self.size != self.original_size


@dataclass(frozen=True)
class DiskPlan:
    key: str
    target: TargetDisk
    table: TableType
    disk_id: str
    sector_size: int
    partitions: tuple[PartitionPlan, ...]
    first_lba: int  # GPT only (0 on MBR)
    last_lba: int  # GPT only (0 on MBR)
    sfdisk_script: str
    wipe_argv: tuple[str, ...]
    sfdisk_argv: tuple[str, ...]
    forget_argv: tuple[str, ...]  # make the kernel drop the disk's old partitions (none: fails, optional)
    settle_argv: tuple[str, ...]  # tell the kernel about the new partitions

    @property
    def device(self) -> str:
        return self.target.device


@dataclass(frozen=True)
class FilesystemPlan:
    key: str
    partition: str  # partition key
    type: FsType
    device: str
    uuid: str
    label: str
    mkfs_argv: tuple[str, ...]


@dataclass(frozen=True)
class MountPlan:
    mountpoint: str  # as on the original system: "/", "/boot/efi"
    directory: str  # under the target root
    filesystem: str
    device: str
    type: FsType
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ExtractionPlan:
    filesystem: str
    mountpoint: str
    archive: str  # path of the archive file
    directory: str
    size: int  # bytes of the archive file (progress total)
    sha256: str
    decompress_argv: tuple[str, ...]  # () for an uncompressed archive
    tar_argv: tuple[str, ...]
    top_level: bool = False  # a btrfs filesystem's whole top level: extracted by its subvolume steps

    @property
    def pipeline(self) -> tuple[tuple[str, ...], ...]:
        return tuple(a for a in (self.decompress_argv, self.tar_argv) if a)


@dataclass(frozen=True)
class FstabChange:
    mountpoint: str
    old: str  # first field as it was
    new: str


@dataclass(frozen=True)
class WipeNotice:
    """What the plan screen says of one disk that will be erased."""

    disk_key: str
    device: str
    model: str
    serial: str
    size_bytes: int
    makes: tuple[str, ...]  # one line per thing made on it (and, on a disk of another size, why each has its size)
    matched: str = ""  # why this disk takes the original's place: "disk1 (was /dev/sda, 2.0 GiB): same serial"


@dataclass(frozen=True)
class RestorePlan:
    hostname: str
    os_release: str
    captured_at: str
    firmware: Firmware
    target_root: str
    backup_dir: str
    disks: tuple[DiskPlan, ...]
    filesystems: tuple[FilesystemPlan, ...]
    mounts: tuple[MountPlan, ...]  # in mount-point order
    extractions: tuple[ExtractionPlan, ...]
    fstab_changes: tuple[FstabChange, ...]
    bootloader: tuple[RunStep, ...]
    post_commands: tuple[RunStep, ...]
    disks_to_wipe: tuple[WipeNotice, ...]
    manifest: str = ""  # path of the backup set's MANIFEST ("" = no backup set)
    bootloader_kind: BootloaderKind = BootloaderKind.NONE
    chroot_mounts: tuple[str, ...] = field(default=())  # /target/dev, /target/proc, ... (unmounted at the end)
    # filesystems made on a wiped disk that no archive fills: "/home (ext4 on /dev/vda4)"
    empty_filesystems: tuple[str, ...] = ()
    # (UUID, device) of each restored filesystem: /dev/disk/by-uuid links for the restored system's update-grub
    uuid_links: tuple[tuple[str, str], ...] = ()
    # each btrfs filesystem's top level, before the mounts: its subvolumes made, its archive extracted and compared,
    # read-only flags and the default subvolume set (plan_btrfs_top_level)
    top_level_steps: tuple[Step, ...] = ()
    # a rehearsal only (asr.rehearsal=1): the transient check written into the restored system, (path, text, mode)
    rehearsal_check: tuple[tuple[str, str, int], ...] = ()
    # a restore with new ids (asr.new_ids=1): each id given in place of the captured one
    new_ids: tuple[IdChange, ...] = ()

    @property
    def devices(self) -> frozenset[str]:
        """Every device the plan may write to: its target disks and their new partitions."""
        return frozenset([d.device for d in self.disks] + [p.device for d in self.disks for p in d.partitions])

    def steps(self) -> tuple[Step, ...]:
        return tuple(_iter_steps(self))

    @property
    def digest(self) -> str:
        """SHA-256 of every step and of the plan screen's lines: what a confirmation token is made for
        (:func:`recovery_env.restore.execute.confirm_plan`)."""
        return hashlib.sha256(repr((self.steps(), render_plan(self))).encode()).hexdigest()

    @property
    def tools(self) -> tuple[str, ...]:
        """The programs the plan runs in the rescue system (for whoever builds the boot media)."""
        names: set[str] = {"blkid", "sfdisk"}
        for s in self.steps():
            if isinstance(s, RunStep):
                names.add(s.argv[0])  # for chroot, the rest runs from the restored system
        for e in self.extractions:
            names.update(a[0] for a in e.pipeline)
        return tuple(sorted(names))


# ------------------------------------------------------------------------------------------------ planning


def _type_name(table: TableType, ptype: str) -> str:
    return (GPT_TYPES if table is TableType.GPT else MBR_TYPES).get(ptype.lower(), ptype)


def _quote_name(name: str, where: str) -> str:
    if '"' in name or "\n" in name or "\\" in name:
        raise PlanError(f"{where}: partition name {name!r} holds a character sfdisk cannot quote")
    return f'"{name}"'


def _gpt_entries_sectors(sector_size: int) -> int:
    return -(-(128 * 128) // sector_size)


def plan_partitions(
    disk: Disk, parts: Sequence[Partition], target: TargetDisk, resize: DiskResize
) -> tuple[PartitionPlan, ...]:
    """The partitions as they will be made on ``target``: start and size from the resize solver
    (:mod:`recovery_env.restore.resize`), everything else as captured."""
    out: list[PartitionPlan] = []
    for p in parts:
        placed = resize.of(p.number)
        attributes = p.attributes
        if disk.table is TableType.GPT and PartFlag.BOOT in p.flags:
            attributes |= 1 << GPT_ATTR_LEGACY_BIOS_BOOTABLE
        out.append(
            PartitionPlan(
                key=p.key,
                number=p.number,
                device=partition_device(target.device, p.number),
                start=placed.start,
                size=placed.size,
                type=p.type.lower(),
                partuuid=p.partuuid.lower() if disk.table is TableType.GPT else "",
                name=p.name if disk.table is TableType.GPT else "",
                attributes=attributes if disk.table is TableType.GPT else 0,
                bootable=disk.table is TableType.MBR and PartFlag.BOOT in p.flags,
                original_size=p.size,
                original_start=p.start,
                reason=placed.reason,
            )
        )
    return tuple(out)


def render_sfdisk_script(disk: Disk, parts: Sequence[PartitionPlan], first_lba: int, last_lba: int) -> str:
    """The sfdisk script that makes the table: original label id, every partition's start, size, type, PARTUUID,
    name and attributes."""
    head = [f"label: {disk.table.sfdisk_label}", f"label-id: {disk.disk_id}", "unit: sectors"]
    if disk.table is TableType.GPT:
        head += [f"first-lba: {first_lba}", f"last-lba: {last_lba}"]
    head.append(f"sector-size: {disk.logical_sector_size}")
    lines = [*head, ""]
    for p in parts:
        fields = [f"start={p.start}", f"size={p.size}", f"type={p.type}"]
        if disk.table is TableType.GPT:
            if p.partuuid:
                fields.append(f"uuid={p.partuuid}")
            if p.name:
                fields.append(f"name={_quote_name(p.name, p.key)}")
            if p.attributes:
                fields.append(f'attrs="{render_gpt_attrs(p.attributes, p.key)}"')
        elif p.bootable:
            fields.append("bootable")
        lines.append(f"{p.device} : " + ", ".join(fields))
    return "\n".join(lines) + "\n"


def plan_disk(descriptor: Descriptor, disk: Disk, target: TargetDisk) -> DiskPlan:
    """One disk re-made on ``target``: its partitions placed by the resize solver (DataDoesNotFitError when its
    data does not fit), the sfdisk script, the wipe and the kernel's re-read."""
    if target.logical_sector_size != disk.logical_sector_size:
        raise PlanError(
            f"{describe_disk(disk)} had {disk.logical_sector_size}-byte sectors, {target.describe()} has "
            f"{target.logical_sector_size}-byte sectors"
        )
    if not disk.disk_id:
        raise PlanError(f"{disk.key}: no disk GUID / signature recorded")
    resize = solve_disk(descriptor, disk, target.size_bytes, target=target.describe())
    planned = plan_partitions(disk, descriptor.partitions_of(disk.key), target, resize)
    first_lba = last_lba = 0
    if disk.table is TableType.GPT:
        first_lba = 2 + _gpt_entries_sectors(disk.logical_sector_size)
        last_lba = target.size_bytes // disk.logical_sector_size - 2 - _gpt_entries_sectors(disk.logical_sector_size)
    dev = target.device
    return DiskPlan(
        key=disk.key,
        target=target,
        table=disk.table,
        disk_id=disk.disk_id.lower(),
        sector_size=disk.logical_sector_size,
        partitions=planned,
        first_lba=first_lba,
        last_lba=last_lba,
        sfdisk_script=render_sfdisk_script(disk, planned, first_lba, last_lba),
        wipe_argv=("wipefs", "--all", dev),
        # the kernel is told afterwards with partx (works on loop devices without a partition scanner too)
        sfdisk_argv=(
            "sfdisk",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "always",
            "--wipe-partitions",
            "always",
            dev,
        ),
        # delete + add rather than partx --update, which leaves stale partitions when new ones overlap old ones
        forget_argv=("partx", "--delete", dev),
        settle_argv=("partx", "--add", dev),
    )


def _mount_order(mountpoint: str) -> tuple[int, str]:
    norm = os.path.normpath(mountpoint)
    return (0 if norm == "/" else norm.count("/"), norm)


def _under(root: str, mountpoint: str) -> str:
    return os.path.normpath(root + "/" + mountpoint.lstrip("/")) if mountpoint != "/" else os.path.normpath(root)


def _fstab_change(m: Mount, fs: Filesystem, device: str) -> FstabChange | None:
    if m.spec is FstabSpec.PATH and m.device and m.device != device:
        return FstabChange(m.mountpoint, m.device, device)
    if m.spec is FstabSpec.UUID and not fs.uuid:
        raise PlanError(f"{m.mountpoint}: /etc/fstab names it by UUID but {fs.key} has no UUID recorded")
    if m.spec is FstabSpec.LABEL and not fs.label:
        raise PlanError(f"{m.mountpoint}: /etc/fstab names it by LABEL but {fs.key} has no label recorded")
    return None


def _esp_mountpoint(descriptor: Descriptor, disk_key: str) -> str:
    """The mount point of a FAT EFI system partition on ``disk_key`` ("" when none is mounted)."""
    for m in sorted(descriptor.mounts, key=lambda m: _mount_order(m.mountpoint)):
        fs = descriptor.filesystem(m.filesystem)
        part = descriptor.partition(fs.partition)
        if fs.type is FsType.VFAT and PartFlag.ESP in part.flags and part.disk == disk_key:
            return m.mountpoint
    return ""


def plan_bootloader(
    descriptor: Descriptor, disks: Mapping[str, DiskPlan], root: str, rescue_grub_dir: str, *,
    rebuild_initramfs: bool = False,
) -> tuple[tuple[RunStep, ...], tuple[str, ...]]:
    """Boot loader commands and the chroot mounts they need.

    Where the restored system has its own ``grub-install``, GRUB is reinstalled FROM THE RESTORED SYSTEM in a
    chroot (/dev, /proc, /sys bound in; efivarfs under UEFI), for every platform the system carries: the
    recorded kind, and the other one when its modules are in the restored ``/usr/lib/grub`` and the disk can take
    it (a BIOS boot partition for i386-pc, a mounted ESP for x86_64-efi).  Under UEFI the loader goes to the
    removable path ``\\EFI\\BOOT\\BOOTX64.EFI`` always, and to ``\\EFI\\<id>`` with an NVRAM entry only when the
    rescue system itself was booted under UEFI (its /sys/firmware/efi, seen through the target's /sys).  Then the
    restored system's ``update-grub``.  Without a ``grub-install`` in the restored system, the rescue system's
    own GRUB installs the recorded kind (the fallback).  ``rebuild_initramfs`` (ids changed): the restored
    system's ``update-initramfs`` (or ``dracut``) rebuilds its initramfs first, for the resume device inside it."""
    bl = descriptor.bootloader
    ph = Phase.BOOTLOADER
    if bl.kind is BootloaderKind.NONE:
        return (), ()
    if bl.disk not in disks:
        raise PlanError(f"boot loader: disk {bl.disk!r} is not among the disks being restored")
    dev = disks[bl.disk].device
    esp = bl.esp_mountpoint or _esp_mountpoint(descriptor, bl.disk)
    bios_boot = any(PartFlag.BIOS_GRUB in p.flags for p in descriptor.partitions_of(bl.disk))
    bios = bl.kind is BootloaderKind.GRUB_BIOS or (bl.kind is BootloaderKind.GRUB_EFI and bios_boot)
    uefi = bl.kind in (BootloaderKind.GRUB_EFI, BootloaderKind.SYSTEMD_BOOT) or (
        bl.kind is BootloaderKind.GRUB_BIOS and bool(esp)
    )
    esp = esp or "/boot/efi"
    steps: list[RunStep] = [
        RunStep(f"mount /dev into {root}", ph, ("mount", "--bind", "/dev", f"{root}/dev")),
        RunStep(f"mount /proc into {root}", ph, ("mount", "-t", "proc", "proc", f"{root}/proc")),
        RunStep(f"mount /sys into {root}", ph, ("mount", "-t", "sysfs", "sysfs", f"{root}/sys")),
    ]
    chroot_mounts = [f"{root}/dev", f"{root}/proc", f"{root}/sys"]
    booted_uefi = f"{root}/sys/firmware/efi"  # the rescue system's sysfs, mounted into the target
    if uefi:
        efivars = f"{booted_uefi}/efivars"
        steps.append(
            RunStep(
                f"mount efivarfs into {root}",
                ph,
                ("mount", "-t", "efivarfs", "efivarfs", efivars),
                optional=True,
                only_if_any=("/sys/firmware/efi/efivars",),
            )
        )
        chroot_mounts.append(efivars)
    own_grub = (f"{root}/usr/sbin/grub-install", f"{root}/sbin/grub-install")
    if rebuild_initramfs:
        update_initramfs = (f"{root}/usr/sbin/update-initramfs", f"{root}/sbin/update-initramfs")
        steps += [
            RunStep("rebuild the initramfs for the new ids (chroot, update-initramfs)", ph,
                    ("chroot", root, "update-initramfs", "-u", "-k", "all"), only_if_any=update_initramfs),
            RunStep("rebuild the initramfs for the new ids (chroot, dracut)", ph,
                    ("chroot", root, "dracut", "--regenerate-all", "--force"),
                    only_if_any=(f"{root}/usr/bin/dracut", f"{root}/usr/sbin/dracut"), unless_any=update_initramfs),
        ]  # fmt: skip
    bl_id = bl.efi_directory or "debian"
    primary = bl.kind.grub_target
    if bios:
        steps.append(
            RunStep(
                f"install grub for BIOS on {dev} (chroot, the restored system's grub-install)",
                ph,
                ("chroot", root, "grub-install", "--target=i386-pc", dev),
                writes=(dev,),
                only_if_any=own_grub,
                only_if_all=() if primary == "i386-pc" else (f"{root}/usr/lib/grub/i386-pc",),
            )
        )
        if primary == "i386-pc":
            steps.append(
                RunStep(
                    f"install grub for BIOS on {dev} (rescue system's grub)",
                    ph,
                    (
                        "grub-install",
                        "--target=i386-pc",
                        f"--boot-directory={root}/boot",
                        f"--directory={rescue_grub_dir}/i386-pc",
                        dev,
                    ),
                    writes=(dev,),
                    unless_any=own_grub,
                )
            )
    if uefi and bl.kind is not BootloaderKind.SYSTEMD_BOOT:
        efi_args = ("--target=x86_64-efi", f"--efi-directory={esp}", f"--bootloader-id={bl_id}")
        efi_modules = () if primary == "x86_64-efi" else (f"{root}/usr/lib/grub/x86_64-efi",)
        steps += [
            # the named loader and its NVRAM boot entry (the restored system's efibootmgr): only when the rescue
            # system was booted under UEFI; optional, since the removable path below makes the disk boot anywhere.
            RunStep(
                f"install grub for UEFI into {esp} (chroot, \\EFI\\{bl_id} and an NVRAM entry)",
                ph,
                ("chroot", root, "grub-install", *efi_args),
                writes=(dev,),
                optional=True,
                only_if_any=own_grub,
                only_if_all=(booted_uefi, *efi_modules),
            ),
            RunStep(
                f"install grub for UEFI into {esp} (chroot, \\EFI\\BOOT\\BOOTX64.EFI)",
                ph,
                ("chroot", root, "grub-install", *efi_args, "--removable", "--no-nvram"),
                writes=(dev,),
                only_if_any=own_grub,
                only_if_all=efi_modules,
            ),
        ]
        if primary == "x86_64-efi":
            steps.append(
                RunStep(
                    f"install grub for UEFI into {esp} (rescue system's grub, \\EFI\\BOOT\\BOOTX64.EFI)",
                    ph,
                    (
                        "grub-install",
                        "--target=x86_64-efi",
                        f"--efi-directory={_under(root, esp)}",
                        f"--boot-directory={root}/boot",
                        f"--directory={rescue_grub_dir}/x86_64-efi",
                        f"--bootloader-id={bl_id}",
                        "--removable",
                        "--no-nvram",
                    ),
                    writes=(dev,),
                    unless_any=own_grub,
                )
            )
    if bl.kind is BootloaderKind.SYSTEMD_BOOT:
        steps.append(
            RunStep(
                f"install systemd-boot into {esp}",
                ph,
                ("chroot", root, "bootctl", "install", f"--esp-path={esp}"),
                writes=(dev,),
            )
        )
    if bl.kind in (BootloaderKind.GRUB_BIOS, BootloaderKind.GRUB_EFI):
        # the restored system's own configuration, made by its own tools (a system without update-grub keeps the
        # grub.cfg it was backed up with: ids are kept, so it still names the right filesystems)
        steps.append(
            RunStep(
                "rewrite the grub configuration (chroot, update-grub)",
                ph,
                ("chroot", root, "update-grub"),
                only_if_any=(f"{root}/usr/sbin/update-grub", f"{root}/sbin/update-grub"),
            )
        )
    return tuple(steps), tuple(chroot_mounts)


_NOT_YET = {
    BlockKind.DISK: "restoring a filesystem or volume on a whole disk is not implemented yet",
    BlockKind.MD: "restoring MD RAID is not implemented yet",
    BlockKind.LUKS: "restoring LUKS is not implemented yet",
    BlockKind.LV: "restoring LVM is not implemented yet",
}


def unsupported_device(descriptor: Descriptor) -> str:
    """Why the restore cannot lay out this descriptor's storage graph (format 3), naming its first device that is
    more than a partition: the device of the first filesystem not on a partition, else the first MD array, LUKS
    device, logical volume or physical volume.  "" when every filesystem sits on a partition and there is no
    graph."""
    if not descriptor.has_graph:
        return ""
    keys = [f.device for f in descriptor.filesystems if descriptor.block_kind(f.device) is not BlockKind.PARTITION]
    keys += [a.key for a in descriptor.md_arrays] + [lk.key for lk in descriptor.luks]
    keys += [lv.key for lv in descriptor.lvm_lvs]
    if keys:
        dev = descriptor.block_device(keys[0])
        return f"{describe_block_device(dev)}: {_NOT_YET[descriptor.block_kind(keys[0])]}"
    pv = descriptor.lvm_pvs[0] if descriptor.lvm_pvs else None
    if pv is not None:
        return f"LVM physical volume on {pv.device} (volume group {pv.vg}): {_NOT_YET[BlockKind.LV]}"
    return f"volume group {descriptor.lvm_vgs[0].name}: {_NOT_YET[BlockKind.LV]}"


def plan_restore(
    descriptor: Descriptor,
    mapping: Mapping[str, TargetDisk],
    *,
    target_root: str = "/target",
    backup_dir: str,
    rescue_grub_dir: str = "/usr/lib/grub",
    rehearsal_check: Sequence[CheckFile] = (),
    new_ids: NewIds | None = None,
) -> RestorePlan:
    """The whole restore as data.  ``mapping`` comes from :func:`match_disks` (complete).  ``rehearsal_check``:
    the files of the rehearsal check (:mod:`recovery_env.restore.rehearsal`), given only for a rehearsal.
    ``new_ids``: a restore with ids of its own (:mod:`recovery_env.restore.newids`) in place of the captured.
    A descriptor whose storage is more than partitions (MD, LUKS, LVM: format 3) is a PlanError naming its first
    such device (:func:`unsupported_device`): restoring those is not implemented yet."""
    unsupported = unsupported_device(descriptor)
    if unsupported:
        raise PlanError(unsupported)
    if new_ids is not None:
        descriptor = apply_new_ids(descriptor, new_ids)
    root = os.path.normpath(target_root)
    if root == "/":
        raise PlanError("the target root cannot be / (the rescue system itself)")
    critical = [d for d in descriptor.disks if d.critical]
    missing = [d.key for d in critical if d.key not in mapping]
    if missing:
        raise PlanError(f"no target disk chosen for {', '.join(missing)}")
    used: dict[str, str] = {}
    for key, t in mapping.items():
        if t.name in used:
            raise PlanError(f"{t.device} is the target of both {used[t.name]} and {key}")
        used[t.name] = key

    disk_plans = {d.key: plan_disk(descriptor, d, mapping[d.key]) for d in critical}
    part_dev = {p.key: p.device for dp in disk_plans.values() for p in dp.partitions}

    fs_plans: list[FilesystemPlan] = []
    for fs in descriptor.filesystems:
        if fs.partition not in part_dev:
            continue  # on a disk that is not restored
        dev = part_dev[fs.partition]
        fs_plans.append(
            FilesystemPlan(fs.key, fs.partition, fs.type, dev, fs.uuid, fs.label, MKFS_TABLE[fs.type].render(fs, dev))
        )
    fs_by_key = {f.key: f for f in fs_plans}

    mounts: list[MountPlan] = []
    changes: list[FstabChange] = []
    for m in sorted(descriptor.mounts, key=lambda m: _mount_order(m.mountpoint)):
        if m.filesystem not in fs_by_key:
            continue
        fsp = fs_by_key[m.filesystem]
        change = _fstab_change(m, descriptor.filesystem(m.filesystem), fsp.device)
        if change:
            changes.append(change)
        if fsp.type is FsType.SWAP or m.mountpoint == "swap":
            continue
        directory = _under(root, m.mountpoint)
        opts = plan_mount_options(fsp.type, m.options)
        argv = ("mount", "-t", fsp.type.value, *(("-o", opts) if opts else ()), fsp.device, directory)
        mounts.append(MountPlan(m.mountpoint, directory, fsp.key, fsp.device, fsp.type, argv))
    if mounts and mounts[0].mountpoint != "/":
        raise PlanError("the root filesystem (/) is not on a disk being restored")

    extractions: list[ExtractionPlan] = []
    manifest = ""
    if descriptor.backup is not None:
        bs = descriptor.backup
        manifest = os.path.join(backup_dir, bs.manifest)
        archives = {a.filesystem: a for a in bs.archives}
        for fsp in fs_plans:
            fs = descriptor.filesystem(fsp.key)
            if descriptor.archives_top_level(fs) and fs.backup and fs.key not in archives:
                raise PlanError(f"{fs.key} (btrfs): the backup set has no archive of its top level")
            if descriptor.archives_top_level(fs) and fs.key in archives:
                a = archives[fs.key]
                tar = ("tar", "--extract", "--file=-", f"--directory={root}", *TAR_OPTIONS[fs.type])
                extractions.append(ExtractionPlan(fs.key, f"{fs.key} top level", os.path.join(backup_dir, a.file), root,
                                                  a.size, a.sha256, DECOMPRESSORS[bs.compression] or (), tar,
                                                  top_level=True))  # fmt: skip
        for mp in mounts:
            fs = descriptor.filesystem(mp.filesystem)
            if descriptor.archives_top_level(fs) or any(e.filesystem == fs.key for e in extractions):
                continue  # extracted into its top level, or a second mount of one filesystem
            if fs.key not in archives:
                if fs.backup:
                    raise PlanError(f"{mp.mountpoint} ({fs.key}): the backup set has no archive for it")
                continue
            a = archives[fs.key]
            tar = ("tar", "--extract", "--file=-", f"--directory={mp.directory}", *TAR_OPTIONS[fs.type])
            extractions.append(
                ExtractionPlan(
                    fs.key,
                    mp.mountpoint,
                    os.path.join(backup_dir, a.file),
                    mp.directory,
                    a.size,
                    a.sha256,
                    DECOMPRESSORS[bs.compression] or (),
                    tar,
                )
            )

    top_level_steps = tuple(
        step
        for fsp in fs_plans
        if descriptor.archives_top_level(descriptor.filesystem(fsp.key))
        for step in plan_btrfs_top_level(
            descriptor, fsp, next((e for e in extractions if e.filesystem == fsp.key), None), manifest, root
        )
    )
    bootloader, chroot_mounts = plan_bootloader(descriptor, disk_plans, root, rescue_grub_dir,
                                                rebuild_initramfs=bool(new_ids and new_ids.changes))
    post = tuple(
        RunStep(
            f"post-restore command {c.order}: {c.command}",
            Phase.COMMANDS,
            ("chroot", root, "/bin/sh", "-c", c.command),
            optional=not c.critical,
        )
        for c in sorted(descriptor.commands, key=lambda c: c.order)
    )
    ordered_disks = tuple(disk_plans[d.key] for d in critical)
    return RestorePlan(
        hostname=descriptor.system.hostname,
        os_release=descriptor.system.os_release,
        captured_at=descriptor.system.captured_at,
        firmware=descriptor.system.firmware,
        target_root=root,
        backup_dir=backup_dir,
        disks=ordered_disks,
        filesystems=tuple(fs_plans),
        mounts=tuple(mounts),
        extractions=tuple(extractions),
        fstab_changes=tuple(changes),
        bootloader=bootloader,
        uuid_links=tuple((f.uuid, f.device) for f in fs_plans if f.uuid) if bootloader else (),
        post_commands=post,
        disks_to_wipe=tuple(
            _wipe_notice(dp, fs_plans, mounts, _matched(descriptor.disk(dp.key), mapping)) for dp in ordered_disks
        ),
        manifest=manifest,
        bootloader_kind=descriptor.bootloader.kind,
        chroot_mounts=chroot_mounts,
        empty_filesystems=plan_empty_notices(fs_plans, mounts, extractions, descriptor),
        top_level_steps=top_level_steps,
        rehearsal_check=tuple((_under(root, f.path), f.text, f.mode) for f in rehearsal_check),
        new_ids=new_ids.changes if new_ids is not None else (),
    )


PLACEHOLDER = ".asr-subvolume"  # names of the subvolumes a restore makes for a while in a top level
CREATE_ALL = 'for p in "$@"; do btrfs subvolume create "$p" || exit 1; done'


def plan_btrfs_top_level(
    descriptor: Descriptor, fsp: FilesystemPlan, extraction: ExtractionPlan | None, manifest: str, root: str
) -> tuple[Step, ...]:
    """The steps that give a new btrfs its subvolumes and files, on its top level (``subvolid=5``) mounted at the
    target root for a while (nothing else is mounted yet):

    1. its subvolumes, made in id order, each inside its parent (missing directories on the way made first): a
       new filesystem hands out ids from 256 up, one per subvolume made, never one again in a mount, so a gap
       in the recorded ids is taken by placeholder subvolumes, deleted at once, and every id comes back as it
       was.  A subvolume whose parent has a higher id (it was moved into a later one) is made under a temporary
       name in the top level and moved into place (rename) once its parent exists.  What is NOT kept: the
       subvolumes' UUIDs, parent and received UUIDs (a snapshot comes back as a subvolume with the same files,
       sharing no extents with its origin) and generations;
    2. the compression property, before the files (they are written compressed);
    3. the archive (the whole top level) extracted, then compared with the MANIFEST, the entries of this
       filesystem only (their paths are absolute in the top level);
    4. read-only flags (after the files), the default subvolume, and the top level unmounted: the restore's mounts
       then mount its subvolumes as fstab does (``subvol=``)."""
    ph = Phase.RESTORE
    fs = descriptor.filesystem(fsp.key)
    subvolumes = descriptor.subvolumes_of(fs.key)
    steps: list[Step] = [
        MakeDir(f"make the mount point {root}", ph, root),
        RunStep(f"mount the top level of {fs.key} ({fsp.device})", ph,
                ("mount", "-t", "btrfs", "-o", f"subvolid={BTRFS_TOP_LEVEL}", fsp.device, root)),
    ]  # fmt: skip

    def at(path: str) -> str:
        return f"{root}/{path}"

    made: set[int] = {BTRFS_TOP_LEVEL}
    waiting: list[tuple[Subvolume, str]] = []  # made under a temporary name, until their parent exists

    def place(sv: Subvolume, where: str) -> None:
        parent_dir = os.path.dirname(sv.path)
        if parent_dir:
            steps.append(MakeDir(f"make the directory {at(parent_dir)}", ph, at(parent_dir)))
        if where != at(sv.path):
            steps.append(RunStep(f"move subvolume {sv.path} (id {sv.id}) into place", ph, ("mv", where, at(sv.path))))

    next_id = BTRFS_FIRST_SUBVOLUME
    for sv in subvolumes:
        if sv.id > next_id:
            gap = tuple(at(f"{PLACEHOLDER}-{n}") for n in range(next_id, sv.id))
            steps += [
                RunStep(f"take ids {next_id}-{sv.id - 1} of {fs.key} with placeholder subvolumes", ph,
                        ("sh", "-c", CREATE_ALL, "sh", *gap)),
                RunStep(f"delete the placeholder subvolumes of {fs.key}", ph, ("btrfs", "subvolume", "delete", *gap)),
            ]  # fmt: skip
        next_id = sv.id + 1
        ready = sv.parent in made and all(w.id != sv.parent for w, _ in waiting)
        where = at(sv.path) if ready else at(f"{PLACEHOLDER}-{sv.id}")
        if ready:
            place(sv, where)  # its directories first
        steps.append(RunStep(f"create subvolume {sv.path} (id {sv.id}) of {fs.key}", ph,
                             ("btrfs", "subvolume", "create", where)))  # fmt: skip
        if sv.compression:
            steps.append(RunStep(f"set compression {sv.compression} on subvolume {sv.path}", ph,
                                 ("btrfs", "property", "set", where, "compression", sv.compression)))  # fmt: skip
        made.add(sv.id)
        if not ready:
            waiting.append((sv, where))
        moved = True
        while moved:  # move every waiting subvolume whose parent is now in place
            moved = False
            for w, tmp in list(waiting):
                if w.parent in made and all(o.id != w.parent for o, _ in waiting):
                    waiting.remove((w, tmp))
                    place(w, tmp)
                    moved = True
    if extraction is not None:
        steps += [
            Extract(f"restore {fs.key}, its whole top level, from {os.path.basename(extraction.archive)}", ph,
                    extraction),
            CheckManifest(f"compare the restored files of {fs.key} with the MANIFEST", ph, root, manifest,
                          filesystems=(fs.key,)),
        ]  # fmt: skip
    steps += [
        RunStep(f"make subvolume {sv.path} read-only", ph, ("btrfs", "property", "set", "-ts", at(sv.path), "ro",
                                                           "true"))
        for sv in subvolumes
        if sv.readonly
    ]  # fmt: skip
    default = next((sv for sv in subvolumes if sv.id == fs.default_subvolume), None)
    if default is not None:
        steps.append(RunStep(f"make subvolume {default.path} (id {default.id}) the default of {fs.key}", ph,
                             ("btrfs", "subvolume", "set-default", str(default.id), root)))  # fmt: skip
    steps.append(RunStep(f"unmount the top level of {fs.key}", ph, ("umount", root)))
    return tuple(steps)


def plan_empty_notices(
    fs_plans: Sequence[FilesystemPlan],
    mounts: Sequence[MountPlan],
    extractions: Sequence[ExtractionPlan],
    descriptor: Descriptor,
) -> tuple[str, ...]:
    """Each filesystem with files that the restore makes anew (its disk is wiped) and no archive fills: it will be
    EMPTY.  ``/home (ext4 on /dev/vda4)``; one not in /etc/fstab is named by its key."""
    filled = {e.filesystem for e in extractions}
    out = []
    for f in fs_plans:
        if f.key in filled or not f.type.has_files:
            continue
        mp = next((m.mountpoint for m in mounts if m.filesystem == f.key), None)
        if mp is None:
            m = descriptor.mount_of(f.key)
            mp = m.mountpoint if m else None
        out.append(f"{mp} ({f.type.value} on {f.device})" if mp else f"{f.key} ({f.type.value} on {f.device}, not in "
                   "/etc/fstab)")
    return tuple(out)


def _matched(disk: Disk, mapping: Mapping[str, TargetDisk]) -> str:
    """What the plan screen says of the original a disk replaces, and why it was chosen (a DiskMatch knows)."""
    reason = mapping.reason(disk.key) if isinstance(mapping, DiskMatch) else None
    return describe_disk(disk) + (f": {reason.describe}" if reason is not None else "")


def _wipe_notice(
    dp: DiskPlan, fs_plans: Sequence[FilesystemPlan], mounts: Sequence[MountPlan], matched: str
) -> WipeNotice:
    t = dp.target
    makes = [
        f"{dp.table.value.upper()} partition table, disk {'GUID' if dp.table is TableType.GPT else 'signature'}"
        f" {dp.disk_id}"
    ]
    # on a disk of another size, each partition says why it has its size (the resize solver's reason)
    explain = any(p.resized or p.start != p.original_start for p in dp.partitions)
    for p in dp.partitions:
        size = format_size(p.size * dp.sector_size)
        if p.resized:
            size = f"{format_size(p.original_size * dp.sector_size)} -> {size}"
        line = f"{p.device}  {size}  {_type_name(dp.table, p.type)}"
        fsp = next((f for f in fs_plans if f.partition == p.key), None)
        if fsp is not None:
            line += f"  {fsp.type.value}"
            if fsp.label:
                line += f" '{fsp.label}'"
            mp = next((m for m in mounts if m.filesystem == fsp.key), None)
            if mp is not None:
                line += f"  {mp.mountpoint}"
        makes.append(line)
        if explain and p.reason:
            makes += wrap_whole(p.reason, "    ", "      ", PLAN_WIDTH - 6)
    return WipeNotice(dp.key, t.device, t.model, t.serial, t.size_bytes, tuple(makes), matched)


def _iter_steps(plan: RestorePlan) -> Iterator[Step]:
    ph = Phase.PARTITION
    for d in plan.disks:
        dev = d.device
        yield RunStep(f"forget the old partitions of {dev}", ph, d.forget_argv, optional=True)
        yield RunStep(f"erase old signatures on {dev}", ph, d.wipe_argv, writes=(dev,))
        yield RunStep(
            f"write the {d.table.value.upper()} partition table on {dev}",
            ph,
            d.sfdisk_argv,
            input=d.sfdisk_script,
            writes=(dev,),
        )
        yield RunStep(f"tell the kernel about the partitions of {dev}", ph, d.settle_argv)
        units = d.sector_size // 512  # the kernel counts 512-byte units in sysfs
        yield WaitPartitions(
            f"wait for the partitions of {dev}",
            ph,
            dev,
            tuple(p.device for p in d.partitions),
            # an MBR extended partition shows in sysfs as its first sectors only (size 2): its start is checked
            tuple((p.start * units, -1 if p.type.lower() in MBR_EXTENDED else p.size * units)
                  for p in d.partitions),
        )
        yield CheckTable(f"check the partition table of {dev}", ph, d)
    for f in plan.filesystems:
        yield RunStep(f"make {f.type.value} on {f.device}", Phase.FORMAT, f.mkfs_argv, writes=(f.device,))
        yield CheckFilesystem(f"check {f.type.value} on {f.device}", Phase.FORMAT, f)
    ph = Phase.RESTORE
    yield from plan.top_level_steps
    by_fs = {e.filesystem: e for e in plan.extractions if not e.top_level}
    for m in plan.mounts:
        yield MakeDir(f"make the mount point {m.directory}", ph, m.directory)
        yield RunStep(f"mount {m.mountpoint} ({m.device})", ph, m.argv)
        if m.filesystem in by_fs:
            e = by_fs[m.filesystem]
            yield Extract(f"restore {m.mountpoint} from {os.path.basename(e.archive)}", ph, e)
    if plan.fstab_changes:
        yield EditFstab("rewrite /etc/fstab", ph, f"{plan.target_root}/etc/fstab", plan.fstab_changes)
    if plan.manifest and by_fs:
        compared = tuple(e.filesystem for e in plan.extractions if e.top_level)  # already, on their top level
        yield CheckManifest("compare the restored files with the MANIFEST", ph, plan.target_root, plan.manifest,
                            skip=compared)
    if plan.new_ids:  # after the comparison: these files differ from the MANIFEST on purpose
        yield ReplaceIds("write the new ids into the restored system's files", ph,
                         tuple(_under(plan.target_root, f) for f in ID_FILES),
                         tuple(_under(plan.target_root, d) for d in ID_DIRECTORIES), NewIds(plan.new_ids).replacements)
    for cm in plan.chroot_mounts:
        if not cm.endswith("/efivars"):
            yield MakeDir(f"make the mount point {cm}", Phase.BOOTLOADER, cm)
    if plan.uuid_links:
        yield LinkByUuid("link /dev/disk/by-uuid to the restored filesystems (as udev would)", Phase.BOOTLOADER,
                         plan.uuid_links)
    yield from plan.bootloader
    yield from plan.post_commands
    if plan.rehearsal_check:
        yield WriteFiles(f"install the rehearsal check ({UNIT_NAME}, runs once at the next boot)", Phase.COMMANDS,
                         plan.rehearsal_check, only_if_any=tuple(_under(plan.target_root, p) for p in SYSTEMD_MARKS))
    ph = Phase.UNMOUNT
    for cm in reversed(plan.chroot_mounts):
        efivars = cm.endswith("/efivars")  # mounted only when the rescue system booted under UEFI
        yield RunStep(f"unmount {cm}", ph, ("umount", cm), optional=efivars,
                      only_if_any=("/sys/firmware/efi/efivars",) if efivars else ())  # fmt: skip
    for m in reversed(plan.mounts):
        yield RunStep(f"unmount {m.mountpoint} ({m.device})", ph, ("umount", m.directory))
    yield RunStep("flush the disks", ph, ("sync",))


def render_plan(plan: RestorePlan) -> list[str]:
    """The plan screen's lines: every disk that will be erased (device, model, serial, size) and what will be made
    on it, then what happens next."""
    lines = [
        f"Automated System Recovery will restore {plan.hostname} ({plan.os_release}), backed up {plan.captured_at}.",
        "",
        "These disks will be ERASED. Everything on them will be lost:",
    ]
    for w in plan.disks_to_wipe:
        facts = (w.model, f"serial {w.serial}" if w.serial else "", format_size(w.size_bytes))
        ident = ", ".join(x for x in facts if x)
        lines.append(f"  {w.device} ({ident})  <- {w.disk_key}")
        if w.matched:
            lines += wrap_whole(f"in place of {w.matched}", "      ", "        ")
        lines += [f"      {m}" for m in w.makes]
    lines.append("")
    if plan.empty_filesystems:
        lines.append("WARNING: not in the backup set, so these will be re-created EMPTY (their files are lost):")
        lines += [f"  {e}" for e in plan.empty_filesystems]
        lines.append("")
    if plan.extractions:
        total = sum(e.size for e in plan.extractions)
        lines.append(f"Then restore {len(plan.extractions)} archive(s), {format_size(total)}, from {plan.backup_dir}:")
        lines += [f"  {e.mountpoint:<12} <- {os.path.basename(e.archive)}" for e in plan.extractions]
    for c in plan.fstab_changes:
        lines.append(f"Change /etc/fstab: {c.mountpoint} {c.old} -> {c.new}")
    if plan.new_ids:
        lines += wrap_whole("NEW IDS (asr.new_ids): the restored disks, partitions and filesystems get ids of their "
                            "own, written into fstab, the resume device and GRUB's defaults; the initramfs is "
                            "rebuilt:", "", "  ")
        for idc in plan.new_ids:
            lines += [f"  {idc.kind:<10} {idc.key:<8} {idc.old}", f"  {'':<10} {'':<8} -> {idc.new}"]
    if plan.bootloader_kind is not BootloaderKind.NONE:
        lines.append(f"Install the boot loader: {plan.bootloader_kind.value}.")
    if plan.post_commands:
        lines.append(f"Then run {len(plan.post_commands)} post-restore command(s) in the restored system, in order:")
        for n, step in enumerate(plan.post_commands, 1):
            head = f"  {n}. " + ("" if step.optional else "(critical) ")
            lines += wrap_whole(visible_lines(step.argv[-1]), head, " " * len(f"  {n}. "))  # wrapped as shown
    if plan.rehearsal_check:
        lines.append(f"Rehearsal: install a check that runs once at the next boot ({UNIT_NAME}), then removes itself.")
    return lines


PLAN_WIDTH = 76  # the plan screen's text width (80 columns, its margin and the last column kept free)


def wrap_whole(text: str, first: str, rest: str, width: int = PLAN_WIDTH) -> list[str]:
    """``text`` in lines of at most ``width`` characters, every character kept (nothing cut with "..."): broken
    at spaces where it can, inside a long word where it must; ``first`` and ``rest`` start the lines."""
    out: list[str] = []
    line = first
    for para in text.splitlines() or [""]:
        for word in para.split(" "):
            sep = " " if line not in (first, rest) else ""
            if len(line) + len(sep) + len(word) <= width:
                line += sep + word
                continue
            if line not in (first, rest):
                out.append(line)
                line = rest
            while len(line) + len(word) > width:
                cut = width - len(line)
                out.append(line + word[:cut])
                line, word = rest, word[cut:]
            line += word
        out.append(line)
        line = rest
    return out
