"""`asr vbox NAME`: run the recovery media in VirtualBox.

VirtualBox is driven by ``VBoxManage``; asr does not run it (it is not in Debian main, and the VM belongs to the
person who runs it).  asr writes ``DIR/NAME-vbox.sh``, a POSIX shell script of ``VBoxManage`` commands that
creates and starts the VM, and prepares everything the script needs *now*:

1. facts (``read_*``/``check_*``): the VM name, the floppy (exactly 1,474,560 bytes, as VirtualBox's I82078
   floppy controller needs), the ISO (an El Torito boot record with a bootable entry for the VM's firmware), the
   descriptor (``--descriptor`` or the floppy's own ASR.SIF: its [SYSTEM] firmware picks BIOS or EFI, its disks
   the blank targets), the source images (``qemu-img info``);
2. :func:`plan_vbox`, pure: the ``VBoxManage`` argv lists in order and the disks to make;
3. :func:`make_vbox`, the executor: ``qemu-img convert -O vdi`` of every ``--disk`` (or ``qemu-img create -f vdi``
   of a sparse blank target per descriptor disk), each checked afterwards with ``qemu-img info``, then the script
   rendered through ``templates/vbox.sh.j2``.

Every check runs before anything is written; a failure is a named error and leaves ``DIR`` as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path

from builder.inspect import inspect_floppy
from recovery_env.errors import (
    DescriptorMissingError,
    InputError,
    InternalError,
    MediaError,
    ToolError,
    UnusableImageError,
)
from recovery_env.model.descriptor import Descriptor, Firmware
from recovery_env.model.sif import read_asr_sif
from recovery_env.run import run
from recovery_env.templating import render
from recovery_env.text import format_size

VBOXMANAGE = "VBoxManage"
OSTYPE = "Linux_64"
DEFAULT_MEMORY_MB = 1024  # the rescue system runs in 512 MiB under QEMU; VirtualBox's EFI wants some more
MIN_MEMORY_MB = 256
FLOPPY_BYTES = 1_474_560  # 80 cylinders x 2 heads x 18 sectors x 512 bytes: what VirtualBox accepts as 1.44 MB
VDI_SECTOR = 512  # a VDI's virtual size is a whole number of 512-byte sectors (qemu-img rounds up)
VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # also part of file names: keep it plain
SCRIPT_TEMPLATE = "vbox.sh.j2"

ISO_SECTOR = 2048
ISO_FIRST_DESCRIPTOR = 16  # system area: sectors 0-15
EL_TORITO_ID = b"EL TORITO SPECIFICATION"
MAX_VOLUME_DESCRIPTORS = 64


class VBoxFirmware(StrEnum):
    """``VBoxManage modifyvm --firmware`` values, and what the ISO must offer each."""

    BIOS = "bios"
    EFI = "efi"

    @classmethod
    def from_firmware(cls, firmware: Firmware) -> VBoxFirmware:
        return {Firmware.BIOS: cls.BIOS, Firmware.UEFI: cls.EFI}[firmware]

    @property
    def platform(self) -> ElToritoPlatform:
        """The El Torito platform whose boot entry this firmware starts."""
        return {VBoxFirmware.BIOS: ElToritoPlatform.X86, VBoxFirmware.EFI: ElToritoPlatform.EFI}[self]


class ElToritoPlatform(IntEnum):
    X86 = 0x00
    POWERPC = 0x01
    MAC = 0x02
    EFI = 0xEF

    @property
    def label(self) -> str:
        return {0x00: "BIOS (x86)", 0x01: "PowerPC", 0x02: "Mac", 0xEF: "UEFI"}[self.value]


class Slot(StrEnum):
    """Where a medium goes in the VM: its storage controller (``storagectl``) and device type (``storageattach``).
    The table below is the single source of these VirtualBox facts."""

    FLOPPY = "floppy"
    DVD = "dvd"
    DISK = "disk"

    @property
    def controller(self) -> str:  # storagectl --name
        return _SLOTS[self][0]

    @property
    def bus(self) -> str:  # storagectl --add
        return _SLOTS[self][1]

    @property
    def chipset(self) -> str:  # storagectl --controller
        return _SLOTS[self][2]

    @property
    def device_type(self) -> str:  # storageattach --type
        return _SLOTS[self][3]


# slot: (controller name, bus, chipset, medium type).  The floppy controller must be the I82078; the ISO sits on
# the IDE secondary master (ata_piix in the rescue kernel), the disks on AHCI ports 0.. (ahci).
_SLOTS: dict[Slot, tuple[str, str, str, str]] = {
    Slot.FLOPPY: ("Floppy", "floppy", "I82078", "fdd"),
    Slot.DVD: ("IDE", "ide", "PIIX4", "dvddrive"),
    Slot.DISK: ("SATA", "sata", "IntelAhci", "hdd"),
}
DVD_PORT = 1  # IDE secondary channel, master


# --- facts --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElTorito:
    """What the El Torito boot catalog of an ISO offers."""

    catalog_sector: int
    bootable: tuple[ElToritoPlatform | int, ...]  # platform of every bootable entry, in catalog order

    def offers(self, platform: ElToritoPlatform) -> bool:
        return platform in self.bootable

    def describe(self) -> str:
        names = [p.label if isinstance(p, ElToritoPlatform) else f"platform 0x{p:02x}" for p in self.bootable]
        return ", ".join(dict.fromkeys(names)) or "no bootable entry"


@dataclass(frozen=True)
class ImageInfo:
    """``qemu-img info`` of a disk image."""

    path: Path
    format: str
    virtual_size: int


@dataclass(frozen=True)
class DiskConversion:
    """One VDI the executor makes: a conversion of ``source`` or, without one, a blank sparse disk."""

    key: str  # disk1, disk2, ... (the descriptor's key for blank targets, the position for --disk)
    target: Path  # DIR/NAME-<key>.vdi, absolute
    size_bytes: int  # the virtual size the VDI must have afterwards
    source: Path | None = None
    source_format: str = ""

    @property
    def argv(self) -> tuple[str, ...]:
        if self.source is None:
            return ("qemu-img", "create", "-q", "-f", "vdi", str(self.target), str(self.size_bytes))
        return ("qemu-img", "convert", "-q", "-f", self.source_format, "-O", "vdi", str(self.source), str(self.target))

    @property
    def what(self) -> str:
        if self.source is None:
            return f"blank {format_size(self.size_bytes, compact=True)} target for {self.key}"
        return f"{self.source} ({self.source_format}, {format_size(self.size_bytes, compact=True)})"


@dataclass(frozen=True)
class VBoxCommand:
    comment: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class VBoxPlan:
    name: str
    script: Path
    serial_log: Path
    firmware: VBoxFirmware
    firmware_reason: str
    memory_mb: int
    iso: Path
    floppy: Path
    disks: tuple[DiskConversion, ...]
    commands: tuple[VBoxCommand, ...]  # createvm ... storageattach, in order
    start: VBoxCommand  # the last line of the script
    warnings: tuple[str, ...] = ()

    @property
    def argvs(self) -> list[list[str]]:
        """Every VBoxManage command line of the script, in order, the start command last."""
        return [list(c.argv) for c in (*self.commands, self.start)]


def check_vm_name(name: str) -> str:
    if not VM_NAME_RE.match(name):
        raise InputError(
            f"VM name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(it also names the script, the serial log and the VDI files)"
        )
    return name


def check_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{what} {path}: no such file")
    if not path.is_file():
        raise InputError(f"{what} {path}: not a regular file")
    return Path(os.path.abspath(path))


def check_floppy(path: Path) -> None:
    size = path.stat().st_size
    if size != FLOPPY_BYTES:
        raise UnusableImageError(
            f"floppy image {path} is {size:,} bytes; VirtualBox's floppy drive needs exactly {FLOPPY_BYTES:,} "
            "bytes (a 1.44 MB disk)"
        )


def read_el_torito(path: Path) -> ElTorito:
    """Walk the ISO 9660 volume descriptors from sector 16 to the El Torito boot record, then read its boot
    catalog: the validation entry (checksum, 55 AA), the default entry and every section's entries."""
    with path.open("rb") as f:
        for n in range(ISO_FIRST_DESCRIPTOR, ISO_FIRST_DESCRIPTOR + MAX_VOLUME_DESCRIPTORS):
            f.seek(n * ISO_SECTOR)
            vd = f.read(ISO_SECTOR)
            if len(vd) < ISO_SECTOR or vd[1:6] != b"CD001":
                where = "ends" if len(vd) < ISO_SECTOR else "has no CD001 volume descriptor"
                raise UnusableImageError(f"{path} is not an ISO 9660 image: it {where} at sector {n}")
            if vd[0] == 255:  # volume descriptor set terminator
                break
            if vd[0] == 0 and vd[7:39].rstrip(b"\0") == EL_TORITO_ID:
                catalog = struct.unpack_from("<I", vd, 0x47)[0]
                f.seek(catalog * ISO_SECTOR)
                return _read_catalog(f.read(ISO_SECTOR), catalog, path)
    raise UnusableImageError(
        f"{path} has no El Torito boot record (volume descriptors from sector {ISO_FIRST_DESCRIPTOR}): "
        "it cannot boot as a CD"
    )


def _read_catalog(data: bytes, sector: int, path: Path) -> ElTorito:
    where = f"{path}: El Torito boot catalog at sector {sector}"
    if len(data) < 64:
        raise UnusableImageError(f"{where} lies beyond the end of the image")
    validation = data[:32]
    if validation[0] != 0x01 or validation[30:32] != b"\x55\xaa":
        raise UnusableImageError(f"{where} has no validation entry (header 01 ... 55 AA)")
    if sum(struct.unpack("<16H", validation)) & 0xFFFF:
        raise UnusableImageError(f"{where}: the validation entry's checksum does not add up")
    bootable: list[ElToritoPlatform | int] = []
    if data[32] == 0x88:
        bootable.append(_platform(validation[1]))
    pos = 64
    while pos + 32 <= len(data) and data[pos] in (0x90, 0x91):
        final, platform, count = data[pos] == 0x91, data[pos + 1], struct.unpack_from("<H", data, pos + 2)[0]
        pos += 32
        for _ in range(count):
            if pos + 32 > len(data):
                raise UnusableImageError(f"{where}: a section runs past the catalog sector")
            if data[pos] == 0x88:
                bootable.append(_platform(platform))
            pos += 32
            while pos + 32 <= len(data) and data[pos] == 0x44:  # section entry extensions
                pos += 32
        if final:
            break
    return ElTorito(sector, tuple(bootable))


def _platform(value: int) -> ElToritoPlatform | int:
    try:
        return ElToritoPlatform(value)
    except ValueError:
        return value


def check_iso(path: Path, firmware: VBoxFirmware) -> ElTorito:
    el_torito = read_el_torito(path)
    if not el_torito.offers(firmware.platform):
        raise UnusableImageError(
            f"{path}: its El Torito catalog has no bootable {firmware.platform.label} entry "
            f"(it offers: {el_torito.describe()}), so a VM with {firmware.value} firmware cannot boot it"
        )
    return el_torito


def read_image_info(path: Path) -> ImageInfo:
    """Format and virtual size of a disk image, as ``qemu-img info --output=json`` reports them."""
    try:
        out = run(["qemu-img", "info", "--output=json", str(path)]).stdout
    except ToolError as e:
        raise MediaError(f"disk image {path}: qemu-img cannot read it: {e.stderr.strip() or e}") from None
    info = json.loads(out)
    return ImageInfo(path, str(info["format"]), int(info["virtual-size"]))


def read_descriptor(descriptor: Path | None, floppy: Path) -> tuple[Descriptor, str]:
    """The descriptor and where it came from: ``--descriptor`` or the ASR.SIF on the floppy image itself."""
    if descriptor is not None:
        return read_asr_sif(check_file(descriptor, "descriptor")), str(descriptor)
    found = inspect_floppy(floppy).descriptor
    if found is None:  # inspect_floppy raises first; kept for the type checker
        raise DescriptorMissingError(f"{floppy}: no ASR.SIF on the floppy")
    return found, f"{floppy}:ASR.SIF"


# --- the pure planner ----------------------------------------------------------------------------------------------


def vdi_size(size_bytes: int) -> int:
    """The virtual size qemu-img gives a VDI of ``size_bytes``: rounded up to whole 512-byte sectors."""
    return -(-size_bytes // VDI_SECTOR) * VDI_SECTOR


def plan_vbox(
    name: str,
    *,
    iso: Path,
    floppy: Path,
    out: Path,
    descriptor: Descriptor,
    disks: Sequence[ImageInfo] = (),
    firmware: Firmware | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> VBoxPlan:
    """The VM as data: the disks to convert or create and the ``VBoxManage`` commands, in order.  All paths must
    be absolute (the script may run from anywhere).  Without ``disks``, one blank target per descriptor disk."""
    for p in (iso, floppy, out, *(d.path for d in disks)):
        if not p.is_absolute():
            raise InternalError(f"plan_vbox needs absolute paths, got {p}")
    if firmware is None:
        vfw = VBoxFirmware.from_firmware(descriptor.system.firmware)
        reason = f"the descriptor's [SYSTEM] firmware is {descriptor.system.firmware.value}"
    else:
        vfw = VBoxFirmware.from_firmware(firmware)
        reason = f"--firmware {firmware.value}"

    warnings: list[str] = []
    if disks:
        conversions = tuple(
            DiskConversion(f"disk{i}", out / f"{name}-disk{i}.vdi", vdi_size(d.virtual_size), d.path, d.format)
            for i, d in enumerate(disks, 1)
        )
    else:
        conversions = tuple(
            DiskConversion(d.key, out / f"{name}-{d.key}.vdi", vdi_size(d.size_bytes)) for d in descriptor.disks
        )
        warnings += [
            f"{d.key} had {d.logical_sector_size}-byte sectors; VirtualBox disks have 512-byte sectors, so the "
            "restore will not accept this target"
            for d in descriptor.disks
            if d.logical_sector_size != VDI_SECTOR
        ]

    serial_log = out / f"{name}-serial.log"
    vm = (VBOXMANAGE,)
    commands = [
        VBoxCommand("create and register the VM", (*vm, "createvm", "--name", name, "--register")),
        VBoxCommand(
            f"machine: {memory_mb} MiB, 64-bit Linux, {vfw.value} firmware ({reason})",
            (*vm, "modifyvm", name, "--memory", str(memory_mb), "--ostype", OSTYPE, "--firmware", vfw.value),
        ),
        VBoxCommand(
            "serial port COM1 (0x3F8, IRQ 4) into a file: the rescue system's console=ttyS0",
            (*vm, "modifyvm", name, "--uart1", "0x3F8", "4", "--uartmode1", "file", str(serial_log)),
        ),
        VBoxCommand(
            "boot from the CD first, then the hard disk",
            (*vm, "modifyvm", name, "--boot1", "dvd", "--boot2", "disk", "--boot3", "none", "--boot4", "none"),
        ),
    ]
    commands += _attach(name, Slot.FLOPPY, [(0, floppy, "the ASR floppy (ASR.SIF, ASRPNP.SIF)")])
    commands += _attach(name, Slot.DVD, [(DVD_PORT, iso, "the recovery ISO")])
    commands += _attach(name, Slot.DISK, [(i, c.target, c.what) for i, c in enumerate(conversions)])
    start = VBoxCommand("start it without a window", (*vm, "startvm", name, "--type", "headless"))
    return VBoxPlan(
        name=name,
        script=out / f"{name}-vbox.sh",
        serial_log=serial_log,
        firmware=vfw,
        firmware_reason=reason,
        memory_mb=memory_mb,
        iso=iso,
        floppy=floppy,
        disks=conversions,
        commands=tuple(commands),
        start=start,
        warnings=tuple(warnings),
    )


def _attach(name: str, slot: Slot, media: Sequence[tuple[int, Path, str]]) -> list[VBoxCommand]:
    """A storage controller for ``slot`` and one medium per (port, path, description)."""
    if not media:
        return []
    add = ["--add", slot.bus, "--controller", slot.chipset]
    if slot is Slot.DISK:
        add += ["--portcount", str(len(media))]
    cmds = [VBoxCommand(f"{slot.value} controller", (VBOXMANAGE, "storagectl", name, "--name", slot.controller, *add))]
    for port, path, what in media:
        cmds.append(
            VBoxCommand(
                f"{slot.value} port {port}: {what}",
                (
                    VBOXMANAGE,
                    "storageattach",
                    name,
                    "--storagectl",
                    slot.controller,
                    "--port",
                    str(port),
                    "--device",
                    "0",
                    "--type",
                    slot.device_type,
                    "--medium",
                    str(path),
                ),
            )
        )
    return cmds


def render_vbox_script(plan: VBoxPlan) -> str:
    return render(SCRIPT_TEMPLATE, plan=plan)


# --- facts + plan, then the executor -------------------------------------------------------------------------------


def prepare_vbox(
    name: str,
    *,
    iso: Path,
    floppy: Path,
    out: Path,
    descriptor: Path | None = None,
    disks: Sequence[Path] = (),
    firmware: Firmware | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> VBoxPlan:
    """Check every input and plan the VM; nothing is written."""
    check_vm_name(name)
    if memory_mb < MIN_MEMORY_MB:
        raise InputError(f"--memory {memory_mb}: the rescue system needs at least {MIN_MEMORY_MB} MiB")
    floppy_abs, iso_abs = check_file(floppy, "floppy image"), check_file(iso, "ISO image")
    disk_paths = [check_file(d, "disk image") for d in disks]
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: not a directory")
    check_floppy(floppy_abs)
    desc, _source = read_descriptor(descriptor, floppy_abs)
    infos = [read_image_info(p) for p in disk_paths]
    plan = plan_vbox(
        name,
        iso=iso_abs,
        floppy=floppy_abs,
        out=Path(os.path.abspath(out)),
        descriptor=desc,
        disks=infos,
        firmware=firmware,
        memory_mb=memory_mb,
    )
    check_iso(iso_abs, plan.firmware)
    for conv in plan.disks:
        if conv.target.exists():
            raise InputError(f"{conv.target} already exists (a VM's disk?): remove it or choose another NAME or --out")
        if conv.source is not None and conv.source == conv.target:
            raise InputError(f"disk image {conv.source} would be its own conversion target")
    return plan


def make_vbox(plan: VBoxPlan) -> VBoxPlan:
    """Make the VDIs (each checked with ``qemu-img info`` afterwards) and write the script.  On a failure the
    VDIs made so far are removed."""
    out = plan.script.parent
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        for conv in plan.disks:
            made.append(conv.target)
            run(conv.argv)
            info = read_image_info(conv.target)
            if (info.format, info.virtual_size) != ("vdi", conv.size_bytes):
                raise InternalError(
                    f"{conv.target}: qemu-img made a {info.format} image of {info.virtual_size} bytes, "
                    f"not a vdi of {conv.size_bytes}"
                )
        tmp = plan.script.with_name(plan.script.name + ".part")
        tmp.write_text(render_vbox_script(plan), encoding="utf-8")
        tmp.chmod(0o755)
        tmp.replace(plan.script)
    except BaseException:
        for p in made:
            p.unlink(missing_ok=True)
        plan.script.with_name(plan.script.name + ".part").unlink(missing_ok=True)
        raise
    return plan


def cli_vbox(args: argparse.Namespace) -> int:
    plan = prepare_vbox(
        args.name,
        iso=args.iso,
        floppy=args.floppy,
        out=args.out,
        descriptor=args.descriptor,
        disks=args.disk,
        firmware=Firmware(args.firmware) if args.firmware else None,
        memory_mb=args.memory,
    )
    for w in plan.warnings:
        print(f"asr: warning: {w}")
    make_vbox(plan)
    print(f"script: {plan.script}")
    print(f"VM {plan.name}: {plan.firmware.value} firmware ({plan.firmware_reason}), {plan.memory_mb} MiB")
    for conv in plan.disks:
        print(f"disk:   {conv.target}  ({conv.what})")
    print(f"serial: {plan.serial_log}")
    print(f"run it: sh {plan.script}   (needs VirtualBox's VBoxManage)")
    return 0
