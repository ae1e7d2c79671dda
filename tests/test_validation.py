"""Every validation rule, with a broken descriptor and the exact location of the error.

Each case breaks one of the samples.  The broken descriptor is checked twice: in memory (``validate_descriptor``:
section, record, field, no line) and as a file (rendered WITHOUT validation, sealed, then parsed: the same
location plus the line the record or key is on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from builder.vm.sample import sample_descriptor, sample_descriptor_mbr
from recovery_env.errors import DescriptorError
from recovery_env.model.descriptor import (
    SIGNATURE,
    Archive,
    BootloaderKind,
    Descriptor,
    Disk,
    Firmware,
    FstabSpec,
    FsType,
    PartFlag,
    Partition,
    Subvolume,
    TableType,
)
from recovery_env.model.sif import format_hex, format_optional, format_value, parse_asr_sif, seal
from recovery_env.model.validate import validate_descriptor
from recovery_env.templating import render

GPT = sample_descriptor()
MBR = sample_descriptor_mbr()
LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def _unchecked_text(d: Descriptor) -> str:
    """ASR.SIF text of a descriptor that may be invalid (the real renderer refuses those)."""
    return seal(render("asr.sif.j2", d=d, signature=SIGNATURE, v=format_value, hex=format_hex, opt=format_optional))


def _expected_line(text: str, section: str, record: int | None, field: str | None) -> int:
    lines = text.split("\n")
    header = lines.index(f"[{section}]")
    if record is None and field is None:
        return header + 1
    n = 0
    for i in range(header + 1, len(lines)):
        line = lines[i]
        if line.startswith("["):
            break
        if not line.strip() or line.startswith(";"):
            continue
        if record is None and line.startswith(f"{field} ="):
            return i + 1
        n += 1
        if record is not None and n == record:
            return i + 1
    raise AssertionError((section, record, field))


def _at(seq: tuple[object, ...], i: int, item: object) -> tuple[object, ...]:
    return (*seq[:i], item, *seq[i + 1 :])


def part(d: Descriptor, i: int, **kw: object) -> Descriptor:
    return replace(d, partitions=_at(d.partitions, i, replace(d.partitions[i], **kw)))  # type: ignore[arg-type]


def disk(d: Descriptor, i: int, **kw: object) -> Descriptor:
    return replace(d, disks=_at(d.disks, i, replace(d.disks[i], **kw)))  # type: ignore[arg-type]


def fs(d: Descriptor, i: int, **kw: object) -> Descriptor:
    return replace(d, filesystems=_at(d.filesystems, i, replace(d.filesystems[i], **kw)))  # type: ignore[arg-type]


def mount(d: Descriptor, i: int, **kw: object) -> Descriptor:
    return replace(d, mounts=_at(d.mounts, i, replace(d.mounts[i], **kw)))  # type: ignore[arg-type]


def system(d: Descriptor, **kw: object) -> Descriptor:
    return replace(d, system=replace(d.system, **kw))  # type: ignore[arg-type]


def boot(d: Descriptor, **kw: object) -> Descriptor:
    return replace(d, bootloader=replace(d.bootloader, **kw))  # type: ignore[arg-type]


def backup(d: Descriptor, **kw: object) -> Descriptor:
    assert d.backup is not None
    return replace(d, backup=replace(d.backup, **kw))  # type: ignore[arg-type]


def archive(d: Descriptor, i: int, **kw: object) -> Descriptor:
    assert d.backup is not None
    return backup(d, archives=_at(d.backup.archives, i, replace(d.backup.archives[i], **kw)))


def uefi(d: Descriptor) -> Descriptor:
    """The GPT sample as a UEFI machine with grub-efi (valid)."""
    return boot(system(d, firmware=Firmware.UEFI), kind=BootloaderKind.GRUB_EFI)


def with_btrfs(d: Descriptor) -> Descriptor:
    """fs2 as a btrfs root with subvolumes @ (the default), @home, @snapshots and a read-only snapshot in it."""
    root = replace(d.filesystems[1], type=FsType.BTRFS, features=(), inode_size=0, block_size=0, default_subvolume=256)
    subvolumes = (
        Subvolume("fs2", "@", 256),
        Subvolume("fs2", "@home", 257),
        Subvolume("fs2", "@snapshots", 258),
        Subvolume("fs2", "@snapshots/1/snapshot", 259, parent=258, readonly=True, compression="zstd"),
    )
    return replace(d, filesystems=(d.filesystems[0], root, *d.filesystems[2:]), subvolumes=subvolumes)


BTRFS = with_btrfs(GPT)


def sub(d: Descriptor, i: int, **kw: object) -> Descriptor:
    return replace(d, subvolumes=_at(d.subvolumes, i, replace(d.subvolumes[i], **kw)))  # type: ignore[arg-type]


def second_disk(d: Descriptor, **kw: object) -> Descriptor:
    extra = Disk("disk2", 1 << 30, 512, 512, TableType.GPT, "11111111-2222-4333-8444-555555555555", False)
    return replace(d, disks=(*d.disks, replace(extra, **kw)))  # type: ignore[arg-type]


def four_k(d: Descriptor, start: int) -> Descriptor:
    """disk2: a 4096-byte-sector GPT disk with one partition at ``start``."""
    d = second_disk(d, logical_sector_size=4096, physical_sector_size=4096)
    return replace(d, partitions=(*d.partitions, Partition("disk2", 1, start, 100, LINUX_FS)))


def with_mbr_backup(d: Descriptor) -> Descriptor:
    """The MBR sample with a backup set of fs1 and fs3 (valid)."""
    assert GPT.backup is not None
    archives = (
        Archive("fs1", "fs1.tar.zst", 10, "a" * 64),
        Archive("fs3", "fs3.tar.zst", 10, "b" * 64),
    )
    return replace(d, backup=replace(GPT.backup, archives=archives))


ACTIVE_3 = Partition("disk1", 3, 526336, 10, "83", partuuid="5a3c19e2-03", flags=(PartFlag.BOOT,))

Case = tuple[str, Callable[[], Descriptor], str, int | None, str | None, str]

CASES: list[Case] = [
    # --- pass 1: each record's fields ---------------------------------------------------------------------------
    ("version", lambda: replace(GPT, version=4), "VERSION", None, "format", "format 4"),
    ("hostname", lambda: system(GPT, hostname="asr sample"), "SYSTEM", None, "hostname", "is not a host name"),
    ("machine id", lambda: system(GPT, machine_id="XYZ"), "SYSTEM", None, "machine_id", "is not a machine id"),
    ("captured at", lambda: system(GPT, captured_at="2026-02-30T00:00:00Z"), "SYSTEM", None, "captured_at",
     "is not a UTC time"),
    ("disk key", lambda: disk(GPT, 0, key="Disk-1"), "DISKS", 1, "key", "'Disk-1' is not a key"),
    ("sector size", lambda: disk(GPT, 0, logical_sector_size=1024), "DISKS", 1, "logical_sector_size",
     "1024 is not a sector size (512 or 4096)"),
    ("physical < logical", lambda: disk(GPT, 0, logical_sector_size=4096), "DISKS", 1, "physical_sector_size",
     "physical sector size 512 is smaller than the logical 4096"),
    ("disk size 0", lambda: disk(GPT, 0, size_bytes=0), "DISKS", 1, "size_bytes", "size 0 must be more than 0"),
    ("disk size not sectors", lambda: disk(GPT, 0, size_bytes=(1 << 31) + 100), "DISKS", 1, "size_bytes",
     "is not a whole number of 512-byte sectors"),
    ("gpt disk id", lambda: disk(GPT, 0, disk_id="0x12345678"), "DISKS", 1, "disk_id", "is not a GPT disk GUID"),
    ("mbr disk id", lambda: disk(MBR, 0, disk_id="11111111-2222-4333-8444-555555555555"), "DISKS", 1, "disk_id",
     "is not an MBR disk signature"),
    ("by-id name", lambda: disk(GPT, 0, by_id=("a/b",)), "DISKS", 1, "by_id", "is not a /dev/disk/by-id name"),
    ("partition number", lambda: part(GPT, 1, number=0), "PARTITIONS", 2, "number", "must be 1 or more"),
    ("partition size", lambda: part(GPT, 1, size=0), "PARTITIONS", 2, "size", "size 0 must be more than 0"),
    ("mbr type on gpt", lambda: part(GPT, 2, type="83"), "PARTITIONS", 3, "type",
     "'83' is not a GPT type GUID (lower case; disk1 is GPT)"),
    ("gpt type on mbr", lambda: part(MBR, 0, type=LINUX_FS), "PARTITIONS", 1, "type",
     "is not an MBR type id (2 hex digits; disk1 is MBR)"),
    ("upper-case guid", lambda: part(GPT, 2, type=LINUX_FS.upper()), "PARTITIONS", 3, "type",
     "is not a GPT type GUID"),
    ("gpt partuuid", lambda: part(GPT, 0, partuuid="1234"), "PARTITIONS", 1, "partuuid", "is not a GUID"),
    ("mbr partuuid format", lambda: part(MBR, 0, partuuid="5a3c19e2-1"), "PARTITIONS", 1, "partuuid",
     "is not an MBR PARTUUID like 1234abcd-01"),
    ("gpt name length", lambda: part(GPT, 2, name="x" * 37), "PARTITIONS", 3, "name", "longer than 36"),
    ("mbr name", lambda: part(MBR, 0, name="boot"), "PARTITIONS", 1, "name", "MBR partitions have no name"),
    ("mbr attributes", lambda: part(MBR, 0, attributes=4), "PARTITIONS", 1, "attributes", "no attribute bits"),
    ("bios_grub on linux type", lambda: part(GPT, 2, flags=(PartFlag.BIOS_GRUB,)), "PARTITIONS", 3, "flags",
     "flag bios_grub needs the BIOS boot type"),
    ("bios_grub on mbr", lambda: part(MBR, 0, flags=(PartFlag.BIOS_GRUB,)), "PARTITIONS", 1, "flags",
     "flag bios_grub is for GPT disks only"),
    ("esp flag on linux type", lambda: part(GPT, 2, flags=(PartFlag.ESP,)), "PARTITIONS", 3, "flags",
     "flag esp needs the EFI System type"),
    ("gpt boot flag without bit", lambda: part(GPT, 2, flags=(PartFlag.BOOT,)), "PARTITIONS", 3, "flags",
     "needs attribute bit 2"),
    ("flag twice", lambda: part(GPT, 1, flags=(PartFlag.ESP, PartFlag.ESP)), "PARTITIONS", 2, "flags",
     "a flag is listed twice"),
    ("ext4 uuid", lambda: fs(GPT, 1, uuid="ABCD-1234"), "FILESYSTEMS", 2, "uuid", "is not a UUID"),
    ("vfat volume id", lambda: fs(GPT, 0, uuid="5a3c-19e2"), "FILESYSTEMS", 1, "uuid",
     "is not a FAT volume id like ABCD-1234"),
    ("vfat label length", lambda: fs(GPT, 0, label="EFI-SYSTEM-1"), "FILESYSTEMS", 1, "label",
     "is 12 bytes; vfat allows 11"),
    ("ext4 label length", lambda: fs(GPT, 1, label="a-much-too-long-l"), "FILESYSTEMS", 2, "label",
     "is 17 bytes; ext4 allows 16"),
    ("label bytes not chars", lambda: fs(GPT, 0, label="ÉÉÉÉÉÉ"), "FILESYSTEMS", 1, "label",
     "is 12 bytes; vfat allows 11"),
    ("fat_size on ext4", lambda: fs(GPT, 1, fat_size=32), "FILESYSTEMS", 2, "fat_size", "fat_size is for vfat only"),
    ("fat_size value", lambda: fs(GPT, 0, fat_size=24), "FILESYSTEMS", 1, "fat_size", "FAT size 24 is not 12, 16"),
    ("inode_size on vfat", lambda: fs(GPT, 0, inode_size=256), "FILESYSTEMS", 1, "inode_size",
     "inode_size is for ext2/3/4 only"),
    ("block size", lambda: fs(GPT, 1, block_size=3000), "FILESYSTEMS", 2, "block_size", "block size 3000"),
    ("feature name", lambda: fs(GPT, 1, features=("has journal",)), "FILESYSTEMS", 2, "features",
     "is not a feature name"),
    ("relative mountpoint", lambda: mount(GPT, 1, mountpoint="boot/efi"), "MOUNTS", 2, "mountpoint",
     "is not an absolute path or 'swap'"),
    ("mount options blanks", lambda: mount(GPT, 0, options="defaults, noatime"), "MOUNTS", 1, "options",
     "without blanks"),
    ("mount passno", lambda: mount(GPT, 0, passno=-1), "MOUNTS", 1, "passno", "passno -1"),
    ("backup path", lambda: backup(GPT, path="asr/set"), "BACKUP", None, "path", "is not an absolute path"),
    # --- paths that walk out of (or around) what they name, or carry control characters (issue 10, finding 4) ---
    ("dotdot mountpoint", lambda: mount(GPT, 1, mountpoint="/boot/../../etc"), "MOUNTS", 2, "mountpoint",
     "'/boot/../../etc' has a '..' component"),
    ("dot mountpoint", lambda: mount(GPT, 1, mountpoint="/boot/."), "MOUNTS", 2, "mountpoint",
     "'/boot/.' has a '.' component"),
    ("nul in mountpoint", lambda: mount(GPT, 1, mountpoint="/boot\0/efi"), "MOUNTS", 2, "mountpoint",
     "has a NUL character"),
    ("escape in mountpoint", lambda: mount(GPT, 0, mountpoint="/srv\x1b[2J"), "MOUNTS", 1, "mountpoint",
     "has the control character '\\x1b'"),
    ("dotdot mount device", lambda: mount(GPT, 0, device="/dev/../tmp/sda2"), "MOUNTS", 1, "device",
     "'/dev/../tmp/sda2' has a '..' component"),
    ("control char in mount device", lambda: mount(GPT, 0, device="UUID=\x07"), "MOUNTS", 1, "device",
     "has the control character '\\x07'"),
    ("dotdot disk device", lambda: disk(GPT, 0, device="/dev/../run/asr/backup"), "DISKS", 1, "device",
     "has a '..' component"),
    ("nul in disk device", lambda: disk(GPT, 0, device="/dev/sda\0"), "DISKS", 1, "device", "has a NUL character"),
    ("dotdot esp mountpoint", lambda: boot(GPT, esp_mountpoint="/boot/efi/.."), "BOOTLOADER", None, "esp_mountpoint",
     "has a '..' component"),
    ("dotdot backup path", lambda: backup(GPT, path="/asr/../../etc"), "BACKUP", None, "path",
     "'/asr/../../etc' has a '..' component"),
    ("dot backup path", lambda: backup(GPT, path="/asr/./set"), "BACKUP", None, "path", "has a '.' component"),
    ("newline in backup path", lambda: backup(GPT, path="/asr/set\nx"), "BACKUP", None, "path",
     "has the control character '\\n'"),
    ("del in backup path", lambda: backup(GPT, path="/asr/set\x7f"), "BACKUP", None, "path",
     "has the control character '\\x7f'"),
    ("manifest sha", lambda: backup(GPT, manifest_sha256="abc"), "BACKUP", None, "manifest_sha256",
     "not a SHA-256"),
    ("manifest name", lambda: backup(GPT, manifest="a/MANIFEST"), "BACKUP", None, "manifest", "is not a file name"),
    ("archive suffix", lambda: archive(GPT, 0, file="fs1.tar.gz"), "ARCHIVES", 1, "file",
     "does not end in .tar.zst (compression zstd)"),
    ("archive sha", lambda: archive(GPT, 1, sha256="F" * 64), "ARCHIVES", 2, "sha256", "not a SHA-256"),
    ("archive size", lambda: archive(GPT, 1, size=0), "ARCHIVES", 2, "size", "size 0 must be more than 0"),
    ("empty command", lambda: replace(GPT, commands=(replace(GPT.commands[0], command="  "),)), "COMMANDS", 1,
     "command", "the command is empty"),
    ("command order", lambda: replace(GPT, commands=(replace(GPT.commands[0], order=0),)), "COMMANDS", 1, "order",
     "order 0 must be 1 or more"),
    # --- pass 2: references and geometry ------------------------------------------------------------------------
    ("duplicate disk key", lambda: second_disk(GPT, key="disk1"), "DISKS", 2, "key", "duplicate disk key 'disk1'"),
    ("duplicate disk id", lambda: second_disk(GPT, disk_id=GPT.disks[0].disk_id), "DISKS", 2, "disk_id",
     "is also disk1's"),
    ("partition on missing disk", lambda: part(GPT, 0, disk="disk9"), "PARTITIONS", 1, "disk",
     "disk 'disk9' is not in [DISKS]"),
    ("duplicate partition number", lambda: part(GPT, 2, number=2), "PARTITIONS", 3, "number",
     "disk1 has two partitions number 2"),
    ("duplicate partuuid", lambda: part(GPT, 1, partuuid=GPT.partitions[0].partuuid), "PARTITIONS", 2, "partuuid",
     "is also disk1p1's"),
    ("mbr partuuid signature", lambda: part(MBR, 0, partuuid="5a3c19e2-02"), "PARTITIONS", 1, "partuuid",
     "does not match disk1's signature: 5a3c19e2-01"),
    ("before first usable (512)", lambda: part(GPT, 0, start=33), "PARTITIONS", 1, "start",
     "start 33 is before disk1's first usable sector 34"),
    ("before first usable (4096)", lambda: four_k(GPT, 5), "PARTITIONS", 4, "start",
     "start 5 is before disk2's first usable sector 6"),
    ("past last usable", lambda: part(GPT, 2, size=GPT.partitions[2].size + 1), "PARTITIONS", 3, "start",
     "start 526336 + size 3667936 exceeds disk1 (4194304 sectors, last usable 4194270)"),
    ("past the end of an mbr disk", lambda: part(MBR, 3, size=MBR.partitions[3].size + 1), "PARTITIONS", 4, "start",
     "exceeds disk1 (4194304 sectors, last usable 4194303)"),
    ("overlap", lambda: part(GPT, 1, start=3000), "PARTITIONS", 2, "start",
     "disk1p2 (3000..525239) overlaps disk1p1 (2048..4095)"),
    ("logical outside extended", lambda: part(MBR, 2, start=4096, size=1000), "PARTITIONS", 3, "start",
     "logical partition 5 (4096..5095) is not inside the extended partition disk1p2"),
    ("logical without extended",
     lambda: replace(MBR, partitions=tuple(p for p in MBR.partitions if p.number != 2)), "PARTITIONS", 2, "number",
     "logical partition 5 needs an extended partition on disk1"),
    ("logical numbering gap", lambda: part(MBR, 3, number=7, partuuid="5a3c19e2-07"), "PARTITIONS", 4, "number",
     "logical partitions are numbered 5, 6, ... without gaps: expected 6"),
    ("two extended partitions", lambda: part(MBR, 0, type="05", flags=()), "PARTITIONS", 2, "type",
     "disk1 has two extended partitions"),
    ("extended not primary", lambda: part(MBR, 1, number=7, partuuid="5a3c19e2-07"), "PARTITIONS", 2, "number",
     "an extended partition is a primary one (1-4), not 7"),
    ("two active partitions",
     lambda: replace(MBR, partitions=(*MBR.partitions, ACTIVE_3)),
     "PARTITIONS", 5, "flags", "more than one active (boot) partition"),
    ("fs on missing partition", lambda: fs(replace(GPT, version=2), 0, partition="disk1p9"), "FILESYSTEMS", 1,
     "partition", "partition 'disk1p9' is not in [PARTITIONS]"),
    ("fs on missing device", lambda: fs(GPT, 0, partition="disk1p9"), "FILESYSTEMS", 1, "partition",
     "'disk1p9' is not a block device: not in [PARTITIONS], [DISKS], [MD], [LUKS] or [LVM_LV]"),
    ("two fs on one partition", lambda: fs(GPT, 1, partition="disk1p2", uuid="", label=""), "FILESYSTEMS", 2,
     "partition", "disk1p2 already holds fs1"),
    ("fs on extended", lambda: fs(MBR, 1, partition="disk1p2"), "FILESYSTEMS", 2, "partition",
     "disk1p2 is an extended partition"),
    ("fs on bios boot", lambda: fs(GPT, 0, partition="disk1p1"), "FILESYSTEMS", 1, "partition",
     "disk1p1 is a BIOS boot partition"),
    ("duplicate fs uuid", lambda: fs(MBR, 2, uuid=MBR.filesystems[0].uuid), "FILESYSTEMS", 3, "uuid",
     "is also fs1's"),
    ("mount of missing fs", lambda: mount(GPT, 0, filesystem="fs9"), "MOUNTS", 1, "filesystem",
     "filesystem 'fs9' is not in [FILESYSTEMS]"),
    ("no root mount", lambda: mount(GPT, 0, mountpoint="/srv"), "MOUNTS", None, None,
     "no mount of '/' (the root filesystem)"),
    ("two root mounts", lambda: mount(GPT, 1, mountpoint="/"), "MOUNTS", 2, "mountpoint", "/ is also mount record 1"),
    ("swap mountpoint on ext4", lambda: mount(MBR, 1, mountpoint="swap"), "MOUNTS", 2, "mountpoint",
     "fs1 is ext4, not swap"),
    ("swap fs at a path", lambda: mount(MBR, 2, mountpoint="/swap"), "MOUNTS", 3, "mountpoint",
     "fs2 is swap: its mountpoint is 'swap'"),
    ("fstab label without label", lambda: fs(MBR, 0, label=""), "MOUNTS", 2, "spec",
     "fstab names it by LABEL but fs1 has no label"),
    ("fstab uuid without uuid", lambda: fs(GPT, 1, uuid=""), "MOUNTS", 1, "spec",
     "fstab names it by UUID but fs2 has no UUID"),
    ("fstab partuuid without partuuid", lambda: part(mount(MBR, 1, spec=FstabSpec.PARTUUID), 0, partuuid=""),
     "MOUNTS", 2, "spec",
     "fstab names it by PARTUUID but disk1p1 has no PARTUUID"),
    ("root disk not critical", lambda: disk(GPT, 0, critical=False), "DISKS", 1, "critical",
     "disk1 holds '/' and must be critical"),
    ("bootloader disk missing", lambda: boot(GPT, disk="disk7"), "BOOTLOADER", None, "disk",
     "disk 'disk7' is not in [DISKS]"),
    ("kind none with a disk", lambda: boot(MBR, kind=BootloaderKind.NONE), "BOOTLOADER", None, "disk",
     "kind none has no disk"),
    ("esp mountpoint not a mount", lambda: boot(GPT, esp_mountpoint="/efi"), "BOOTLOADER", None, "esp_mountpoint",
     "/efi is not in [MOUNTS]"),
    ("esp not vfat",
     lambda: fs(GPT, 0, type=FsType.EXT4, uuid="11111111-2222-4333-8444-555555555555", fat_size=0),
     "BOOTLOADER", None, "esp_mountpoint", "the ESP /boot/efi is ext4 (fs1), not vfat"),
    ("esp on a non-ESP partition", lambda: part(GPT, 1, type=LINUX_FS, flags=()), "BOOTLOADER", None,
     "esp_mountpoint", "the ESP /boot/efi is on disk1p2, whose type 0fc63daf-8483-4772-8e79-3d69d8477de4 is not"),
    ("grub-efi without esp", lambda: boot(uefi(GPT), esp_mountpoint=""), "BOOTLOADER", None, "esp_mountpoint",
     "grub-efi needs the ESP's mount point"),
    ("systemd-boot on bios", lambda: boot(GPT, kind=BootloaderKind.SYSTEMD_BOOT), "BOOTLOADER", None, "kind",
     "systemd-boot does not boot with bios firmware"),
    ("grub-bios on uefi", lambda: system(GPT, firmware=Firmware.UEFI), "BOOTLOADER", None, "kind",
     "grub-bios does not boot with uefi firmware"),
    ("grub-bios on gpt without bios boot",
     lambda: replace(GPT, partitions=GPT.partitions[1:]), "BOOTLOADER", None, "disk",
     "grub-bios on GPT disk disk1 needs a BIOS boot partition there"),
    ("uefi without esp",
     lambda: boot(system(MBR, firmware=Firmware.UEFI), kind=BootloaderKind.NONE, disk=""),
     "SYSTEM", None, "firmware", "uefi firmware needs an EFI system partition"),
    ("archive of missing fs", lambda: archive(GPT, 0, filesystem="fs9"), "ARCHIVES", 1, "filesystem",
     "filesystem 'fs9' is not in [FILESYSTEMS]"),
    ("archive of swap",
     lambda: backup(with_mbr_backup(MBR), archives=(*with_mbr_backup(MBR).backup.archives,  # type: ignore[union-attr]
                                                    Archive("fs2", "fs2.tar.zst", 1, "c" * 64))),
     "ARCHIVES", 3, "filesystem", "fs2 is swap: it has no files to archive"),
    ("archive of a fs not backed up", lambda: fs(GPT, 0, backup=False), "ARCHIVES", 1, "filesystem",
     "fs1 is not backed up (backup=no) but has an archive"),
    ("two archives of one fs", lambda: archive(GPT, 1, filesystem="fs1"), "ARCHIVES", 2, "filesystem",
     "fs1 has two archives"),
    ("archive file twice", lambda: archive(GPT, 1, file="fs1.tar.zst"), "ARCHIVES", 2, "file",
     "file fs1.tar.zst is listed twice"),
    ("backed-up fs without archive", lambda: backup(GPT, archives=GPT.backup.archives[:1]),  # type: ignore[union-attr]
     "FILESYSTEMS", 2, "backup", "fs2 is backed up (backup=yes) but [ARCHIVES] has no archive for it"),
    ("duplicate command order", lambda: replace(GPT, commands=(GPT.commands[0], replace(GPT.commands[1], order=1))),
     "COMMANDS", 2, "order", "order 1 is used twice"),
    ("subvolume of an unknown fs", lambda: sub(BTRFS, 0, filesystem="fs9"), "SUBVOLUMES", 1, "filesystem",
     "filesystem 'fs9' is not in [FILESYSTEMS]"),
    ("subvolume of a non-btrfs fs", lambda: sub(BTRFS, 0, filesystem="fs1"), "SUBVOLUMES", 1, "filesystem",
     "fs1 is vfat, not btrfs"),
    ("subvolume id twice", lambda: sub(BTRFS, 1, id=256), "SUBVOLUMES", 2, "id", "fs2 has two subvolumes with id 256"),
    ("subvolume path twice", lambda: sub(BTRFS, 1, path="@"), "SUBVOLUMES", 2, "path", "fs2 has two subvolumes at @"),
    ("subvolume path absolute", lambda: sub(BTRFS, 0, path="/@"), "SUBVOLUMES", 1, "path",
     "is not a path relative to the top level"),
    ("subvolume path with ..", lambda: sub(BTRFS, 3, path="@snapshots/../x"), "SUBVOLUMES", 4, "path",
     "has a '..' component"),
    ("subvolume id too small", lambda: sub(BTRFS, 0, id=5), "SUBVOLUMES", 1, "id", "id 5 is not a subvolume id"),
    ("subvolume its own parent", lambda: sub(BTRFS, 0, parent=256), "SUBVOLUMES", 1, "parent", "is its own parent"),
    ("subvolume parent missing", lambda: sub(BTRFS, 3, parent=300), "SUBVOLUMES", 4, "parent",
     "parent 300 of @snapshots/1/snapshot is not a subvolume of fs2"),
    ("subvolume outside its parent", lambda: sub(BTRFS, 3, path="@home/snapshot"), "SUBVOLUMES", 4, "path",
     "@home/snapshot is not inside its parent subvolume @snapshots (id 258)"),
    ("subvolume compression", lambda: sub(BTRFS, 3, compression="gzip"), "SUBVOLUMES", 4, "compression",
     "'gzip' is not a btrfs compression"),
    ("default subvolume not listed", lambda: fs(BTRFS, 1, default_subvolume=300), "FILESYSTEMS", 2,
     "default_subvolume", "default subvolume 300 is not a subvolume of fs2"),
    ("default subvolume of ext4", lambda: fs(GPT, 1, default_subvolume=256), "FILESYSTEMS", 2, "default_subvolume",
     "default_subvolume is for btrfs only (this is ext4)"),
]  # fmt: skip


def test_the_bases_are_valid() -> None:
    for d in (GPT, MBR, uefi(GPT), with_mbr_backup(MBR), four_k(GPT, 6), second_disk(GPT), BTRFS):
        validate_descriptor(d)
        assert parse_asr_sif(_unchecked_text(d)) == d


@pytest.mark.parametrize(("name", "make", "section", "record", "field", "message"), CASES, ids=[c[0] for c in CASES])
def test_rule(
    name: str,
    make: Callable[[], Descriptor],
    section: str,
    record: int | None,
    field: str | None,
    message: str,
) -> None:
    d = make()
    with pytest.raises(DescriptorError) as e:
        validate_descriptor(d)
    err = e.value
    assert (err.section, err.record, err.field, err.line) == (section, record, field, None), str(err)
    assert message in err.reason, str(err)

    text = _unchecked_text(d)
    with pytest.raises(DescriptorError) as e2:
        parse_asr_sif(text)
    err2 = e2.value
    assert (err2.section, err2.record, err2.field) == (section, record, field), str(err2)
    assert err2.line == _expected_line(text, section, record, field), str(err2)
    assert message in err2.reason
    assert str(err2).startswith(f"ASR.SIF line {err2.line}, [{section}]")


def test_location_format() -> None:
    d = part(GPT, 2, size=GPT.partitions[2].size + 1)
    text = _unchecked_text(d)
    with pytest.raises(DescriptorError) as e:
        parse_asr_sif(text)
    assert str(e.value) == (
        f"ASR.SIF line {_expected_line(text, 'PARTITIONS', 3, 'start')}, [PARTITIONS] record 3, field 'start': "
        "start 526336 + size 3667936 exceeds disk1 (4194304 sectors, last usable 4194270)"
    )
    with pytest.raises(DescriptorError) as e:
        validate_descriptor(d)
    assert str(e.value).startswith("ASR.SIF, [PARTITIONS] record 3, field 'start': start 526336")


def test_first_usable_follows_the_sector_size() -> None:
    validate_descriptor(four_k(GPT, 6))
    d = four_k(GPT, 6)
    big = d.disk("disk2")
    assert (big.first_usable, big.last_usable) == (6, big.size_sectors - 6)
    assert (GPT.disks[0].first_usable, GPT.disks[0].last_usable) == (34, 4194304 - 34)


def test_render_refuses_invalid_descriptors() -> None:
    from recovery_env.model.sif_render import render_asr_sif

    with pytest.raises(DescriptorError, match="no mount of '/'"):
        render_asr_sif(mount(GPT, 0, mountpoint="/srv"))



def test_format_1_has_no_subvolumes() -> None:
    """A format 1 descriptor (written before [SUBVOLUMES]) is still valid and read; subvolumes need format 2."""
    old = replace(GPT, version=1)
    validate_descriptor(old)
    text = _unchecked_text(old)
    assert "format = 1\n" in text and "[SUBVOLUMES]" not in text
    assert parse_asr_sif(text) == old
    with pytest.raises(DescriptorError) as e:
        validate_descriptor(replace(BTRFS, version=1))
    assert (e.value.section, e.value.field) == ("FILESYSTEMS", "default_subvolume")
    assert "format 1 has no default_subvolume" in e.value.reason
    no_default = fs(BTRFS, 1, default_subvolume=0)
    with pytest.raises(DescriptorError) as e:
        validate_descriptor(replace(no_default, version=1))
    assert (e.value.section, e.value.record) == ("SUBVOLUMES", 1)
    assert "format 1 has no subvolumes" in e.value.reason
