"""`asr backup --to DIR`: record this machine's disks (ASR.SIF), its devices (ASRPNP.SIF), and back up its system
volumes (one archive per filesystem + MANIFEST).

An ordered list of steps over a request; every refusal is checked before anything is written into DIR:

1. ``check_root``: capture reads every file and the disks' tables → NotRootError.
2. ``read_layout`` (recovery_env.probe.layout): lsblk, sfdisk, blkid, dumpe2fs, fstab → disks, partitions, filesystems,
   mounts, boot loader; LVM/MD/LUKS → UnsupportedLayoutError listing them all.
3. ``find_sources``: each filesystem to back up must be mounted at ROOT/mountpoint (LayoutError otherwise).
   The fallback: a vfat filesystem (an ESP) that fstab lists but that is not mounted -- a host kernel without
   vfat cannot mount it -- is read with mtools (``mcopy -s -m``) into a staging directory, whose entries get the
   modes and owner that a mount with the fstab options shows; that directory is archived like any other.
4. ``check_destination``: DIR must be empty (or absent) and not on a filesystem of a critical disk nor on one that
   is backed up (XP's rule: the backup must not sit on a volume that restore formats), not even through loop
   devices (a loop-mounted image whose file lies on such a filesystem, nested loops too), MD, dm or btrfs; its path
   may carry no control character ('..' is resolved) → DestinationError.  A mount point or device with '..', '.',
   NUL or a control character is not recorded either (LayoutError naming the fstab line or --disk).
5. ``check_space``: free space of DIR's filesystem ≥ the estimate (used bytes of the archived filesystems ×
   ``COMPRESSION_ESTIMATE`` + ``SPACE_MARGIN``) → InsufficientSpaceError.
6. ``validate_descriptor`` of the descriptor without its backup set (any invalid field stops here).
7. write: the archives and MANIFEST (recovery_env.model.manifest), then ASR.SIF and ASRPNP.SIF; on any failure every
   file written is removed again (and DIR, if capture made it).

The capture logic proper lives in recovery_env.capture.flow (standard library only at import time) so that the boot
media run the same code (the offline capture); this module is the host CLI around it: progress bar, summary, JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from recovery_env.capture.flow import (
    ASR_SIF,
    ASRPNP_SIF,
    CaptureRequest,
    CaptureResult,
    SifRenderer,
    find_media,
    mountpoint_of,
)
from recovery_env.capture.flow import capture as capture_with
from recovery_env.model.descriptor import Firmware
from recovery_env.model.sif_render import render_asr_sif, render_asrpnp_sif
from recovery_env.text import format_size, json_text

__all__ = ["ASRPNP_SIF", "ASR_SIF", "CaptureRequest", "CaptureResult", "capture", "cli_backup", "find_media"]

RENDERER = SifRenderer(render_asr_sif, render_asrpnp_sif)


def capture(
    req: CaptureRequest,
    *,
    euid: int,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    """recovery_env.capture.flow.capture with this tree's jinja2 renderer (the same code the boot media run)."""
    return capture_with(req, euid=euid, progress=progress, renderer=RENDERER)


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
    return (f"[{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}%  {format_size(done)} / {format_size(total)}  "
            f"{format_size(int(rate))}/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")


def render_summary(r: CaptureResult) -> str:
    d = r.descriptor
    lines = [f"asr backup of {d.system.hostname} ({d.system.os_release or 'unknown OS'}, {d.system.firmware.value}, "
             f"boot loader {d.bootloader.kind.value}) in {r.dest}"]
    for disk in d.disks:
        lines.append(f"  {disk.key} {disk.device} {disk.table.value} {format_size(disk.size_bytes)} "
                     f"{'critical' if disk.critical else 'listed'}")
        for p in d.partitions_of(disk.key):
            fs = next((f for f in d.filesystems if f.partition == p.key), None)
            what = (f"{fs.type.value} {fs.label or '-'} {fs.uuid} at {mountpoint_of(d, fs.key) or '-'}"
                    f"{' (backed up)' if fs.backup else ''}") if fs else p.type
            lines.append(f"    {p.key} {format_size(p.size * disk.logical_sector_size)}  {what}")
    for a in r.backup.archives:
        lines.append(f"  {a.file}: {a.entries} entries, {format_size(a.size)}, sha256 {a.sha256[:16]}...")
    lines.append(f"  MANIFEST: {r.backup.file_count} entries; {len(r.inventory.devices)} devices in ASRPNP.SIF; "
                 f"{format_size(r.backup.raw_bytes)} archived in {r.seconds:.1f} s")
    lines += [f"  warning: {w}" for w in (*r.backup.warnings, *r.warnings)]
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
        print(json_text(result.to_json()))
    else:
        print(render_summary(result))
    return 0
