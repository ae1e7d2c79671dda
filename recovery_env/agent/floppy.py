"""Read the ASR floppy: ASR.SIF and ASRPNP.SIF, read-only.

The floppy is mounted with the real kernel vfat driver (``-o ro,codepage=437,iocharset=iso8859-1``) through the
subprocess choke point, after a look at the boot sector that tells "no disk" and "not FAT" apart with a clear
message.  A directory may stand in for the device (``asr.floppy=/some/dir`` or the agent's ``--floppy``): its
files are read as they are, which is how the agent's state machine is exercised on the host.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from recovery_env.errors import (
    DescriptorError,
    DescriptorMissingError,
    MediaError,
    NoDiskInDriveError,
    NoFloppyDriveError,
    NotFatError,
    ToolError,
)
from recovery_env.run import run

ASR_SIF = "ASR.SIF"
ASRPNP_SIF = "ASRPNP.SIF"
MOUNT_OPTIONS = "ro,codepage=437,iocharset=iso8859-1"
MAX_FILE = 1_474_560  # nothing on a 1.44 MB floppy is larger

# errno of open()/read() on a drive without a medium, per driver: floppy (ENXIO), sr/sd (ENOMEDIUM), others
_NO_MEDIUM = frozenset({errno.ENXIO, errno.ENOMEDIUM, errno.ENODEV, errno.EIO})


@dataclass(frozen=True)
class FloppyFile:
    name: str  # as found on the disk
    data: bytes  # as read: the parser checks its encoding and integrity line

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class FloppyContents:
    source: str  # the device (or directory) read
    asr_sif: FloppyFile
    asrpnp_sif: FloppyFile | None  # None: the floppy has no ASRPNP.SIF
    files: tuple[str, ...]  # every name in the root directory


def check_fat_boot_sector(sector: bytes, source: str) -> None:
    """Raise NotFatError unless ``sector`` is the boot sector of a FAT file system."""
    if len(sector) < 512:
        raise NotFatError(f"the disk in {source} is not a FAT disk: only {len(sector)} bytes could be read")
    bytes_per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", sector, 11)
    media = sector[21]
    problems = []
    if sector[510:512] != b"\x55\xaa":
        problems.append("no boot sector signature 55 AA")
    if bytes_per_sector not in (512, 1024, 2048, 4096):
        problems.append(f"{bytes_per_sector} bytes per sector")
    if per_cluster == 0 or per_cluster & (per_cluster - 1):
        problems.append(f"{per_cluster} sectors per cluster")
    if reserved == 0 or fats not in (1, 2):
        problems.append(f"{reserved} reserved sectors, {fats} FATs")
    if media != 0xF0 and media < 0xF8:
        problems.append(f"media byte {media:#04x}")
    if problems:
        raise NotFatError(f"the disk in {source} is not a FAT disk (" + "; ".join(problems) + ")")


def read_boot_sector(device: str) -> bytes:
    """The first sector of the medium in ``device``; the named media errors when there is none."""
    if not os.path.exists(device):
        raise NoFloppyDriveError(f"no floppy drive: {device} does not exist")
    try:
        fd = os.open(device, os.O_RDONLY)
    except OSError as e:
        if e.errno in _NO_MEDIUM:
            raise NoDiskInDriveError(f"no disk in the floppy drive {device} ({e.strerror})") from None
        raise NoFloppyDriveError(f"cannot open the floppy drive {device}: {e.strerror}") from None
    try:
        return os.read(fd, 512)
    except OSError as e:
        if e.errno in _NO_MEDIUM:
            raise NoDiskInDriveError(f"no disk in the floppy drive {device} ({e.strerror})") from None
        raise NotFatError(f"the disk in {device} cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)


def _find(names: list[str], wanted: str) -> str | None:
    for n in names:
        if n.upper() == wanted:
            return n
    return None


def _read_file(directory: str, name: str, source: str) -> FloppyFile:
    try:
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise MediaError(f"cannot read {name} on the disk in {source}: {e.strerror}") from None
    if len(data) > MAX_FILE:
        raise DescriptorError(f"{len(data)} bytes or more: larger than a floppy", file=name.upper())
    return FloppyFile(name, data)


def read_directory(directory: str, source: str) -> FloppyContents:
    """ASR.SIF (required) and ASRPNP.SIF (optional) from a mounted floppy or a directory standing in for it."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise NotFatError(f"cannot list the files of {source}: {e.strerror}") from None
    asr = _find(names, ASR_SIF)
    if asr is None:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"
        raise DescriptorMissingError(f"{ASR_SIF} is missing on the disk in {source} (files on it: {shown})")
    pnp = _find(names, ASRPNP_SIF)
    return FloppyContents(
        source=source,
        asr_sif=_read_file(directory, asr, source),
        asrpnp_sif=_read_file(directory, pnp, source) if pnp is not None else None,
        files=tuple(names),
    )


def read_floppy(device: str, mountpoint: str = "/run/asr/floppy") -> FloppyContents:
    """Read the ASR floppy in ``device`` (mounted read-only at ``mountpoint``, unmounted again)."""
    if os.path.isdir(device):
        return read_directory(device, device)
    check_fat_boot_sector(read_boot_sector(device), device)
    os.makedirs(mountpoint, exist_ok=True)
    try:
        run(["mount", "-t", "vfat", "-o", MOUNT_OPTIONS, device, mountpoint])
    except ToolError as e:
        detail = (e.stderr or e.stdout).strip().splitlines()
        raise NotFatError(
            f"the kernel cannot mount the disk in {device} as FAT" + (f": {detail[-1]}" if detail else "")
        ) from None
    try:
        return read_directory(mountpoint, device)
    finally:
        run(["umount", mountpoint], check=False)
