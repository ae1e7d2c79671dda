"""FAT images written in pure Python through pyfatfs' low-level ``PyFat`` API: the ASR floppy and the UEFI ESP.

pyfatfs 1.1 needs a few workarounds, each applied through its own objects (no byte patching afterwards):

- ``mkfs()`` opens the file ``rb+``: we create and size the file first (in a temporary directory).
- ``mkfs()`` writes 0 sectors/track and 0 heads (mtools refuses such images): we set the geometry in the BPB.
- ``mkfs()`` writes FAT[1] = 0xFF0 on FAT12, and mtools wants the end-of-chain value there
  ("Initial bytes of fat is not 0xff"); FAT[0] is rewritten as media byte + ones too.
- After ``mkfs()`` the same object computes a wrong first data sector: we close and reopen before writing.
- Its FAT is sized generously, so the in-memory FAT has more entries than the volume has clusters and it would
  happily allocate clusters past the end of the volume: we trim the in-memory FAT to the real cluster count so
  that a full image is reported as full.
- Directory entries get ``datetime.now()`` unless given dates, and the volume label entry is cut to an 8.3 name:
  we make every entry ourselves with the dates of the given epoch, and rewrite the label entry's name and dates.
- The volume id comes from the clock unless given one (and 0 means "use the clock"): we always pass one.

The result is a function of the inputs only, so two builds with the same epoch are byte-identical.
"""

from __future__ import annotations

import copy
import datetime as dt
import errno
import io
import posixpath
import re
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pyfatfs import PyFATException
from pyfatfs.EightDotThree import EightDotThree
from pyfatfs.FATDirectoryEntry import FATDirectoryEntry, make_lfn_entry
from pyfatfs.PyFat import PyFat

from recovery_env.errors import BudgetError, DamagedFatError, ImageFullError, InputError, MediaError, NotFatError

SECTOR = 512
FLOPPY_SIZE = 1_474_560
"""A 3.5" high-density floppy: 80 cylinders x 2 heads x 18 sectors x 512 bytes."""
ESP_MAX_SIZE = 0xFFFF * SECTOR
"""The El Torito sector count is 16 bits of 512-byte sectors: an ESP image must stay below 32 MiB."""
LABEL_MAX = 11
_LABEL_RE = re.compile(r"[A-Z0-9_\-][A-Z0-9 _\-!#$%&'()@^`{}~]{0,10}")
_NAME_BAD = set('"*/:<>?\\|') | {chr(c) for c in range(32)}
_DOS_EPOCH = dt.datetime(1980, 1, 1, tzinfo=dt.UTC)
_DOS_LAST = dt.datetime(2107, 12, 31, 23, 59, 58, tzinfo=dt.UTC)
# what pyfatfs lets escape from damaged on-disk structures besides its own exception
_PYFATFS_ERRORS = (PyFATException, ValueError, KeyError, IndexError, struct.error, ZeroDivisionError, RecursionError)


class FatType(StrEnum):
    """The FAT variants asr writes, with the facts pyfatfs needs."""

    FAT12 = "fat12"
    FAT16 = "fat16"

    @property
    def bits(self) -> int:
        return {FatType.FAT12: 12, FatType.FAT16: 16}[self]

    @property
    def pyfat_type(self) -> int:
        return self.bits  # PyFat.FAT_TYPE_FAT12 == 12, PyFat.FAT_TYPE_FAT16 == 16

    @property
    def min_size(self) -> int:
        """Smallest volume pyfatfs' mkfs accepts for this type."""
        return {FatType.FAT12: 64 * 1024, FatType.FAT16: 8401 * SECTOR}[self]

    @property
    def max_size(self) -> int:
        return {FatType.FAT12: 255 * 1024 * 1024, FatType.FAT16: 2 * 1024 * 1024 * 1024 - SECTOR}[self]

    @property
    def end_of_chain(self) -> int:
        return (1 << self.bits) - 1

    @classmethod
    def from_bits(cls, bits: int) -> FatType:
        for t in cls:
            if t.bits == bits:
                return t
        raise MediaError(f"FAT{bits} images are not supported (FAT12 and FAT16 are)")


@dataclass(frozen=True)
class FatEntry:
    """One file or directory read back from an image.  ``data`` is None for directories."""

    path: str
    short_name: str
    data: bytes | None
    written: dt.datetime
    created: dt.datetime
    accessed: dt.date

    @property
    def is_dir(self) -> bool:
        return self.data is None


@dataclass(frozen=True)
class FatImage:
    """What :func:`read_fat_image` finds in an image: boot sector facts, the label entry, every entry."""

    size: int
    fat_type: FatType
    media: int
    sectors_per_track: int
    heads: int
    volume_id: int
    bpb_label: str
    volume_label: str | None
    volume_label_written: dt.datetime | None
    entries: tuple[FatEntry, ...] = field(default=())
    warnings: tuple[str, ...] = ()  # what pyfatfs warned about (FAT copies differ, not cleanly unmounted...)

    @property
    def files(self) -> dict[str, bytes]:
        return {e.path: e.data for e in self.entries if e.data is not None}

    @property
    def dirs(self) -> tuple[str, ...]:
        return tuple(e.path for e in self.entries if e.data is None)


def make_volume_id(label: str, epoch: int) -> int:
    """A volume id (serial number) that depends on label and epoch only, never 0 (pyfatfs reads 0 as "clock")."""
    return zlib.crc32(f"{label}\0{epoch}".encode()) or 1


def make_dos_datetime(epoch: int) -> tuple[int, int]:
    """(date, time) in DOS format for ``epoch`` seconds, UTC, clamped to what FAT can store (1980..2107)."""
    seconds = min(max(epoch, int(_DOS_EPOCH.timestamp())), int(_DOS_LAST.timestamp()))
    when = dt.datetime.fromtimestamp(seconds, dt.UTC)
    date = (when.year - 1980) << 9 | when.month << 5 | when.day
    time = when.hour << 11 | when.minute << 5 | when.second // 2
    return date, time


def check_label(label: str, *, what: str = "FAT image") -> str:
    """Return ``label`` if it is a valid FAT volume label (1..11 upper-case DOS characters), else raise."""
    if not _LABEL_RE.fullmatch(label):
        raise InputError(
            f"{what}: volume label {label!r} is not valid: use 1 to {LABEL_MAX} characters from A-Z, 0-9, "
            "space and _-!#$%&'()@^`{}~, not starting with a space"
        )
    return label


def check_paths(files: Mapping[str, bytes], *, what: str = "FAT image") -> list[tuple[str, ...]]:
    """Validate the file names of ``files`` and return them split into components, sorted."""
    seen: dict[tuple[str, ...], str] = {}
    result: list[tuple[str, ...]] = []
    for path, data in files.items():
        parts = tuple(path.split("/"))
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InputError(f"{what}: file name {path!r} must be a relative path like EFI/BOOT/BOOTX64.EFI")
        for p in parts:
            bad = sorted(set(p) & _NAME_BAD)
            if bad or p != p.strip(" .") or len(p.encode("utf-16-le")) > 255 * 2:
                raise InputError(f"{what}: file name {path!r}: component {p!r} is not a valid FAT long name")
            try:
                p.encode("utf-16-le")
            except UnicodeEncodeError as e:
                raise InputError(f"{what}: file name {path!r} cannot be stored: {e}") from None
        if not isinstance(data, bytes | bytearray):
            raise InputError(f"{what}: content of {path!r} must be bytes, not {type(data).__name__}")
        if len(data) > FATDirectoryEntry.MAX_FILE_SIZE:
            raise InputError(f"{what}: {path!r} is larger than 4 GiB, which FAT cannot hold")
        key = tuple(p.upper() for p in parts)
        if key in seen:
            raise InputError(f"{what}: {path!r} and {seen[key]!r} are the same name on FAT (case-insensitive)")
        seen[key] = path
        result.append(parts)
    dirs = {tuple(p.upper() for p in parts[:i]) for parts in result for i in range(1, len(parts))}
    for key, path in seen.items():
        if key in dirs:
            raise InputError(f"{what}: {path!r} is both a file and a directory")
    return sorted(result, key=lambda parts: tuple(p.upper() for p in parts))


def make_fat_image(
    size: int,
    files: Mapping[str, bytes],
    *,
    label: str,
    epoch: int,
    volume_id: int | None = None,
    fat_type: FatType = FatType.FAT12,
    media: int = 0xF8,
    sectors_per_track: int = 32,
    heads: int = 64,
    what: str = "FAT image",
) -> bytes:
    """Return a FAT image of exactly ``size`` bytes holding ``files`` (path -> content).

    Paths may contain directories ("EFI/BOOT/BOOTX64.EFI"); names that are not upper-case 8.3 get a long name.
    Every entry (and the volume label entry) is dated ``epoch`` (UTC); the volume id defaults to one derived
    from label and epoch.  Raise InputError for bad input and ImageFullError if the files do not fit.
    """
    check_label(label, what=what)
    paths = check_paths(files, what=what)
    if size % SECTOR or not fat_type.min_size <= size <= fat_type.max_size:
        raise InputError(
            f"{what}: size {size} must be a multiple of {SECTOR} between {fat_type.min_size} and "
            f"{fat_type.max_size} bytes for {fat_type.name}"
        )
    if media not in (0xF0, *range(0xF8, 0x100)):
        raise InputError(f"{what}: media byte {media:#04x} is not one of 0xF0, 0xF8..0xFF")
    if not (1 <= sectors_per_track <= 63 and 1 <= heads <= 255):
        raise InputError(f"{what}: geometry {sectors_per_track} sectors/track, {heads} heads is out of range")
    vol_id = make_volume_id(label, epoch) if volume_id is None else volume_id
    if not 1 <= vol_id <= 0xFFFFFFFF:
        raise InputError(f"{what}: volume id {vol_id:#x} must be between 1 and 0xFFFFFFFF")
    date, time = make_dos_datetime(epoch)
    by_name = {tuple(p.upper() for p in path.split("/")): data for path, data in files.items()}

    with tempfile.TemporaryDirectory(prefix="asr-fat-") as tmp:
        img = Path(tmp) / "fat.img"
        with img.open("wb") as f:
            f.truncate(size)
        fresh = PyFat()
        fresh.mkfs(
            str(img),
            fat_type=fat_type.pyfat_type,
            size=size,
            label=label,
            volume_id=vol_id,
            media_type=media,
        )
        fresh.close()  # its own idea of the first data sector is wrong: reopen (see module doc)

        fs = PyFat()
        fs.open(str(img))
        try:
            _fix_boot_sector(fs, media=media, sectors_per_track=sectors_per_track, heads=heads)
            _fix_label_entry(fs, label, date, time)
            writer = _Writer(fs, date, time, what)
            for parts in paths:
                writer.add_file(parts, bytes(by_name[tuple(p.upper() for p in parts)]))
            writer.flush()
            fs.update_directory_entry(fs.root_dir)
            fs.flush_fat()
        except PyFATException as e:
            if e.errno == errno.ENOSPC:
                need = sum(len(d) for d in files.values())
                raise ImageFullError(
                    f"{what}: {len(files)} file(s), {need} bytes, do not fit in a {size}-byte "
                    f"{fat_type.name} image ({e})"
                ) from None
            raise
        finally:
            fs.close()
        return img.read_bytes()


def make_floppy(files: Mapping[str, bytes], *, label: str, epoch: int, volume_id: int | None = None) -> bytes:
    """The ASR floppy: a 1,474,560-byte FAT12 image, media 0xF0, 18 sectors/track, 2 heads, holding ``files``
    (ASR.SIF and ASRPNP.SIF).  ImageFullError if they do not fit on a floppy."""
    return make_fat_image(
        FLOPPY_SIZE,
        files,
        label=label,
        epoch=epoch,
        volume_id=volume_id,
        fat_type=FatType.FAT12,
        media=0xF0,
        sectors_per_track=18,
        heads=2,
        what="ASR floppy",
    )


def make_esp(files: Mapping[str, bytes], *, epoch: int, label: str = "ASR EFI") -> bytes:
    """The EFI system partition image for the UEFI El Torito entry: FAT12, as small as fits (in 64 KiB steps),
    below 32 MiB.  ``files`` is typically {"EFI/BOOT/BOOTX64.EFI": grub}.  BudgetError if it cannot fit."""
    payload = sum(_round_up(len(d), 2048) for d in files.values())
    size = max(FatType.FAT12.min_size, _round_up(payload + payload // 50 + 32 * 1024, 64 * 1024))
    while size <= ESP_MAX_SIZE:
        try:
            return make_fat_image(size, files, label=label, epoch=epoch, what="EFI system partition image")
        except ImageFullError:
            size = ESP_MAX_SIZE if size < ESP_MAX_SIZE < size + size // 8 else size + size // 8
            size = _round_up(size, SECTOR)
    raise BudgetError(
        f"EFI system partition image: {len(files)} file(s), {payload} bytes, do not fit in "
        f"{ESP_MAX_SIZE} bytes, the most an El Torito entry can load"
    )


def read_fat_image(image: bytes, *, what: str = "FAT image") -> FatImage:
    """Read a FAT12/16 image back with pyfatfs (read-only): boot sector facts, label, every file and directory.

    A damaged image is a named error, read in bounded memory: NotFatError when it is no FAT image at all,
    DamagedFatError (naming ``what``, the file and the fault) for a cluster chain that loops or breaks, an entry
    whose size the volume cannot hold, or anything else pyfatfs trips over.  Chains are followed by
    :func:`_cluster_chain`, never by pyfatfs; its warnings are returned in ``warnings``, not printed.
    """
    fs = PyFat()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fs.set_fp(io.BufferedReader(io.BytesIO(image)))
        except _PYFATFS_ERRORS as e:
            raise NotFatError(f"{what}: not a FAT image: {e}") from None
        try:
            bpb = fs.bpb_header
            label_entry = next((e for e in fs.root_dir.get_entries()[2] if e.is_volume_id()), None)
            entries = tuple(_walk(fs, fs.root_dir, "", what, set()))
            return FatImage(
                size=len(image),
                fat_type=FatType.from_bits(fs.fat_type),
                media=bpb["BPB_Media"],
                sectors_per_track=bpb["BPB_SecPerTrk"],
                heads=bpb["BPB_NumHeads"],
                volume_id=bpb["BS_VolID"],
                bpb_label=bytes(bpb["BS_VolLab"]).decode("ascii", "replace").rstrip(),
                volume_label=bytes(label_entry.name.name).decode("ascii", "replace").rstrip() if label_entry else None,
                volume_label_written=_utc(label_entry.get_mtime()) if label_entry else None,
                entries=entries,
                warnings=tuple(dict.fromkeys(str(w.message) for w in caught)),
            )
        except _PYFATFS_ERRORS as e:
            raise DamagedFatError(f"{what}: damaged FAT file system ({type(e).__name__}: {e})") from None
        finally:
            fs.close()


# --- internals -------------------------------------------------------------------------------------------------


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _utc(value: dt.datetime) -> dt.datetime:
    return dt.datetime(*value.timetuple()[:6], tzinfo=dt.UTC)


def _fix_boot_sector(fs: PyFat, *, media: int, sectors_per_track: int, heads: int) -> None:
    """Geometry into the BPB (written by close()), media + end-of-chain into FAT[0]/FAT[1], FAT trimmed."""
    fs.bpb_header["BPB_SecPerTrk"] = sectors_per_track
    fs.bpb_header["BPB_NumHeads"] = heads
    ones = (1 << fs.fat_type) - 1
    fs.fat[0] = (ones & ~0xFF) | media
    fs.fat[1] = ones
    del fs.fat[_data_clusters(fs) + 2 :]


def _fix_label_entry(fs: PyFat, label: str, date: int, time: int) -> None:
    """mkfs() cuts the label entry to 8.3 and dates it with the clock: give it the full label and our date."""
    for entry in fs.root_dir.get_entries()[2]:
        if entry.is_volume_id():
            entry.name.name = bytearray(label.ljust(LABEL_MAX).encode("ascii"))
            _set_dates(entry, date, time)


def _set_dates(entry: Any, date: int, time: int) -> None:
    entry.crttimetenth = 0
    entry.crttime = entry.wrttime = time
    entry.crtdate = entry.wrtdate = entry.lstaccessdate = date


class _Writer:
    """Adds files (and the directories above them) to an open PyFat, every entry dated (date, time)."""

    def __init__(self, fs: PyFat, date: int, time: int, what: str) -> None:
        self.fs = fs
        self.date = date
        self.time = time
        self.what = what
        self.dirs: dict[tuple[str, ...], Any] = {(): fs.root_dir}

    def _entry(self, parent: Any, name: str, attr: int) -> Any:
        short = EightDotThree(encoding=self.fs.encoding)
        if EightDotThree.is_8dot3_conform(name, encoding=self.fs.encoding):
            short.set_str_name(name)
        else:
            short.set_str_name(EightDotThree.make_8dot3_name(name, parent))
        entry = FATDirectoryEntry(
            DIR_Name=short,
            DIR_Attr=attr,
            DIR_NTRes=0,
            DIR_CrtTimeTenth=0,
            DIR_CrtTime=self.time,
            DIR_CrtDate=self.date,
            DIR_LstAccessDate=self.date,
            DIR_FstClusHI=0,
            DIR_WrtTime=self.time,
            DIR_WrtDate=self.date,
            DIR_FstClusLO=0,
            DIR_FileSize=0,
            encoding=self.fs.encoding,
        )
        if not EightDotThree.is_8dot3_conform(name, encoding=self.fs.encoding):
            entry.set_lfn_entry(make_lfn_entry(name, short))
        return entry

    def _directory(self, parts: tuple[str, ...]) -> Any:
        key = tuple(p.upper() for p in parts)
        if key in self.dirs:
            return self.dirs[key]
        parent = self._directory(parts[:-1])
        new = self._entry(parent, parts[-1], FATDirectoryEntry.ATTR_DIRECTORY)
        new.set_cluster(self.fs.allocate_bytes(2 * FATDirectoryEntry.FAT_DIRECTORY_HEADER_SIZE, erase=True)[0])
        dot = copy.copy(new)
        dot.name = EightDotThree()
        dot.name.set_byte_name(b".          ")
        dot.lfn_entry = None
        dot._parent = None  # copies must not share the parent link
        dotdot = copy.copy(new)
        dotdot.name = EightDotThree()
        dotdot.name.set_byte_name(b"..         ")
        dotdot.lfn_entry = None
        dotdot._parent = None
        dotdot.set_cluster(0 if parent is self.fs.root_dir else parent.get_cluster())
        new.add_subdirectory(dot)
        new.add_subdirectory(dotdot)
        parent.add_subdirectory(new)
        self.dirs[key] = new
        return new

    def add_file(self, parts: tuple[str, ...], data: bytes) -> None:
        parent = self._directory(parts[:-1])
        entry = self._entry(parent, parts[-1], FATDirectoryEntry.ATTR_ARCHIVE)
        entry.filesize = len(data)
        if data:
            first = self.fs.allocate_bytes(len(data))[0]
            entry.set_cluster(first)
            self.fs.write_data_to_cluster(data, first, extend_cluster=False)
        parent.add_subdirectory(entry)

    def flush(self) -> None:
        for key, directory in sorted(self.dirs.items(), key=lambda kv: (-len(kv[0]), kv[0])):
            if key:
                self.fs.update_directory_entry(directory)


def _walk(fs: PyFat, directory: Any, prefix: str, what: str, seen: set[int]) -> Iterator[FatEntry]:
    """Every entry below ``directory``; each subdirectory's chain is checked before pyfatfs reads it, and a
    directory met twice (a cycle or a cross-link) is an error, so the walk ends on any image."""
    dirs, files, _ = directory.get_entries()
    for entry in sorted(dirs + files, key=lambda e: e.get_short_name()):
        name = _name_of(entry)
        path = posixpath.join(prefix, name) if prefix else name
        common = {
            "path": path,
            "short_name": entry.get_short_name(),
            "written": _utc(entry.get_mtime()),
            "created": _utc(entry.get_ctime()),
            "accessed": entry.get_atime().date(),
        }
        if entry.is_directory():
            first = entry.get_cluster()
            if first in seen:
                raise DamagedFatError(f"{what}: directory {path} starts at cluster {first}, which another "
                                      "directory already uses (a directory loop or a cross-link)")
            seen.add(first)
            _cluster_chain(fs, first, f"{what}: directory {path}")
            yield FatEntry(data=None, **common)
            yield from _walk(fs, entry, path, what, seen)
        else:
            yield FatEntry(data=_read_data(fs, entry, f"{what}: {path}"), **common)


def _name_of(entry: Any) -> str:
    try:
        return str(entry.get_long_name())
    except Exception:  # pyfatfs raises NotAnLFNEntryException when there is no long name
        return str(entry.get_short_name())


def _data_clusters(fs: PyFat) -> int:
    """How many data clusters the volume really has (its FAT may have room for more)."""
    total: int = fs._get_total_sectors()  # pyfatfs has no public accessor
    per_cluster: int = fs.bpb_header["BPB_SecPerClus"]
    first: int = fs.first_data_sector
    return max(0, (total - first) // per_cluster)


def _cluster_chain(fs: PyFat, first: int, name: str) -> list[int]:
    """The clusters of the chain starting at ``first``, read from the FAT up to its end-of-chain mark.

    Bounded whatever the FAT holds: a cluster met twice is a loop (reported, not followed), and a link to a free,
    bad, reserved or out-of-range cluster is a broken chain; both are DamagedFatError naming ``name``."""
    values = fs.FAT_CLUSTER_VALUES[fs.fat_type]
    last = _data_clusters(fs) + 1  # clusters 2..last hold data
    chain: list[int] = []
    seen: set[int] = set()
    cluster = first
    while True:
        if not 2 <= cluster <= last or cluster >= len(fs.fat):
            where = f"cluster {chain[-1]} links to" if chain else "its entry starts at"
            raise DamagedFatError(f"{name}: broken cluster chain: {where} cluster {cluster}, outside the "
                                  f"volume's data clusters 2..{last}")
        if cluster in seen:
            raise DamagedFatError(f"{name}: cluster chain loops: cluster {chain[-1]} links back to cluster "
                                  f"{cluster} after {len(chain)} clusters")
        seen.add(cluster)
        chain.append(cluster)
        link = fs.fat[cluster]
        if link >= values["END_OF_CLUSTER_MIN"] or (fs.fat_type == PyFat.FAT_TYPE_FAT12 and
                                                    link == PyFat.FAT12_SPECIAL_EOC):
            return chain
        if link == values["FREE_CLUSTER"]:
            raise DamagedFatError(f"{name}: broken cluster chain: cluster {cluster} links to cluster 0 (free) "
                                  f"after {len(chain)} clusters")
        if link == values["BAD_CLUSTER"]:
            raise DamagedFatError(f"{name}: broken cluster chain: cluster {cluster} links to a cluster marked "
                                  f"bad ({link:#x}) after {len(chain)} clusters")
        if link > values["MAX_DATA_CLUSTER"]:
            raise DamagedFatError(f"{name}: broken cluster chain: cluster {cluster} holds the reserved value "
                                  f"{link:#x}")
        cluster = link


def _read_data(fs: PyFat, entry: Any, name: str) -> bytes:
    """A file's content: its size checked against the volume first, then against its whole cluster chain."""
    size = entry.filesize
    if size == 0:
        return b""
    per_cluster = fs.bytes_per_cluster
    capacity = _data_clusters(fs) * per_cluster
    if size > capacity:
        raise DamagedFatError(f"{name}: its directory entry says {size} bytes, more than the whole volume holds "
                              f"({capacity} bytes of data clusters)")
    need = -(-size // per_cluster)
    chain = _cluster_chain(fs, entry.get_cluster(), name)
    if len(chain) != need:
        raise DamagedFatError(f"{name}: its directory entry says {size} bytes ({need} clusters) but its cluster "
                              f"chain has {len(chain)} clusters ({len(chain) * per_cluster} bytes)")
    return b"".join(fs.read_cluster_contents(c) for c in chain)[:size]
