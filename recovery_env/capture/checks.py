"""The capture's preconditions, each a named refusal before anything is written: root (:func:`check_root`), every
filesystem to back up readable (:func:`find_sources`, with the mtools fallback for an unmounted vfat ESP), the
destination (:func:`check_destination`: empty, not on a captured or critical disk, not through loop devices on
one) and its free space (:func:`check_space`).  The offline capture in the boot media runs the same ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from recovery_env.errors import (
    BackupSetError,
    DestinationError,
    InsufficientSpaceError,
    LayoutError,
    NotRootError,
)
from recovery_env.model.descriptor import FsType
from recovery_env.probe.disks import find_holding_devices
from recovery_env.probe.layout import DiskFacts, Layout
from recovery_env.run import run
from recovery_env.text import format_size

# Compressed archive size ≈ used bytes × this (zstd -3 on system files is usually 0.35-0.5; 0.6 leaves room for
# less compressible data), plus a fixed margin for the MANIFEST, the descriptors and filesystem overhead.
COMPRESSION_ESTIMATE = 0.6


SPACE_MARGIN = 16 << 20


class SourceReader(StrEnum):
    """How the files of a backed-up filesystem are read."""

    MOUNTED = "mounted"  # through the directory it is mounted at (the normal case)
    MTOOLS = "mtools"  # a FAT filesystem in fstab but not mounted: read with mtools into a staging directory

    @property
    def describe(self) -> str:
        return {"mounted": "read where it is mounted", "mtools": "not mounted: read with mtools (fallback)"}[
            self.value]


@dataclass(frozen=True)
class ArchiveSource:
    fs: str
    mountpoint: str
    directory: Path
    device: str
    used_bytes: int
    reader: SourceReader = SourceReader.MOUNTED
    options: str = ""  # the fstab options (the FAT fallback derives modes and owners from them)


def check_root(euid: int) -> None:
    if euid != 0:
        raise NotRootError(f"asr backup must run as root (effective uid is {euid}): it reads every file of the "
                           "system and the disks' partition tables")


def find_sources(layout: Layout, root: Path, *, fat_fallback: bool = True,
                 top_levels: Mapping[str, Path] | None = None) -> tuple[ArchiveSource, ...]:  # fmt: skip
    """The directory each backed-up filesystem is mounted at under ``root``; refuse one that is not mounted.

    The one exception (``fat_fallback``): a vfat filesystem that fstab lists but that is not mounted (a host
    kernel without vfat cannot mount it) is read with mtools from its device (:data:`SourceReader.MTOOLS`).
    ``top_levels``: btrfs filesystems (key → the directory their top level is mounted at, privately): each is one
    source, its whole top level (mount point "/": its MANIFEST paths are absolute in the top level), however many
    fstab lines mount its subvolumes."""
    out = []
    tops = top_levels or {}
    seen: set[str] = set()
    for m in layout.mounts:
        fs = next(f for f in layout.filesystems if f.key == m.filesystem)
        if not fs.backup or fs.key in seen:
            continue
        node = layout.devices[fs.key]
        if fs.key in tops:
            seen.add(fs.key)
            st = os.statvfs(tops[fs.key])
            out.append(ArchiveSource(fs.key, "/", tops[fs.key], node, (st.f_blocks - st.f_bfree) * st.f_frsize))
            continue
        directory = root / m.mountpoint.lstrip("/")
        if not _is_mounted_from(directory, node):
            if fat_fallback and fs.type is FsType.VFAT and not os.path.ismount(directory):
                out.append(ArchiveSource(fs.key, m.mountpoint, directory, node, read_device_size(node),
                                  SourceReader.MTOOLS, m.options))
                continue
            raise LayoutError(
                f"{m.mountpoint} ({fs.key}, {fs.type.value} on {node}) is not mounted at {directory}: mount it "
                "there before the capture"
            )
        st = os.statvfs(directory)
        out.append(ArchiveSource(fs.key, m.mountpoint, directory, node, (st.f_blocks - st.f_bfree) * st.f_frsize))
    return tuple(out)


def read_device_size(node: str, sys_root: Path = Path("/sys")) -> int:
    """Bytes of a block device from sysfs (the used-bytes estimate of a FAT source read with mtools)."""
    try:
        return int((sys_root / "class" / "block" / os.path.basename(os.path.realpath(node)) / "size")
                   .read_text()) * 512
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class FatView:
    """What a Linux vfat mount with given options shows for each file: modes, owner (FAT stores none of them)."""

    file_mode: int
    dir_mode: int
    uid: int
    gid: int
    showexec: bool = False

    def mode_of(self, name: str, is_dir: bool) -> int:
        if is_dir:
            return self.dir_mode
        if self.showexec and not name.upper().endswith((".EXE", ".COM", ".BAT")):
            return self.file_mode & ~0o111
        return self.file_mode


def plan_fat_view(options: str, default_umask: int = 0o022) -> FatView:
    """The modes and owner a vfat mount with fstab ``options`` gives (kernel rules: umask sets both masks,
    fmask/dmask override, octal values; uid/gid default 0).  Pure."""
    opts: dict[str, str] = {}
    flags: set[str] = set()
    for o in options.split(","):
        k, sep, v = o.partition("=")
        if sep:
            opts[k] = v
        else:
            flags.add(k)

    def octal(key: str, default: int) -> int:
        try:
            return int(opts[key], 8) if key in opts else default
        except ValueError:
            raise BackupSetError(f"vfat option {key}={opts[key]!r}: not an octal mask") from None

    def number(key: str) -> int:
        try:
            return int(opts.get(key, "0"))
        except ValueError:
            raise BackupSetError(f"vfat option {key}={opts[key]!r}: not a number") from None

    umask = octal("umask", default_umask)
    return FatView(0o777 & ~octal("fmask", umask), 0o777 & ~octal("dmask", umask), number("uid"), number("gid"),
                   "showexec" in flags)


def stage_fat_source(source: ArchiveSource, staging: Path) -> Path:
    """Copy every file of an unmounted FAT filesystem into ``staging`` with mtools (``mcopy -s -m``: the real
    reader of the real filesystem, keeping mtimes), then give each entry the mode and owner a mount with the
    fstab options shows, and the root directory the time a FAT root shows (0: it has no directory entry).
    Returns ``staging``, the directory to archive in place of the mount point."""
    view = plan_fat_view(source.options)
    staging.mkdir(parents=True, exist_ok=True)
    # TZ=UTC: FAT stores local times; the rescue kernel reads them as UTC (sys_tz 0), so mtools must too
    listing = run(["mdir", "-b", "-i", source.device, "::/"], check=False, env={"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"})
    if listing.returncode == 0 and listing.stdout.strip():
        run(["mcopy", "-s", "-m", "-n", "-Q", "-i", source.device, "::/*", str(staging)],
            env={"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"})
    elif listing.returncode != 0:
        raise BackupSetError(f"{source.mountpoint} ({source.fs}): mtools cannot read {source.device}: "
                             f"{listing.stderr.strip()}")
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.chown(p, view.uid, view.gid, follow_symlinks=False)
            os.chmod(p, view.mode_of(name, True))
        for name in filenames:
            p = os.path.join(dirpath, name)
            os.chown(p, view.uid, view.gid, follow_symlinks=False)
            os.chmod(p, view.mode_of(name, False))
    os.chown(staging, view.uid, view.gid)
    os.chmod(staging, view.dir_mode)
    os.utime(staging, (0, 0))
    return staging


def _is_mounted_from(directory: Path, node: str) -> bool:
    try:
        return os.stat(directory).st_dev == os.stat(node).st_rdev != 0
    except OSError:
        return False


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_destination(dest: Path, layout: Layout, facts: Sequence[DiskFacts]) -> None:
    """DIR must be empty and on no filesystem of a critical disk and on no backed-up filesystem."""
    if dest.exists():
        if not dest.is_dir():
            raise DestinationError(f"{dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise DestinationError(f"{dest} is not empty: give a new or empty directory for the backup set")
    where = _existing_ancestor(dest)
    dev = os.stat(where).st_dev
    # what DIR depends on: its filesystem's device and, through loop devices (a backing file on a captured
    # filesystem, nested loops too), MD, device-mapper and btrfs, every device under it
    under = find_holding_devices(str(where))
    under.setdefault(f"{os.major(dev)}:{os.minor(dev)}", f"holds {where}")
    part_of = {p.key: p for p in layout.partitions}
    disks = {d.key: d for d in layout.disks}
    for fs in layout.filesystems:
        node = layout.devices.get(fs.key, "")
        try:
            rdev = os.stat(node).st_rdev if node else 0
        except OSError:
            continue
        held = under.get(f"{os.major(rdev)}:{os.minor(rdev)}") if rdev else None
        if held is None:
            continue
        disk = disks[part_of[fs.partition].disk]
        mp = layout.mountpoint_of(fs.key) or "not in fstab"
        if disk.critical or fs.backup:
            why = (f"a filesystem of critical disk {disk.device} ({disk.key}) that restore re-creates"
                   if disk.critical else "a filesystem that is backed up")
            via = f"; through loop devices: {node} {held}" if "(behind " in held else ""
            raise DestinationError(f"{dest} is on {node} ({fs.key}, {mp}), {why}{via}: put the backup on another disk")
    del facts  # the layout holds what is needed; facts kept in the signature for the offline capture


def estimate_size(sources: Sequence[ArchiveSource]) -> int:
    return int(sum(s.used_bytes for s in sources) * COMPRESSION_ESTIMATE) + SPACE_MARGIN


def check_space(dest: Path, sources: Sequence[ArchiveSource]) -> int:
    need = estimate_size(sources)
    st = os.statvfs(_existing_ancestor(dest))
    free = st.f_bavail * st.f_frsize
    if free < need:
        used = sum(s.used_bytes for s in sources)
        raise InsufficientSpaceError(
            f"{dest}: {format_size(free)} free, the backup needs about {format_size(need)} "
            f"({format_size(used)} used on {', '.join(s.mountpoint for s in sources)} × {COMPRESSION_ESTIMATE} "
            f"+ {format_size(SPACE_MARGIN)})"
        )
    return need
