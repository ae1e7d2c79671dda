"""Hypothesis strategies for VALID descriptors and device inventories (reusable by every test module).

They build consistent machines: disks (MBR or GPT, 512 or 4096-byte sectors) with partitions laid out one after
another inside the usable area (MBR: primaries, maybe an extended partition holding logical ones), a filesystem on
some partitions, mounts with exactly one "/", a boot loader that fits the firmware, maybe a backup set with one
archive per backed-up filesystem, and post-restore commands.  Free-text fields draw from any text, so the SIF
escaping is exercised with commas, quotes, '=', ';', blanks, controls and non-ASCII.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import string
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from recovery_env.model.descriptor import (
    FS_LABEL_MAX,
    GPT_BIOS_BOOT,
    GPT_ESP,
    GPT_TYPES,
    MBR_TYPES,
    Archive,
    BackupSet,
    Bootloader,
    BootloaderKind,
    Command,
    Compression,
    Descriptor,
    Device,
    DeviceInventory,
    Disk,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    Mount,
    PartFlag,
    Partition,
    Subvolume,
    SystemInfo,
    TableType,
)

Draw = Callable[[st.SearchStrategy[Any]], Any]

any_text = st.text(max_size=24)
"""Any text: what free-text fields (model, names, commands, descriptions) must survive."""
printable_text = st.text(st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" "), max_size=16)
hex_digits = "0123456789abcdef"


def _hex(n: int) -> st.SearchStrategy[str]:
    return st.text(hex_digits, min_size=n, max_size=n)


uuids = st.uuids().map(str)
sha256s = _hex(64)
fat_volids = st.tuples(st.text("0123456789ABCDEF", min_size=8, max_size=8)).map(lambda t: f"{t[0][:4]}-{t[0][4:]}")
keys = st.from_regex(r"\A[a-z][a-z0-9_]{0,7}\Z")
paths = (
    st.lists(
        st.text(string.ascii_lowercase + string.digits + "_-.,=; é", min_size=1, max_size=8), min_size=1, max_size=3
    )
    .map(lambda parts: "/" + "/".join(p for p in parts))
    .filter(lambda p: all(seg not in (".", "..") for seg in p.split("/")[1:]))
)
hostnames = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?(\.[a-z0-9]{1,8})?\Z")
file_names = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)


def _label(fs: FsType) -> st.SearchStrategy[str]:
    return printable_text.filter(lambda s: len(s.encode()) <= FS_LABEL_MAX[fs])


@st.composite
def systems(draw: Draw, firmware: Firmware | None = None) -> SystemInfo:
    return SystemInfo(
        hostname=draw(hostnames),
        machine_id=draw(st.one_of(st.just(""), _hex(32))),
        architecture=draw(st.sampled_from(["x86_64", "aarch64", "i686"])),
        firmware=firmware if firmware is not None else draw(st.sampled_from(Firmware)),
        kernel=draw(any_text),
        os_release=draw(any_text),
        captured_at=draw(st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2200, 1, 1))).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool_version=draw(any_text.filter(bool)),
    )


@st.composite
def _layout(draw: Draw, disk: Disk, roles: list[str]) -> list[Partition]:
    """Partitions for ``roles`` (one of "esp", "bios", "data") laid out in order inside ``disk``."""
    first, last = disk.first_usable, disk.last_usable
    space = last - first + 1
    gpt = disk.table is TableType.GPT
    parts: list[Partition] = []
    pos = first
    n = len(roles)
    if gpt:
        numbers = sorted(draw(st.lists(st.integers(1, 128), min_size=n, max_size=n, unique=True)))
        numbers = draw(st.permutations(numbers)) if draw(st.booleans()) else numbers
    else:
        primaries = min(n, draw(st.integers(1, 4)))
        if primaries < n:
            primaries = min(primaries, 3)  # the extended partition needs a primary slot
        numbers = list(range(1, primaries + 1)) + list(range(5, 5 + n - primaries))
    slot = space // (n + 1)
    extended_at: int | None = None
    for idx, (role, number) in enumerate(zip(roles, numbers, strict=True)):
        if not gpt and number >= 5 and extended_at is None:
            # the extended partition takes the rest of the disk (a primary slot: 2, 3 or 4)
            ext_number = max(p.number for p in parts) + 1 if parts else 1
            ext_start = pos
            extended_at = len(parts)
            parts.append(
                Partition(
                    disk=disk.key,
                    number=ext_number,
                    start=ext_start,
                    size=last - ext_start + 1,
                    type=draw(st.sampled_from(["05", "0f"])),
                    partuuid=f"{disk.disk_id[2:]}-{ext_number:02x}" if draw(st.booleans()) else "",
                )
            )
            pos = ext_start + 1
        gap = draw(st.integers(0, max(0, slot // 4)))
        start = pos + gap
        size = draw(st.integers(1, max(1, slot - gap - 2)))
        if idx == n - 1 and draw(st.booleans()):
            size = last - start + 1  # fill the disk
        if extended_at is not None:
            start = max(start, pos)
        if gpt:
            type_ = {"esp": GPT_ESP, "bios": GPT_BIOS_BOOT}.get(
                role, draw(st.sampled_from(sorted(set(GPT_TYPES) - {GPT_ESP, GPT_BIOS_BOOT})))
            )
            flags: tuple[PartFlag, ...] = {"esp": (PartFlag.ESP,), "bios": (PartFlag.BIOS_GRUB,)}.get(role, ())
            if role == "esp" and draw(st.booleans()):
                flags = ()
            attributes = draw(st.sampled_from([0, 1, 1 << 60, 4]))
            if attributes & 4 and draw(st.booleans()):
                flags = (*flags, PartFlag.BOOT)
            partuuid = draw(st.one_of(st.just(""), uuids))
            name = draw(any_text.filter(lambda s: len(s.encode("utf-16-le", "surrogatepass")) <= 72))
        else:
            type_ = "ef" if role == "esp" else draw(st.sampled_from(sorted(set(MBR_TYPES) - {"05", "0f", "ef"})))
            flags = (PartFlag.ESP,) if role == "esp" and draw(st.booleans()) else ()
            attributes = 0
            partuuid = f"{disk.disk_id[2:]}-{number:02x}" if draw(st.booleans()) else ""
            name = ""
        parts.append(
            Partition(
                disk.key, number, start, size, type_, partuuid=partuuid, name=name, attributes=attributes, flags=flags
            )
        )
        pos = start + size + (1 if extended_at is not None else 0)
    if not gpt:
        boots = [i for i, p in enumerate(parts) if p.number <= 4]
        if boots and draw(st.booleans()):
            i = draw(st.sampled_from(boots))
            parts[i] = dataclasses.replace(parts[i], flags=(*parts[i].flags, PartFlag.BOOT))
    assert all(p.end - 1 <= last for p in parts), parts
    return list(draw(st.permutations(parts)))


@st.composite
def descriptors(draw: Draw, max_disks: int = 3, max_parts: int = 6) -> Descriptor:
    """A valid descriptor (it passes ``validate_descriptor``)."""
    firmware = draw(st.sampled_from(Firmware))
    n_disks = draw(st.integers(1, max_disks))
    disk_keys = draw(st.lists(keys, min_size=n_disks, max_size=n_disks, unique=True))
    disks: list[Disk] = []
    partitions: list[Partition] = []
    roles_by_disk: dict[str, list[str]] = {}
    for i, key in enumerate(disk_keys):
        table = draw(st.sampled_from(TableType))
        logical = draw(st.sampled_from([512, 4096]))
        physical = draw(st.sampled_from([s for s in (512, 4096) if s >= logical]))
        sectors = draw(st.integers(4096, 1 << 33 if table is TableType.GPT else (1 << 32) + 100))
        disk = Disk(
            key=key,
            size_bytes=sectors * logical,
            logical_sector_size=logical,
            physical_sector_size=physical,
            table=table,
            disk_id=draw(uuids) if table is TableType.GPT else "0x" + draw(_hex(8)),
            critical=True if i == 0 else draw(st.booleans()),
            device=draw(st.one_of(st.just(""), st.sampled_from(["/dev/sda", "/dev/vdb", "/dev/nvme0n1"]))),
            model=draw(any_text),
            serial=draw(any_text),
            wwn=draw(st.one_of(st.just(""), _hex(16).map(lambda h: "0x" + h))),
            by_id=tuple(draw(st.lists(file_names, max_size=2))),
            grow_last=draw(st.booleans()),
        )
        if any(d.disk_id == disk.disk_id for d in disks):
            continue
        roles = ["data"] * draw(st.integers(1 if i == 0 else 0, max_parts))
        if i == 0:
            if firmware is Firmware.UEFI or draw(st.booleans()):
                roles.insert(0, "esp")
            if table is TableType.GPT and firmware is Firmware.BIOS:
                roles.insert(0, "bios")
        disks.append(disk)
        roles_by_disk[key] = roles
        if roles:
            partitions.extend(draw(_layout(disk, roles)))
    # PARTUUIDs must be unique: drop a repeated random GUID (MBR ones derive from the unique disk signatures).
    seen: set[str] = set()
    for i, p in enumerate(partitions):
        if p.partuuid in seen:
            partitions[i] = dataclasses.replace(p, partuuid="")
        seen.add(p.partuuid)
    filesystems: list[Filesystem] = []
    fs_keys = iter(draw(st.lists(keys, min_size=len(partitions), max_size=len(partitions), unique=True)))
    used_uuids: set[str] = set()
    root_candidates: list[str] = []
    esp_fs: str | None = None
    first_disk = disks[0]
    for p in partitions:
        disk = next(d for d in disks if d.key == p.disk)
        if p.type == GPT_BIOS_BOOT or (disk.table is TableType.MBR and p.type in ("05", "0f")):
            next(fs_keys)
            continue
        is_esp_part = p.type in (GPT_ESP, "ef")
        must_have = p.disk == first_disk.key and (is_esp_part or not root_candidates)
        if not must_have and not draw(st.booleans()):
            next(fs_keys)
            continue
        fstype = FsType.VFAT if is_esp_part else draw(st.sampled_from(FsType))
        if p.disk == first_disk.key and not is_esp_part and not root_candidates:
            fstype = draw(st.sampled_from([FsType.EXT4, FsType.XFS, FsType.BTRFS, FsType.EXT3, FsType.EXT2]))
        if fstype is FsType.VFAT:
            uuid = draw(st.one_of(st.just(""), fat_volids))
        else:
            uuid = draw(st.one_of(st.just(""), uuids))
        if uuid in used_uuids:
            uuid = ""
        if uuid:
            used_uuids.add(uuid)
        ext = fstype in (FsType.EXT2, FsType.EXT3, FsType.EXT4)
        f = Filesystem(
            key=next(fs_keys),
            partition=p.key,
            type=fstype,
            uuid=uuid,
            label=draw(_label(fstype)),
            block_size=draw(st.sampled_from([0, 1024, 4096])),
            features=tuple(draw(st.lists(st.from_regex(r"\A\^?[a-z0-9_]{1,12}\Z"), max_size=3)))
            if fstype is not FsType.SWAP
            else (),
            fat_size=draw(st.sampled_from([0, 12, 16, 32])) if fstype is FsType.VFAT else 0,
            inode_size=draw(st.sampled_from([0, 128, 256])) if ext else 0,
            backup=draw(st.booleans()),
            used_bytes=draw(st.sampled_from([0, 1, 4096, 700 << 20, (1 << 40) + 1])),
        )
        filesystems.append(f)
        if is_esp_part and esp_fs is None:
            esp_fs = f.key
        if p.disk == first_disk.key and not is_esp_part and fstype is not FsType.SWAP and not root_candidates:
            root_candidates.append(f.key)
    assert root_candidates, (disks, partitions)
    root = root_candidates[0]

    mounts: list[Mount] = []
    part_by_key = {p.key: p for p in partitions}
    used_points = {"/"}
    esp_mountpoint = ""
    for f in filesystems:
        if f.key == root:
            point = "/"
        elif f.key == esp_fs and (firmware is Firmware.UEFI or draw(st.booleans())):
            point = "/boot/efi"
            esp_mountpoint = point
        elif f.type is FsType.SWAP:
            if not draw(st.booleans()):
                continue
            point = "swap"
        else:
            if not draw(st.booleans()):
                continue
            point = draw(paths)
            if point in used_points or point == "/boot/efi":
                continue
        used_points.add(point)
        p = part_by_key[f.partition]
        specs = [FstabSpec.PATH]
        if f.uuid:
            specs.append(FstabSpec.UUID)
        if f.label:
            specs.append(FstabSpec.LABEL)
        if p.partuuid:
            specs.append(FstabSpec.PARTUUID)
        if p.name:
            specs.append(FstabSpec.PARTLABEL)
        spec = draw(st.sampled_from(specs))
        mounts.append(
            Mount(
                mountpoint=point,
                filesystem=f.key,
                options=draw(st.sampled_from(["defaults", "errors=remount-ro", "noatime,nodiratime", "umask=0077"])),
                spec=spec,
                device=draw(st.text(string.ascii_letters + string.digits + "=/-_\"'", max_size=30)),
                dump=draw(st.integers(0, 1)),
                passno=draw(st.integers(0, 2)),
            )
        )
    mounts = list(draw(st.permutations(mounts)))

    if firmware is Firmware.UEFI:
        kind = draw(st.sampled_from([BootloaderKind.GRUB_EFI, BootloaderKind.SYSTEMD_BOOT, BootloaderKind.NONE]))
    else:
        kind = draw(st.sampled_from([BootloaderKind.GRUB_BIOS, BootloaderKind.NONE]))
    if kind in (BootloaderKind.GRUB_EFI, BootloaderKind.SYSTEMD_BOOT):
        assert esp_mountpoint
    bootloader = Bootloader(
        kind=kind,
        disk="" if kind is BootloaderKind.NONE else first_disk.key,
        esp_mountpoint=esp_mountpoint
        if (esp_mountpoint and (kind is not BootloaderKind.NONE or draw(st.booleans())))
        else "",
        efi_directory=draw(st.sampled_from(["", "debian", "BOOT"])),
    )

    backup: BackupSet | None = None
    if draw(st.booleans()):
        compression = draw(st.sampled_from(Compression))
        archives = []
        for n, f in enumerate(filesystems):
            if f.backup and f.type.has_files:
                archives.append(
                    Archive(
                        filesystem=f.key,
                        file=f"{f.key}-{n}{compression.suffix}",
                        size=draw(st.integers(1, 1 << 40)),
                        sha256=draw(sha256s),
                        entries=draw(st.integers(0, 10**6)),
                    )
                )
        backup = BackupSet(
            media_label=draw(any_text),
            media_uuid=draw(st.one_of(st.just(""), uuids, fat_volids)),
            path=draw(paths),
            compression=compression,
            manifest=draw(st.sampled_from(["MANIFEST", "manifest.json"])),
            manifest_sha256=draw(sha256s),
            file_count=draw(st.integers(0, 10**7)),
            archives=tuple(draw(st.permutations(archives))),
        )
    orders = draw(st.lists(st.integers(1, 99), max_size=4, unique=True))
    commands = tuple(
        Command(o, draw(any_text.filter(lambda s: bool(s.strip()) and "\n" not in s)), draw(st.booleans()))
        for o in orders
    )
    subvolumes: list[Subvolume] = []
    for i, f in enumerate(filesystems):
        if f.type is not FsType.BTRFS:
            continue
        made = draw(_subvolumes(f.key))
        subvolumes += made
        default = draw(st.sampled_from([0, 5, *(s.id for s in made)]))
        filesystems[i] = dataclasses.replace(f, default_subvolume=default)
    return Descriptor(
        system=draw(systems(firmware)),
        disks=tuple(disks),
        partitions=tuple(partitions),
        filesystems=tuple(filesystems),
        mounts=tuple(mounts),
        bootloader=bootloader,
        backup=backup,
        commands=commands,
        subvolumes=tuple(draw(st.permutations(subvolumes))),
    )


@st.composite
def _subvolumes(draw: Draw, fs_key: str) -> list[Subvolume]:
    """Subvolumes of one btrfs filesystem: at the top level or nested in an earlier one, ids with gaps."""
    out: list[Subvolume] = []
    next_id = 256
    for n in range(draw(st.integers(0, 4))):
        next_id += draw(st.integers(0, 3))
        parent = draw(st.sampled_from([None, *out]))
        name = draw(st.sampled_from(["@", "@home", "snap", f"s{n}", "a b", "é"])) + str(n)
        path = f"{parent.path}/{draw(st.sampled_from(['', 'd/']))}{name}" if parent else name
        out.append(Subvolume(fs_key, path, next_id, parent.id if parent else 5, draw(st.booleans()),
                             draw(st.sampled_from(["", "zstd", "zlib:3", "lzo"]))))  # fmt: skip
        next_id += 1
    return out


@st.composite
def devices(draw: Draw) -> Device:
    bus = draw(st.sampled_from(["pci", "usb", "virtio", "acpi", "platform"]))
    return Device(
        bus=bus,
        address=draw(st.text(string.ascii_letters + string.digits + ":.-", min_size=1, max_size=14)),
        vendor=draw(st.one_of(st.just(""), _hex(4))),
        device=draw(st.one_of(st.just(""), _hex(4))),
        device_class=draw(st.one_of(st.just(""), _hex(6).map(lambda h: "0x" + h))),
        modalias=draw(st.one_of(st.just(""), st.from_regex(r"\A[a-z]{2,6}:[A-Za-z0-9*:]{1,30}\Z"))),
        driver=draw(st.one_of(st.just(""), st.from_regex(r"\A[a-z0-9_-]{1,12}\Z"))),
        modules=tuple(draw(st.lists(st.from_regex(r"\A[a-z0-9_]{1,12}\Z"), max_size=3))),
        description=draw(any_text),
    )


@st.composite
def inventories(draw: Draw) -> DeviceInventory:
    devs = draw(st.lists(devices(), max_size=8, unique_by=lambda d: (d.bus, d.address)))
    return DeviceInventory(hostname=draw(hostnames), devices=tuple(devs))
