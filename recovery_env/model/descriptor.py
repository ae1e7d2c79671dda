"""The ASR descriptor model: what a machine's storage looked like when it was captured.

One model, two users: builder/ (capture, media build, inspect) and recovery_env/ (the agent) both use these
frozen dataclasses.  Standard library only: this module runs on the minimal Python inside the initramfs.

The text forms (ASR.SIF, ASRPNP.SIF) are rendered by ``recovery_env.model.sif_render`` (jinja2) and parsed and
validated by ``recovery_env.model.sif``.  Keys tie records together: a partition names its disk by key
(``disk1``), a filesystem its block device (``disk1p2``), a mount and an archive their filesystem (``fs2``).

The storage stack is a graph of block devices (format 3): a *block device key* names a disk (``disk1``, used
whole), a partition (``disk1p2``), an MD array (``md1``), a LUKS device (``luks1``) or an LVM logical volume
(``lv1``).  Each device names what it sits on: an array its members, a LUKS device its device, an LVM physical
volume its device and its volume group, a logical volume its group (a thin one its pool); a filesystem the device
it is on.  :meth:`Descriptor.parents_of` walks one step down, :meth:`Descriptor.disks_under` to the disks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

FORMAT_VERSION = 3  # ASR.SIF as this asr writes it
# ASR.SIF formats this asr reads.  Format 2 added [SUBVOLUMES] and [FILESYSTEMS] default_subvolume, and the archive of
# a btrfs filesystem holds its whole top level (every subvolume); format 1 has neither, and archived what was mounted.
# Format 3 added the graph of block devices: [MD], [LUKS], [LVM_PV], [LVM_VG], [LVM_LV], and a filesystem on any
# block device (formats 1 and 2: on a partition only).
FORMAT_VERSIONS = (1, 2, FORMAT_VERSION)
GRAPH_FORMAT = 3  # the first format with MD, LUKS and LVM records
PNP_FORMAT_VERSION = 1  # ASRPNP.SIF
SIGNATURE = "$ASR-LINUX$"

BTRFS_TOP_LEVEL = 5  # the id of a btrfs filesystem's top level (FS_TREE): subvolid=5
BTRFS_FIRST_SUBVOLUME = 256  # the first id a subvolume can have


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class TableType(StrEnum):
    MBR = "mbr"
    GPT = "gpt"

    @property
    def sfdisk_label(self) -> str:
        """The ``label:`` value of an sfdisk script."""
        return "dos" if self is TableType.MBR else "gpt"

    @classmethod
    def from_sfdisk(cls, label: str) -> TableType:
        return {"dos": cls.MBR, "gpt": cls.GPT}[label]


class FsType(StrEnum):
    EXT2 = "ext2"
    EXT3 = "ext3"
    EXT4 = "ext4"
    XFS = "xfs"
    BTRFS = "btrfs"
    VFAT = "vfat"
    SWAP = "swap"

    @property
    def label_max(self) -> int:
        """Longest label the filesystem accepts (bytes)."""
        return FS_LABEL_MAX[self]

    @property
    def has_files(self) -> bool:
        """Whether the filesystem holds files that a backup archives (swap does not)."""
        return self is not FsType.SWAP


FS_LABEL_MAX: dict[FsType, int] = {
    FsType.EXT2: 16,
    FsType.EXT3: 16,
    FsType.EXT4: 16,
    FsType.XFS: 12,
    FsType.BTRFS: 255,
    FsType.VFAT: 11,
    FsType.SWAP: 15,
}


class RaidLevel(StrEnum):
    RAID0 = "raid0"
    RAID1 = "raid1"
    RAID5 = "raid5"
    RAID6 = "raid6"
    RAID10 = "raid10"

    @property
    def min_devices(self) -> int:
        """The fewest raid devices (slots) mdadm creates an array of this level with."""
        return {"raid0": 1, "raid1": 2, "raid5": 3, "raid6": 4, "raid10": 4}[self.value]

    def min_present(self, raid_disks: int) -> int:
        """The fewest present members an array of ``raid_disks`` slots runs with (degraded): raid0 none missing,
        raid1 one left, raid5 one missing, raid6 two, raid10 (near-2 layout) half of them."""
        missing = {"raid0": 0, "raid1": raid_disks - 1, "raid5": 1, "raid6": 2, "raid10": raid_disks // 2}
        return raid_disks - missing[self.value]

    @property
    def striped(self) -> bool:
        """Whether the level has a chunk size (raid1 mirrors whole devices: chunk 0)."""
        return self is not RaidLevel.RAID1


class LvType(StrEnum):
    """The segment type of an LVM logical volume (``lvs -o segtype``)."""

    LINEAR = "linear"
    STRIPED = "striped"
    THIN_POOL = "thin-pool"
    THIN = "thin"


class BlockKind(StrEnum):
    """What a block device key names."""

    DISK = "disk"
    PARTITION = "partition"
    MD = "md"
    LUKS = "luks"
    LV = "lv"


class PartFlag(StrEnum):
    BOOT = "boot"  # MBR active flag / GPT LegacyBIOSBootable attribute
    ESP = "esp"  # EFI system partition
    BIOS_GRUB = "bios_grub"  # GPT BIOS boot partition for grub's core image


class FstabSpec(StrEnum):
    """How /etc/fstab names the device of a mount."""

    UUID = "uuid"
    LABEL = "label"
    PARTUUID = "partuuid"
    PARTLABEL = "partlabel"
    PATH = "path"


class BootloaderKind(StrEnum):
    GRUB_BIOS = "grub-bios"
    GRUB_EFI = "grub-efi"
    SYSTEMD_BOOT = "systemd-boot"
    NONE = "none"

    @property
    def grub_target(self) -> str | None:
        return {"grub-bios": "i386-pc", "grub-efi": "x86_64-efi"}.get(self.value)


class Compression(StrEnum):
    ZSTD = "zstd"
    NONE = "none"

    @property
    def suffix(self) -> str:
        return ".tar.zst" if self is Compression.ZSTD else ".tar"


# Partition type facts: GPT type GUIDs and MBR ids with their meaning.  The validator, the layout reader and the
# planner all read this table.
GPT_TYPES: dict[str, str] = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux home",
    "3b8f8425-20e0-4f3b-907f-1a25a76f98e8": "Linux server data",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "ca7d7ccb-63ed-4c53-861c-1742536059cc": "Linux LUKS",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
}
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"

MBR_TYPES: dict[str, str] = {
    "83": "Linux",
    "82": "Linux swap",
    "ef": "EFI (FAT-12/16/32)",
    "0c": "W95 FAT32 (LBA)",
    "0b": "W95 FAT32",
    "06": "FAT16",
    "0e": "W95 FAT16 (LBA)",
    "05": "Extended",
    "0f": "W95 Extended (LBA)",
    "8e": "Linux LVM",
    "fd": "Linux raid autodetect",
    "07": "HPFS/NTFS/exFAT",
}
MBR_ESP = "ef"
MBR_EXTENDED = frozenset({"05", "0f", "85"})

# GPT attribute bits (sfdisk names them): 0 RequiredPartition, 1 NoBlockIOProtocol, 2 LegacyBIOSBootable,
# 48-63 type-specific ("GUID:N").
GPT_ATTR_LEGACY_BIOS_BOOTABLE = 1 << 2
GPT_ENTRY_ARRAY_BYTES = 128 * 128  # 128 partition entries of 128 bytes, as sfdisk and every tool writes them
GPT_NAME_MAX = 36  # UTF-16 code units in a GPT partition name
MBR_MAX_SECTORS = 1 << 32  # an MBR entry holds 32-bit start and size

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MBR_ID_RE = re.compile(r"^0x[0-9a-f]{8}$")
MBR_TYPE_RE = re.compile(r"^[0-9a-f]{2}$")
FAT_VOLID_RE = re.compile(r"^[0-9A-F]{4}-[0-9A-F]{4}$")
KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MD_UUID_RE = re.compile(r"^[0-9a-f]{8}(:[0-9a-f]{8}){3}$")  # mdadm's form
LVM_UUID_RE = re.compile(r"^[A-Za-z0-9]{6}(-[A-Za-z0-9]{4}){5}-[A-Za-z0-9]{6}$")  # 6-4-4-4-4-4-6, as lvs shows it
MD_MISSING = "missing"  # an absent member slot of a degraded array (mdadm --create's word for it)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SystemInfo:
    hostname: str
    machine_id: str
    architecture: str  # e.g. x86_64
    firmware: Firmware
    kernel: str  # uname -r of the captured system
    os_release: str  # PRETTY_NAME from /etc/os-release
    captured_at: str  # ISO 8601, UTC, e.g. 2026-11-26T01:02:03Z
    tool_version: str  # asr version that wrote the descriptor


@dataclass(frozen=True)
class Disk:
    key: str  # our name for it: disk1, disk2, ...
    size_bytes: int
    logical_sector_size: int
    physical_sector_size: int
    table: TableType
    disk_id: str  # MBR signature "0x1234abcd" or GPT disk GUID (lower case)
    critical: bool  # holds a system volume: must be re-created at restore
    device: str = ""  # kernel name at capture time, e.g. /dev/sda (informational)
    model: str = ""
    serial: str = ""
    wwn: str = ""
    by_id: tuple[str, ...] = ()  # /dev/disk/by-id names, without the directory
    # at restore, the partitions are resized to the target disk by recovery_env.restore.resize (the field keeps
    # its first name so older descriptors parse): no = every start and size kept exactly as captured
    grow_last: bool = True

    @property
    def size_sectors(self) -> int:
        return self.size_bytes // self.logical_sector_size

    @property
    def first_usable(self) -> int:
        """First sector a partition may start at: after the GPT header and its 128-entry array (34 with 512-byte
        sectors, 6 with 4096-byte sectors), after the MBR itself (1) on an MBR disk."""
        if self.table is TableType.MBR:
            return 1
        return 2 + -(-GPT_ENTRY_ARRAY_BYTES // self.logical_sector_size)

    @property
    def last_usable(self) -> int:
        """Last sector a partition may use (inclusive): before the backup GPT (size - 34 with 512-byte sectors),
        the disk's last sector on MBR (and never past the 32-bit LBA limit of an MBR entry)."""
        if self.table is TableType.MBR:
            return min(self.size_sectors, MBR_MAX_SECTORS) - 1
        return self.size_sectors - 2 - -(-GPT_ENTRY_ARRAY_BYTES // self.logical_sector_size)


@dataclass(frozen=True)
class Partition:
    disk: str  # Disk.key
    number: int  # 1-based partition number
    start: int  # in logical sectors
    size: int  # in logical sectors
    type: str  # MBR id ("83") or GPT type GUID (lower case)
    partuuid: str = ""  # GPT partition GUID, or MBR "<signature>-<NN>"
    name: str = ""  # GPT partition name
    attributes: int = 0  # GPT attribute bits
    flags: tuple[PartFlag, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.disk}p{self.number}"

    @property
    def end(self) -> int:
        """First sector after the partition."""
        return self.start + self.size


@dataclass(frozen=True)
class MdArray:
    """An MD RAID array (format 3), as ``mdadm --detail`` shows it."""

    key: str  # md1, md2, ...
    uuid: str  # mdadm form: xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx
    level: RaidLevel
    # block device keys in slot order (RaidDevice 0, 1, ...); "missing" marks an absent slot of a degraded array,
    # so len(members) == raid_disks always and the array re-creates with the same slots
    members: tuple[str, ...]
    raid_disks: int
    metadata: str = "1.2"  # superblock version: 0.90, 1.0, 1.1 or 1.2
    name: str = ""  # e.g. "host:0" (0.90 superblocks have none)
    chunk_kib: int = 0  # 0 for raid1
    size_bytes: int = 0  # the array's size (0 = not recorded)
    device: str = ""  # kernel name at capture time, e.g. /dev/md0 (informational)

    @property
    def present(self) -> tuple[str, ...]:
        """The members that are there (not "missing")."""
        return tuple(m for m in self.members if m != MD_MISSING)


@dataclass(frozen=True)
class LuksDevice:
    """A LUKS container (format 3) and the dm device that opens it.  The descriptor holds no key material: a
    restore asks for the passphrase; the header backup, when made, is a file of the backup set."""

    key: str  # luks1, luks2, ...
    device: str  # the block device key it is on
    uuid: str  # the LUKS header's UUID
    version: int  # 1 or 2
    name: str  # the dm name it is opened as, e.g. "sda3_crypt" (crypttab's first field)
    header_file: str = ""  # header backup (cryptsetup luksHeaderBackup) in the backup set; "" = none


@dataclass(frozen=True)
class LvmPv:
    """An LVM physical volume (format 3): a block device given to a volume group."""

    device: str  # the block device key it is on
    uuid: str  # LVM form: xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx
    vg: str  # LvmVg.name


@dataclass(frozen=True)
class LvmVg:
    """An LVM volume group (format 3)."""

    name: str
    uuid: str  # LVM form
    extent_size: int  # bytes
    metadata_file: str = ""  # its vgcfgbackup file in the backup set; "" = none


@dataclass(frozen=True)
class LvmLv:
    """An LVM logical volume (format 3)."""

    key: str  # lv1, lv2, ...
    vg: str  # LvmVg.name
    name: str
    uuid: str  # LVM form
    size: int  # bytes (virtual size for a thin volume)
    segtype: LvType = LvType.LINEAR
    stripes: int = 1
    stripe_size: int = 0  # bytes; striped volumes only
    pool: str = ""  # a thin volume's pool: the name of a thin-pool LV of the same group

    @property
    def path(self) -> str:
        """vg/lv, as LVM names it."""
        return f"{self.vg}/{self.name}"


BlockDevice = Disk | Partition | MdArray | LuksDevice | LvmLv


@dataclass(frozen=True)
class Filesystem:
    key: str  # fs1, fs2, ...
    # the block device key it is on (the field keeps its first name so older descriptors parse): a partition
    # (disk1p2) in every format; from format 3 also a whole disk, an MD array, a LUKS device or a logical volume
    partition: str
    type: FsType
    uuid: str = ""  # as blkid shows it (FAT: "ABCD-1234")
    label: str = ""
    block_size: int = 0  # 0 = the tool's default
    features: tuple[str, ...] = ()  # ext* features (-O), xfs/btrfs feature names
    fat_size: int = 0  # 12, 16 or 32 for vfat; 0 otherwise
    inode_size: int = 0
    backup: bool = True  # archived in the backup set
    default_subvolume: int = 0  # btrfs: id of the default subvolume (5 = the top level; 0 = not recorded)
    # bytes its files used at capture (statvfs of the mounted source, or the tar stream's bytes when larger);
    # 0 = not recorded (an older descriptor): the restore never makes it smaller than its partition was
    used_bytes: int = 0

    @property
    def device(self) -> str:
        """The block device key it is on (``partition``, by its format-3 meaning)."""
        return self.partition


@dataclass(frozen=True)
class Subvolume:
    """A btrfs subvolume (or snapshot) of a filesystem, as ``btrfs subvolume list`` showed it."""

    filesystem: str  # Filesystem.key (a btrfs one)
    path: str  # relative to the top level, e.g. "@", "@home", "@snapshots/1/snapshot"
    id: int  # its subvolume id (256 or more)
    parent: int = BTRFS_TOP_LEVEL  # id of the subvolume it lies in (5: the top level)
    readonly: bool = False  # a read-only subvolume (btrfs property ro; read-only snapshots)
    compression: str = ""  # btrfs property compression of its root directory ("" = none set)


@dataclass(frozen=True)
class Mount:
    mountpoint: str  # "/", "/boot/efi", or "swap"
    filesystem: str  # Filesystem.key
    options: str = "defaults"
    spec: FstabSpec = FstabSpec.UUID
    device: str = ""  # the fstab first field as written, e.g. "UUID=...", "/dev/sda2"
    dump: int = 0
    passno: int = 0


@dataclass(frozen=True)
class Bootloader:
    kind: BootloaderKind
    disk: str = ""  # Disk.key the loader lives on
    esp_mountpoint: str = ""  # "/boot/efi" for grub-efi / systemd-boot
    efi_directory: str = ""  # bootloader id, e.g. "debian" (\EFI\debian\)


@dataclass(frozen=True)
class Archive:
    filesystem: str  # Filesystem.key
    file: str  # file name within the backup set directory
    size: int  # bytes of the archive file
    sha256: str
    entries: int = 0  # entries in the archive


@dataclass(frozen=True)
class BackupSet:
    media_label: str  # filesystem label of the backup medium ("" = any)
    media_uuid: str  # filesystem UUID of the backup medium ("" = any)
    path: str  # directory of the set on the medium, e.g. "/asr/sample-20261126"
    compression: Compression
    manifest: str  # file name of the manifest, e.g. "MANIFEST"
    manifest_sha256: str
    file_count: int  # entries listed in the manifest
    archives: tuple[Archive, ...] = ()


@dataclass(frozen=True)
class Command:
    """A post-restore command, run in the restored system (like XP's [COMMANDS])."""

    order: int
    command: str
    critical: bool = False  # a failure stops the restore


@dataclass(frozen=True)
class Descriptor:
    system: SystemInfo
    disks: tuple[Disk, ...]
    partitions: tuple[Partition, ...]
    filesystems: tuple[Filesystem, ...]
    mounts: tuple[Mount, ...]
    bootloader: Bootloader
    backup: BackupSet | None = None
    commands: tuple[Command, ...] = ()
    subvolumes: tuple[Subvolume, ...] = ()
    version: int = FORMAT_VERSION
    md_arrays: tuple[MdArray, ...] = ()
    luks: tuple[LuksDevice, ...] = ()
    lvm_pvs: tuple[LvmPv, ...] = ()
    lvm_vgs: tuple[LvmVg, ...] = ()
    lvm_lvs: tuple[LvmLv, ...] = ()

    def disk(self, key: str) -> Disk:
        for d in self.disks:
            if d.key == key:
                return d
        raise KeyError(key)

    def partition(self, key: str) -> Partition:
        for p in self.partitions:
            if p.key == key:
                return p
        raise KeyError(key)

    def filesystem(self, key: str) -> Filesystem:
        for f in self.filesystems:
            if f.key == key:
                return f
        raise KeyError(key)

    def partitions_of(self, disk_key: str) -> tuple[Partition, ...]:
        return tuple(sorted((p for p in self.partitions if p.disk == disk_key), key=lambda p: p.number))

    @property
    def has_graph(self) -> bool:
        """Whether the storage goes beyond partitions: MD, LUKS or LVM records, or a filesystem on a whole disk."""
        parts = {p.key for p in self.partitions}
        return bool(self.md_arrays or self.luks or self.lvm_pvs or self.lvm_vgs or self.lvm_lvs) or any(
            f.partition not in parts for f in self.filesystems
        )

    def block_kind(self, key: str) -> BlockKind:
        """What the block device key names (KeyError: nothing).  Partitions come first, then disks, arrays, LUKS
        devices and logical volumes (the validator keeps the keys apart)."""
        return _block_kind(self.block_device(key))

    def block_device(self, key: str) -> BlockDevice:
        """The record of the block device key (KeyError: nothing)."""
        for group in (self.partitions, self.disks, self.md_arrays, self.luks, self.lvm_lvs):
            for rec in group:
                if rec.key == key:
                    return rec
        raise KeyError(key)

    def parents_of(self, key: str) -> tuple[str, ...]:
        """The block devices ``key`` sits on, one step down: a partition its disk; an array its present members
        in slot order; a LUKS device its device; a logical volume the devices of its group's PVs (a thin volume
        its pool); a disk nothing.  KeyError for an unknown key or a missing pool."""
        dev = self.block_device(key)
        if isinstance(dev, Partition):
            return (dev.disk,)
        if isinstance(dev, MdArray):
            return dev.present
        if isinstance(dev, LuksDevice):
            return (dev.device,)
        if isinstance(dev, LvmLv):
            if dev.segtype is LvType.THIN:
                pool = next((lv for lv in self.lvm_lvs if lv.vg == dev.vg and lv.name == dev.pool), None)
                if pool is None:
                    raise KeyError(f"{dev.vg}/{dev.pool}")
                return (pool.key,)
            return tuple(pv.device for pv in self.lvm_pvs if pv.vg == dev.vg)
        return ()

    def disks_under(self, key: str) -> tuple[str, ...]:
        """The disks block device ``key`` ultimately lives on, through the graph, in first-reached order (a
        filesystem's: ``disks_under(fs.device)``).  KeyError for an unknown key; the walk stops at a cycle (which
        the validator refuses)."""
        found: dict[str, None] = {}
        seen: set[str] = set()
        stack = [key]
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            if isinstance(self.block_device(k), Disk):
                found.setdefault(k, None)
            stack.extend(reversed(self.parents_of(k)))
        return tuple(found)

    def subvolumes_of(self, fs_key: str) -> tuple[Subvolume, ...]:
        """The subvolumes of a btrfs filesystem in id order (the order a restore makes them in)."""
        return tuple(sorted((s for s in self.subvolumes if s.filesystem == fs_key), key=lambda s: s.id))

    def archives_top_level(self, fs: Filesystem) -> bool:
        """Whether the archive of ``fs`` holds its whole top level (btrfs, format 2): every subvolume is a
        directory in it, and its MANIFEST paths are absolute in the top level ("/@/etc/fstab")."""
        return fs.type is FsType.BTRFS and self.version >= 2

    def mount_of(self, fs_key: str) -> Mount | None:
        for m in self.mounts:
            if m.filesystem == fs_key:
                return m
        return None

    @property
    def root_mount(self) -> Mount:
        for m in self.mounts:
            if m.mountpoint == "/":
                return m
        raise KeyError("/")


_BLOCK_KINDS: dict[type, BlockKind] = {
    Disk: BlockKind.DISK,
    Partition: BlockKind.PARTITION,
    MdArray: BlockKind.MD,
    LuksDevice: BlockKind.LUKS,
    LvmLv: BlockKind.LV,
}


def _block_kind(dev: BlockDevice) -> BlockKind:
    return _BLOCK_KINDS[type(dev)]


def describe_block_device(dev: BlockDevice) -> str:
    """A person's name for a block device: "LVM logical volume lv1 (vg0/root)", "MD RAID array md1 (raid1)"..."""
    if isinstance(dev, MdArray):
        return f"MD RAID array {dev.key} ({dev.level.value}{', ' + dev.name if dev.name else ''})"
    if isinstance(dev, LuksDevice):
        return f"LUKS{dev.version} device {dev.key} ({dev.name})"
    if isinstance(dev, LvmLv):
        return f"LVM logical volume {dev.key} ({dev.path})"
    if isinstance(dev, Disk):
        return f"whole disk {dev.key}"
    return f"partition {dev.key}"


@dataclass(frozen=True)
class Device:
    """One device of the machine (ASRPNP.SIF), so the rescue system can carry its driver."""

    bus: str  # pci, usb, virtio, ...
    address: str  # bus address, e.g. 0000:00:1f.2
    vendor: str = ""  # hex id, e.g. 8086
    device: str = ""  # hex id
    device_class: str = ""  # e.g. 0x010601
    modalias: str = ""
    driver: str = ""  # kernel driver in use
    modules: tuple[str, ...] = ()  # kernel modules that provide the driver
    description: str = ""


@dataclass(frozen=True)
class DeviceInventory:
    hostname: str
    devices: tuple[Device, ...] = field(default_factory=tuple)
    version: int = PNP_FORMAT_VERSION

    def modules(self) -> tuple[str, ...]:
        """Every kernel module the inventory's devices use, in first-seen order."""
        seen: dict[str, None] = {}
        for d in self.devices:
            for m in d.modules or ((d.driver,) if d.driver else ()):
                seen.setdefault(m, None)
        return tuple(seen)


def path_problem(p: str) -> str:
    """Why ``p`` may not be a mount point, device path or backup path in a descriptor (``""``: it may): a ``..``
    or ``.`` component (it would walk out of, or around, the place it names) or a NUL or control character (it
    would cut the path or reach a terminal raw).  Shared by the validator and the capture, which refuses to record
    such a path."""
    bad = next((ch for ch in p if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0), None)
    if bad is not None:
        what = "a NUL character" if bad == "\0" else f"the control character {bad!r}"
        return f"{p!r} has {what}"
    for part in p.split("/"):
        if part in ("..", "."):
            return f"{p!r} has a {part!r} component"
    return ""
