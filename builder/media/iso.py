"""The recovery ISO, written with pycdlib: ISO9660 + Joliet + Rock Ridge, El Torito for BIOS (ISOLINUX, with a
boot-info-table) and UEFI (a FAT ESP image holding GRUB), and an isohybrid MBR so the same file boots as a disk.

pycdlib 1.22 pitfalls handled here:

- ISO9660 names must be upper-case d-characters with ``;1`` on files: :func:`plan_iso_tree` maps every real
  path to one (and keeps the real name as Rock Ridge and Joliet name).  ``.disk`` becomes ``DISK``.
- It has no parameter for dates: it calls ``time.time()`` and ``time.localtime()`` throughout.  For the build
  its modules see a clock frozen at ``epoch`` in UTC (:func:`pinned_clock`), nothing else in the process does.
- ``add_isohybrid()`` draws a random MBR id and random GPT GUIDs (different ones for the primary and backup
  GPT): we give it an MBR id and replace the GUIDs with ones derived from the volume id and epoch, the same in
  both GPT copies.  (Both GPT partitions keep the "basic data" type, as xorriso's -isohybrid-gpt-basdat does:
  pycdlib refuses to read any other type back.)
- ``add_isohybrid(efi=True)`` computes the GPT partition-array CRC over the used entries only, where the UEFI
  spec (and xorriso, fdisk, the kernel) take the whole array: :func:`fix_gpt_crcs` recomputes both CRCs of both
  GPT headers in the written file.  Firmware boots the hybrid disk through its MBR (no 0xEE protective entry,
  a 0xEF partition for the ESP); the GPT is there for tools that look for it and now passes their checks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import re
import struct
import sys
import time
import types
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from builder.media.bootloader import MEDIA_LAYOUT, MediaLayout, check_isolinux_bin, check_ldlinux_c32
from builder.media.fatimage import ESP_MAX_SIZE
from recovery_env.errors import BudgetError, InputError, InternalError

ISO_LEVEL = 3
"""Interchange level 3: 30-character names, and files over 4 GiB (multi-extent) for embedded backup sets."""
JOLIET_LEVEL = 3
ROCK_RIDGE = "1.09"
VOLUME_ID_RE = re.compile(r"[A-Z0-9_]{1,32}")
_D_CHARS = re.compile(r"[^A-Z0-9_]")
ISOHYBRID_GEOMETRY = (32, 64)  # sectors/track, heads of the hybrid MBR (what isohybrid uses by default)
_GUID_NAMESPACE = uuid.UUID("6f1c3c8e-2d5e-4a52-9a3f-41535200a5b1")  # asr's own namespace for uuid5


@dataclass(frozen=True)
class IsoNode:
    """One file or directory of the ISO: its real path, its ISO9660 path, and its content (None: directory)."""

    path: str
    iso_path: str
    data: bytes | None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def joliet_path(self) -> str:
        return "/" + self.path


def make_iso9660_name(name: str, *, is_dir: bool) -> str:
    """Map a real name to an ISO9660 level-3 name: upper-case d-characters, at most 30 characters for files
    (one dot, ``;1`` version) and 31 for directories.  Leading dots are dropped (".disk" -> "DISK")."""
    stem, dot, ext = name.lstrip(".").upper().rpartition(".")
    if not dot or is_dir:
        stem, ext = name.lstrip(".").upper(), ""
    stem = _D_CHARS.sub("_", stem) or "_"
    ext = _D_CHARS.sub("_", ext)
    if is_dir:
        return stem[:31]
    ext = ext[:8]
    stem = stem[: 30 - len(ext) - 1]
    return f"{stem}.{ext};1"


def plan_iso_tree(files: Mapping[str, bytes]) -> tuple[IsoNode, ...]:
    """Directories and files of the ISO, parents before children, sorted, each with a unique ISO9660 path.

    ``files`` maps real relative paths ("boot/grub/grub.cfg") to contents.  Raise InputError for bad paths.
    """
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or any("\0" in p for p in parts):
            raise InputError(f"ISO: file name {path!r} must be a relative path like boot/grub/grub.cfg")
        if any(len(p) > 64 for p in parts):
            raise InputError(f"ISO: file name {path!r} has a component longer than Joliet's 64 characters")
        if len(path) > 240:
            raise InputError(f"ISO: file name {path!r} is longer than 240 characters")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = sorted(dirs & set(files))
    if clash:
        raise InputError(f"ISO: {clash[0]!r} is both a file and a directory")

    iso_of: dict[str, str] = {"": ""}
    taken: dict[str, set[str]] = {}
    nodes: list[IsoNode] = []
    for path in sorted(dirs | set(files), key=lambda p: (p.count("/"), p)):
        parent, _, name = path.rpartition("/")
        is_dir = path in dirs
        iso_name = make_iso9660_name(name, is_dir=is_dir)
        used = taken.setdefault(parent, set())
        n = 1
        while iso_name in used:
            suffix = f"_{n}"
            if is_dir:
                iso_name = make_iso9660_name(name, is_dir=True)[: 31 - len(suffix)] + suffix
            else:
                stem, _, ext = make_iso9660_name(name, is_dir=False).removesuffix(";1").rpartition(".")
                iso_name = f"{stem[: 29 - len(ext) - len(suffix)]}{suffix}.{ext};1"
            n += 1
        used.add(iso_name)
        iso_of[path] = f"{iso_of[parent]}/{iso_name}"
        nodes.append(IsoNode(path=path, iso_path=iso_of[path], data=None if is_dir else files[path]))
    return tuple(nodes)


def check_volume_id(volume_id: str) -> str:
    if not VOLUME_ID_RE.fullmatch(volume_id):
        raise InputError(f"ISO volume id {volume_id!r} must be 1 to 32 characters from A-Z, 0-9 and _")
    return volume_id


def make_mbr_id(volume_id: str, epoch: int) -> int:
    return zlib.crc32(f"{volume_id}\0{epoch}".encode()) or 1


def make_guid(volume_id: str, epoch: int, what: str) -> uuid.UUID:
    return uuid.uuid5(_GUID_NAMESPACE, f"{volume_id}\0{epoch}\0{what}")


def render_disk_info(volume_id: str, epoch: int) -> str:
    when = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y%m%d-%H:%M")
    return f"Automated System Recovery {volume_id} {when}\n"


@contextlib.contextmanager
def room_for_backup_gpt() -> Iterator[None]:
    """Make pycdlib's isohybrid padding always hold the backup GPT.

    pycdlib 1.22 pads a hybrid ISO to a whole cylinder and writes the backup GPT (header + 128 entries: 33
    sectors of 512 bytes) into the last sectors of the padded image.  When the ISO already ends on, or less than
    33 sectors before, a cylinder boundary the padding is shorter than the backup GPT, which then overwrites the
    last files of the ISO (seen: grub.cfg and the UEFI marker zeroed, so GRUB found no ASR medium).  For the
    duration of the build, a padding shorter than the backup GPT grows by one cylinder; ``_calc_cc`` is the one
    place pycdlib derives the padding, the cylinder count and the GPT positions from, so they stay consistent.
    """
    from pycdlib import isohybrid

    original = isohybrid.IsoHybrid._calc_cc

    def calc_cc(self: Any, iso_size: int) -> tuple[int, int]:
        cc, padding = original(self, iso_size)
        if self.efi and padding < BACKUP_GPT_BYTES:
            cylinder = self.geometry_heads * self.geometry_sectors * 512
            padding += cylinder
            cc = min((iso_size + padding) // cylinder, 1024)
        return cc, padding

    setattr(isohybrid.IsoHybrid, "_calc_cc", calc_cc)  # noqa: B010
    try:
        yield
    finally:
        setattr(isohybrid.IsoHybrid, "_calc_cc", original)  # noqa: B010


BACKUP_GPT_BYTES = 33 * 512
"""The backup GPT at the end of a hybrid image: 128 entries of 128 bytes (32 sectors) and the header."""


@contextlib.contextmanager
def pinned_clock(epoch: int) -> Iterator[None]:
    """Make pycdlib see a clock stopped at ``epoch`` in UTC while the ISO is built.

    pycdlib's modules do ``import time`` and call ``time.time()``/``time.localtime()``; for the duration we
    give each of them a copy of the time module whose ``time`` returns ``epoch`` and whose ``localtime`` is
    ``gmtime``.  The rest of the process keeps the real clock and time zone.
    """
    frozen = types.ModuleType("time")
    frozen.__dict__.update(time.__dict__)
    frozen.time = lambda: float(epoch)  # type: ignore[attr-defined]
    frozen.time_ns = lambda: epoch * 1_000_000_000  # type: ignore[attr-defined]
    frozen.localtime = lambda secs=None: time.gmtime(epoch if secs is None else secs)  # type: ignore[attr-defined]
    frozen.timezone = frozen.altzone = frozen.daylight = 0  # type: ignore[attr-defined]
    patched: list[types.ModuleType] = []
    for name, module in list(sys.modules.items()):
        if (name == "pycdlib" or name.startswith("pycdlib.")) and getattr(module, "time", None) is time:
            module.time = frozen  # type: ignore[attr-defined]
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            module.time = time  # type: ignore[attr-defined]


def make_iso(
    out: Path,
    *,
    kernel: bytes,
    initramfs: bytes,
    isolinux_bin: bytes,
    ldlinux_c32: bytes,
    isolinux_cfg: str,
    grub_cfg: str,
    esp_image: bytes,
    volume_id: str,
    epoch: int,
    extra_files: Mapping[str, bytes] | None = None,
    layout: MediaLayout = MEDIA_LAYOUT,
) -> None:
    """Write the hybrid recovery ISO to ``out``.

    The ISO holds the kernel and initramfs, ISOLINUX with its config, grub.cfg, the ESP image (second El Torito
    entry, and the EFI partition of the hybrid MBR), ``.disk/info``, the UEFI marker file and ``extra_files``
    (real relative path -> content, e.g. an embedded backup set).  Every date is ``epoch``: the same inputs give
    the same bytes.  Bad input raises InputError and writes nothing.
    """
    check_volume_id(volume_id)
    if not out.parent.is_dir():
        raise InputError(f"ISO: output directory {out.parent} does not exist")
    check_isolinux_bin(isolinux_bin)
    check_ldlinux_c32(ldlinux_c32)
    if len(esp_image) > ESP_MAX_SIZE or len(esp_image) % 512 or not esp_image:
        raise BudgetError(
            f"ESP image of {len(esp_image)} bytes: must be a non-empty multiple of 512 below {ESP_MAX_SIZE} "
            "bytes, the most an El Torito entry can load"
        )
    info = render_disk_info(volume_id, epoch)
    files: dict[str, bytes] = {
        layout.kernel: kernel,
        layout.initrd: initramfs,
        layout.isolinux_bin: isolinux_bin,
        layout.ldlinux_c32: ldlinux_c32,
        layout.isolinux_cfg: isolinux_cfg.encode(),
        layout.grub_cfg: grub_cfg.encode(),
        layout.esp: esp_image,
        layout.marker: info.encode(),
        "/.disk/info": info.encode(),
    }
    for path, data in (extra_files or {}).items():
        key = "/" + path.lstrip("/")
        if key in files or key == layout.boot_catalog:
            raise InputError(f"ISO: extra file {path!r} would replace the boot file {key}")
        files[key] = data
    nodes = plan_iso_tree({p.lstrip("/"): d for p, d in files.items()})
    iso_path = {n.path: n.iso_path for n in nodes}

    def on_iso(path: str) -> str:
        return iso_path[path.lstrip("/")]

    catalog = layout.boot_catalog.lstrip("/")
    cat_dir, _, cat_name = catalog.rpartition("/")
    catalog_iso = (iso_path[cat_dir] if cat_dir else "") + "/" + make_iso9660_name(cat_name, is_dir=False)
    mbr_id = make_mbr_id(volume_id, epoch)
    tmp = out.with_name(out.name + ".tmp")
    iso = pycdlib.PyCdlib()
    try:
        with pinned_clock(epoch), room_for_backup_gpt():
            iso.new(
                interchange_level=ISO_LEVEL,
                sys_ident="LINUX",
                vol_ident=volume_id,
                app_ident_str="ASR (Automated System Recovery for Linux)",
                joliet=JOLIET_LEVEL,
                rock_ridge=ROCK_RIDGE,
            )
            for node in nodes:
                if node.data is None:
                    iso.add_directory(node.iso_path, rr_name=node.name, joliet_path=node.joliet_path)
                else:
                    iso.add_fp(
                        io.BytesIO(node.data),
                        len(node.data),
                        node.iso_path,
                        rr_name=node.name,
                        joliet_path=node.joliet_path,
                    )
            iso.add_eltorito(
                on_iso(layout.isolinux_bin),
                bootcatfile=catalog_iso,
                rr_bootcatname=cat_name,
                joliet_bootcatfile="/" + catalog,
                boot_load_size=4,
                boot_info_table=True,
            )
            iso.add_eltorito(on_iso(layout.esp), efi=True)
            iso.add_isohybrid(
                mbr_id=mbr_id,
                geometry_sectors=ISOHYBRID_GEOMETRY[0],
                geometry_heads=ISOHYBRID_GEOMETRY[1],
                efi=True,
            )
            _pin_gpt_guids(iso, volume_id, epoch)
            iso.write(str(tmp))
        with tmp.open("r+b") as f:
            fix_gpt_crcs(f)
    except PyCdlibException as e:
        tmp.unlink(missing_ok=True)
        raise InternalError(f"pycdlib refused the ISO {out}: {e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with contextlib.suppress(PyCdlibException):
            iso.close()
    tmp.replace(out)


GPT_HEADER = struct.Struct("<8s4sII4xQQQQ16sQIII")
"""signature, revision, header size, header CRC, (reserved), my LBA, alternate LBA, first usable, last usable,
disk GUID, entries LBA, number of entries, entry size, entries CRC."""


def fix_gpt_crcs(f: BinaryIO, sector: int = 512) -> int:
    """Recompute the partition-array CRC and the header CRC of the primary and backup GPT headers of the disk
    image open in ``f`` (read-write).  Return how many headers were fixed; 0 if there is no GPT."""
    fixed = 0
    lba = 1
    for _ in range(2):
        f.seek(lba * sector)
        raw = bytearray(f.read(sector))
        if len(raw) < GPT_HEADER.size or raw[:8] != b"EFI PART":
            return fixed
        (_, _, hsize, _, my_lba, alt_lba, _, _, _, entries_lba, count, esize, _) = GPT_HEADER.unpack_from(raw)
        if my_lba != lba or not 92 <= hsize <= sector or count * esize > 1 << 20:
            raise InternalError(f"GPT header at LBA {lba} is not what pycdlib writes (my LBA {my_lba})")
        f.seek(entries_lba * sector)
        entries = f.read(count * esize)
        struct.pack_into("<I", raw, 88, zlib.crc32(entries))
        struct.pack_into("<I", raw, 16, 0)
        struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw[:hsize])))
        f.seek(lba * sector)
        f.write(raw)
        fixed += 1
        lba = alt_lba
    return fixed


def _pin_gpt_guids(iso: Any, volume_id: str, epoch: int) -> None:
    """Replace pycdlib's random GPT GUIDs by derived ones, identical in the primary and the backup GPT."""
    hybrid = iso.isohybrid_mbr
    if hybrid is None or not getattr(hybrid, "efi", False):
        return
    disk = make_guid(volume_id, epoch, "disk")
    for gpt in (hybrid.primary_gpt, hybrid.secondary_gpt):
        gpt.header.disk_guid = disk
        for index, part in enumerate(gpt.parts):
            part.part_guid = make_guid(volume_id, epoch, f"part{index}")
