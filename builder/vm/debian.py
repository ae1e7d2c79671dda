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

Layouts are parameters of the pure planner (:func:`plan_debian_machine`): a layout lists disks, partitions by
role and filesystems; the guest steps (:func:`plan_guest_steps`) are derived from them, so the MBR, xfs, btrfs
and two-disk layouts of issue 11 are added as data (plus their mkfs/mount facts), not as new code paths.

Build one by hand: ``python -m builder.vm.debian out/debian`` (root).
"""

from __future__ import annotations

import argparse
import fcntl
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from itertools import pairwise
from pathlib import Path

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
    """The disk layouts of issue 11.  Only layout 1 is planned so far; the others are added to the planner."""

    GPT_BIOS_UEFI = "gpt-bios-uefi"  # 1: bios_grub + ESP (vfat) + ext4 root + swap partition


class Role(StrEnum):
    """What a partition is for; carries its GPT type."""

    BIOS_BOOT = "bios_grub"
    ESP = "esp"
    ROOT = "root"
    SWAP = "swap"

    @property
    def gpt_type(self) -> str:
        return {"bios_grub": GPT_BIOS_BOOT, "esp": GPT_ESP, "root": GPT_LINUX_FS, "swap": GPT_SWAP}[self.value]


@dataclass(frozen=True)
class DebianSpec:
    """What to build.  Validated on construction: a bad value is a DebianMachineError naming the field."""

    layout: DebianLayout = DebianLayout.GPT_BIOS_UEFI
    disk_mib: int = 2048
    esp_mib: int = 64
    swap_mib: int = 256
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
        if self.swap_mib < 1:
            raise DebianMachineError(f"debian machine swap_mib {self.swap_mib}: expected at least 1")
        need = MIN_ROOT_MIB + self.esp_mib + self.swap_mib + 2
        if self.disk_mib < need:
            raise DebianMachineError(f"debian machine disk_mib {self.disk_mib}: the {self.layout} layout needs at "
                                     f"least {need} MiB (root {MIN_ROOT_MIB} MiB)")  # fmt: skip

    def make_uuid(self, what: str) -> str:
        """A version-4-shaped UUID derived from the seed: the same spec gives the same ids."""
        return str(uuid.UUID(bytes=hashlib.sha256(f"{self.seed}/{what}".encode()).digest()[:16], version=4))


#: The tree takes about 680 MB; the root filesystem gets room to spare.
MIN_ROOT_MIB = 1400


@dataclass(frozen=True)
class DiskPartition:
    """One partition (the attribute names are those templates/machine-sfdisk.j2 reads)."""

    number: int
    role: Role
    start: int  # sectors
    size: int  # sectors
    type: str
    uuid: str
    name: str
    bootable: bool = False


@dataclass(frozen=True)
class DiskPlan:
    index: int  # 0: the first target disk
    size_mib: int
    label: str  # sfdisk label: gpt or dos
    disk_id: str
    partitions: tuple[DiskPartition, ...]

    @property
    def guest_device(self) -> str:
        return GUEST_DISKS[self.index]

    def guest_partition(self, number: int) -> str:
        return f"{self.guest_device}{number}"


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


@dataclass(frozen=True)
class DebianPlan:
    """The pure plan of a Debian machine: disks, partitions, filesystems, ids, boot loader targets.  No I/O."""

    spec: DebianSpec
    disks: tuple[DiskPlan, ...]
    filesystems: tuple[FsPlan, ...]
    grub_targets: tuple[str, ...]  # i386-pc, x86_64-efi
    machine_id: str

    def guest_device(self, fs: FsPlan) -> str:
        return self.disks[fs.disk].guest_partition(fs.partition)

    @property
    def root(self) -> FsPlan:
        return self._fs(lambda f: f.mountpoint == "/", "a root filesystem")

    @property
    def swap(self) -> FsPlan:
        return self._fs(lambda f: f.fstype is FsType.SWAP, "a swap area")

    @property
    def mounts(self) -> tuple[FsPlan, ...]:
        """Filesystems with a mount point, parents first."""
        return tuple(sorted((f for f in self.filesystems if f.mountpoint), key=lambda f: f.mountpoint.count("/")
                            if f.mountpoint != "/" else 0))  # fmt: skip

    def _fs(self, pred: Callable[[FsPlan], bool], what: str) -> FsPlan:
        for fs in self.filesystems:
            if pred(fs):
                return fs
        raise InternalError(f"the {self.spec.layout} plan has no {what}")


def plan_debian_machine(spec: DebianSpec) -> DebianPlan:
    """Partitions (1 MiB aligned), ids from the seed and filesystems of ``spec``.  Pure."""
    if spec.layout is not DebianLayout.GPT_BIOS_UEFI:  # pragma: no cover - the enum has one member so far
        raise InternalError(f"no planner for layout {spec.layout}")
    total = spec.disk_mib * MIB_SECTORS
    last_usable = total - 34  # the backup GPT
    sizes = [(Role.BIOS_BOOT, 1), (Role.ESP, spec.esp_mib), (Role.ROOT, 0), (Role.SWAP, spec.swap_mib)]
    fixed = sum(mib for _, mib in sizes) * MIB_SECTORS
    root = (last_usable + 1 - MIB_SECTORS - fixed) // MIB_SECTORS * MIB_SECTORS
    parts = []
    start = MIB_SECTORS
    for number, (role, mib) in enumerate(sizes, start=1):
        size = mib * MIB_SECTORS or root
        parts.append(DiskPartition(number=number, role=role, start=start, size=size, type=role.gpt_type,
                                   uuid=spec.make_uuid(f"disk0/part{number}"), name=role.value))  # fmt: skip
        start += size
    disk = DiskPlan(index=0, size_mib=spec.disk_mib, label="gpt", disk_id=spec.make_uuid("disk0"),
                    partitions=tuple(parts))  # fmt: skip
    volid = hashlib.sha256(f"{spec.seed}/esp".encode()).hexdigest()[:8].upper()
    filesystems = (
        FsPlan(0, 3, FsType.EXT4, spec.make_uuid("fs/root"), "root", "/", "errors=remount-ro", 1),
        FsPlan(0, 2, FsType.VFAT, f"{volid[:4]}-{volid[4:]}", "ESP", "/boot/efi", "umask=0077", 2),
        FsPlan(0, 4, FsType.SWAP, spec.make_uuid("fs/swap"), "swap", "", "sw", 0),
    )
    machine_id = hashlib.sha256(f"{spec.seed}/machine-id".encode()).hexdigest()[:32]
    return DebianPlan(spec=spec, disks=(disk,), filesystems=filesystems, grub_targets=("i386-pc", "x86_64-efi"),
                      machine_id=machine_id)  # fmt: skip


# ------------------------------------------------------------------------------------------- the guest's steps


def plan_mkfs(fs: FsPlan, device: str) -> list[str]:
    """The mkfs argv that makes ``fs`` on ``device`` with its planned id and label."""
    if fs.fstype is FsType.EXT4:
        return ["mkfs.ext4", "-q", "-F", "-U", fs.uuid, "-L", fs.label, device]
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
            f"wait_block {shlex.quote(d.guest_partition(p.number))}" for d in plan.disks for p in d.partitions)),
        GuestStep("make filesystems", tuple(shlex.join(plan_mkfs(fs, plan.guest_device(fs)))
                                            for fs in plan.filesystems) + settle),
    ]  # fmt: skip
    mounts = []
    for fs in plan.mounts:
        where = t + (fs.mountpoint if fs.mountpoint != "/" else "")
        mounts += [shlex.join(["mkdir", "-p", where]), shlex.join(["mount", plan.guest_device(fs), where])]
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
    check_cfg = shlex.join(["grep", "-q", f"root=UUID={plan.root.uuid} ", f"{t}/boot/grub/grub.cfg"])
    steps.append(GuestStep("configure GRUB", (shlex.join(["chroot", t, "update-grub"]), check_cfg)))
    steps.append(GuestStep("report", ("blkid", shlex.join(["ls", "-lR", f"{t}/boot/efi/EFI"]))))
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


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per cache entry at a time (two test sessions must not debootstrap twice at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


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


@dataclass(frozen=True)
class LoginCheck:
    """What the machine said about itself after login (the ``ASR-CHECK`` line)."""

    state: str  # systemctl is-system-running
    root_source: str
    root_fstype: str
    root_uuid: str
    esp_fstype: str
    swap_uuid: str
    hostname: str
    firmware: str
    line: str


_CHECK_RE = re.compile(
    CHECK_PREFIX + r" state=(?P<state>\S+) root=(?P<root_source>\S+) fstype=(?P<root_fstype>\S+) "
    r"uuid=(?P<root_uuid>\S+) esp=(?P<esp_fstype>\S+) swap=(?P<swap_uuid>\S+) host=(?P<hostname>\S+) "
    r"firmware=(?P<firmware>\S+) end"
)


def parse_check_line(text: str) -> LoginCheck | None:
    m = _CHECK_RE.search(text)
    return None if m is None else LoginCheck(**m.groupdict(), line=m.group(0))


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image = make_debian_image(DebianSpec(hostname=args.hostname, disk_mib=args.disk_mib))
    args.out.mkdir(parents=True, exist_ok=True)
    for disk in image.disks:
        run(["cp", "--sparse=always", disk, args.out / disk.name])
        print(args.out / disk.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
