"""A real Debian 12 source machine for the tests: debootstrap, the distribution's own GRUB, systemd, serial login.

Two cached stages under ``~/.cache/asr/machines/`` (or ``$ASR_CACHE/machines``):

1. **The tree** (:func:`make_debian_tree`): ``debootstrap --variant=minbase`` of :data:`PACKAGES` from the mirror
   the host's own apt configuration names (read at run time: :func:`find_mirror`), packed as
   ``tree-<digest>.tar.zst``.  The digest covers suite, variant, package list, mirror, debootstrap's version and
   the code that makes the tree.  About 680 MB unpacked, 210 MB packed; every layout shares it.
2. **The disk image(s)** (:func:`make_debian_image`): ``<digest>/disk*.img`` plus ``machine.json``, the digest
   covering the tree's digest, the pure plan (layout, sizes, every id), the rendered templates and this code.

Why the disks are made inside a QEMU guest: the host kernel here cannot mount vfat, has no partition parsers for
loop devices and the distribution's ``grub-install`` fails on a loop device without udev (see the platform
notes).  The guest is the tree itself: the host packs it into a plain ext4 file (``mke2fs -d``, no mount, no
loop) together with a script rendered from ``templates/debian-make-machine.sh.j2`` and the sfdisk scripts; QEMU
boots the tree's own kernel and initramfs-tools initrd (``-kernel``/``-initrd``, ``root=/dev/vda
init=/asr/make-machine``) with the blank target disk(s) attached.  The script starts udev (update-grub writes
``root=UUID=`` only where /dev/disk/by-uuid exists), partitions (sfdisk), formats with the planned ids (mkfs.*,
mkswap), copies its own root (a plain bind mount of /: nothing mounted on it, ``cp -a`` keeps owners, xattrs,
ACLs, hard links) into the mounted target, then in a chroot runs the distribution's own ``grub-install`` for
i386-pc and x86_64-efi (``\\EFI\\debian`` and the removable path ``\\EFI\\BOOT\\BOOTX64.EFI``, no NVRAM: the
image must boot on any firmware's fresh variables) and ``update-grub``, and powers off.  The initramfs
(``update-initramfs`` with the machine's resume device) is made before, on the host in a chroot of the tree (with
/proc mounted in it: the one mount on the host); in the guest it takes minutes under TCG.  The guest kernel has
every driver and filesystem, the tree every tool.

Layouts are data (:data:`LAYOUTS`) read by the pure planner (:func:`plan_debian_machine`): per disk its label
and partitions by role and size, the fstab lines (a btrfs once per subvolume mounted), the firmwares it boots
under (which GRUB platforms are installed), btrfs subvolumes, default subvolume and read-only snapshots.  The
guest steps (:func:`plan_guest_steps`) are derived from the plan.  The five layouts of issue 11:

1. ``gpt-bios-uefi``: bios_grub + ESP + ext4 root + swap; BIOS and UEFI.
2. ``mbr-bios``: MBR, /boot ext4 (256 MiB, active) + ext4 root + extended holding swap as logical partition 5;
   BIOS.
3. ``gpt-xfs-home``: ESP + xfs root + ext4 /home (a user's files) + swap; UEFI.
4. ``gpt-btrfs``: bios_grub + btrfs (subvolumes ``@`` at /, ``@home`` at /home, ``@snapshots`` at /.snapshots,
   the default ``@``, a read-only snapshot ``@snapshots/1/snapshot`` of ``@``) + swap; BIOS.
5. ``two-disks``: disk 1 ESP + ext4 root + swap, disk 2 (512 MiB) one ext4 at /srv (files); UEFI.

Build one by hand: ``python -m builder.vm.debian --layout mbr-bios out/debian`` (root).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from itertools import pairwise
from pathlib import Path

from builder.media.packages import file_lock
from builder.vm.qemu import QemuVM, VMError, VMSpec, find_accel
from recovery_env.errors import InputError, InternalError
from recovery_env.model.descriptor import GPT_BIOS_BOOT, GPT_ESP, FsType
from recovery_env.run import run
from recovery_env.templating import TEMPLATES_DIR, render

log = logging.getLogger("asr.debian")

SUITE = "bookworm"
VARIANT = "minbase"
#: What the machine is made of: a kernel, systemd, the distribution's GRUB for both firmwares with its
#: grub-install and update-grub, initramfs-tools, a service (ssh), the tools the guest build needs (sfdisk,
#: mkfs.fat, mkfs.ext4, mkfs.xfs, mkfs.btrfs and btrfs for the xfs and btrfs layouts), zstd (initramfs-tools'
#: default compressor), attr/acl/efibootmgr for the capture and restore tests, and python3 with jinja2 so that
#: ``asr backup`` runs inside the machine (the capture of a running system).
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64", "systemd-sysv", "udev", "initramfs-tools",
    "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common", "grub-common",
    "openssh-server", "attr", "acl", "dosfstools", "fdisk", "e2fsprogs", "xfsprogs", "btrfs-progs",
    "efibootmgr", "zstd", "python3", "python3-jinja2",
)  # fmt: skip

SECTOR = 512
MIB_SECTORS = (1 << 20) // SECTOR
GPT_LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

#: Lines of the guest build (templates/debian-make-machine.sh.j2) and of the login check (debian-check.sh.j2).
BUILD_PREFIX = "ASR-MAKE-MACHINE"
CHECK_PREFIX = "ASR-CHECK"
#: Where the guest script and its files live on the helper disk (left out of the copy).
GUEST_DIR = "asr"
GUEST_TARGET = "/run/asr/target"
GUEST_SOURCE = "/run/asr/source"
#: Guest disk names: the helper (the tree) is the first virtio disk, the target disks follow.
GUEST_DISKS = ("/dev/vdb", "/dev/vdc", "/dev/vdd")
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200"
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DebianMachineError(InputError):
    """The Debian machine cannot be built as asked (a bad spec, no mirror for the suite, not root)."""


class MirrorNotFoundError(DebianMachineError):
    """The host's apt configuration names no source for the suite debootstrap needs."""


class GuestBuildError(VMError):
    """The guest that makes the machine's disks reported a failure (or never reported).  Carries its serial tail."""


# ------------------------------------------------------------------------------------------ the host's apt sources


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    types: tuple[str, ...] = ("deb",)


def parse_sources_list(text: str) -> list[AptSource]:
    """One-line sources (``deb [opts] URI SUITE COMPONENT...``); comments and deb-src lines skipped."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        words = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(words) >= 3 and words[0] == "deb":
            out.append(AptSource(uri=words[1], suites=(words[2],), components=tuple(words[3:])))
    return out


def parse_deb822_sources(text: str) -> list[AptSource]:
    """deb822 ``.sources`` stanzas (``Types``, ``URIs``, ``Suites``, ``Components``; ``Enabled: no`` skipped)."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "uris" not in fields:
            continue
        types = tuple(fields.get("types", "").split())
        for uri in fields["uris"].split():
            out.append(AptSource(uri=uri, suites=tuple(fields.get("suites", "").split()),
                                 components=tuple(fields.get("components", "").split()), types=types))  # fmt: skip
    return out


def read_host_sources(paths: Sequence[Path] = APT_SOURCES) -> list[AptSource]:
    """Every source of the host's apt configuration, in apt's order (sources.list, then sources.list.d/*)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources"))
        elif path.is_file():
            files.append(path)
    out: list[AptSource] = []
    for f in files:
        text = f.read_text(errors="replace")
        out += parse_deb822_sources(text) if f.suffix == ".sources" else parse_sources_list(text)
    return out


def find_mirror(sources: Sequence[AptSource], suite: str) -> str:
    """The URI of the first binary source offering ``suite`` with component main."""
    for src in sources:
        if "deb" in src.types and suite in src.suites and "main" in src.components:
            return src.uri
    offered = sorted({s for src in sources for s in src.suites}) or ["none"]
    raise MirrorNotFoundError(f"the host's apt configuration ({', '.join(map(str, APT_SOURCES))}) has no 'deb' "
                              f"source for suite {suite!r} with component main (suites offered: "
                              f"{', '.join(offered)})")  # fmt: skip


# ------------------------------------------------------------------------------------------------------ the spec


class DebianLayout(StrEnum):
    """The disk layouts of issue 11 (the number in the comment is the issue's)."""

    GPT_BIOS_UEFI = "gpt-bios-uefi"  # 1: bios_grub + ESP (vfat) + ext4 root + swap partition; BIOS and UEFI
    MBR_BIOS = "mbr-bios"  # 2: XP-era MBR: /boot ext4 (active) + ext4 root + extended with a logical swap; BIOS
    GPT_XFS_HOME = "gpt-xfs-home"  # 3: ESP + xfs root + ext4 /home + swap; UEFI
    GPT_BTRFS = "gpt-btrfs"  # 4: bios_grub + btrfs (@, @home, @snapshots, a read-only snapshot) + swap; BIOS
    TWO_DISKS = "two-disks"  # 5: disk 1 ESP + ext4 root + swap, disk 2 one ext4 at /srv; UEFI


class Role(StrEnum):
    """What a partition is for; carries its GPT and MBR types."""

    BIOS_BOOT = "bios_grub"
    ESP = "esp"
    BOOT = "boot"
    ROOT = "root"
    HOME = "home"
    SRV = "srv"
    SWAP = "swap"
    EXTENDED = "extended"  # MBR only: the container of the logical partitions

    @property
    def gpt_type(self) -> str:
        return {"bios_grub": GPT_BIOS_BOOT, "esp": GPT_ESP, "swap": GPT_SWAP}.get(self.value, GPT_LINUX_FS)

    @property
    def mbr_type(self) -> str:
        return {"esp": "ef", "swap": "82", "extended": "05"}.get(self.value, "83")


#: A partition's size in a layout: MiB, the name of a DebianSpec field holding MiB, or FILL (what is left).
FILL = 0


@dataclass(frozen=True)
class PartRow:
    role: Role
    mib: int | str
    logical: bool = False  # MBR: inside the extended partition (numbered from 5)
    bootable: bool = False  # MBR: the active flag


@dataclass(frozen=True)
class FsRow:
    """A line of the machine's fstab (several for one btrfs: one per subvolume mounted)."""

    role: Role  # the partition it lives on (the first of that role on any disk)
    fstype: FsType
    label: str
    mountpoint: str  # "" for swap
    options: str
    passno: int
    subvolume: str = ""  # btrfs: the subvolume mounted (``subvol=`` is added to the options)


@dataclass(frozen=True)
class LayoutFacts:
    disks: tuple[tuple[str, tuple[PartRow, ...]], ...]  # (sfdisk label, partitions in table order) per disk
    filesystems: tuple[FsRow, ...]
    firmwares: tuple[str, ...]  # what the layout boots under: bios (GRUB i386-pc), uefi (GRUB x86_64-efi)
    subvolumes: tuple[str, ...] = ()  # btrfs subvolumes created at the top level, in order
    default_subvolume: str = ""  # btrfs subvolume set-default
    snapshots: tuple[tuple[str, str], ...] = ()  # btrfs read-only snapshots (source subvolume, path), made last


_ESP_FS = FsRow(Role.ESP, FsType.VFAT, "ESP", "/boot/efi", "umask=0077", 2)
_SWAP_FS = FsRow(Role.SWAP, FsType.SWAP, "swap", "", "sw", 0)
_EXT4_ROOT = FsRow(Role.ROOT, FsType.EXT4, "root", "/", "errors=remount-ro", 1)
LAYOUTS: dict[DebianLayout, LayoutFacts] = {
    DebianLayout.GPT_BIOS_UEFI: LayoutFacts(
        disks=(("gpt", (PartRow(Role.BIOS_BOOT, 1), PartRow(Role.ESP, "esp_mib"), PartRow(Role.ROOT, FILL),
                        PartRow(Role.SWAP, "swap_mib"))),),
        filesystems=(_EXT4_ROOT, _ESP_FS, _SWAP_FS),
        firmwares=("bios", "uefi"),
    ),
    DebianLayout.MBR_BIOS: LayoutFacts(
        disks=(("dos", (PartRow(Role.BOOT, "boot_mib", bootable=True), PartRow(Role.ROOT, FILL),
                        PartRow(Role.EXTENDED, "swap_mib"), PartRow(Role.SWAP, "swap_mib", logical=True))),),
        filesystems=(_EXT4_ROOT, FsRow(Role.BOOT, FsType.EXT4, "boot", "/boot", "defaults", 2), _SWAP_FS),
        firmwares=("bios",),
    ),
    DebianLayout.GPT_XFS_HOME: LayoutFacts(
        disks=(("gpt", (PartRow(Role.ESP, "esp_mib"), PartRow(Role.ROOT, FILL), PartRow(Role.HOME, "home_mib"),
                        PartRow(Role.SWAP, "swap_mib"))),),
        filesystems=(FsRow(Role.ROOT, FsType.XFS, "root", "/", "defaults", 0), _ESP_FS,
                     FsRow(Role.HOME, FsType.EXT4, "home", "/home", "defaults", 2), _SWAP_FS),
        firmwares=("uefi",),
    ),
    DebianLayout.GPT_BTRFS: LayoutFacts(
        disks=(("gpt", (PartRow(Role.BIOS_BOOT, 1), PartRow(Role.ROOT, FILL), PartRow(Role.SWAP, "swap_mib"))),),
        filesystems=(FsRow(Role.ROOT, FsType.BTRFS, "root", "/", "defaults", 0, "@"),
                     FsRow(Role.ROOT, FsType.BTRFS, "root", "/home", "defaults", 0, "@home"),
                     FsRow(Role.ROOT, FsType.BTRFS, "root", "/.snapshots", "defaults", 0, "@snapshots"), _SWAP_FS),
        firmwares=("bios",),
        subvolumes=("@", "@home", "@snapshots"),
        default_subvolume="@",
        snapshots=(("@", "@snapshots/1/snapshot"),),
    ),
    DebianLayout.TWO_DISKS: LayoutFacts(
        disks=(("gpt", (PartRow(Role.ESP, "esp_mib"), PartRow(Role.ROOT, FILL), PartRow(Role.SWAP, "swap_mib"))),
               ("gpt", (PartRow(Role.SRV, FILL),))),
        filesystems=(_EXT4_ROOT, _ESP_FS, FsRow(Role.SRV, FsType.EXT4, "srv", "/srv", "defaults", 2), _SWAP_FS),
        firmwares=("uefi",),
    ),
}  # fmt: skip
#: Where a layout keeps a user's files (a non-system filesystem backed up too): /home and /srv when separate.
DATA_MOUNTS = ("/home", "/srv")


@dataclass(frozen=True)
class DebianSpec:
    """What to build.  Validated on construction: a bad value is a DebianMachineError naming the field."""

    layout: DebianLayout = DebianLayout.GPT_BIOS_UEFI
    disk_mib: int = 2048
    esp_mib: int = 64
    swap_mib: int = 256
    boot_mib: int = 256  # mbr-bios: /boot
    home_mib: int = 128  # gpt-xfs-home: /home
    srv_disk_mib: int = 512  # two-disks: the second disk (/srv)
    hostname: str = "asr-debian"
    seed: str = "asr-debian-machine"
    suite: str = SUITE
    packages: tuple[str, ...] = PACKAGES

    def __post_init__(self) -> None:
        if not isinstance(self.layout, DebianLayout):
            raise DebianMachineError(f"debian machine layout {self.layout!r}: expected one of "
                                     f"{', '.join(DebianLayout)}")  # fmt: skip
        if not _HOSTNAME_RE.match(self.hostname):
            raise DebianMachineError(f"debian machine hostname {self.hostname!r}: expected 1-63 of a-z, 0-9, '-'")
        if self.esp_mib < 33:
            raise DebianMachineError(f"debian machine esp_mib {self.esp_mib}: FAT32 needs at least 33 MiB")
        for name, least in (("swap_mib", 1), ("boot_mib", 64), ("home_mib", 16), ("srv_disk_mib", 16)):
            if getattr(self, name) < least:
                raise DebianMachineError(f"debian machine {name} {getattr(self, name)}: expected at least {least}")
        _label, rows = LAYOUTS[self.layout].disks[0]
        need = MIN_ROOT_MIB + sum(self.row_mib(r) for r in rows if not r.logical) + 2
        if self.disk_mib < need:
            raise DebianMachineError(f"debian machine disk_mib {self.disk_mib}: the {self.layout} layout needs at "
                                     f"least {need} MiB (root {MIN_ROOT_MIB} MiB)")  # fmt: skip

    def row_mib(self, row: PartRow) -> int:
        """The MiB a partition row takes (FILL: 0; an extended partition: its logical ones plus 1 MiB)."""
        mib = row.mib if isinstance(row.mib, int) else int(getattr(self, row.mib))
        return mib + 1 if row.role is Role.EXTENDED else mib

    def make_uuid(self, what: str) -> str:
        """A version-4-shaped UUID derived from the seed (and the layout, but for layout 1's historical ids): the
        same spec gives the same ids; two layouts never share one."""
        scope = self.seed if self.layout is DebianLayout.GPT_BIOS_UEFI else f"{self.seed}/{self.layout}"
        return str(uuid.UUID(bytes=hashlib.sha256(f"{scope}/{what}".encode()).digest()[:16], version=4))

    def make_hex(self, what: str, digits: int) -> str:
        """Upper-case hex digits derived like :meth:`make_uuid` (FAT volume ids, MBR disk ids)."""
        scope = self.seed if self.layout is DebianLayout.GPT_BIOS_UEFI else f"{self.seed}/{self.layout}"
        return hashlib.sha256(f"{scope}/{what}".encode()).hexdigest()[:digits].upper()


#: The tree takes about 680 MB; the root filesystem gets room to spare.
MIN_ROOT_MIB = 1400


@dataclass(frozen=True)
class DiskPartition:
    """One partition (the attribute names are those templates/machine-sfdisk.j2 reads)."""

    number: int
    role: Role
    start: int  # sectors
    size: int  # sectors
    type: str  # GPT type GUID, or the MBR type's two hex digits
    uuid: str  # GPT partition UUID; MBR: the PARTUUID blkid shows (disk id - number)
    name: str
    bootable: bool = False


@dataclass(frozen=True)
class DiskPlan:
    index: int  # 0: the first target disk
    size_mib: int
    label: str  # sfdisk label: gpt or dos
    disk_id: str  # GPT: a UUID; dos: 0x and 8 hex digits
    partitions: tuple[DiskPartition, ...]

    @property
    def guest_device(self) -> str:
        return GUEST_DISKS[self.index]

    def guest_partition(self, number: int) -> str:
        return f"{self.guest_device}{number}"

    def partition(self, number: int) -> DiskPartition:
        for p in self.partitions:
            if p.number == number:
                return p
        raise InternalError(f"disk {self.index} has no partition {number}")


@dataclass(frozen=True)
class FsPlan:
    disk: int
    partition: int
    fstype: FsType
    uuid: str
    label: str
    mountpoint: str  # "" for swap
    options: str
    passno: int
    subvolume: str = ""  # btrfs: the subvolume mounted there ("" for the filesystem's default or not btrfs)


@dataclass(frozen=True)
class DebianPlan:
    """The pure plan of a Debian machine: disks, partitions, filesystems, ids, boot loader targets.  No I/O."""

    spec: DebianSpec
    disks: tuple[DiskPlan, ...]
    filesystems: tuple[FsPlan, ...]  # the fstab, in order (a btrfs appears once per subvolume mounted)
    grub_targets: tuple[str, ...]  # i386-pc, x86_64-efi
    machine_id: str
    firmwares: tuple[str, ...] = ("bios", "uefi")  # what the machine boots under (bios, uefi)
    subvolumes: tuple[str, ...] = ()  # btrfs subvolumes of the root filesystem, created in this order
    default_subvolume: str = ""
    snapshots: tuple[tuple[str, str], ...] = ()  # (source subvolume, read-only snapshot path)
    data_files: tuple[tuple[str, str], ...] = ()  # (absolute path, text): a user's files on /home or /srv

    def guest_device(self, fs: FsPlan) -> str:
        return self.disks[fs.disk].guest_partition(fs.partition)

    def partition(self, fs: FsPlan) -> DiskPartition:
        return self.disks[fs.disk].partition(fs.partition)

    @property
    def root(self) -> FsPlan:
        return self._fs(lambda f: f.mountpoint == "/", "a root filesystem")

    @property
    def swap(self) -> FsPlan:
        return self._fs(lambda f: f.fstype is FsType.SWAP, "a swap area")

    @property
    def esp(self) -> FsPlan | None:
        return next((f for f in self.filesystems if f.fstype is FsType.VFAT), None)

    @property
    def mounts(self) -> tuple[FsPlan, ...]:
        """Filesystems with a mount point, parents first."""
        return tuple(sorted((f for f in self.filesystems if f.mountpoint), key=lambda f: f.mountpoint.count("/")
                            if f.mountpoint != "/" else 0))  # fmt: skip

    @property
    def formats(self) -> tuple[FsPlan, ...]:
        """One entry per filesystem made (the first fstab line of each partition)."""
        seen: dict[tuple[int, int], FsPlan] = {}
        for fs in self.filesystems:
            seen.setdefault((fs.disk, fs.partition), fs)
        return tuple(seen.values())

    def mount(self, mountpoint: str) -> FsPlan | None:
        return next((f for f in self.filesystems if f.mountpoint == mountpoint), None)

    @property
    def data_digest(self) -> str:
        """What the check's ``data=`` field must say: ``sha256sum`` of ``sha256sum`` of the data files, by path."""
        lines = "".join(f"{hashlib.sha256(text.encode()).hexdigest()}  {path}\n"
                        for path, text in sorted(self.data_files))  # fmt: skip
        return hashlib.sha256(lines.encode()).hexdigest()

    def _fs(self, pred: Callable[[FsPlan], bool], what: str) -> FsPlan:
        for fs in self.filesystems:
            if pred(fs):
                return fs
        raise InternalError(f"the {self.spec.layout} plan has no {what}")


def _plan_disk(spec: DebianSpec, index: int, label: str, rows: tuple[PartRow, ...], size_mib: int) -> DiskPlan:
    """1 MiB aligned partitions in table order; the FILL one takes what is left (the backup GPT kept free)."""
    total = size_mib * MIB_SECTORS
    last_usable = total - 34 if label == "gpt" else total - 1
    fill = last_usable + 1 - MIB_SECTORS - sum(spec.row_mib(r) for r in rows if not r.logical) * MIB_SECTORS
    fill = fill // MIB_SECTORS * MIB_SECTORS
    if label == "gpt":
        disk_id = spec.make_uuid(f"disk{index}")
    else:
        disk_id = "0x" + spec.make_hex(f"disk{index}", 8).lower()
    parts: list[DiskPartition] = []
    start = MIB_SECTORS
    primary = 0
    logical_start = 0
    for row in rows:
        size = spec.row_mib(row) * MIB_SECTORS or fill
        if row.logical:  # after its EBR: 1 MiB into the extended partition, numbered from 5
            number = 5 + len([p for p in parts if p.number >= 5])
            at = logical_start + MIB_SECTORS
            logical_start = at + size - MIB_SECTORS
        else:
            primary += 1
            number, at = primary, start
            start += size
            if row.role is Role.EXTENDED:
                logical_start = at
        if label == "gpt":
            ptype, puuid = row.role.gpt_type, spec.make_uuid(f"disk{index}/part{number}")
        else:
            ptype, puuid = row.role.mbr_type, f"{disk_id[2:]}-{number:02x}"
        parts.append(DiskPartition(number=number, role=row.role, start=at, size=size, type=ptype, uuid=puuid,
                                   name=row.role.value, bootable=row.bootable))  # fmt: skip
    return DiskPlan(index=index, size_mib=size_mib, label=label, disk_id=disk_id, partitions=tuple(parts))


def plan_debian_machine(spec: DebianSpec) -> DebianPlan:
    """Partitions (1 MiB aligned), ids from the seed and filesystems of ``spec``'s layout (:data:`LAYOUTS`).
    Pure."""
    facts = LAYOUTS[spec.layout]
    disks = tuple(_plan_disk(spec, i, label, rows, spec.disk_mib if i == 0 else spec.srv_disk_mib)
                  for i, (label, rows) in enumerate(facts.disks))  # fmt: skip
    where = {p.role: (d.index, p.number) for d in reversed(disks) for p in reversed(d.partitions)}
    volid = spec.make_hex("esp", 8)
    filesystems = []
    for row in facts.filesystems:
        disk, number = where[row.role]
        fs_id = f"{volid[:4]}-{volid[4:]}" if row.fstype is FsType.VFAT else spec.make_uuid(f"fs/{row.role}")
        options = f"{row.options},subvol={row.subvolume}" if row.subvolume else row.options
        filesystems.append(FsPlan(disk, number, row.fstype, fs_id, row.label, row.mountpoint, options, row.passno,
                                  row.subvolume))  # fmt: skip
    separate = {f.mountpoint for f in filesystems} & set(DATA_MOUNTS)
    data_files = tuple((f"{m}/{name}", f"{text} ({spec.layout}, {spec.seed})\n") for m in sorted(separate)
                       for name, text in _DATA_FILES[m])  # fmt: skip
    targets = {"bios": "i386-pc", "uefi": "x86_64-efi"}
    return DebianPlan(spec=spec, disks=disks, filesystems=tuple(filesystems),
                      grub_targets=tuple(targets[f] for f in facts.firmwares),
                      machine_id=hashlib.sha256(f"{spec.seed}/machine-id".encode()).hexdigest()[:32],
                      firmwares=facts.firmwares, subvolumes=facts.subvolumes,
                      default_subvolume=facts.default_subvolume, snapshots=facts.snapshots,
                      data_files=data_files)  # fmt: skip


#: A user's files where a layout has a separate /home or /srv (uid/gid DATA_OWNER).
_DATA_FILES = {
    "/home": (("alice/notes.txt", "alice's notes"), ("alice/.profile", "# alice's profile"),
              ("alice/projects/plan.md", "# a plan")),
    "/srv": (("www/index.html", "<p>served from the second disk</p>"), ("backup/README", "site data")),
}  # fmt: skip
DATA_OWNER = 1000


# ------------------------------------------------------------------------------------------- the guest's steps


def plan_mkfs(fs: FsPlan, device: str) -> list[str]:
    """The mkfs argv that makes ``fs`` on ``device`` with its planned id and label."""
    if fs.fstype is FsType.EXT4:
        return ["mkfs.ext4", "-q", "-F", "-U", fs.uuid, "-L", fs.label, device]
    if fs.fstype is FsType.XFS:
        return ["mkfs.xfs", "-q", "-f", "-m", f"uuid={fs.uuid}", "-L", fs.label, device]
    if fs.fstype is FsType.BTRFS:
        return ["mkfs.btrfs", "-q", "-f", "-U", fs.uuid, "-L", fs.label, device]
    if fs.fstype is FsType.VFAT:
        return ["mkfs.fat", "-F", "32", "-i", fs.uuid.replace("-", ""), "-n", fs.label, device]
    if fs.fstype is FsType.SWAP:
        return ["mkswap", "-U", fs.uuid, "-L", fs.label, device]
    raise InternalError(f"no mkfs for {fs.fstype} yet")


@dataclass(frozen=True)
class GuestStep:
    name: str
    commands: tuple[str, ...]  # shell command lines


def plan_guest_steps(plan: DebianPlan) -> tuple[GuestStep, ...]:
    """What the guest does, in order, as shell command lines (rendered into the script).  Pure."""
    t = GUEST_TARGET
    udev = ("/lib/systemd/systemd-udevd --daemon", "udevadm trigger --action=add", "udevadm settle")
    # udev gives /dev/disk/by-uuid, without which update-grub writes root=/dev/vdb3 instead of root=UUID=...
    settle = ("udevadm trigger --action=change --subsystem-match=block", "udevadm settle")
    steps = [
        GuestStep("start udev", udev),
        GuestStep("partition", tuple(
            f"sfdisk --quiet --wipe always {shlex.quote(d.guest_device)} < /{GUEST_DIR}/disk{d.index}.sfdisk"
            for d in plan.disks)),
        GuestStep("wait for partitions", tuple(
            f"wait_block {shlex.quote(d.guest_partition(p.number))}" for d in plan.disks for p in d.partitions
            if p.role is not Role.EXTENDED)),
        GuestStep("make filesystems", tuple(shlex.join(plan_mkfs(fs, plan.guest_device(fs)))
                                            for fs in plan.formats) + settle),
    ]  # fmt: skip
    if plan.subvolumes:  # at the btrfs top level (subvolid 5), then the default one
        top, dev = "/run/asr/top", plan.guest_device(plan.root)
        subs = [shlex.join(["mkdir", "-p", top]), shlex.join(["mount", "-o", "subvolid=5", dev, top])]
        subs += [shlex.join(["btrfs", "subvolume", "create", f"{top}/{s}"]) for s in plan.subvolumes]
        if plan.default_subvolume:
            subs.append(shlex.join(["btrfs", "subvolume", "set-default", f"{top}/{plan.default_subvolume}"]))
        subs.append(shlex.join(["umount", top]))
        steps.append(GuestStep("make subvolumes", tuple(subs)))
    mounts = []
    for fs in plan.mounts:
        where = t + (fs.mountpoint if fs.mountpoint != "/" else "")
        options = ["-o", f"subvol={fs.subvolume}"] if fs.subvolume else []
        mounts += [shlex.join(["mkdir", "-p", where]), shlex.join(["mount", *options, plan.guest_device(fs), where])]
    steps.append(GuestStep("mount", tuple(mounts)))
    # a plain bind of / shows the helper's own filesystem without what is mounted on it (/proc, /sys, /dev, /run):
    # nothing changes while it is read and the target is not inside the source
    src = GUEST_SOURCE
    copy = [shlex.join(["mkdir", "-p", src]), shlex.join(["mount", "--bind", "-o", "ro", "/", src]),
            shlex.join(["cp", "-a", f"{src}/.", f"{t}/"]), shlex.join(["rm", "-rf", f"{t}/{GUEST_DIR}"]),
            shlex.join(["umount", src])]  # fmt: skip
    steps.append(GuestStep("copy the system", tuple(copy)))
    binds = []
    for api in ("dev", "proc", "sys", "run"):
        binds.append(shlex.join(["mount", "--bind", f"/{api}", f"{t}/{api}"]))
    steps.append(GuestStep("bind for the chroot", tuple(binds)))
    grub = []
    for target in plan.grub_targets:
        if target == "i386-pc":
            argv = ["grub-install", "--target=i386-pc", plan.disks[0].guest_device]
        else:  # the distribution's path and the removable fallback path; no NVRAM (fresh firmware variables)
            argv = ["grub-install", f"--target={target}", "--efi-directory=/boot/efi", "--bootloader-id=debian",
                    "--no-nvram", "--force-extra-removable"]  # fmt: skip
        grub.append(shlex.join(["chroot", t, *argv]))
    steps.append(GuestStep("install GRUB", tuple(grub)))
    cfg = f"{t}/boot/grub/grub.cfg"
    checks = [shlex.join(["grep", "-q", f"root=UUID={plan.root.uuid} ", cfg])]
    if plan.root.subvolume:  # update-grub found the root subvolume
        checks.append(shlex.join(["grep", "-q", f"rootflags=subvol={plan.root.subvolume}", cfg]))
    steps.append(GuestStep("configure GRUB", (shlex.join(["chroot", t, "update-grub"]), *checks)))
    if plan.snapshots:  # last: the snapshot holds the finished system
        snaps = []
        for source, path in plan.snapshots:
            mounted_at = {f.subvolume: f.mountpoint for f in plan.filesystems if f.subvolume}
            head, _, rest = path.partition("/")
            dest = t + mounted_at[head].rstrip("/") + "/" + rest
            src_dir = t + mounted_at[source].rstrip("/")
            snaps += [shlex.join(["mkdir", "-p", dest.rsplit("/", 1)[0]]),
                      shlex.join(["btrfs", "subvolume", "snapshot", "-r", src_dir, dest])]  # fmt: skip
        snaps.append(shlex.join(["btrfs", "subvolume", "list", t]))
        steps.append(GuestStep("snapshot", tuple(snaps)))
    report = ["blkid"]
    if plan.esp is not None:
        report.append(shlex.join(["ls", "-lR", f"{t}/boot/efi/EFI"]))
    steps.append(GuestStep("report", tuple(report)))
    steps.append(GuestStep("unmount", (shlex.join(["umount", "-R", t]), "sync", "udevadm control --exit")))
    return tuple(steps)


_TAR_META = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]

# ------------------------------------------------------------------------------------------------ rendering


def render_sfdisk(disk: DiskPlan) -> str:
    return render("machine-sfdisk.j2", label=disk.label, disk_id=disk.disk_id, first_lba=MIB_SECTORS,
                  partitions=disk.partitions)  # fmt: skip


def render_machine_files(plan: DebianPlan) -> dict[str, str]:
    """The machine's own configuration files (path relative to its root → text)."""
    spec = plan.spec
    return {
        "etc/fstab": render("debian-fstab.j2", filesystems=plan.filesystems),
        "etc/hostname": render("debian-hostname.j2", hostname=spec.hostname),
        "etc/hosts": render("debian-hosts.j2", hostname=spec.hostname),
        "etc/machine-id": render("debian-machine-id.j2", machine_id=plan.machine_id),
        "etc/default/grub": render("debian-default-grub.j2", cmdline=KERNEL_CMDLINE),
        "etc/initramfs-tools/conf.d/resume": render("debian-resume.j2", swap=plan.swap),
        "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": render("debian-serial-autologin.conf.j2"),
        **{path.lstrip("/"): text for path, text in plan.data_files},
    }


def render_guest_script(plan: DebianPlan) -> str:
    return render("debian-make-machine.sh.j2", prefix=BUILD_PREFIX, steps=plan_guest_steps(plan))


def render_check_command() -> str:
    """The line typed on the machine's serial console after login; it prints one ``ASR-CHECK`` line."""
    return render("debian-check.sh.j2", prefix=CHECK_PREFIX).strip()


# ------------------------------------------------------------------------------------------------------ caches


def machines_dir(override: Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    root = os.environ.get("ASR_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "asr") / "machines"


#: One builder per cache entry at a time (two test sessions must not debootstrap twice at once).  A name of its own:
#: the cache digests read the text of the functions that call it.
_locked = file_lock


def _check_root(doing: str) -> None:
    if os.geteuid() != 0:
        raise DebianMachineError(f"{doing} needs root (debootstrap, chroot, device nodes in the tree)")


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


#: This module's text as imported: the digests read the code that runs, even if the file is edited meanwhile.
_SOURCE_LINES = Path(__file__).read_text().splitlines(keepends=True)


def _code(*fns: Callable[..., object]) -> str:
    """The source text of ``fns`` (functions of this module): stable between a fresh compile and a .pyc, which a
    marshal digest of the code objects is not."""
    return "".join("".join(inspect.getblock(_SOURCE_LINES[fn.__code__.co_firstlineno - 1 :])) for fn in fns)


def tree_digest(spec: DebianSpec, mirror: str) -> str:
    """The digest of what the tree is made of: suite, variant, packages, mirror, debootstrap's version, code."""
    version = run(["debootstrap", "--version"]).stdout.strip()
    return _digest("tree", spec.suite, VARIANT, spec.packages, mirror, version, _code(make_debian_tree, _debootstrap))


def make_debian_tree(spec: DebianSpec, cache: Path | None = None) -> Path:
    """The debootstrapped tree of ``spec`` as a tarball in the cache (made once: about 70 s and more)."""
    _check_root("debootstrap")
    mirror = find_mirror(read_host_sources(), spec.suite)
    where = machines_dir(cache)
    tarball = where / f"tree-{tree_digest(spec, mirror)}.tar.zst"
    with _locked(where / f".{tarball.name}.lock"):
        if tarball.is_file():
            log.info("debian tree: cached %s", tarball)
            return tarball
        with tempfile.TemporaryDirectory(prefix=".tree-", dir=where) as tmp:
            tree = Path(tmp) / "root"
            started = time.monotonic()
            _debootstrap(spec, mirror, tree)
            log.info("debian tree: debootstrap took %.0f s", time.monotonic() - started)
            partial = tarball.with_name(f".{tarball.name}.partial")
            run(["tar", "-C", tree, *_TAR_META, "--zstd", "-cf", partial, "."])
            os.replace(partial, tarball)
    return tarball


def _debootstrap(spec: DebianSpec, mirror: str, tree: Path) -> None:
    run(["debootstrap", f"--variant={VARIANT}", f"--include={','.join(spec.packages)}", spec.suite, tree, mirror])
    # what a tree needs no copy of: downloaded .debs and package lists (the machine never runs apt in the tests)
    for cache_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (tree / cache_dir).glob("*"):
            if entry.is_file() and entry.name not in ("lock",):
                entry.unlink()
    # debootstrap copies these from the host: the machine gets its own (render_machine_files), nothing of ours
    for host_file in ("etc/hostname", "etc/resolv.conf"):
        (tree / host_file).unlink(missing_ok=True)


@dataclass(frozen=True)
class DebianImage:
    """A built Debian machine: its disk images and the facts a restore must reproduce."""

    disks: tuple[Path, ...]
    plan: DebianPlan
    kernel_version: str
    digest: str
    build_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return self.plan.spec.hostname


def image_digest(plan: DebianPlan, tree: Path) -> str:
    templates = {name: (TEMPLATES_DIR / name).read_bytes() for name in sorted(_TEMPLATES)}
    code = _code(
        make_debian_image,
        _make_disks,
        make_initramfs,
        plan_debian_machine,
        plan_guest_steps,
        plan_mkfs,
        render_machine_files,
    )
    return _digest("image", tree.name, repr(plan), templates, code)


_TEMPLATES = (
    "machine-sfdisk.j2", "debian-fstab.j2", "debian-hostname.j2", "debian-hosts.j2", "debian-machine-id.j2",
    "debian-default-grub.j2", "debian-resume.j2", "debian-serial-autologin.conf.j2", "debian-make-machine.sh.j2",
)  # fmt: skip


def make_debian_image(spec: DebianSpec, cache: Path | None = None, timeout: float = 900.0) -> DebianImage:
    """The disk image(s) of ``spec``, from the cache or made now.  Callers copy them before booting them."""
    _check_root("building the Debian machine")
    plan = plan_debian_machine(spec)
    timings: dict[str, float] = {}
    started = time.monotonic()
    tree = make_debian_tree(spec, cache)
    timings["tree"] = time.monotonic() - started
    where = machines_dir(cache)
    digest = image_digest(plan, tree)
    entry = where / digest
    with _locked(where / f".{digest}.lock"):
        facts = entry / "machine.json"
        if not facts.is_file():
            with tempfile.TemporaryDirectory(prefix=f".{digest}-", dir=where) as tmp:
                work = Path(tmp)
                kernel_version = _make_disks(plan, tree, work, timings, timeout)
                (work / "machine.json").write_text(
                    json.dumps(
                        {"kernel_version": kernel_version, "plan": asdict(plan), "build_seconds": timings}, indent=1
                    )
                )
                shutil.rmtree(entry, ignore_errors=True)
                entry.mkdir()
                for d in plan.disks:
                    os.replace(work / f"disk{d.index}.img", entry / f"disk{d.index}.img")
                os.replace(work / "machine.json", facts)  # last: its presence means the entry is whole
        data = json.loads(facts.read_text())
    return DebianImage(disks=tuple(entry / f"disk{d.index}.img" for d in plan.disks), plan=plan,
                       kernel_version=data["kernel_version"], digest=digest,
                       build_seconds=timings or data["build_seconds"])  # fmt: skip


def _make_disks(plan: DebianPlan, tarball: Path, work: Path, timings: dict[str, float], timeout: float) -> str:
    """Unpack the tree, add the machine's files and the guest script, pack it as the helper disk, run the guest."""
    t0 = time.monotonic()
    tree = work / "root"
    tree.mkdir()
    run(["tar", "-C", tree, *_TAR_META, "--zstd", "-xpf", tarball])
    for rel, text in render_machine_files(plan).items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for data_path, _text in plan.data_files:  # a user's files: theirs, below the mount point (cp -a keeps owners)
        data_rel = Path(data_path.lstrip("/"))
        for part in [data_rel, *data_rel.parents][:-2]:
            os.chown(tree / part, DATA_OWNER, DATA_OWNER)
    make_initramfs(tree)
    guest = tree / GUEST_DIR
    guest.mkdir()
    script = guest / "make-machine"
    script.write_text(render_guest_script(plan))
    script.chmod(0o755)
    for d in plan.disks:
        (guest / f"disk{d.index}.sfdisk").write_text(render_sfdisk(d))
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise InternalError(f"the tree has {len(kernels)} kernels in /boot, expected one")
    kernel_version = kernels[0].name.removeprefix("vmlinuz-")
    shutil.copyfile(kernels[0], work / "vmlinuz")
    shutil.copyfile(tree / "boot" / f"initrd.img-{kernel_version}", work / "initrd.img")
    used_kib = int(run(["du", "-sk", "--apparent-size", tree]).stdout.split()[0])
    helper = work / "helper.img"
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, "-L", "asr-helper", helper,
         f"{used_kib * 5 // 4 + 128 * 1024}k"])  # fmt: skip
    shutil.rmtree(tree)
    for d in plan.disks:
        with open(work / f"disk{d.index}.img", "wb") as f:
            f.truncate(d.size_mib << 20)
    timings["helper disk"] = time.monotonic() - t0

    t0 = time.monotonic()
    spec = VMSpec(
        disks=(helper, *(work / f"disk{d.index}.img" for d in plan.disks)),
        memory="1G",
        accel=find_accel(),
        kernel=work / "vmlinuz",
        initrd=work / "initrd.img",
        append=f"root=/dev/vda rw init=/{GUEST_DIR}/make-machine noresume console=ttyS0,115200 panic=-1 quiet",
        name="asr-make-debian",
    )
    with QemuVM(spec, workdir=work / "vm") as vm:
        try:
            m = vm.wait_serial(rf"{BUILD_PREFIX} [\d.]+ (done|FAIL.*)", timeout)
        except VMError as e:
            raise GuestBuildError(f"the guest making the Debian machine did not finish: {e}", e.serial_tail) from None
        if m.group(1) != "done":
            raise GuestBuildError(f"the guest making the Debian machine failed: {m.group(1)}", vm.serial_text[-6000:])
        vm.wait_exit(60)
        timings.update({f"guest: {name}": s for name, s in parse_guest_timings(vm.serial_text).items()})
    helper.unlink()
    timings["guest"] = time.monotonic() - t0
    log.info("debian machine: helper disk %.0f s, guest %.0f s", timings["helper disk"], timings["guest"])
    return kernel_version


_STEP_RE = re.compile(rf"^{BUILD_PREFIX} (?P<uptime>[\d.]+) (?:step (?P<step>.+)|done)$", re.MULTILINE)


def parse_guest_timings(serial: str) -> dict[str, float]:
    """Seconds per step of the guest build, from the uptimes its script prints before each step and at the end."""
    marks = [(m.group("step") or "", float(m.group("uptime"))) for m in _STEP_RE.finditer(serial)]
    return {name: round(end - start, 1) for (name, start), (_, end) in pairwise(marks) if name}


def make_initramfs(tree: Path) -> None:
    """The distribution's ``update-initramfs`` in a chroot of the tree, on the host: it reads the machine's files
    (the resume device).  Under TCG in the guest it took minutes; here seconds."""
    proc = tree / "proc"
    run(["mount", "-t", "proc", "proc", proc])
    try:
        run(["chroot", tree, "update-initramfs", "-u", "-k", "all"], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        run(["umount", proc])


# --------------------------------------------------------------------------------------------- the login check


@dataclass(frozen=True, order=True)
class Mounted:
    """One mounted filesystem as the check saw it (findmnt)."""

    target: str
    uuid: str
    fstype: str
    fsroot: str  # "/" or, for a btrfs subvolume, "/@home"

    @property
    def subvolume(self) -> str:
        """The btrfs subvolume mounted ("" for a filesystem's top level or not btrfs)."""
        return self.fsroot.strip("/") if self.fstype == "btrfs" else ""


@dataclass(frozen=True)
class LoginCheck:
    """What the machine said about itself after login (the ``ASR-CHECK`` line)."""

    state: str  # systemctl is-system-running
    root_source: str
    root_fstype: str
    root_uuid: str
    esp_fstype: str  # "none" without a mounted /boot/efi
    swap_uuid: str
    hostname: str
    firmware: str
    mounts: tuple[Mounted, ...]  # every mounted ext*, xfs, btrfs, vfat, in findmnt's order
    data: str  # sha256 over the sha256sum lines of /home's and /srv's files (DebianPlan.data_digest)
    line: str

    def mounted(self, target: str) -> Mounted | None:
        return next((m for m in self.mounts if m.target == target), None)


_CHECK_RE = re.compile(
    CHECK_PREFIX + r" state=(?P<state>\S+) root=(?P<root_source>\S+) fstype=(?P<root_fstype>\S+) "
    r"uuid=(?P<root_uuid>\S+) esp=(?P<esp_fstype>\S+) swap=(?P<swap_uuid>\S+) host=(?P<hostname>\S+) "
    r"firmware=(?P<firmware>\S+) mounts=(?P<mounts>\S*) data=(?P<data>[0-9a-f]{64}) end"
)


def parse_check_line(text: str) -> LoginCheck | None:
    m = _CHECK_RE.search(text)
    if m is None:
        return None
    fields = m.groupdict()
    mounts = []
    for item in filter(None, fields.pop("mounts").split(",")):
        parts = item.split(":")
        if len(parts) != 4:
            raise VMError(f"the check's mounts field has {item!r}: expected TARGET:UUID:FSTYPE:FSROOT", m.group(0))
        mounts.append(Mounted(*parts))
    return LoginCheck(**fields, mounts=tuple(mounts), line=m.group(0))


def expected_mounts(plan: DebianPlan) -> tuple[Mounted, ...]:
    """What the check's ``mounts=`` must list for ``plan`` (sorted by target): every fstab filesystem but swap."""
    return tuple(sorted(Mounted(f.mountpoint, f.uuid, f.fstype.value, f"/{f.subvolume}" if f.subvolume else "/")
                        for f in plan.mounts))  # fmt: skip


#: What a boot that will never reach the login says on the serial console (GRUB, the kernel, initramfs-tools).
_BOOT_FAILURES = (
    r"ALERT! .* does not exist|Dropping to a shell|Kernel panic[^\n]*|error: no such device[^\n]*"
    r"|error: file [^\n]* not found|grub rescue>|You are in emergency mode"
)


def check_login(vm: QemuVM, login_timeout: float = 240.0, check_timeout: float = 180.0) -> LoginCheck:
    """Wait for root's automatic login on the serial console, type the check, read its line."""
    m = vm.wait_serial(r"root@[a-z0-9-]+:~# |" + _BOOT_FAILURES, login_timeout)
    if not m.group(0).startswith("root@"):
        raise VMError(f"the Debian machine did not come up: {m.group(0)!r} on its serial console",
                      vm.serial_text[-4000:])  # fmt: skip
    vm.send_serial(render_check_command().encode() + b"\n")
    vm.wait_serial(CHECK_PREFIX + r" state=.* end", check_timeout)
    found = parse_check_line(vm.serial_text)
    if found is None:  # the pattern above and _CHECK_RE disagree
        raise InternalError("the ASR-CHECK line appeared but does not parse")
    return found


# ---------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.vm.debian", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to copy the disk image(s) into")
    parser.add_argument("--hostname", default=DebianSpec.hostname)
    parser.add_argument("--disk-mib", type=int, default=DebianSpec.disk_mib)
    parser.add_argument("--layout", type=DebianLayout, choices=list(DebianLayout), default=DebianSpec.layout)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image = make_debian_image(DebianSpec(layout=args.layout, hostname=args.hostname, disk_mib=args.disk_mib))
    args.out.mkdir(parents=True, exist_ok=True)
    for disk in image.disks:
        run(["cp", "--sparse=always", disk, args.out / disk.name])
        print(args.out / disk.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
