"""`asr backup --to DIR`: record this machine's disks (ASR.SIF), its devices (ASRPNP.SIF), and back up its system
volumes (one archive per filesystem + MANIFEST).

An ordered list of steps over a request; every refusal is checked before anything is written into DIR:

1. ``check_root``: capture reads every file and the disks' tables → NotRootError.
2. ``read_layout`` (recovery_env.layout): lsblk, sfdisk, blkid, dumpe2fs, fstab → disks, partitions, filesystems,
   mounts, boot loader; LVM/MD/LUKS → UnsupportedLayoutError listing them all.
3. ``find_sources``: each filesystem to back up must be mounted at ROOT/mountpoint (LayoutError otherwise).
   The fallback: a vfat filesystem (an ESP) that fstab lists but that is not mounted -- a host kernel without
   vfat cannot mount it -- is read with mtools (``mcopy -s -m``) into a staging directory, whose entries get the
   modes and owner that a mount with the fstab options shows; that directory is archived like any other.
4. ``check_destination``: DIR must be empty (or absent) and not on a filesystem of a critical disk nor on one that
   is backed up (XP's rule: the backup must not sit on a volume that restore formats) → DestinationError.
5. ``check_space``: free space of DIR's filesystem ≥ the estimate (used bytes of the archived filesystems ×
   ``COMPRESSION_ESTIMATE`` + ``SPACE_MARGIN``) → InsufficientSpaceError.
6. ``validate_descriptor`` of the descriptor without its backup set (any invalid field stops here).
7. write: the archives and MANIFEST (recovery_env.backupset), then ASR.SIF and ASRPNP.SIF; on any failure every
   file written is removed again (and DIR, if capture made it).

The capture logic proper lives in recovery_env (standard library only) so that the boot media can run it too;
this module is the host CLI around it: progress bar, summary, JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from builder.sif_render import render_asr_sif, render_asrpnp_sif
from recovery_env import __version__
from recovery_env.backupset import (
    BackupResult,
    SourceReader,
    check_destination,
    check_root,
    check_space,
    find_sources,
    make_backup_record,
    make_backup_set,
    plan_archives,
    stage_fat_source,
)
from recovery_env.descriptor import Compression, Descriptor, DeviceInventory, Firmware
from recovery_env.errors import LayoutError
from recovery_env.inventory import read_inventory
from recovery_env.layout import read_blkid, read_layout, read_system_info
from recovery_env.run import run
from recovery_env.sif import validate_descriptor

ASR_SIF = "ASR.SIF"
ASRPNP_SIF = "ASRPNP.SIF"


@dataclass(frozen=True)
class CaptureRequest:
    dest: Path
    root: Path = Path("/")
    disks: tuple[str, ...] = ()
    include_mounts: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    firmware: Firmware | None = None
    compression: Compression = Compression.ZSTD


@dataclass(frozen=True)
class CaptureResult:
    dest: Path
    descriptor: Descriptor
    inventory: DeviceInventory
    backup: BackupResult
    notes: tuple[str, ...] = ()
    files: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = self.descriptor
        return {
            "dest": str(self.dest),
            "files": list(self.files),
            "firmware": d.system.firmware.value,
            "hostname": d.system.hostname,
            "bootloader": {"kind": d.bootloader.kind.value, "disk": d.bootloader.disk},
            "disks": [{"key": k.key, "device": k.device, "table": k.table.value, "disk_id": k.disk_id,
                       "size_bytes": k.size_bytes, "critical": k.critical} for k in d.disks],
            "filesystems": [{"key": f.key, "partition": f.partition, "type": f.type.value, "uuid": f.uuid,
                             "label": f.label, "backup": f.backup, "mountpoint": _mountpoint(d, f.key)}
                            for f in d.filesystems],
            "archives": [{"filesystem": a.filesystem, "file": a.file, "size": a.size, "sha256": a.sha256,
                          "entries": a.entries} for a in self.backup.archives],
            "manifest": self.backup.manifest,
            "manifest_sha256": self.backup.manifest_sha256,
            "file_count": self.backup.file_count,
            "raw_bytes": self.backup.raw_bytes,
            "devices": len(self.inventory.devices),
            "warnings": list(self.backup.warnings),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def _mountpoint(d: Descriptor, fs_key: str) -> str:
    m = d.mount_of(fs_key)
    return m.mountpoint if m else ""


# --------------------------------------------------------------------------------------------------------------
# Checks (each raises a named CaptureRefused)
# --------------------------------------------------------------------------------------------------------------


def find_media(dest: Path) -> tuple[str, str, str]:
    """(label, uuid, path of DIR within its filesystem) of the filesystem that holds DIR."""
    rows = json.loads(run(["findmnt", "--json", "-T", str(dest), "-o", "TARGET,SOURCE"]).stdout)["filesystems"]
    target, source = str(rows[0]["target"]), str(rows[0]["source"])
    rel = "/" + str(dest.absolute().relative_to(target)).lstrip(".").lstrip("/") if target != "/" else str(
        dest.absolute())
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
) -> CaptureResult:
    started = time.monotonic()
    check_root(euid)
    root = req.root.resolve()
    if not root.is_dir():
        raise LayoutError(f"--root {req.root}: not a directory")
    layout, firmware, facts = read_layout(root, req.disks, include_mounts=req.include_mounts, firmware=req.firmware)
    sources = find_sources(layout, root)
    dest = req.dest.absolute()
    check_destination(dest, layout, facts)
    check_space(dest, sources)
    system = read_system_info(root, firmware, f"asr {__version__}")
    descriptor = Descriptor(system, layout.disks, layout.partitions, layout.filesystems, layout.mounts,
                            layout.bootloader)
    validate_descriptor(descriptor)
    inventory = read_inventory(system.hostname) if root == Path("/") else DeviceInventory(system.hostname)
    render_asrpnp_sif(inventory)  # validates it before anything is written

    exclude_dirs = []
    try:
        exclude_dirs.append("/" + str(dest.relative_to(root)))
    except ValueError:
        pass
    created = not dest.exists()
    written: list[Path] = []
    staging = Path(tempfile.mkdtemp(prefix="asr-fat-")) if any(
        s.reader is SourceReader.MTOOLS for s in sources) else None
    try:
        dirs = {s.fs: (stage_fat_source(s, staging / s.fs) if staging is not None and s.reader is
                       SourceReader.MTOOLS else s.directory) for s in sources}
        jobs = plan_archives([(s.fs, s.mountpoint, str(dirs[s.fs]), s.used_bytes) for s in sources],
                             excludes=req.excludes, exclude_dirs=exclude_dirs, compression=req.compression)
        dest.mkdir(parents=True, exist_ok=True)
        written += [dest / j.file for j in jobs] + [dest / "MANIFEST"]
        result = make_backup_set(jobs, dest, progress=progress)
        label, uuid, path = find_media(dest)
        record = make_backup_record(result, path=path, media_label=label, media_uuid=uuid,
                                    compression=req.compression)
        descriptor = replace(descriptor, backup=record)
        asr_sif = render_asr_sif(descriptor)
        pnp_sif = render_asrpnp_sif(inventory)
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
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    files = (ASR_SIF, ASRPNP_SIF, result.manifest, *(a.file for a in result.archives))
    notes = layout.notes + tuple(
        f"{s.mountpoint} ({s.fs}, {s.device}) {s.reader.describe}" for s in sources
        if s.reader is SourceReader.MTOOLS)
    if root != Path("/"):
        notes += (f"ASRPNP.SIF lists no devices: --root {root} is another system than this machine's hardware",)
    return CaptureResult(dest, descriptor, inventory, result, notes, files, time.monotonic() - started)


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


class ProgressBar:
    """bytes, rate and ETA on one line of a terminal, redrawn at most 5 times a second."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        self.out.write("\r" + render_progress(done, total, now - self.start, self.width))
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def render_progress(done: int, total: int, elapsed: float, width: int = 30) -> str:
    frac = min(1.0, done / total) if total else 1.0
    fill = int(frac * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 and total > done else 0.0
    return (f"[{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}%  {_size(done)} / {_size(total)}  "
            f"{_size(int(rate))}/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")


def _size(n: int) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.1f} {unit}" if unit != "B" else f"{int(v)} B"
        v /= 1024
    raise AssertionError


def render_summary(r: CaptureResult) -> str:
    d = r.descriptor
    lines = [f"asr backup of {d.system.hostname} ({d.system.os_release or 'unknown OS'}, {d.system.firmware.value}, "
             f"boot loader {d.bootloader.kind.value}) in {r.dest}"]
    for disk in d.disks:
        lines.append(f"  {disk.key} {disk.device} {disk.table.value} {_size(disk.size_bytes)} "
                     f"{'critical' if disk.critical else 'listed'}")
        for p in d.partitions_of(disk.key):
            fs = next((f for f in d.filesystems if f.partition == p.key), None)
            what = (f"{fs.type.value} {fs.label or '-'} {fs.uuid} at {_mountpoint(d, fs.key) or '-'}"
                    f"{' (backed up)' if fs.backup else ''}") if fs else p.type
            lines.append(f"    {p.key} {_size(p.size * disk.logical_sector_size)}  {what}")
    for a in r.backup.archives:
        lines.append(f"  {a.file}: {a.entries} entries, {_size(a.size)}, sha256 {a.sha256[:16]}...")
    lines.append(f"  MANIFEST: {r.backup.file_count} entries; {len(r.inventory.devices)} devices in ASRPNP.SIF; "
                 f"{_size(r.backup.raw_bytes)} archived in {r.seconds:.1f} s")
    lines += [f"  warning: {w}" for w in r.backup.warnings]
    lines += [f"  note: {n}" for n in r.notes]
    lines.append(f"  next: asr build --descriptor {r.dest / ASR_SIF}")
    return "\n".join(lines)


def cli_backup(args: argparse.Namespace) -> int:
    firmware = getattr(args, "firmware", None)
    req = CaptureRequest(
        dest=Path(args.dest),
        root=Path(args.root),
        disks=tuple(args.disk),
        include_mounts=tuple(args.include_mount),
        excludes=tuple(args.exclude),
        firmware=Firmware(firmware) if firmware else None,
    )
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        result = capture(req, euid=os.geteuid(), progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render_summary(result))
    return 0
