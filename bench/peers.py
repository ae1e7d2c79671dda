"""The peer tools' command lines, equivalent to what asr does in each step.  Pure: argv lists and shell text.

- ISO: ``xorriso -as mkisofs`` with the same content and boot setup as builder/media/iso.py (level 3, Joliet, Rock
  Ridge, El Torito BIOS with boot-info-table + EFI, isohybrid MBR from Debian's isohdpfx.bin, GPT basic data).
- floppy: ``mformat`` a 1.44 MB FAT12 volume with the label, then ``mcopy`` the two descriptor files.
- initramfs: ``find . | cpio -o -H newc | zstd -19 -T0`` over the same tree (zstd level 19 on every CPU, as
  builder/media/initramfs.py compresses its segments).
- capture: ``tar -c | zstd -T0`` (level 3, the default, as asr's archives).
- restore (in the guest): ``tar -x --zstd -f ARCHIVE`` into a fresh ext4.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from builder.media.bootloader import MEDIA_LAYOUT, MediaLayout
from builder.media.initramfs import ZSTD_LEVEL

ISOHDPFX = ("isolinux", "usr/lib/ISOLINUX/isohdpfx.bin")
"""Debian's isohybrid MBR template: package and path inside it."""


@dataclass(frozen=True)
class Shell:
    """A pipeline run through ``sh -c`` (pipes are the point of the peer commands)."""

    text: str

    @property
    def argv(self) -> list[str]:
        return ["sh", "-c", self.text]


def plan_xorriso_argv(
    tree: Path, out: Path, *, volume_id: str, isohdpfx: Path, layout: MediaLayout = MEDIA_LAYOUT
) -> list[str]:
    """``xorriso -as mkisofs`` building the recovery ISO from ``tree`` (the same files make_iso writes)."""
    return [
        "xorriso", "-as", "mkisofs", "-quiet",
        "-o", str(out),
        "-V", volume_id,
        "-iso-level", "3", "-J", "-joliet-long", "-R",
        "-b", layout.isolinux_bin.lstrip("/"), "-c", layout.boot_catalog.lstrip("/"),
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
        "-eltorito-alt-boot", "-e", layout.esp.lstrip("/"), "-no-emul-boot",
        "-isohybrid-mbr", str(isohdpfx), "-isohybrid-gpt-basdat",
        str(tree),
    ]  # fmt: skip


FLOPPY_FORMAT = ("-f", "1440")


def plan_mtools_floppy(image: Path, files: list[Path], *, label: str) -> list[list[str]]:
    """``mformat`` + ``mcopy``: a 1.44 MB FAT12 floppy image with ``label`` holding ``files``."""
    return [
        ["mformat", "-C", *FLOPPY_FORMAT, "-v", label, "-i", str(image), "::"],
        ["mcopy", "-i", str(image), *(str(f) for f in files), "::"],
    ]


def plan_cpio_zstd(tree: Path, out: Path, level: int = ZSTD_LEVEL, threads: int = 1) -> Shell:
    """The initramfs the classic way, over an extracted tree: sorted names, newc, root-owned, zstd with
    ``threads`` threads (0: as many as CPUs)."""
    return Shell(
        f"cd {shlex.quote(str(tree))} && find . -mindepth 1 | LC_ALL=C sort | "
        f"cpio -o -H newc -R 0:0 --quiet | zstd -{level} -T{threads} -q -c > {shlex.quote(str(out))}"
    )


def plan_tar_zstd(source: Path, out: Path) -> Shell:
    """Plain capture: ``tar -c | zstd -T0`` (zstd level 3, its default)."""
    return Shell(f"tar -c -C {shlex.quote(str(source))} . | zstd -T0 -q -c > {shlex.quote(str(out))}")


def plan_plain_extract(archive: str, target: str) -> list[str]:
    """Plain restore: GNU tar with its own zstd filter."""
    return ["tar", "-x", "--zstd", "-f", archive, "-C", target]
