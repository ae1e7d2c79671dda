"""The media of the rescue system: the boot medium (the ISO, by its volume id), the backup medium, the
filesystems on this machine's block devices (``blkid -p``), and mounting them read-only.  Both the restore (it
finds its backup set) and the offline capture (it finds its destination) use these; neither writes to them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from recovery_env.errors import ToolError
from recovery_env.probe.disks import (
    parse_mountinfo,
)
from recovery_env.probe.layout import read_blkid
from recovery_env.run import run

BACKUP_MOUNT = "/run/asr/backup"
MEDIA_MOUNT = "/run/asr/media"
MODULES_LOADED = "/run/asr/modules-loaded"  # /init touches it when the late kernel modules (ext4, ...) are in
MEDIA_LABEL = "ASR_RECOVERY"  # the ISO's volume id (builder.build.VOLUME_ID)
EMBEDDED_DIR = "asr/backup"  # where `asr build --embed-backup` puts the set on the ISO


# Block devices never probed for a backup medium: floppy drives (probing an empty one takes seconds), RAM disks,
# compressed swap.
UNPROBED_PREFIXES: tuple[str, ...] = ("fd", "ram", "zram")


# Filesystems a backup medium (or the boot medium) may carry, and their read-only mount options.
MEDIA_FS_OPTIONS: dict[str, str] = {
    "ext4": "ro",
    "ext3": "ro",
    "ext2": "ro",
    "xfs": "ro,norecovery",
    "btrfs": "ro",
    "vfat": "ro,codepage=437,iocharset=iso8859-1",
    "iso9660": "ro",
}


@dataclass(frozen=True)
class BlockFs:
    """A filesystem on a block device, as ``blkid -p`` shows it."""

    device: str
    type: str
    label: str = ""
    uuid: str = ""
    partuuid: str = ""  # the partition's own UUID (GPT) or disk id + number (MBR), when it is a partition

    def describe(self) -> str:
        what = ", ".join(x for x in (self.type, f"label {self.label!r}" if self.label else "", self.uuid) if x)
        return f"{self.device} ({what})"


def find_boot_media(filesystems: Sequence[BlockFs], label: str = MEDIA_LABEL) -> list[BlockFs]:
    """The ASR boot medium: an ISO 9660 filesystem with the media's volume id."""
    return [f for f in filesystems if f.type == "iso9660" and f.label == label]


def read_block_filesystems(sys_root: Path = Path("/sys"), dev_root: str = "/dev") -> list[BlockFs]:
    """Every filesystem on the block devices of this machine (whole disks and partitions), by ``blkid -p``."""
    out: list[BlockFs] = []
    block = sys_root / "class" / "block"
    for entry in sorted(block.iterdir()) if block.is_dir() else []:
        name = entry.name
        if name.startswith(UNPROBED_PREFIXES):
            continue
        if name.startswith("loop") and not (entry / "loop").is_dir() and not (entry / "partition").is_file():
            continue  # an unused loop device
        try:
            if int((entry / "size").read_text()) == 0:
                continue  # an empty CD drive, a loop device without a file
        except (OSError, ValueError):
            continue
        device = f"{dev_root}/{name}"
        probe = read_blkid(device, strict=False)
        if probe.get("TYPE"):
            out.append(BlockFs(device, probe["TYPE"], probe.get("LABEL", ""), probe.get("UUID", ""),
                               probe.get("PART_ENTRY_UUID", "")))  # fmt: skip
    return out


def read_mounted(mountpoint: str, proc_root: Path = Path("/proc")) -> str | None:
    """The device mounted at ``mountpoint`` (None when nothing is)."""
    try:
        text = (proc_root / "self" / "mountinfo").read_text()
    except OSError:
        return None
    for m in reversed(parse_mountinfo(text)):
        if m.mountpoint == os.path.normpath(mountpoint):
            return m.source
    return None


def wait_for_file(path: str, timeout: float) -> bool:
    """Wait (polling) until ``path`` exists: /init's flag that the late kernel modules are loaded."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def mount_readonly(fs: BlockFs, mountpoint: str) -> None:
    """Mount ``fs`` read-only at ``mountpoint`` (whatever was mounted there first is unmounted)."""
    os.makedirs(mountpoint, exist_ok=True)
    current = read_mounted(mountpoint)
    if current == fs.device:
        return
    if current is not None:
        run(["umount", mountpoint])
    run(["mount", "-t", fs.type, "-o", MEDIA_FS_OPTIONS.get(fs.type, "ro"), fs.device, mountpoint])


def unmount(mountpoint: str) -> None:
    if read_mounted(mountpoint) is not None:
        run(["umount", mountpoint], check=False)


Log = Callable[[str], None]


def mount_boot_media(filesystems: Sequence[BlockFs], log: Log) -> BlockFs | None:
    """Mount the boot medium read-only at /run/asr/media (so that its disk is excluded and an embedded backup set
    can be read); None when there is none (a direct kernel boot without the ISO attached)."""
    for fs in find_boot_media(filesystems):
        try:
            mount_readonly(fs, MEDIA_MOUNT)
        except ToolError as e:
            log(f"boot medium {fs.describe()}: cannot mount it: {e.stderr.strip() or e}")
            continue
        log(f"boot medium: {fs.describe()} at {MEDIA_MOUNT}")
        return fs
    return None
