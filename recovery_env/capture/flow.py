"""The capture: record a machine's disks (ASR.SIF), its devices (ASRPNP.SIF) and back up its system volumes --
the same code for ``asr backup`` on the host and for the offline capture from the boot media.

:func:`capture` is an ordered list of steps over a :class:`CaptureRequest`; every refusal is checked before
anything is written into the destination (see ``builder/capture.py`` for the list).  The SIF renderer (jinja2
through ``recovery_env.model.sif_render``) is injected, or imported lazily on first use: this module imports with
the standard library alone, and the boot media ship jinja2, markupsafe and the two SIF templates for the guest's
capture.

The offline capture (:func:`run_offline_capture`, the agent's "Capture" choice and ``asr.mode=capture``):

1. probe every filesystem (``blkid -p``); mount the boot medium read-only (its disk is never a source);
2. the backup medium: the filesystem ``asr.backup=LABEL=...|UUID=...`` names (default ``LABEL=ASRBACKUP``),
   mounted read-write at ``/run/asr/backup``;
3. the source disks: every disk minus the boot medium's, the backup medium's and the floppy;
4. the source root: the first ext2/3/4, xfs or btrfs filesystem on them holding ``etc/fstab``, mounted
   READ-ONLY (ext* ``ro,noload``: no journal replay; xfs ``ro,norecovery``) at ``/run/asr/source``; then the
   other filesystems its fstab lists, read-only at their mount points below it (vfat with its fstab options, so
   file modes are what the running system shows);
5. :func:`capture` with root ``/run/asr/source``, firmware from ``/sys/firmware/efi``, the device inventory of
   this machine, into ``asr/<hostname>-<UTC time>`` on the backup medium;
6. ASR.SIF and ASRPNP.SIF onto the floppy when it mounts read-write, else they stay beside the set only;
7. everything unmounted again (sources first).

Pure planners (:func:`plan_source_mounts`, :func:`plan_backup_medium`, :func:`plan_set_dir`,
:func:`plan_mount_options`) are tested on the host; the executors are thin.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recovery_env import __version__
from recovery_env.capture.archive import BackupResult, make_backup_record, make_backup_set, plan_archives
from recovery_env.capture.checks import (
    ArchiveSource,
    SourceReader,
    check_destination,
    check_root,
    check_space,
    find_sources,
    stage_fat_source,
)
from recovery_env.errors import BackupMediaMissingError, DestinationError, LayoutError, ToolError
from recovery_env.model.descriptor import (
    Compression,
    Descriptor,
    DeviceInventory,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    path_problem,
)
from recovery_env.model.validate import validate_descriptor
from recovery_env.probe.btrfs import mount_subvolume, mount_top_level, read_subvolumes, unmount_top_level
from recovery_env.probe.disks import find_disks, partition_device
from recovery_env.probe.inventory import read_inventory
from recovery_env.probe.layout import (
    DiskFacts,
    FstabEntry,
    Layout,
    parse_fstab,
    read_blkid,
    read_firmware_live,
    read_layout,
    read_mounts,
    read_system_info,
)
from recovery_env.probe.media import (
    BACKUP_MOUNT,
    MEDIA_MOUNT,
    MODULES_LOADED,
    BlockFs,
    mount_boot_media,
    read_block_filesystems,
    wait_for_file,
)
from recovery_env.run import run

ASR_SIF = "ASR.SIF"
ASRPNP_SIF = "ASRPNP.SIF"


# --------------------------------------------------------------------------------------------------------------
# The renderer (injected; jinja2 is imported only when it is used)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SifRenderer:
    """The two SIF writers: descriptor → ASR.SIF text, inventory → ASRPNP.SIF text (both validate first)."""

    asr_sif: Callable[[Descriptor], str]
    asrpnp_sif: Callable[[DeviceInventory], str]


def load_renderer() -> SifRenderer:
    """recovery_env.model.sif_render (jinja2 over templates/asr.sif.j2 and asrpnp.sif.j2), imported now: on the
    host from the source tree, in the boot media from /usr/lib/asr where the build puts it."""
    from recovery_env.model.sif_render import render_asr_sif, render_asrpnp_sif

    return SifRenderer(render_asr_sif, render_asrpnp_sif)


# --------------------------------------------------------------------------------------------------------------
# Request and result
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureRequest:
    dest: Path
    root: Path = Path("/")
    disks: tuple[str, ...] = ()
    include_mounts: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    firmware: Firmware | None = None
    compression: Compression = Compression.ZSTD
    # read this machine's devices for ASRPNP.SIF: None = only when root is "/" (a --root capture on the host is
    # another system than this hardware); the offline capture reads them (the hardware is the captured machine's)
    live_hardware: bool | None = None


@dataclass(frozen=True)
class CaptureResult:
    dest: Path
    descriptor: Descriptor
    inventory: DeviceInventory
    backup: BackupResult
    notes: tuple[str, ...] = ()
    files: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0
    # what a restore of this set loses: filesystems on a wiped disk that are not backed up (find_empty_after_restore)
    warnings: tuple[str, ...] = ()
    sources: tuple[ArchiveSource, ...] = ()  # where each archived filesystem was read, and how

    def to_json(self) -> dict[str, Any]:
        d = self.descriptor
        return {
            "dest": str(self.dest),
            "files": list(self.files),
            "firmware": d.system.firmware.value,
            "hostname": d.system.hostname,
            "bootloader": {"kind": d.bootloader.kind.value, "disk": d.bootloader.disk},
            "disks": [
                {
                    "key": k.key,
                    "device": k.device,
                    "table": k.table.value,
                    "disk_id": k.disk_id,
                    "size_bytes": k.size_bytes,
                    "critical": k.critical,
                }
                for k in d.disks
            ],
            "filesystems": [
                {
                    "key": f.key,
                    "partition": f.partition,
                    "type": f.type.value,
                    "uuid": f.uuid,
                    "label": f.label,
                    "backup": f.backup,
                    "mountpoint": mountpoint_of(d, f.key),
                }
                for f in d.filesystems
            ],
            "archives": [
                {"filesystem": a.filesystem, "file": a.file, "size": a.size, "sha256": a.sha256, "entries": a.entries}
                for a in self.backup.archives
            ],
            "manifest": self.backup.manifest,
            "manifest_sha256": self.backup.manifest_sha256,
            "file_count": self.backup.file_count,
            "raw_bytes": self.backup.raw_bytes,
            "devices": len(self.inventory.devices),
            "warnings": [*self.backup.warnings, *self.warnings],
            "changed_while_read": [c.to_json() for c in self.backup.changed],
            "sources": [
                {"filesystem": s.fs, "mountpoint": s.mountpoint, "device": s.device, "read": s.reader.value,
                 "directory": str(s.directory)}
                for s in self.sources
            ],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def find_empty_after_restore(d: Descriptor) -> tuple[str, ...]:
    """One warning per filesystem with files on a disk that a restore wipes (a critical disk) but that is not
    backed up: a restore re-creates it EMPTY.  In fstab or not (a filesystem fstab does not list is lost too)."""
    archived = {a.filesystem for a in d.backup.archives} if d.backup else {f.key for f in d.filesystems if f.backup}
    out = []
    for fs in d.filesystems:
        part = d.partition(fs.partition)
        disk = d.disk(part.disk)
        if not disk.critical or not fs.type.has_files or fs.key in archived:
            continue
        node = f", {partition_device(disk.device, part.number)}" if disk.device else ""
        where = f"{fs.type.value} on {fs.partition}{node}"
        mp = mountpoint_of(d, fs.key)
        what = f"{mp} ({where})" if mp else f"{fs.key} ({where}, not in /etc/fstab)"
        hint = f" (--include-mount {mp} backs it up)" if mp else ""
        out.append(f"{what} is on {disk.key}, which a restore wipes, but it is not backed up: a restore re-creates "
                   f"it EMPTY{hint}")
    return tuple(out)


def mountpoint_of(d: Descriptor, fs_key: str) -> str:
    m = d.mount_of(fs_key)
    return m.mountpoint if m else ""


def find_media(dest: Path) -> tuple[str, str, str]:
    """(label, uuid, path of DIR within its filesystem) of the filesystem that holds DIR."""
    rows = json.loads(run(["findmnt", "--json", "-T", str(dest), "-o", "TARGET,SOURCE"]).stdout)["filesystems"]
    target, source = str(rows[0]["target"]), str(rows[0]["source"])
    rel = (
        "/" + str(dest.absolute().relative_to(target)).lstrip(".").lstrip("/")
        if target != "/"
        else str(dest.absolute())
    )
    label = uuid = ""
    if source.startswith("/dev/"):
        probe = read_blkid(source)
        label, uuid = probe.get("LABEL", ""), probe.get("UUID", "")
    return label, uuid, rel.rstrip("/") or "/"


# --------------------------------------------------------------------------------------------------------------
# The capture
# --------------------------------------------------------------------------------------------------------------


def capture(
    req: CaptureRequest,
    *,
    euid: int,
    progress: Callable[[int, int], None] | None = None,
    renderer: SifRenderer | None = None,
) -> CaptureResult:
    started = time.monotonic()
    check_root(euid)
    # '..' and '.' are resolved (the path recorded in [BACKUP] is the real one); a NUL or control character in the
    # directory's name is refused: the restore's validator refuses such a path, so the set could never be restored
    problem = path_problem(os.path.normpath(os.path.abspath(req.dest)))
    if problem:
        raise DestinationError(f"--to {problem}: give a directory whose path has no control characters")
    sif = renderer or load_renderer()
    root = req.root.resolve()
    if not root.is_dir():
        raise LayoutError(f"--root {req.root}: not a directory")
    layout, firmware, facts = read_layout(root, req.disks, include_mounts=req.include_mounts, firmware=req.firmware)
    tops: dict[str, Path] = {}
    try:
        mounted = {os.path.realpath(m.source.split("[", 1)[0]) for m in read_mounts() if m.fstype == "btrfs"}
        for f in layout.filesystems:
            if f.type is FsType.BTRFS and f.key in layout.devices:
                node = layout.devices[f.key]
                tops[f.key] = mount_top_level(node, already_mounted=os.path.realpath(node) in mounted)
        return _capture(req, root, layout, firmware, facts, tops, sif, started, progress)
    finally:
        for top in tops.values():
            unmount_top_level(top)


def _capture(
    req: CaptureRequest,
    root: Path,
    layout: Layout,
    firmware: Firmware,
    facts: tuple[DiskFacts, ...],
    tops: Mapping[str, Path],
    sif: SifRenderer,
    started: float,
    progress: Callable[[int, int], None] | None,
) -> CaptureResult:
    """The capture once the layout is read and every btrfs top level is mounted (``tops``)."""
    btrfs = {key: read_subvolumes(top, key) for key, top in tops.items()}
    layout = replace(layout, filesystems=tuple(
        replace(f, default_subvolume=btrfs[f.key].default) if f.key in btrfs else f for f in layout.filesystems))
    top_mounts = {
        key: tuple((m.mountpoint, sub) for m in layout.mounts if m.filesystem == key
                   and (sub := mount_subvolume(m.options, b.subvolumes, b.default)) is not None)
        for key, b in btrfs.items()
    }  # fmt: skip
    sources = find_sources(layout, root, top_levels=tops)
    dest = req.dest.resolve()
    check_destination(dest, layout, facts)
    check_space(dest, sources)
    system = read_system_info(root, firmware, f"asr {__version__}")
    descriptor = Descriptor(
        system, layout.disks, layout.partitions, layout.filesystems, layout.mounts, layout.bootloader,
        subvolumes=tuple(s for b in btrfs.values() for s in b.subvolumes),
    )
    validate_descriptor(descriptor)
    live = req.live_hardware if req.live_hardware is not None else root == Path("/")
    inventory = read_inventory(system.hostname) if live else DeviceInventory(system.hostname)
    sif.asrpnp_sif(inventory)  # validates it before anything is written

    exclude_dirs = []
    for leave_out in (dest, *tops.values()):  # the set, and the private top-level mounts (empty directories)
        try:
            exclude_dirs.append("/" + str(leave_out.relative_to(root)))
        except ValueError:
            pass
    created = not dest.exists()
    written: list[Path] = []
    staging = (
        Path(tempfile.mkdtemp(prefix="asr-fat-")) if any(s.reader is SourceReader.MTOOLS for s in sources) else None
    )
    binds: list[Path] = []
    try:
        dirs: dict[str, Path] = {}
        for s in sources:
            if staging is not None and s.reader is SourceReader.MTOOLS:
                dirs[s.fs] = stage_fat_source(s, staging / s.fs)
            elif s.reader is SourceReader.MOUNTED and s.fs not in tops:
                binds.append(bind_read_only(s.directory))
                dirs[s.fs] = binds[-1]
            else:
                dirs[s.fs] = s.directory
        jobs = plan_archives(
            [(s.fs, s.mountpoint, str(dirs[s.fs]), s.used_bytes) for s in sources],
            excludes=req.excludes,
            exclude_dirs=exclude_dirs,
            compression=req.compression,
            top_levels=top_mounts,
        )
        dest.mkdir(parents=True, exist_ok=True)
        written += [dest / j.file for j in jobs] + [dest / "MANIFEST"]
        result = make_backup_set(jobs, dest, progress=progress)
        label, uuid, path = find_media(dest)
        record = make_backup_record(result, path=path, media_label=label, media_uuid=uuid, compression=req.compression)
        descriptor = replace(descriptor, backup=record,
                             filesystems=record_used_bytes(descriptor.filesystems, sources, result.raw_by_fs))
        asr_sif = sif.asr_sif(descriptor)
        pnp_sif = sif.asrpnp_sif(inventory)
        for name, text in ((ASR_SIF, asr_sif), (ASRPNP_SIF, pnp_sif)):
            written.append(dest / name)
            (dest / name).write_text(text, encoding="utf-8")
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        for where in reversed(binds):
            unbind(where)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    files = (ASR_SIF, ASRPNP_SIF, result.manifest, *(a.file for a in result.archives))
    notes = layout.notes + tuple(
        f"{s.mountpoint} ({s.fs}, {s.device}) {s.reader.describe}" for s in sources if s.reader is SourceReader.MTOOLS
    )
    if not live:
        notes += (f"ASRPNP.SIF lists no devices: --root {root} is another system than this machine's hardware",)
    return CaptureResult(dest, descriptor, inventory, result, notes, files, time.monotonic() - started,
                         find_empty_after_restore(descriptor), sources)


def record_used_bytes(
    filesystems: Sequence[Filesystem], sources: Sequence[ArchiveSource], raw_by_fs: Sequence[tuple[str, int]]
) -> tuple[Filesystem, ...]:
    """Each archived filesystem with the bytes its files used (``used_bytes``, what the restore's resize solver
    never goes below): the larger of statvfs's used blocks of the mounted source (what the files took on that
    filesystem) and the bytes of its tar stream (the files' content, the only measure of a FAT source read with
    mtools, whose estimate is its device's size).  Filesystems not archived keep 0 (not recorded).  Pure."""
    used = {s.fs: s.used_bytes for s in sources if s.reader is SourceReader.MOUNTED}
    raw = dict(raw_by_fs)
    return tuple(
        replace(f, used_bytes=max(used.get(f.key, 0), raw.get(f.key, 0))) if f.key in raw else f for f in filesystems
    )


# --------------------------------------------------------------------------------------------------------------
# Offline capture from the boot media: pure planners
# --------------------------------------------------------------------------------------------------------------

SOURCE_ROOT = "/run/asr/source"
FLOPPY_MOUNT = "/run/asr/floppy"
DEFAULT_BACKUP = "LABEL=ASRBACKUP"
SET_PARENT = "asr"  # the set goes to /asr/<hostname>-<time> on the backup medium

#: Read-only mount options per filesystem type: nothing may be written to a source, not even a journal replay.
SOURCE_RO_OPTIONS: dict[str, str] = {
    "ext2": "ro,noload",
    "ext3": "ro,noload",
    "ext4": "ro,noload",
    "xfs": "ro,norecovery",
    "btrfs": "ro,rescue=nologreplay",  # the rescue= spelling: kernels since 5.9; 6.18 refuses the old one
    "vfat": "ro",
}
ROOT_TYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
#: fstab options that say nothing about what a read-only mount shows (dropped before mounting a vfat source).
_DROPPED_OPTIONS = ("defaults", "rw", "ro", "auto", "noauto", "nofail", "user", "nouser", "users", "_netdev")
#: vfat needs a codepage and charset the rescue kernel has (see platform notes: nls_ascii is not shipped).
VFAT_CHARSET = "codepage=437,iocharset=iso8859-1"


@dataclass(frozen=True)
class SourceMount:
    device: str
    type: str
    mountpoint: str  # as fstab says, e.g. /boot/efi
    directory: str  # where it is mounted in the rescue system, e.g. /run/asr/source/boot/efi
    options: str


def plan_mount_options(vfstype: str, fstab_options: str = "") -> str:
    """The read-only options for a source filesystem.  vfat keeps the fstab options that shape what a mount shows
    (umask, fmask, dmask, uid, gid, showexec, ...).  Pure."""
    base = SOURCE_RO_OPTIONS.get(vfstype, "ro")
    if vfstype != "vfat":
        return base
    kept = [
        o
        for o in fstab_options.split(",")
        if o
        and o not in _DROPPED_OPTIONS
        and not o.startswith("x-")
        and not o.startswith(("codepage=", "iocharset=", "errors="))
    ]
    return ",".join([base, VFAT_CHARSET, *kept])


def _matches(entry: FstabEntry, fs: BlockFs) -> bool:
    kind, value = entry.kind, entry.value
    if kind is FstabSpec.UUID:
        return bool(fs.uuid) and fs.uuid.lower() == value.lower()
    if kind is FstabSpec.LABEL:
        return bool(fs.label) and fs.label == value
    if kind is FstabSpec.PARTUUID:
        return bool(fs.partuuid) and fs.partuuid.lower() == value.lower()
    if kind is FstabSpec.PATH:
        return fs.device == value
    return False


def plan_source_mounts(
    fstab: Sequence[FstabEntry], filesystems: Sequence[BlockFs], root_device: str, source_root: str = SOURCE_ROOT
) -> tuple[SourceMount, ...]:
    """The mounts below the source root, parents first: every fstab entry (not swap, not "/") whose filesystem is
    among ``filesystems`` (the source disks').  Entries naming something else (tmpfs, network) are left out.
    Pure."""
    out: list[SourceMount] = []
    for e in fstab:
        if e.vfstype == "swap" or not e.mountpoint.startswith("/") or e.mountpoint == "/":
            continue
        fs = next((f for f in filesystems if _matches(e, f)), None)
        if fs is None or fs.device == root_device:
            continue
        directory = os.path.normpath(os.path.join(source_root, e.mountpoint.lstrip("/")))
        out.append(SourceMount(fs.device, fs.type, e.mountpoint, directory, plan_mount_options(fs.type, e.options)))
    return tuple(sorted(out, key=lambda m: (m.mountpoint.count("/"), m.mountpoint)))


def plan_backup_medium(filesystems: Sequence[BlockFs], wanted: str = DEFAULT_BACKUP) -> BlockFs:
    """The filesystem ``LABEL=...`` / ``UUID=...`` names; BackupMediaMissingError naming what there is."""
    key, sep, value = wanted.partition("=")
    key = key.upper()
    if not sep or key not in ("LABEL", "UUID") or not value:
        raise BackupMediaMissingError(f"asr.backup={wanted}: expected LABEL=NAME or UUID=UUID")
    found = [f for f in filesystems if (f.label == value if key == "LABEL" else f.uuid.lower() == value.lower())]
    if not found:
        seen = "; ".join(f"{f.device} ({f.type} {f.label or '-'} {f.uuid})" for f in filesystems) or "none"
        raise BackupMediaMissingError(
            f"no backup medium: no filesystem with {key} {value!r}; filesystems on this machine: {seen}. Attach a "
            f"disk with a filesystem labelled {value if key == 'LABEL' else 'ASRBACKUP'} or boot with "
            "asr.backup=LABEL=NAME"
        )
    if len(found) > 1:
        raise BackupMediaMissingError(
            f"{len(found)} filesystems have {key} {value!r} ({', '.join(f.device for f in found)}): keep one attached"
        )
    return found[0]


def plan_set_dir(hostname: str, when: float) -> str:
    """``asr/<hostname>-YYYYMMDD-HHMMSS`` (UTC): a new directory on the backup medium for each capture.  Pure."""
    return f"{SET_PARENT}/{hostname or 'unknown'}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(when))}"


# --------------------------------------------------------------------------------------------------------------
# Offline capture: the executor
# --------------------------------------------------------------------------------------------------------------

Log = Callable[[str], None]


@dataclass(frozen=True)
class OfflineResult:
    result: CaptureResult
    backup_device: str
    floppy_written: bool
    where_sif: str  # where ASR.SIF and ASRPNP.SIF went ("the floppy /dev/fd0" or the set's directory)


BIND_PARENT = "/run"


def bind_read_only(directory: Path) -> Path:
    """A read-only, non-recursive bind of ``directory`` in a new directory under /run: what tar reads of a
    mounted source.  Nothing mounted below ``directory`` shows through it, so a mount point is archived as the
    directory it is on its own filesystem (not as the root of /sys, /proc or /run, whose times change while tar
    reads them: a running system's pseudo filesystems are not "changed while read"); the source's own mount is
    left as it is."""
    where = Path(tempfile.mkdtemp(prefix="asr-source-", dir=BIND_PARENT))
    try:
        run(["mount", "-o", "bind", str(directory), str(where)])  # util-linux's and busybox's spelling alike
    except BaseException:
        where.rmdir()
        raise
    try:
        run(["mount", "-o", "remount,bind,ro", str(where)])
    except BaseException:
        unbind(where)
        raise
    return where


def unbind(where: Path) -> None:
    run(["umount", str(where)], check=False)
    try:
        where.rmdir()
    except OSError:
        pass


def _mount(device: str, vfstype: str, options: str, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    run(["mount", "-t", vfstype, "-o", options, device, directory])


def _unmount_all(directories: Sequence[str], log: Log) -> None:
    for d in reversed(directories):
        try:
            run(["umount", d])
        except ToolError as e:
            log(f"warning: cannot unmount {d}: {(e.stderr or str(e)).strip()}")


def _disk_of(device: str) -> str:
    """/dev/vda2 → vda (through sysfs: a partition's parent directory is its disk)."""
    name = os.path.basename(device)
    real = os.path.realpath(f"/sys/class/block/{name}")
    return os.path.basename(os.path.dirname(real)) if os.path.exists(f"{real}/partition") else name


def find_source_root(candidates: Sequence[BlockFs], log: Log) -> BlockFs:
    """Mount each candidate read-only at SOURCE_ROOT until one holds etc/fstab (it stays mounted)."""
    tried = []
    for fs in candidates:
        if fs.type not in ROOT_TYPES:
            continue
        try:
            _mount(fs.device, fs.type, plan_mount_options(fs.type), SOURCE_ROOT)
        except ToolError as e:
            tried.append(f"{fs.device}: cannot mount it ({(e.stderr or str(e)).strip()})")
            continue
        if os.path.isfile(os.path.join(SOURCE_ROOT, "etc", "fstab")):
            log(f"source root: {fs.device} ({fs.type} {fs.uuid}) read-only at {SOURCE_ROOT}")
            return fs
        tried.append(f"{fs.device}: no etc/fstab")
        run(["umount", SOURCE_ROOT])
    raise LayoutError(
        "no system to capture: no filesystem on this machine's disks holds etc/fstab"
        + (" (" + "; ".join(tried) + ")" if tried else "")
    )


def write_floppy(device: str, files: Sequence[Path], log: Log) -> bool:
    """Copy ``files`` onto the FAT floppy in ``device``; False (with a log line) when it is absent or read-only."""
    if not os.path.exists(device):
        log(f"no floppy drive {device}")
        return False
    try:
        _mount(device, "vfat", f"rw,{VFAT_CHARSET}", FLOPPY_MOUNT)
    except ToolError as e:
        log(f"floppy {device}: cannot mount it read-write ({(e.stderr or str(e)).strip().splitlines()[-1:]})")
        return False
    try:
        for f in files:
            shutil.copyfile(f, os.path.join(FLOPPY_MOUNT, f.name))
        run(["sync"])
        return True
    except OSError as e:
        log(f"floppy {device}: cannot write it ({e.strerror})")
        return False
    finally:
        run(["umount", FLOPPY_MOUNT], check=False)


def run_offline_capture(
    log: Log,
    *,
    floppy: str = "/dev/fd0",
    backup: str = DEFAULT_BACKUP,
    progress: Callable[[int, int], None] | None = None,
    renderer: SifRenderer | None = None,
    modules_timeout: float = 60.0,
) -> OfflineResult:
    """Capture the machine whose disks are attached (see the module docstring).  Sources are only ever mounted
    read-only; everything is unmounted again, also on failure."""
    sif = renderer or load_renderer()  # fail before anything is mounted when the renderer is not shipped
    if os.path.isdir(os.path.dirname(MODULES_LOADED)) and not wait_for_file(MODULES_LOADED, modules_timeout):
        log(f"warning: {MODULES_LOADED} did not appear within {modules_timeout:g} s; probing anyway")
    filesystems = read_block_filesystems()
    boot = mount_boot_media([BlockFs(f.device, f.type, f.label, f.uuid) for f in filesystems], log)
    mounted: list[str] = []
    try:
        medium = plan_backup_medium(filesystems, backup)
        _mount(medium.device, medium.type, "rw", BACKUP_MOUNT)
        mounted.append(BACKUP_MOUNT)
        log(f"backup medium: {medium.device} ({medium.type} {medium.label or '-'} {medium.uuid}) at {BACKUP_MOUNT}")
        excluded = {_disk_of(medium.device): "the backup medium", os.path.basename(floppy): "the floppy"}
        if boot is not None:
            excluded[_disk_of(boot.device)] = "the boot medium"
        disks = [d for d in find_disks() if d.name not in excluded]
        if not disks:
            raise LayoutError("no disk to capture: this machine has only the boot, backup and floppy media")
        log(
            "source disks: "
            + ", ".join(d.describe() for d in disks)
            + "; not captured: "
            + ", ".join(f"/dev/{n} ({why})" for n, why in excluded.items())
        )
        names = {d.name for d in disks}
        on_sources = [f for f in filesystems if _disk_of(f.device) in names]
        root_fs = find_source_root(on_sources, log)
        mounted.append(SOURCE_ROOT)
        fstab = parse_fstab(
            Path(SOURCE_ROOT, "etc", "fstab").read_bytes().decode("utf-8", "surrogateescape"),
            where=f"{root_fs.device}:/etc/fstab",
        )
        for m in plan_source_mounts(fstab, on_sources, root_fs.device):
            _mount(m.device, m.type, m.options, m.directory)
            mounted.append(m.directory)
            log(f"source {m.mountpoint}: {m.device} ({m.type}) read-only ({m.options})")
        hostname_file = Path(SOURCE_ROOT, "etc", "hostname")
        hostname = hostname_file.read_text(errors="replace").strip() if hostname_file.is_file() else ""
        dest = Path(BACKUP_MOUNT, plan_set_dir(hostname, time.time()))
        firmware = read_firmware_live()
        req = CaptureRequest(
            dest=dest,
            root=Path(SOURCE_ROOT),
            disks=tuple(d.device for d in disks),
            firmware=firmware,
            live_hardware=True,
        )
        result = capture(req, euid=os.geteuid(), progress=progress, renderer=sif)
        for w in result.warnings:
            log(f"warning: {w}")
        sif_files = [dest / ASR_SIF, dest / ASRPNP_SIF]
        on_floppy = write_floppy(floppy, sif_files, log)
        where = f"the floppy {floppy} and {dest}" if on_floppy else f"{dest} (beside the backup set)"
        log(f"ASR.SIF and ASRPNP.SIF written to {where}")
        run(["sync"])
        return OfflineResult(result, medium.device, on_floppy, where)
    finally:
        _unmount_all(mounted, log)
        if boot is not None:
            run(["umount", MEDIA_MOUNT], check=False)
