"""The backup set's format: one archive per backed-up filesystem, a MANIFEST of every archived entry, and their
checksums.  Written by :mod:`recovery_env.capture.archive`, checked and verified by
:mod:`recovery_env.restore.verify`; both read the definitions here (tar options both ways, compressors, entry
types, the MANIFEST entry and what a verification compares).

Archives: GNU tar, pax format, numeric owners, xattrs (all namespaces), ACLs, SELinux labels, sparse files, hard
links, device nodes, one file system, piped through ``zstd -T0``.

MANIFEST format (JSON lines, UTF-8, parseable with the standard library):

- line 1, a header: ``{"format": "asr-manifest", "version": 1}``;
- then one object per archived entry, in archive order, archives in mount order::

    {"path": "/etc/passwd", "fs": "fs2", "type": "file", "mode": 420, "uid": 0, "gid": 0, "size": 1234,
     "mtime": 1764118923, "sha256": "...", "xattrs": {"user.foo": "<sha256 of the value>"},
     "acl": {"access": "user::rw-,user:1000:r--,group::r--,mask::r--,other::r--"}}

  ``path`` is absolute in the captured system (mount point + path in the filesystem; "/boot/efi" for the root
  directory of the filesystem mounted there).  ``type`` is one of file, hardlink, dir, symlink, chr, blk, fifo.
  ``mode`` holds the permission bits (incl. setuid/setgid/sticky); ``mtime`` whole seconds (rounded down).
  file and hardlink have ``size`` and ``sha256`` (content; holes of sparse files read as zeros; ``"sparse":
  true`` marks them); symlink has ``link`` (its target); hardlink has ``link`` (the absolute path of the entry it
  shares an inode with); chr/blk have ``major`` and ``minor``.  ``xattrs`` (only when there are any) maps each
  extended attribute but the ACL ones (SELinux: security.selinux) to the SHA-256 of its value; ``acl`` (only when
  there is one) holds the access and/or default ACL (system.posix_acl_access/default) as getfacl's numeric
  entries.  A hard link's entry has its inode's xattrs and ACL (its tar member carries none).  What is recorded
  and compared, and how, is defined once for the capture and the verification (:mod:`recovery_env.model.fileattrs`,
  :data:`COMPARED`).  Version 1 (before "acl") kept the ACLs' digests in ``xattrs``; it is still read and
  verified that way.

A btrfs filesystem's archive (descriptor format 2) holds its whole top level: its entries' ``path`` is absolute in
that top level (``/@/etc/fstab``, ``/@home/u/x``; ``/`` is the top level itself), and the restore compares them
on the top level, before it mounts the subvolumes (:func:`recovery_env.restore.plan.plan_btrfs_top_level`).

When a path appears twice (a mount point directory in the parent filesystem, then the root of the filesystem
mounted on it), the later entry is the one that is visible after a restore, and the one verified.

The MANIFEST's SHA-256 and each archive's size and SHA-256 go into the descriptor ([BACKUP], [ARCHIVES]); the
restore checks them (:func:`recovery_env.restore.verify.check_backup_set`) before it touches a disk and verifies
the restored tree (:func:`recovery_env.restore.verify.verify_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from recovery_env.errors import (
    BackupSetError,
)
from recovery_env.model.descriptor import Compression

MANIFEST_NAME = "MANIFEST"
MANIFEST_VERSION = 2
MANIFEST_HEADER = {"format": "asr-manifest", "version": MANIFEST_VERSION}
MANIFEST_VERSIONS = (1, MANIFEST_VERSION)  # read; version 1 has no "acl": its ACLs are digests in "xattrs"
MANIFEST_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one encoder for every line

# The tar options of an archive and of its extraction: the same set both ways.
TAR_ATTR_OPTIONS: tuple[str, ...] = (
    "--format=pax",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--selinux",
    "--sparse",
)
TAR_EXTRACT_OPTIONS: tuple[str, ...] = (
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--selinux",
    "--sparse",
    "--preserve-permissions",
    "--same-owner",
)

# Compression → the filter argv of the archive, and the decompressor of the restore.
COMPRESSORS: dict[Compression, tuple[str, ...] | None] = {
    Compression.ZSTD: ("zstd", "-T0", "-3", "-q", "-c"),
    Compression.NONE: None,
}
DECOMPRESSORS: dict[Compression, tuple[str, ...] | None] = {
    Compression.ZSTD: ("zstd", "-d", "-q", "-c"),
    Compression.NONE: None,
}

# GNU tar exits 1 when a file changed while it was read (a live system): the archive is still complete.
TAR_OK_CODES = (0, 1)

Progress = Callable[[int, int], None]  # (bytes done, total estimate)


class EntryType(StrEnum):
    FILE = "file"
    HARDLINK = "hardlink"
    DIR = "dir"
    SYMLINK = "symlink"
    CHR = "chr"
    BLK = "blk"
    FIFO = "fifo"

    @property
    def has_content(self) -> bool:
        return self in (EntryType.FILE, EntryType.HARDLINK)

    @classmethod
    def from_tar_type(cls, typ: bytes, name: str) -> EntryType:
        try:
            return TAR_TYPES[typ]
        except KeyError:
            raise BackupSetError(f"archive entry {name!r}: unsupported tar type {typ!r}") from None

    def matches_mode(self, st_mode: int) -> bool:
        return STAT_TESTS[self](st_mode)


# tar type flags (regular, old regular, contiguous, old GNU sparse, hard link, directory, symlink, devices, fifo)
TAR_TYPES: dict[bytes, EntryType] = {
    b"0": EntryType.FILE,
    b"\0": EntryType.FILE,
    b"7": EntryType.FILE,
    b"S": EntryType.FILE,
    b"1": EntryType.HARDLINK,
    b"5": EntryType.DIR,
    b"2": EntryType.SYMLINK,
    b"3": EntryType.CHR,
    b"4": EntryType.BLK,
    b"6": EntryType.FIFO,
}
STAT_TESTS: dict[EntryType, Callable[[int], bool]] = {
    EntryType.FILE: stat.S_ISREG,
    EntryType.HARDLINK: stat.S_ISREG,
    EntryType.DIR: stat.S_ISDIR,
    EntryType.SYMLINK: stat.S_ISLNK,
    EntryType.CHR: stat.S_ISCHR,
    EntryType.BLK: stat.S_ISBLK,
    EntryType.FIFO: stat.S_ISFIFO,
}


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    fs: str
    type: EntryType
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    sha256: str = ""
    link: str = ""
    major: int = 0
    minor: int = 0
    sparse: bool = False
    xattrs: Mapping[str, str] = field(default_factory=dict)
    acl: Mapping[str, str] | None = field(default_factory=dict)  # None: a version 1 entry (ACLs in xattrs)

    def to_json(self) -> str:
        d: dict[str, Any] = {"path": self.path, "fs": self.fs, "type": self.type.value, "mode": self.mode,
                             "uid": self.uid, "gid": self.gid, "mtime": self.mtime}
        if self.type.has_content:
            d["size"] = self.size
            d["sha256"] = self.sha256
        if self.link:
            d["link"] = self.link
        if self.type in (EntryType.CHR, EntryType.BLK):
            d["major"], d["minor"] = self.major, self.minor
        if self.sparse:
            d["sparse"] = True
        if self.xattrs:
            d["xattrs"] = dict(sorted(self.xattrs.items()))
        if self.acl:
            d["acl"] = dict(sorted(self.acl.items()))
        return MANIFEST_JSON.encode(d)

    @classmethod
    def from_json(cls, line: str, where: str, version: int = MANIFEST_VERSION) -> ManifestEntry:
        try:
            d = json.loads(line)
            return cls(
                path=str(d["path"]), fs=str(d["fs"]), type=EntryType(d["type"]), mode=int(d["mode"]),
                uid=int(d["uid"]), gid=int(d["gid"]), mtime=int(d["mtime"]), size=int(d.get("size", 0)),
                sha256=str(d.get("sha256", "")), link=str(d.get("link", "")), major=int(d.get("major", 0)),
                minor=int(d.get("minor", 0)), sparse=bool(d.get("sparse", False)),
                xattrs={str(k): str(v) for k, v in d.get("xattrs", {}).items()},
                acl={str(k): str(v) for k, v in d.get("acl", {}).items()} if version >= 2 else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BackupSetError(f"{where}: not a manifest entry: {e}") from e


# --------------------------------------------------------------------------------------------------------------
# Names and digests of the set's files
# --------------------------------------------------------------------------------------------------------------


def plan_archive_name(fs_key: str, compression: Compression) -> str:
    return f"{fs_key}{compression.suffix}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# What a verification compares (recovery_env.restore.verify)
# --------------------------------------------------------------------------------------------------------------


# What the verification compares, once for every entry type: (what, applies to, the MANIFEST entry's value).  The
# restored path's value is the same field of read_entry()'s entry, made with the capture's normalisations.
COMPARED: tuple[tuple[str, Callable[[EntryType], bool], Callable[[ManifestEntry], object]], ...] = (
    ("mode", lambda t: t is not EntryType.SYMLINK, lambda e: oct(e.mode)),  # a symlink's mode is not kept by Linux
    ("uid", lambda t: True, lambda e: e.uid),
    ("gid", lambda t: True, lambda e: e.gid),
    ("size", lambda t: t.has_content, lambda e: e.size),
    ("link", lambda t: t is EntryType.SYMLINK, lambda e: e.link),
    ("device", lambda t: t in (EntryType.CHR, EntryType.BLK), lambda e: f"{e.major}:{e.minor}"),
    ("mtime", lambda t: True, lambda e: e.mtime),
    ("xattrs", lambda t: True, lambda e: dict(sorted(e.xattrs.items()))),
    ("acl", lambda t: True, lambda e: dict(sorted(e.acl.items())) if e.acl is not None else None),
)
