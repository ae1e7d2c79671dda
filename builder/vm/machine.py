"""The test source machine: a small bootable Linux disk image that the tests build themselves.

A GPT disk (BIOS boot partition, vfat ESP, ext4 root) or an MBR disk (vfat ESP, bootable ext4 root) holding a
Debian kernel, a tiny busybox initramfs whose /init checks the root filesystem and prints one verdict line, and
GRUB for BIOS (boot.img in the MBR, core.img in the BIOS boot partition or the post-MBR gap) and for UEFI
(``\\EFI\\BOOT\\BOOTX64.EFI``).  The restore tests back it up, wipe it, restore it and boot it again: the facts in
:class:`MachineImage` (disk GUID or MBR signature, partitions, filesystem UUIDs and labels, the verdict line) are
what they compare.

Everything is done on the image file with offsets, never by mounting (the host kernel here has no vfat and no
partition parsers for loop devices): ``sfdisk`` on the file, ``mke2fs -d -E offset=``, ``debugfs -w`` for
owners, times and an extended attribute, ``mformat``/``mmd``/``mcopy -i img@@offset`` for the ESP,
``grub-mkimage`` for both GRUB images, and :func:`plan_grub_bios_boot` for the BIOS boot code.

Reproducible: the same spec (seed, epoch, ...) and the same packages give a byte-identical image.  IDs come from
the seed; times come from ``epoch`` (``E2FSPROGS_FAKE_TIME`` for mke2fs and debugfs, ``SOURCE_DATE_EPOCH`` and
``TZ=UTC`` for mtools, fixed mtimes in the initramfs, and debugfs setting atime/ctime/mtime of every inode,
since ``mke2fs -d`` copies the staging files' ctime and the atime its own reading leaves behind).

Build one by hand: ``python -m builder.vm.machine out/machine-gpt.img --layout gpt``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import re
import struct
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from builder.media.initramfs import make_cpio
from builder.media.modules import plan_module_closure, read_module_index
from builder.media.packages import DebMember, MemberKind, PackageSet, fetch_packages, read_deb
from builder.media.tree import TreeBuilder
from recovery_env.errors import InputError, InternalError, ToolError
from recovery_env.model.descriptor import GPT_BIOS_BOOT, GPT_ESP, Firmware, FsType, TableType
from recovery_env.model.fileattrs import NameResolver, encode_posix_acl
from recovery_env.model.manifest import sha256_file
from recovery_env.probe.layout import read_blkid
from recovery_env.run import run
from recovery_env.templating import render

log = logging.getLogger("asr.machine")

SECTOR = 512
MIB_SECTORS = (1 << 20) // SECTOR
GPT_LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
MBR_LINUX = "83"
MBR_ESP = "ef"

#: The verdict lines of the machine's /init (templates/machine-init.j2).
MARKER_PREFIX = "ASR-MACHINE-MARKER"
FAIL_PREFIX = "ASR-MACHINE-FAIL"

#: Size facts of the layout (MiB).
ESP_MIB = 64
BIOS_BOOT_MIB = 1
MIN_SIZE_MIB = 160
#: The smallest FAT date is 1980-01-01.
MIN_EPOCH = 315532800

#: Kernel modules the initramfs loads to see the root disk on QEMU's IDE (pc), AHCI (q35) or virtio, and mount
#: ext4; plan_module_closure adds their dependencies.
MACHINE_MODULES: tuple[str, ...] = ("ata_piix", "ahci", "sd_mod", "virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
#: Where those modules and their dependencies live in the kernel package: only these are read and indexed
#: (indexing the aliases of all ~4000 modules costs seconds); a dependency outside them is an InternalError.
MACHINE_MODULE_DIRS: tuple[str, ...] = (
    "block/", "drivers/ata/", "drivers/scsi/", "drivers/block/", "drivers/virtio/",
    "fs/", "lib/", "crypto/", "arch/x86/crypto/",
)  # fmt: skip

#: GRUB modules built into core.img / BOOTX64.EFI: enough to run the early config (find the root filesystem by
#: UUID); everything else (normal, linux, serial, ...) GRUB loads from /boot/grub/<platform>/ on the root.
GRUB_CORE_MODULES: dict[str, tuple[str, ...]] = {
    "i386-pc": ("biosdisk", "part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid"),
    "x86_64-efi": ("part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid"),
}
GRUB_PACKAGES: dict[str, str] = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}
#: Files of each platform directory the build itself uses (grub-mkimage, plan_grub_bios_boot).
GRUB_NEEDED_FILES: dict[str, tuple[str, ...]] = {
    "i386-pc": ("kernel.img", "moddep.lst", "boot.img", "diskboot.img", "lzma_decompress.img"),
    "x86_64-efi": ("kernel.img", "moddep.lst"),
}

KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200 panic=5 quiet"

_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MARKER_RE = re.compile(r"^[A-Za-z0-9._:+-]{1,64}$")


class MachineBuildError(InputError):
    """A machine image cannot be built as asked (bad spec, a package lacking a file, not enough room)."""


class Layout(StrEnum):
    GPT = "gpt"
    MBR = "mbr"

    @property
    def table(self) -> TableType:
        return TableType(self.value)

    @property
    def grub_partmap(self) -> str:
        """The GRUB partition map module that reads this table."""
        return "part_gpt" if self is Layout.GPT else "part_msdos"


class PartRole(StrEnum):
    """What a partition of the test machine is for; carries its type per table and its GPT name."""

    BIOS_BOOT = "bios"
    ESP = "esp"
    ROOT = "root"

    def type_for(self, layout: Layout) -> str:
        return _PART_TYPES[(self, layout)]


_PART_TYPES: dict[tuple[PartRole, Layout], str] = {
    (PartRole.BIOS_BOOT, Layout.GPT): GPT_BIOS_BOOT,
    (PartRole.ESP, Layout.GPT): GPT_ESP,
    (PartRole.ROOT, Layout.GPT): GPT_LINUX_FS,
    (PartRole.ESP, Layout.MBR): MBR_ESP,
    (PartRole.ROOT, Layout.MBR): MBR_LINUX,
}


@dataclass(frozen=True)
class MachineSpec:
    """What to build.  Validated on construction: a bad value is a MachineBuildError naming the field."""

    layout: Layout = Layout.GPT
    size_mib: int = 256
    hostname: str = "asr-sample"
    marker: str = "asr-sample-1"
    epoch: int = 1700000000
    seed: str = "asr-test-machine"

    def __post_init__(self) -> None:
        if not isinstance(self.layout, Layout):
            raise MachineBuildError(f"machine layout {self.layout!r}: expected one of {', '.join(Layout)}")
        if self.size_mib < MIN_SIZE_MIB:
            raise MachineBuildError(f"machine size_mib {self.size_mib}: the test machine needs at least {MIN_SIZE_MIB}")
        if not _HOSTNAME_RE.match(self.hostname):
            raise MachineBuildError(f"machine hostname {self.hostname!r}: expected 1-63 of a-z, 0-9, '-'")
        if not _MARKER_RE.match(self.marker):
            raise MachineBuildError(f"machine marker {self.marker!r}: expected 1-64 of A-Z a-z 0-9 . _ : + -")
        if not MIN_EPOCH <= self.epoch < 1 << 31:
            raise MachineBuildError(f"machine epoch {self.epoch}: expected {MIN_EPOCH} (1980) to 2^31-1")

    def make_uuid(self, what: str) -> str:
        """A version-4-shaped UUID derived from the seed: the same spec gives the same IDs."""
        digest = hashlib.sha256(f"{self.seed}/{what}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def make_hex(self, what: str, digits: int) -> str:
        return hashlib.sha256(f"{self.seed}/{what}".encode()).hexdigest()[:digits]


@dataclass(frozen=True)
class MachinePartition:
    number: int
    role: PartRole
    start: int  # sectors
    size: int  # sectors
    type: str  # GPT type GUID (lower case) or MBR id (two hex digits)
    uuid: str  # PARTUUID: a GUID on GPT, <signature>-<NN> on MBR
    name: str  # GPT partition name ("" on MBR)
    bootable: bool  # MBR active flag

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR


@dataclass(frozen=True)
class MachineFilesystem:
    partition: int  # number of the partition holding it
    fstype: FsType
    uuid: str  # ext4: a UUID; vfat: the volume id XXXX-XXXX
    label: str
    mountpoint: str
    options: str
    passno: int


@dataclass(frozen=True)
class SampleFile:
    """An ordinary file of the machine (what a backup carries and a restore must bring back)."""

    path: str  # relative to the root filesystem, no leading slash
    data: bytes = field(repr=False)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    sparse_size: int = 0  # > 0: a sparse file of this size, ``data`` at its start and at its end


@dataclass(frozen=True)
class SampleXattr:
    """An extended attribute of a sample (set with debugfs ``ea_set -f``; an ACL as the kernel's binary form)."""

    path: str  # relative to the root filesystem
    name: str
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class SampleLink:
    path: str
    target: str  # symlink: the link text; hard link: the path (relative to the root) of the other name


@dataclass(frozen=True)
class MachinePlan:
    """The pure plan of a machine image: layout, IDs, filesystems and sample content.  No I/O made it."""

    spec: MachineSpec
    disk_id: str  # GPT disk GUID, or MBR signature 0xXXXXXXXX
    partitions: tuple[MachinePartition, ...]
    filesystems: tuple[MachineFilesystem, ...]
    samples: tuple[SampleFile, ...]
    symlink: SampleLink
    hardlink: SampleLink
    xattrs: tuple[SampleXattr, ...]  # what a MANIFEST once lost: several, binary, ACLs, on sparse/linked/long files

    @property
    def size_bytes(self) -> int:
        return self.spec.size_mib << 20

    def partition(self, role: PartRole) -> MachinePartition:
        for part in self.partitions:
            if part.role is role:
                return part
        raise InternalError(f"{self.spec.layout} machine has no {role} partition")

    def filesystem(self, role: PartRole) -> MachineFilesystem:
        number = self.partition(role).number
        for fs in self.filesystems:
            if fs.partition == number:
                return fs
        raise InternalError(f"{self.spec.layout} machine has no filesystem on its {role} partition")


@dataclass(frozen=True)
class MachineImage:
    """A built machine image and the facts a restore must reproduce."""

    path: Path
    plan: MachinePlan
    kernel_version: str
    sha256: str

    @property
    def layout(self) -> Layout:
        return self.plan.spec.layout

    @property
    def disk_id(self) -> str:
        return self.plan.disk_id

    @property
    def partitions(self) -> tuple[MachinePartition, ...]:
        return self.plan.partitions

    @property
    def filesystems(self) -> tuple[MachineFilesystem, ...]:
        return self.plan.filesystems

    @property
    def root(self) -> MachineFilesystem:
        return self.plan.filesystem(PartRole.ROOT)

    @property
    def esp(self) -> MachineFilesystem:
        return self.plan.filesystem(PartRole.ESP)

    @property
    def marker(self) -> str:
        return self.plan.spec.marker

    def expected_line(self, firmware: Firmware) -> str:
        """The verdict line the machine prints when it boots intact under ``firmware``."""
        spec = self.plan.spec
        return f"{MARKER_PREFIX} {spec.marker} host={spec.hostname} root={self.root.uuid} firmware={firmware} OK"


@dataclass(frozen=True)
class MachineInputs:
    """What the machine is made of, read from the Debian packages: kernel, modules, busybox, GRUB directories."""

    kernel_version: str
    vmlinuz: bytes = field(repr=False)
    modules: tuple[tuple[str, bytes], ...] = field(repr=False)  # (path lib/modules/..., data), load order
    busybox: bytes = field(repr=False)
    grub: Mapping[str, Mapping[str, bytes]] = field(repr=False)  # platform → file name → data


# ------------------------------------------------------------------------------------------------------ planning


def plan_machine(spec: MachineSpec) -> MachinePlan:
    """Partitions (1 MiB aligned), IDs from the seed, filesystems and the sample content of ``spec``."""
    total = spec.size_mib * MIB_SECTORS
    first = MIB_SECTORS
    roles: list[tuple[PartRole, int]] = []
    if spec.layout is Layout.GPT:
        roles.append((PartRole.BIOS_BOOT, BIOS_BOOT_MIB * MIB_SECTORS))
        last_usable = total - 34  # the backup GPT: 32 sectors of entries and the header
    else:
        last_usable = total - 1
    roles.append((PartRole.ESP, ESP_MIB * MIB_SECTORS))
    start = first
    sized: list[tuple[PartRole, int, int]] = []
    for role, size in roles:
        sized.append((role, start, size))
        start += size
    root_size = (last_usable + 1 - start) // MIB_SECTORS * MIB_SECTORS
    sized.append((PartRole.ROOT, start, root_size))

    if spec.layout is Layout.GPT:
        disk_id = spec.make_uuid("disk")
    else:
        disk_id = "0x" + spec.make_hex("disk", 8)
    partitions = []
    for number, (role, pstart, psize) in enumerate(sized, start=1):
        if spec.layout is Layout.GPT:
            partuuid, name = spec.make_uuid(f"part{number}"), role.value
        else:
            partuuid, name = f"{disk_id[2:]}-{number:02x}", ""
        partitions.append(
            MachinePartition(
                number=number,
                role=role,
                start=pstart,
                size=psize,
                type=role.type_for(spec.layout),
                uuid=partuuid,
                name=name,
                bootable=spec.layout is Layout.MBR and role is PartRole.ROOT,
            )
        )
    by_role = {p.role: p for p in partitions}
    volid = spec.make_hex("esp", 8).upper()
    filesystems = (
        MachineFilesystem(
            partition=by_role[PartRole.ROOT].number,
            fstype=FsType.EXT4,
            uuid=spec.make_uuid("rootfs"),
            label="asr-root",
            mountpoint="/",
            options="errors=remount-ro",
            passno=1,
        ),
        MachineFilesystem(
            partition=by_role[PartRole.ESP].number,
            fstype=FsType.VFAT,
            uuid=f"{volid[:4]}-{volid[4:]}",
            label="ESP",
            mountpoint="/boot/efi",
            options="umask=0077",
            passno=2,
        ),
    )
    return MachinePlan(
        spec=spec,
        disk_id=disk_id,
        partitions=tuple(partitions),
        filesystems=filesystems,
        samples=plan_samples(spec),
        symlink=SampleLink(path="home/user/notes-link", target="notes.txt"),
        hardlink=SampleLink(path="srv/data/hardlink-b", target="srv/data/hardlink-a"),
        xattrs=plan_xattrs(spec),
    )


#: A file whose name makes GNU tar write a pax path record (longer than ustar's 100 bytes).
LONG_NAME = "srv/data/long-" + "n" * 120 + ".txt"
#: ACLs in getfacl's numeric text; the file's mode agrees with them (group bits = mask), as the kernel keeps it.
SAMPLE_ACLS: tuple[tuple[str, str, str], ...] = (
    ("srv/data/acl.txt", "system.posix_acl_access",
     "user::rw-,user:1000:r--,group::r--,group:1000:rw-,mask::rw-,other::---"),
    ("srv/shared", "system.posix_acl_access", "user::rwx,user:1000:rwx,group::r-x,mask::rwx,other::r-x"),
    ("srv/shared", "system.posix_acl_default", "user::rwx,user:1000:rwx,group::r-x,group:1000:rwx,mask::rwx,"
     "other::r-x"),
)


def plan_xattrs(spec: MachineSpec) -> tuple[SampleXattr, ...]:
    """Extended attributes and ACLs of the samples: one text value, several with binary values (NUL, newline,
    0xff, empty), a name GNU tar percent-encodes, trusted.*, ACLs (access and default) beside xattrs, and xattrs
    on the sparse file, the hard-linked file and the file with a long name."""
    binary = hashlib.sha256(f"{spec.seed}/xattr".encode()).digest() + b"\x00\n\xff" + bytes(range(256))
    resolve = NameResolver(_no_names, _no_names)
    return (
        SampleXattr("srv/data/blob.bin", "user.asr.sample", spec.marker.encode()),
        SampleXattr("srv/data/attrs.bin", "user.asr.text", f"several xattrs of {spec.hostname}".encode()),
        SampleXattr("srv/data/attrs.bin", "user.asr.binary", binary),
        SampleXattr("srv/data/attrs.bin", "user.asr.empty", b""),
        SampleXattr("srv/data/attrs.bin", "user.asr.key=value", b"GNU tar writes this name with %3D"),
        SampleXattr("srv/data/attrs.bin", "trusted.asr", b"\x00trusted\xff"),
        SampleXattr("srv/data/acl.txt", "user.asr.beside-acl", b"an xattr beside an ACL"),
        SampleXattr("srv/shared", "user.asr.dir", b"a directory with default ACLs"),
        SampleXattr("srv/data/sparse.img", "user.asr.sparse", binary[::-1]),
        SampleXattr("srv/data/sparse.img", "trusted.asr.sparse", b"sparse"),
        SampleXattr("srv/data/hardlink-a", "user.asr.linked", b"on the inode of both names"),
        SampleXattr(LONG_NAME, "user.asr.long", b"a pax path record"),
        *(SampleXattr(path, name, encode_posix_acl(text, f"{path} {name}", resolve))
          for path, name, text in SAMPLE_ACLS),
    )


def _no_names(name: str) -> int:
    raise KeyError(name)  # the sample ACLs use numeric ids only


def plan_samples(spec: MachineSpec) -> tuple[SampleFile, ...]:
    """Ordinary files a backup has to carry: text, binary, sparse, private, owned by a user."""
    blob = b"".join(hashlib.sha256(f"{spec.seed}/blob/{i}".encode()).digest() for i in range(8192))  # 256 KiB
    return (
        SampleFile(
            "home/user/notes.txt", f"Notes of {spec.hostname}: marker {spec.marker}.\n".encode(), uid=1000, gid=1000
        ),
        SampleFile("home/user/secret.txt", b"only the owner reads this\n", mode=0o600, uid=1000, gid=1000),
        SampleFile("home/user/docs/readme.md", b"# A document\n\nWith a few lines.\n", uid=1000, gid=1000),
        SampleFile("srv/data/blob.bin", blob),
        SampleFile("srv/data/hardlink-a", b"one inode, two names\n"),
        SampleFile("srv/data/attrs.bin", b"a file with several extended attributes\n"),
        SampleFile("srv/data/acl.txt", b"a file with an ACL\n", mode=0o660),
        SampleFile("srv/shared/readme.txt", b"in a directory with default ACLs\n"),
        SampleFile(LONG_NAME, b"a file with a long name\n"),
        SampleFile("srv/data/sparse.img", b"SPARSE-HEAD" + bytes(4085), sparse_size=8 << 20),
        SampleFile("var/log/asr-sample.log", f"{spec.epoch} machine {spec.hostname} built\n".encode(), mode=0o640),
        SampleFile("root/.profile", b"PS1='# '\n", mode=0o600),
        SampleFile("usr/local/bin/hello", b"#!/bin/sh\necho hello\n", mode=0o755),
    )


def render_sfdisk_script(plan: MachinePlan) -> str:
    return render(
        "machine-sfdisk.j2",
        label=plan.spec.layout.table.sfdisk_label,
        disk_id=plan.disk_id,
        first_lba=MIB_SECTORS,
        partitions=plan.partitions,
    )


def render_grub_cfg(plan: MachinePlan, kernel_version: str) -> str:
    return render(
        "machine-grub.cfg.j2",
        hostname=plan.spec.hostname,
        title=f"asr test machine {plan.spec.hostname}",
        partmap=plan.spec.layout.grub_partmap,
        root_uuid=plan.filesystem(PartRole.ROOT).uuid,
        kernel_version=kernel_version,
        cmdline=KERNEL_CMDLINE,
    )


def render_grub_early_cfg(plan: MachinePlan) -> str:
    return render("machine-grub-early.cfg.j2", root_uuid=plan.filesystem(PartRole.ROOT).uuid, grub_dir="/boot/grub")


MARKER_FILE = "etc/asr-machine/marker"
SUMS_FILE = "etc/asr-machine/SHA256SUMS"


def render_init(plan: MachinePlan, module_paths: Sequence[str]) -> str:
    owned = [s for s in plan.samples if s.uid or s.mode != 0o644]
    return render(
        "machine-init.j2",
        marker_prefix=MARKER_PREFIX,
        fail_prefix=FAIL_PREFIX,
        modules=module_paths,
        wait_tenths=150,
        marker_file=MARKER_FILE,
        sums_file=SUMS_FILE,
        symlink=plan.symlink,
        hardlink=plan.hardlink,
        owned_files=owned,
    )


# ---------------------------------------------------------------------------------------------------- inputs


def read_machine_inputs(packages: PackageSet | None = None) -> MachineInputs:
    """Kernel, the modules of MACHINE_MODULES (dependencies first), busybox and both GRUB platform directories,
    from the verified package cache (builder.media.packages)."""
    pkgs = packages if packages is not None else fetch_packages()
    kver = pkgs.kernel_version
    mods = f"lib/modules/{kver}/"
    prefixes = [f"boot/vmlinuz-{kver}", f"{mods}modules.builtin", *(f"{mods}kernel/{d}" for d in MACHINE_MODULE_DIRS)]
    kernel = read_deb(pkgs.deb(pkgs.kernel_package), prefixes)
    vmlinuz = _member(kernel, f"boot/vmlinuz-{kver}", pkgs.kernel_package)
    index = read_module_index(kernel, kver)
    modules = tuple(
        (m.path, _member(kernel, m.path, pkgs.kernel_package)) for m in plan_module_closure(index, MACHINE_MODULES)
    )
    busybox = _member(read_deb(pkgs.deb("busybox-static"), ["bin/busybox"]), "bin/busybox", "busybox-static")
    grub: dict[str, dict[str, bytes]] = {}
    for platform, package in GRUB_PACKAGES.items():
        prefix = f"usr/lib/grub/{platform}/"
        members = read_deb(pkgs.deb(package), [prefix])
        files = {
            path.removeprefix(prefix): m.data
            for path, m in members.items()
            if m.kind is MemberKind.FILE and "/" not in path.removeprefix(prefix)
        }
        for needed in (*GRUB_NEEDED_FILES[platform], *(f"{mod}.mod" for mod in GRUB_CORE_MODULES[platform])):
            if needed not in files:
                raise MachineBuildError(f"{package}: no {prefix}{needed}")
        grub[platform] = files
    return MachineInputs(kernel_version=kver, vmlinuz=vmlinuz, modules=modules, busybox=busybox, grub=grub)


def _member(members: Mapping[str, DebMember], path: str, package: str) -> bytes:
    member = members.get(path)
    if member is None or member.kind is not MemberKind.FILE:
        raise MachineBuildError(f"{package}: no file {path}")
    return member.data


# ------------------------------------------------------------------------------------------------- initramfs


def make_initramfs(plan: MachinePlan, inputs: MachineInputs) -> bytes:
    """The machine's initramfs: busybox, the modules, /dev/console and the rendered /init, gzip'ed (written by
    the same reproducible cpio writer as the rescue environment's)."""
    tree = TreeBuilder()
    for d in ("bin", "dev", "proc", "sys", "root", "tmp"):
        tree.add_dir(d)
    tree.add_char("dev/console", 5, 1, 0o600)
    tree.add_file("bin/busybox", inputs.busybox, 0o755)
    tree.add_symlink("bin/sh", "busybox")
    for path, data in inputs.modules:
        tree.add_file(path, data)
    tree.add_file("init", render_init(plan, [path for path, _ in inputs.modules]).encode(), 0o755)
    return gzip.compress(make_cpio(tree.freeze(), plan.spec.epoch), compresslevel=9, mtime=0)


# ---------------------------------------------------------------------------------------------------- GRUB


#: Offsets in GRUB 2's i386-pc boot.img (grub-core/boot/i386/pc/boot.S, include/grub/i386/pc/boot.h).
BOOT_BPB_START, BOOT_BPB_END = 0x03, 0x5A
BOOT_KERNEL_SECTOR = 0x5C  # 64-bit LBA of core.img's first sector
BOOT_DRIVE = 0x64  # 0xff: use the drive the BIOS booted from (%dl)
BOOT_DRIVE_CHECK = 0x66  # a 2-byte jmp that grub-setup replaces by two nops on hard disks
BOOT_NT_MAGIC, BOOT_PART_END = 0x1B8, 0x1FE  # disk signature + partition table, kept from the disk
#: diskboot.img (core.img's first sector) ends with its blocklist, growing downwards: 12-byte entries
#: (u64 start LBA, u16 sector count, u16 load segment); an all-zero entry terminates it.
BLOCKLIST_ENTRY = 12
CORE_LOAD_SEGMENT = 0x820  # GRUB_BOOT_I386_PC_KERNEL_SEG (0x800) + one sector (0x20 paragraphs)


def plan_grub_bios_boot(
    mbr: bytes, boot_img: bytes, core_img: bytes, core_sector: int, room: int
) -> tuple[bytes, bytes]:
    """The new sector 0 and the patched core.img for GRUB's BIOS boot with core.img at ``core_sector``.

    This is what ``grub-bios-setup`` does when it embeds core.img (into the BIOS boot partition on GPT or the
    gap after the MBR), written out because the tool cannot work on an image file here: it insists on finding
    the block device of its ``--directory`` among the devices of its device map, and the host's root device
    is not one GRUB can open ("guessing the root device failed"); grub-install fails for the same reason on a
    loop device.  The steps, from grub-core/../util/setup.c:

    - boot.img gets the disk's BPB area (0x03-0x5a) and its disk signature + partition table (0x1b8-0x1fe)
      back, the LBA of core.img's first sector at 0x5c, boot drive 0xff at 0x64 (use %dl from the BIOS), and the
      floppy-drive check at 0x66 replaced by two nops (hard disk);
    - core.img's first sector (diskboot.img) gets one blocklist entry for the rest of core.img, which is
      contiguous: start = core_sector + 1, count = sectors - 1, load segment 0x820.

    No Reed-Solomon codes are added (grub-bios-setup --no-rs-codes): they only help if something overwrites
    the gap later; core.img says it carries none.
    """
    if len(mbr) != SECTOR or len(boot_img) != SECTOR:
        raise InternalError(f"MBR and boot.img must be one sector each (got {len(mbr)} and {len(boot_img)} bytes)")
    if boot_img[0x1FE:0x200] != b"\x55\xaa" or boot_img[BOOT_DRIVE_CHECK] != 0xEB:
        raise MachineBuildError("boot.img does not look like GRUB 2's i386-pc boot.img (no 55aa or drive-check jmp)")
    core = bytearray(core_img + bytes(-len(core_img) % SECTOR))
    sectors = len(core) // SECTOR
    if sectors > room:
        raise MachineBuildError(f"core.img needs {sectors} sectors, the embedding area has {room}")
    entry = SECTOR - BLOCKLIST_ENTRY
    segment = struct.unpack_from("<H", core, entry + 10)[0]
    if segment != CORE_LOAD_SEGMENT or core[entry - BLOCKLIST_ENTRY : entry] != bytes(BLOCKLIST_ENTRY):
        raise MachineBuildError(
            f"core.img's first sector is not GRUB's diskboot.img (blocklist segment {segment:#x}, expected "
            f"{CORE_LOAD_SEGMENT:#x}, and an empty terminator below it)"
        )
    struct.pack_into("<QHH", core, entry, core_sector + 1, sectors - 1, CORE_LOAD_SEGMENT)

    boot = bytearray(boot_img)
    boot[BOOT_BPB_START:BOOT_BPB_END] = mbr[BOOT_BPB_START:BOOT_BPB_END]
    struct.pack_into("<Q", boot, BOOT_KERNEL_SECTOR, core_sector)
    boot[BOOT_DRIVE] = 0xFF
    boot[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    boot[BOOT_NT_MAGIC:BOOT_PART_END] = mbr[BOOT_NT_MAGIC:BOOT_PART_END]
    return bytes(boot), bytes(core)


def make_grub_image(platform: str, grub_dir: Path, early_cfg: Path, out: Path) -> bytes:
    """core.img (i386-pc) or BOOTX64.EFI (x86_64-efi) made by grub-mkimage from the package's module dir."""
    fmt = {"i386-pc": "i386-pc", "x86_64-efi": "x86_64-efi"}[platform]
    run(
        [
            "grub-mkimage",
            "-O",
            fmt,
            "-d",
            grub_dir,
            "-p",
            "/boot/grub",
            "-c",
            early_cfg,
            "-o",
            out,
            *GRUB_CORE_MODULES[platform],
        ]
    )
    return out.read_bytes()


# ------------------------------------------------------------------------------------------------- root fs


def stage_root(stage: Path, plan: MachinePlan, inputs: MachineInputs, initrd: bytes) -> list[str]:
    """Write the root filesystem's tree into ``stage``; return every path (relative, "" for the root)."""
    spec = plan.spec
    kver = inputs.kernel_version
    files: dict[str, tuple[bytes, int]] = {}
    dirs = {
        "bin": 0o755, "boot": 0o755, "boot/efi": 0o755, "boot/grub": 0o755, "dev": 0o755, "etc": 0o755,
        "etc/asr-machine": 0o755, "home": 0o755, "home/user": 0o755, "home/user/docs": 0o755, "mnt": 0o755,
        "proc": 0o555, "root": 0o700, "srv": 0o755, "srv/data": 0o755, "srv/shared": 0o775, "sys": 0o555,
        "tmp": 0o1777,
        "usr": 0o755, "usr/local": 0o755, "usr/local/bin": 0o755, "var": 0o755, "var/log": 0o755,
    }  # fmt: skip
    files[f"boot/vmlinuz-{kver}"] = (inputs.vmlinuz, 0o644)
    files[f"boot/initrd.img-{kver}"] = (initrd, 0o644)
    files["boot/grub/grub.cfg"] = (render_grub_cfg(plan, kver).encode(), 0o644)
    for platform, grub_files in inputs.grub.items():
        dirs[f"boot/grub/{platform}"] = 0o755
        for name, data in grub_files.items():
            files[f"boot/grub/{platform}/{name}"] = (data, 0o644)
    fstab = render("machine-fstab.j2", hostname=spec.hostname, filesystems=plan.filesystems)
    files["etc/fstab"] = (fstab.encode(), 0o644)
    files["etc/hostname"] = (f"{spec.hostname}\n".encode(), 0o644)
    files["etc/machine-id"] = (f"{spec.make_hex('machine-id', 32)}\n".encode(), 0o444)
    files["etc/os-release"] = (render("machine-os-release.j2", hostname=spec.hostname).encode(), 0o644)
    files[MARKER_FILE] = (f"{spec.marker}\n".encode(), 0o644)
    files["bin/busybox"] = (inputs.busybox, 0o755)

    sums: dict[str, str] = {}
    for sample in plan.samples:
        files[sample.path] = (sample.data, sample.mode)
        content = sample.data if not sample.sparse_size else _sparse_content(sample)
        sums[sample.path] = hashlib.sha256(content).hexdigest()
    for path in (f"boot/vmlinuz-{kver}", f"boot/initrd.img-{kver}"):
        sums[path] = hashlib.sha256(files[path][0]).hexdigest()
    files[SUMS_FILE] = ("".join(f"{h}  {p}\n" for p, h in sorted(sums.items())).encode(), 0o644)

    stage.chmod(0o755)
    for d in sorted(dirs):
        (stage / d).mkdir(parents=True, exist_ok=True)
    for d, mode in dirs.items():
        (stage / d).chmod(mode)
    sparse = {s.path: s for s in plan.samples if s.sparse_size}
    for path, (data, mode) in sorted(files.items()):
        target = stage / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path in sparse:
            with target.open("wb") as f:
                f.write(data)
                f.seek(sparse[path].sparse_size - len(data))
                f.write(data)
        else:
            target.write_bytes(data)
        target.chmod(mode)
    (stage / plan.hardlink.path).hardlink_to(stage / plan.hardlink.target)
    (stage / plan.symlink.path).symlink_to(plan.symlink.target)
    (stage / "vmlinuz").symlink_to(f"boot/vmlinuz-{kver}")
    (stage / "initrd.img").symlink_to(f"boot/initrd.img-{kver}")
    (stage / "bin/sh").symlink_to("busybox")
    paths = ["", *sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))]
    for path in paths:
        os.utime(stage / path, (spec.epoch, spec.epoch), follow_symlinks=False)
    return paths


def _sparse_content(sample: SampleFile) -> bytes:
    return sample.data + bytes(sample.sparse_size - 2 * len(sample.data)) + sample.data


def plan_debugfs_fixups(plan: MachinePlan, paths: Iterable[str], values: Path) -> str:
    """debugfs commands that give every inode the epoch as atime/ctime/mtime, user files their owner, and the
    samples their extended attributes and ACLs (each value read from ``values``/<n>, see write_xattr_values)."""
    epoch = plan.spec.epoch
    lines = []
    for path in ["lost+found", *paths]:
        quoted = _debugfs_quote("/" + path)
        for fld in ("atime", "mtime", "ctime"):
            lines.append(f"set_inode_field {quoted} {fld} @{epoch}")
    for sample in plan.samples:
        if sample.uid or sample.gid:
            lines.append(f"set_inode_field {_debugfs_quote('/' + sample.path)} uid {sample.uid}")
            lines.append(f"set_inode_field {_debugfs_quote('/' + sample.path)} gid {sample.gid}")
    for d in sorted({str(Path(s.path).parent) for s in plan.samples if s.uid and s.path.startswith("home/user/")}):
        lines.append(f"set_inode_field /{d} uid 1000")
        lines.append(f"set_inode_field /{d} gid 1000")
    for n, x in enumerate(plan.xattrs):
        lines.append(f"ea_set -f {_debugfs_quote(str(values / str(n)))} {_debugfs_quote('/' + x.path)} "
                     f"{_debugfs_quote(x.name, allow='=')}")
    return "\n".join(lines) + "\n"


def write_xattr_values(plan: MachinePlan, values: Path) -> None:
    """One file per extended attribute value, for ``ea_set -f`` (values may hold any byte)."""
    values.mkdir(parents=True, exist_ok=True)
    for n, x in enumerate(plan.xattrs):
        (values / str(n)).write_bytes(x.value)


def _debugfs_quote(path: str, allow: str = "") -> str:
    if re.fullmatch(rf"[A-Za-z0-9_./+:{re.escape(allow)}-]+", path):
        return path
    raise MachineBuildError(f"path {path!r} cannot be given to debugfs")


def make_ext4(img: Path, part: MachinePartition, fs: MachineFilesystem, stage: Path, fixups: str, epoch: int) -> None:
    env = {"E2FSPROGS_FAKE_TIME": str(epoch), "TZ": "UTC"}
    prefix = ["fakeroot"] if os.geteuid() != 0 else []
    run(
        [
            *prefix,
            "mke2fs", "-q", "-F", "-t", "ext4", "-d", stage, "-U", fs.uuid, "-L", fs.label,
            "-E", f"offset={part.offset},hash_seed={fs.uuid}", img, f"{part.size_bytes // 1024}k",
        ],
        env=env,
    )  # fmt: skip
    spec = f"{img}?offset={part.offset}"
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", dir=img.parent) as cmds:
        cmds.write(fixups)
        cmds.flush()
        result = run(["debugfs", "-w", "-f", cmds.name, spec], env=env)
    # debugfs exits 0 even when a command fails; its complaints are on stderr after the version banner.
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise ToolError(["debugfs", "-w", "-f", "<fixups>", spec], 0, result.stdout, "\n".join(errors))


# ------------------------------------------------------------------------------------------------------- ESP


def make_esp(img: Path, part: MachinePartition, fs: MachineFilesystem, efi_image: Path, epoch: int) -> None:
    """A FAT32 ESP with a fixed volume id holding \\EFI\\BOOT\\BOOTX64.EFI and \\EFI\\debian\\grubx64.efi."""
    env = {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"}
    target = f"{img}@@{part.offset}"
    run(
        [
            "mformat", "-i", target, "-T", str(part.size), "-h", "64", "-s", "32", "-H", str(part.start),
            "-F", "-N", fs.uuid.replace("-", ""), "-v", fs.label, "::",
        ],
        env=env,
    )  # fmt: skip
    run(["mmd", "-i", target, "::EFI", "::EFI/BOOT", "::EFI/debian"], env=env)
    os.utime(efi_image, (epoch, epoch))
    run(["mcopy", "-m", "-i", target, efi_image, "::EFI/BOOT/BOOTX64.EFI"], env=env)
    run(["mcopy", "-m", "-i", target, efi_image, "::EFI/debian/grubx64.efi"], env=env)


# --------------------------------------------------------------------------------------------------- the build


def make_machine_image(out: Path, spec: MachineSpec, inputs: MachineInputs | None = None) -> MachineImage:
    """Build the machine image ``out`` (sparse) as ``spec`` says; nothing is left at ``out`` on failure."""
    plan = plan_machine(spec)
    inputs = inputs if inputs is not None else read_machine_inputs()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_img = out.with_name(f".{out.name}.partial")
    try:
        with tempfile.TemporaryDirectory(prefix="machine-", dir=out.parent) as tmp:
            work = Path(tmp)
            _build(tmp_img, plan, inputs, work)
        os.replace(tmp_img, out)
    finally:
        tmp_img.unlink(missing_ok=True)
    log.info("machine image %s (%s, %d MiB) built", out, spec.layout, spec.size_mib)
    return MachineImage(path=out, plan=plan, kernel_version=inputs.kernel_version, sha256=sha256_file(out))


def _build(img: Path, plan: MachinePlan, inputs: MachineInputs, work: Path) -> None:
    img.unlink(missing_ok=True)
    with img.open("wb") as f:
        f.truncate(plan.size_bytes)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", img], input=render_sfdisk_script(plan))

    early = work / "early.cfg"
    early.write_text(render_grub_early_cfg(plan))
    grub_dirs: dict[str, Path] = {}
    for platform, grub_files in inputs.grub.items():
        d = work / "grub" / platform
        d.mkdir(parents=True)
        for name, data in grub_files.items():
            (d / name).write_bytes(data)
        grub_dirs[platform] = d
    core = make_grub_image("i386-pc", grub_dirs["i386-pc"], early, work / "core.img")
    efi = work / "BOOTX64.EFI"
    make_grub_image("x86_64-efi", grub_dirs["x86_64-efi"], early, efi)

    stage = work / "root"
    stage.mkdir()
    paths = stage_root(stage, plan, inputs, make_initramfs(plan, inputs))
    root_part = plan.partition(PartRole.ROOT)
    values = work / "xattr-values"
    write_xattr_values(plan, values)
    make_ext4(img, root_part, plan.filesystem(PartRole.ROOT), stage, plan_debugfs_fixups(plan, paths, values),
              plan.spec.epoch)
    esp_part = plan.partition(PartRole.ESP)
    make_esp(img, esp_part, plan.filesystem(PartRole.ESP), efi, plan.spec.epoch)

    if plan.spec.layout is Layout.GPT:
        bios = plan.partition(PartRole.BIOS_BOOT)
        core_sector, room = bios.start, bios.size
    else:
        core_sector, room = 1, plan.partitions[0].start - 1
    with img.open("r+b") as f:
        mbr = f.read(SECTOR)
        sector0, patched_core = plan_grub_bios_boot(mbr, inputs.grub["i386-pc"]["boot.img"], core, core_sector, room)
        f.seek(core_sector * SECTOR)
        f.write(patched_core)
        f.seek(0)
        f.write(sector0)


# ------------------------------------------------------------------------------------------ checking a disk


@dataclass(frozen=True)
class FoundPartition:
    number: int
    start: int
    size: int
    type: str  # lower case
    uuid: str  # lower case PARTUUID
    name: str
    bootable: bool


@dataclass(frozen=True)
class FoundFilesystem:
    partition: int
    fstype: str
    uuid: str
    label: str


@dataclass(frozen=True)
class DiskFacts:
    """What a disk (image file) holds, read with sfdisk and blkid: compared with a MachineImage after restore."""

    table: TableType
    disk_id: str
    size_bytes: int
    partitions: tuple[FoundPartition, ...]
    filesystems: tuple[FoundFilesystem, ...]


def read_disk_facts(disk: Path) -> DiskFacts:
    """Partition table (``sfdisk --json``) and the filesystem on each partition (``blkid -p -O -S``) of an image."""
    doc = json.loads(run(["sfdisk", "--json", disk]).stdout)["partitiontable"]
    table = TableType.from_sfdisk(doc["label"])
    partitions = []
    filesystems = []
    for entry in doc.get("partitions", []):
        node = re.search(r"(\d+)$", str(entry["node"]))
        if node is None:
            raise InternalError(f"{disk}: sfdisk --json names a partition {entry['node']!r} without a number")
        number = int(node.group(1))
        part = FoundPartition(
            number=number,
            start=int(entry["start"]),
            size=int(entry["size"]),
            type=str(entry["type"]).lower(),
            uuid=str(entry.get("uuid", "")).lower(),
            name=str(entry.get("name", "")),
            bootable=bool(entry.get("bootable", False)),
        )
        if table is TableType.MBR:
            part = replace(part, uuid=f"{str(doc['id']).lower()[2:]}-{number:02x}")
        partitions.append(part)
        found = read_blkid(str(disk), part.start * SECTOR, part.size * SECTOR)
        if "TYPE" in found:
            filesystems.append(FoundFilesystem(number, found["TYPE"], found.get("UUID", ""), found.get("LABEL", "")))
    return DiskFacts(
        table=table,
        disk_id=str(doc["id"]).lower(),
        size_bytes=disk.stat().st_size,
        partitions=tuple(partitions),
        filesystems=tuple(filesystems),
    )


def check_restored_disk(image: MachineImage, facts: DiskFacts, *, last_grows: bool = False) -> list[str]:
    """Differences between the machine as built and a disk restored from its backup ([] when it matches).

    Everything must be as built — table type, disk GUID/signature, each partition's start, type, PARTUUID, name
    and boot flag, each filesystem's type, UUID and label — except the size of the last partition, which may
    be larger (and must be, with ``last_grows``: a restore onto a larger disk grows it)."""
    problems: list[str] = []
    if facts.table is not image.layout.table:
        problems.append(f"partition table is {facts.table}, the machine had {image.layout.table}")
    if facts.disk_id != image.disk_id:
        problems.append(f"disk id is {facts.disk_id}, the machine had {image.disk_id}")
    if len(facts.partitions) != len(image.partitions):
        problems.append(f"{len(facts.partitions)} partitions, the machine had {len(image.partitions)}")
    for want, got in zip(image.partitions, facts.partitions, strict=False):
        where = f"partition {want.number} ({want.role})"
        for what, a, b in (
            ("number", got.number, want.number),
            ("start", got.start, want.start),
            ("type", got.type, want.type),
            ("PARTUUID", got.uuid, want.uuid),
            ("name", got.name, want.name),
            ("boot flag", got.bootable, want.bootable),
        ):
            if a != b:
                problems.append(f"{where}: {what} is {a}, the machine had {b}")
        last = want.number == image.partitions[-1].number
        if not last and got.size != want.size:
            problems.append(f"{where}: size is {got.size} sectors, the machine had {want.size}")
        elif last and got.size < want.size:
            problems.append(f"{where}: size is {got.size} sectors, smaller than the machine's {want.size}")
        elif last and last_grows and got.size == want.size:
            problems.append(f"{where}: size stayed {want.size} sectors; it should have grown to fill the disk")
    found = {fs.partition: fs for fs in facts.filesystems}
    for fs in image.filesystems:
        got_fs = found.get(fs.partition)
        where = f"{fs.fstype} filesystem of {fs.mountpoint} (partition {fs.partition})"
        if got_fs is None:
            problems.append(f"{where}: not found")
            continue
        for what, a, b in (
            ("type", got_fs.fstype, str(fs.fstype)),
            ("UUID", got_fs.uuid, fs.uuid),
            ("label", got_fs.label, fs.label),
        ):
            if a != b:
                problems.append(f"{where}: {what} is {a!r}, the machine had {b!r}")
    return problems


def read_ext4_xattrs(disk: Path, offset: int, path: str) -> dict[str, bytes]:
    """The extended attributes of ``path`` in the ext4 filesystem at ``offset`` of ``disk``, read with debugfs
    (``ea_list`` for the names, ``ea_get -f`` for each value; ACLs in ext4's on-disk form)."""
    spec = f"{disk}?offset={offset}"
    listing = run(["debugfs", "-R", f"ea_list {_debugfs_quote('/' + path)}", spec]).stdout
    names = re.findall(r"^  (\S+) \(\d+\)", listing, re.MULTILINE)
    out = {}
    with tempfile.TemporaryDirectory(prefix="ea-") as tmp:
        for name in names:
            value = Path(tmp) / "value"
            value.unlink(missing_ok=True)
            run(["debugfs", "-R", f"ea_get -f {value} {_debugfs_quote('/' + path)} {_debugfs_quote(name, allow='=')}",
                 spec])
            out[name] = value.read_bytes() if value.exists() else b""
    return out


def check_restored_xattrs(image: MachineImage, disk: Path) -> list[str]:
    """Differences between the extended attributes and ACLs of the machine's samples and those on a restored disk
    (both read with debugfs); [] when every one is back."""
    offset = image.plan.partition(PartRole.ROOT).offset
    problems = []
    for path in sorted({x.path for x in image.plan.xattrs}):
        want, got = read_ext4_xattrs(image.path, offset, path), read_ext4_xattrs(disk, offset, path)
        planned = {x.name for x in image.plan.xattrs if x.path == path}
        if not planned <= set(want):
            problems.append(f"/{path}: the machine lacks {sorted(planned - set(want))}")
        for name in sorted(set(want) | set(got)):
            if want.get(name) != got.get(name):
                problems.append(f"/{path}: {name} is {got.get(name)!r}, the machine had {want.get(name)!r}")
    return problems


# -------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.vm.machine", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layout", choices=[str(x) for x in Layout], default="gpt")
    parser.add_argument("--size-mib", type=int, default=MachineSpec.size_mib)
    parser.add_argument("--hostname", default=MachineSpec.hostname)
    parser.add_argument("--marker", default=MachineSpec.marker)
    parser.add_argument("--epoch", type=int, default=MachineSpec.epoch)
    parser.add_argument("--seed", default=MachineSpec.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = MachineSpec(
        layout=Layout(args.layout),
        size_mib=args.size_mib,
        hostname=args.hostname,
        marker=args.marker,
        epoch=args.epoch,
        seed=args.seed,
    )
    image = make_machine_image(args.out, spec)
    print(f"{image.path}: {image.layout}, disk {image.disk_id}, sha256 {image.sha256}")
    for part in image.partitions:
        print(
            f"  p{part.number} {part.role:<5} start {part.start} size {part.size} type {part.type} partuuid {part.uuid}"
        )
    for fs in image.filesystems:
        print(f"  {fs.fstype} on p{fs.partition}: UUID {fs.uuid} label {fs.label} at {fs.mountpoint}")
    print(f"  expects: {image.expected_line(Firmware.BIOS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
