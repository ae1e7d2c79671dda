"""`asr inspect FILE [--json] [--reseal]`: show an ASR.SIF, an ASRPNP.SIF, an ASR floppy image or a backup set.

What FILE is, is told by looking at it (:func:`find_kind`): a directory is a backup set (ASR.SIF + ASRPNP.SIF +
MANIFEST + archives, as `asr backup --to DIR` writes it); a file with a FAT boot sector is a floppy image (its
ASR.SIF and ASRPNP.SIF are read with pyfatfs, read-only); any other file is a descriptor, ASRPNP.SIF when its
[VERSION] signature says so.  Everything read is validated (the parser's two passes, the integrity line first); a
backup set's archives and MANIFEST are checked against the descriptor's [BACKUP]/[ARCHIVES] (size and SHA-256)
and each is reported OK or MISMATCH.

The planner (:func:`inspect_path`) returns an :class:`Inspection`; :func:`render_text` and :func:`render_json`
only format it.  Bad input raises the named error (DescriptorError, IntegrityError, NotFatError,
DescriptorMissingError, BackupSetError); failed backup-set checks print the report and then raise BackupSetError,
so the exit status is non-zero in both cases.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from builder.media.fatimage import read_fat_image
from recovery_env.agent.floppy import ASR_SIF, ASRPNP_SIF, check_fat_boot_sector
from recovery_env.errors import (
    BackupSetError,
    DescriptorMissingError,
    InputError,
    NotFatError,
)
from recovery_env.model.descriptor import GPT_TYPES, MBR_TYPES, Descriptor, DeviceInventory, TableType
from recovery_env.model.manifest import sha256_file
from recovery_env.model.sif import PNP_SIGNATURE, parse_asr_sif_bytes, parse_asrpnp_sif_bytes
from recovery_env.model.sif_render import reseal_file
from recovery_env.text import format_size, json_text, visible

MAX_SIF = 1_474_560  # nothing larger fits on the floppy: larger files are not descriptors


class InspectKind(StrEnum):
    """What `asr inspect` was given."""

    ASR_SIF = "asr-sif"
    ASRPNP_SIF = "asrpnp-sif"
    FLOPPY = "floppy"
    BACKUP_SET = "backup-set"

    @property
    def what(self) -> str:
        return {
            InspectKind.ASR_SIF: "ASR.SIF descriptor",
            InspectKind.ASRPNP_SIF: "ASRPNP.SIF device inventory",
            InspectKind.FLOPPY: "ASR floppy image",
            InspectKind.BACKUP_SET: "backup set",
        }[self]


class CheckStatus(StrEnum):
    OK = "OK"
    MISMATCH = "MISMATCH"
    MISSING = "MISSING"


@dataclass(frozen=True)
class Check:
    """One verified item: an archive, the MANIFEST, a file expected on the floppy."""

    item: str
    status: CheckStatus
    detail: str

    @property
    def ok(self) -> bool:
        return self.status is CheckStatus.OK


@dataclass(frozen=True)
class Inspection:
    path: str
    kind: InspectKind
    descriptor: Descriptor | None = None
    inventory: DeviceInventory | None = None
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()  # what the reader noticed that does not stop it (pyfatfs' warnings)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


# --- planning: what is it, read it, check it ---------------------------------------------------------------------


def find_kind(path: Path) -> InspectKind:
    """Tell what ``path`` is (see the module docstring).  InputError if it does not exist."""
    if path.is_dir():
        return InspectKind.BACKUP_SET
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    with path.open("rb") as f:
        head = f.read(512)
    if _looks_fat(head):
        return InspectKind.FLOPPY
    if path.stat().st_size > MAX_SIF:
        raise NotFatError(f"{path}: neither a FAT floppy image nor a descriptor ({path.stat().st_size} bytes)")
    if f'"{PNP_SIGNATURE}"'.encode() in path.read_bytes():
        return InspectKind.ASRPNP_SIF
    return InspectKind.ASR_SIF


def _looks_fat(head: bytes) -> bool:
    try:
        check_fat_boot_sector(head, "image")
    except NotFatError:
        return False
    return True


def inspect_path(path: Path) -> Inspection:
    """Read, validate and check whatever ``path`` is."""
    kind = find_kind(path)
    if kind is InspectKind.ASR_SIF:
        return Inspection(str(path), kind, descriptor=parse_asr_sif_bytes(path.read_bytes(), file=path.name))
    if kind is InspectKind.ASRPNP_SIF:
        return Inspection(str(path), kind, inventory=parse_asrpnp_sif_bytes(path.read_bytes(), file=path.name))
    if kind is InspectKind.FLOPPY:
        return inspect_floppy(path)
    return inspect_backup_set(path)


def inspect_floppy(path: Path) -> Inspection:
    """ASR.SIF (required) and ASRPNP.SIF (reported MISSING when absent) from the root of a FAT image."""
    image = read_fat_image(path.read_bytes(), what=str(path))
    files = {name.upper(): data for name, data in image.files.items() if "/" not in name}  # the root directory
    if ASR_SIF not in files:
        raise DescriptorMissingError(
            f"{path}: the floppy has no {ASR_SIF} (files: {', '.join(sorted(files)) or 'none'})"
        )
    descriptor = parse_asr_sif_bytes(files[ASR_SIF], file=f"{path.name}:{ASR_SIF}")
    inventory = None
    checks = [Check(ASR_SIF, CheckStatus.OK, f"{len(files[ASR_SIF])} bytes, integrity line matches")]
    if ASRPNP_SIF in files:
        inventory = parse_asrpnp_sif_bytes(files[ASRPNP_SIF], file=f"{path.name}:{ASRPNP_SIF}")
        checks.append(Check(ASRPNP_SIF, CheckStatus.OK, f"{len(files[ASRPNP_SIF])} bytes, integrity line matches"))
    else:
        checks.append(Check(ASRPNP_SIF, CheckStatus.MISSING, "not on the floppy"))
    return Inspection(str(path), InspectKind.FLOPPY, descriptor, inventory, tuple(checks), image.warnings)


def inspect_backup_set(directory: Path) -> Inspection:
    """The descriptor of a backup-set directory, with its archives and MANIFEST checked (size, SHA-256)."""
    sif = directory / ASR_SIF
    if not sif.is_file():
        raise DescriptorMissingError(f"{directory}: not a backup set: no {ASR_SIF} in it")
    descriptor = parse_asr_sif_bytes(sif.read_bytes(), file=str(sif))
    backup = descriptor.backup
    if backup is None:
        raise BackupSetError(f"{sif}: records no backup set ([BACKUP] is empty), so {directory} is not one")
    pnp = directory / ASRPNP_SIF
    inventory = parse_asrpnp_sif_bytes(pnp.read_bytes(), file=str(pnp)) if pnp.is_file() else None
    checks = [check_file(directory / a.file, a.size, a.sha256) for a in backup.archives]
    checks.append(check_file(directory / backup.manifest, None, backup.manifest_sha256))
    if inventory is None:
        checks.append(Check(ASRPNP_SIF, CheckStatus.MISSING, f"not in {directory}"))
    return Inspection(str(directory), InspectKind.BACKUP_SET, descriptor, inventory, tuple(checks))


def check_file(path: Path, size: int | None, sha256: str) -> Check:
    """Compare a file with its recorded size (None: not recorded) and SHA-256."""
    if not path.is_file():
        return Check(path.name, CheckStatus.MISSING, "no such file")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return Check(path.name, CheckStatus.MISMATCH, f"{actual_size} bytes, expected {size}")
    actual = sha256_file(path)
    if actual != sha256:
        return Check(path.name, CheckStatus.MISMATCH, f"SHA-256 {actual}, expected {sha256}")
    return Check(path.name, CheckStatus.OK, f"{format_size(actual_size, compact=True)}, SHA-256 {sha256[:16]}...")


# --- formatting --------------------------------------------------------------------------------------------------


def _type_name(disk_table: TableType, type_: str) -> str:
    table = GPT_TYPES if disk_table is TableType.GPT else MBR_TYPES
    return table.get(type_, type_)


def render_descriptor(d: Descriptor) -> list[str]:
    s = d.system
    lines = [
        f"System      {visible(s.hostname)}  {s.architecture}  {s.firmware.value} firmware  kernel {visible(s.kernel)}",
        f"            {visible(s.os_release)}",
        f"            captured {s.captured_at} by {visible(s.tool_version)}"
        + (f", machine-id {s.machine_id}" if s.machine_id else ""),
        "",
        f"Disks ({len(d.disks)})",
    ]
    for k in d.disks:
        was = " ".join(visible(x) for x in (k.device, k.model, f"({k.serial})" if k.serial else "") if x)
        lines.append(
            f"  {k.key:<8} {format_size(k.size_bytes, compact=True):>10}  {k.table.value:<3} {k.disk_id:<36}  "
            f"{k.logical_sector_size}/{k.physical_sector_size} B sectors"
            + ("  critical" if k.critical else "")
            + (f"  {was}" if was else "")
        )
    header = f"  {'KEY':<10} {'START':>12} {'SIZE':>10}  {'TYPE':<22} {'FLAGS':<10} NAME"
    lines += ["", f"Partitions ({len(d.partitions)})", header]
    for k in d.disks:
        for p in d.partitions_of(k.key):
            flags = ",".join(f.value for f in p.flags)
            lines.append(
                f"  {p.key:<10} {p.start:>12} {format_size(p.size * k.logical_sector_size, compact=True):>10}  "
                f"{_type_name(k.table, p.type):<22} {flags or '-':<10} {visible(p.name)}".rstrip()
            )
    lines += _render_graph(d)
    lines += ["", f"Filesystems ({len(d.filesystems)})"]
    for f in d.filesystems:
        extra = f" FAT{f.fat_size}" if f.fat_size else ""
        lines.append(
            f"  {f.key:<6} {f.partition:<10} {f.type.value + extra:<10} {f.uuid or '-':<36} "
            f"{visible(f.label) or '-':<16} {'backup' if f.backup else 'no backup'}"
        )
    lines += ["", f"Mounts ({len(d.mounts)})"]
    for m in d.mounts:
        lines.append(
            f"  {visible(m.mountpoint):<20} {m.filesystem:<6} {m.spec.value:<9} {visible(m.device) or '-':<44} "
            f"{visible(m.options)} {m.dump} {m.passno}"
        )
    b = d.bootloader
    lines += [
        "",
        f"Bootloader  {b.kind.value}"
        + (f" on {b.disk}" if b.disk else "")
        + (f", ESP {b.esp_mountpoint}" if b.esp_mountpoint else "")
        + (f", EFI/{b.efi_directory}" if b.efi_directory else ""),
        "",
    ]
    if d.backup is None:
        lines.append("Backup set  none recorded")
    else:
        bs = d.backup
        medium = " ".join(x for x in (visible(bs.media_label), bs.media_uuid) if x) or "any medium"
        lines.append(f"Backup set  {visible(bs.path)} on {medium}, {bs.compression.value}, {bs.file_count} files")
        lines.append(f"  {bs.manifest:<20} {'':>10}  sha256 {bs.manifest_sha256}")
        for a in bs.archives:
            size = format_size(a.size, compact=True)
            lines.append(f"  {visible(a.file):<20} {size:>10}  sha256 {a.sha256}  ({a.filesystem})")
    lines += ["", f"Commands ({len(d.commands)})"]
    for c in sorted(d.commands, key=lambda c: c.order):
        lines.append(f"  {c.order:>3}  {visible(c.command)}" + ("  (critical)" if c.critical else ""))
    return lines


def _render_graph(d: Descriptor) -> list[str]:
    """The storage graph of a format-3 descriptor (MD, LUKS, LVM), bottom up; nothing without one."""
    if not (d.md_arrays or d.luks or d.lvm_pvs or d.lvm_vgs or d.lvm_lvs):
        return []
    lines = ["", "Storage graph (bottom up)"]
    for a in d.md_arrays:
        name = f" {visible(a.name)}" if a.name else ""
        lines.append(f"  {a.key:<10} {a.level.value} of {','.join(a.members)}  metadata {a.metadata}{name}  {a.uuid}")
    for lk in d.luks:
        header = f"  header {visible(lk.header_file)}" if lk.header_file else ""
        lines.append(f"  {lk.key:<10} LUKS{lk.version} on {lk.device} as {visible(lk.name)}  {lk.uuid}{header}")
    for vg in d.lvm_vgs:
        pvs = ",".join(pv.device for pv in d.lvm_pvs if pv.vg == vg.name)
        extents = format_size(vg.extent_size)
        lines.append(f"  {visible(vg.name):<10} volume group on {pvs}  extents {extents}  {vg.uuid}")
    for lv in d.lvm_lvs:
        pool = f" in {visible(lv.pool)}" if lv.pool else ""
        size = format_size(lv.size, compact=True)
        lines.append(f"  {lv.key:<10} {visible(lv.path)} {size} {lv.segtype.value}{pool}  {lv.uuid}")
    return lines


def render_inventory(inv: DeviceInventory) -> list[str]:
    lines = [f"Devices of {visible(inv.hostname)} ({len(inv.devices)})"]
    for x in inv.devices:
        ids = f"{x.vendor}:{x.device}" if x.vendor or x.device else "-"
        lines.append(f"  {x.bus:<7} {visible(x.address):<14} {ids:<10} {x.driver or '-':<12} {visible(x.description)}")
    lines.append(f"Drivers     {', '.join(inv.modules()) or 'none'}")
    return lines


def render_text(r: Inspection) -> str:
    lines = [f"{r.path}: {r.kind.what}", ""]
    if r.descriptor is not None:
        lines += render_descriptor(r.descriptor)
    if r.inventory is not None:
        lines += ["", *render_inventory(r.inventory)] if r.descriptor is not None else render_inventory(r.inventory)
    if r.checks:
        lines += ["", "Checks"]
        lines += [f"  {c.status.value:<8} {c.item:<20} {c.detail}" for c in r.checks]
    if r.notes:
        lines += ["", "Notes", *(f"  {n}" for n in r.notes)]
    return "".join(visible(line) + "\n" for line in lines)  # every line: paths and check details too


def render_json(r: Inspection) -> str:
    """The inspection as JSON: the model with ``dataclasses.asdict`` (enums as their strings), the checks; strings
    as :func:`recovery_env.text.json_text` writes them (a lone surrogate as ``\\udcXX``)."""
    doc: dict[str, Any] = {
        "path": r.path,
        "kind": r.kind.value,
        "ok": r.ok,
        "descriptor": dataclasses.asdict(r.descriptor) if r.descriptor is not None else None,
        "inventory": dataclasses.asdict(r.inventory) if r.inventory is not None else None,
        "checks": [dataclasses.asdict(c) | {"ok": c.ok} for c in r.checks],
        "notes": list(r.notes),
    }
    return json_text(doc) + "\n"


# --- CLI ---------------------------------------------------------------------------------------------------------


def cli_inspect(args: argparse.Namespace) -> int:
    path: Path = args.path
    if getattr(args, "reseal", False):
        if path.is_dir() or find_kind(path) is InspectKind.FLOPPY:
            raise InputError(f"{path}: --reseal takes an ASR.SIF or ASRPNP.SIF file, not a {find_kind(path).what}")
        reseal_file(path)
        print(f"{path}: re-sealed; it validates and its integrity line matches the edited content")
        return 0
    report = inspect_path(path)
    print(render_json(report) if args.json else render_text(report), end="")
    failed = [c for c in report.checks if not c.ok]
    if failed:
        error = BackupSetError if report.kind is InspectKind.BACKUP_SET else DescriptorMissingError
        raise error(
            f"{path}: {len(failed)} of {len(report.checks)} checks failed: "
            + "; ".join(f"{c.item} {c.status.value.lower()} ({c.detail})" for c in failed)
        )
    return 0
