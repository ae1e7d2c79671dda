"""The backup set: one archive per backed-up filesystem, a MANIFEST of every archived entry, and their checksums.

Archives: GNU tar, pax format, numeric owners, xattrs (all namespaces), ACLs, SELinux labels, sparse files, hard
links, device nodes, one file system, piped through ``zstd -T0``.  Python sits between tar and zstd: it counts
the bytes (progress) and parses the tar stream as it passes (:mod:`recovery_env.tarstream`, in a thread of its
own), so the MANIFEST lists exactly what the archive holds; zstd writes the archive file itself and a thread
hashes it (SHA-256) as it grows.  The restore's decompressor reads the archive file itself too.

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

When a path appears twice (a mount point directory in the parent filesystem, then the root of the filesystem
mounted on it), the later entry is the one that is visible after a restore, and the one verified.

The MANIFEST's SHA-256 and each archive's size and SHA-256 go into the descriptor ([BACKUP], [ARCHIVES]); the
restore checks them with :func:`check_backup_set` before it touches a disk and verifies the restored tree with
:func:`verify_manifest`.

The capture checks (check_root, find_sources, check_destination, check_space) live here too, so the offline
capture in the boot media runs the same ones.  Standard library only: this module runs in the boot media too.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from recovery_env.errors import (
    BackupSetError,
    DestinationError,
    InsufficientSpaceError,
    LayoutError,
    NotRootError,
)
from recovery_env.model.descriptor import Archive, BackupSet, Compression, FsType
from recovery_env.model.fileattrs import (
    describe_xattrs,
    pax_xattrs,
    read_xattrs,
    whole_seconds,
    whole_seconds_ns,
    xattr_digest,
)
from recovery_env.probe.disks import find_holding_devices, format_size
from recovery_env.probe.layout import DiskFacts, Layout
from recovery_env.run import run, run_feed, run_pipe
from recovery_env.tarstream import TarMember, TarStreamParser

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
# Plan (pure)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveJob:
    """One archive to make: tar of ``source`` (the filesystem mounted at ``mountpoint`` of the captured system)."""

    fs: str  # Filesystem.key
    mountpoint: str  # in the captured system, e.g. "/boot/efi"
    source: str  # directory on this machine, e.g. "/mnt/sys/boot/efi"
    file: str  # archive file name in the set
    tar_argv: tuple[str, ...]
    filter_argv: tuple[str, ...] | None
    estimate: int  # bytes of data expected (for progress)


def plan_tar_argv(source: str, mountpoint: str, excludes: Sequence[str], exclude_dirs: Sequence[str] = ()) -> tuple[
        str, ...]:
    """tar argv for one filesystem.  Members are named ``./rel/path``.  A pattern starting with "/" is a path in
    the captured system: it applies (anchored) only to the filesystem that holds it.  Other patterns are tar's
    unanchored wildcards (e.g. ``*.cache``).  ``exclude_dirs`` are absolute directories in the captured system
    left out as they are (the backup destination)."""
    argv = ["tar", "--create", "--file=-", *TAR_ATTR_OPTIONS, "--one-file-system", f"--directory={source}"]
    anchored: list[str] = []
    loose: list[str] = []
    for pat in [*excludes, *exclude_dirs]:
        if pat.startswith("/"):
            rel = _relative_to_mount(pat.rstrip("/") or "/", mountpoint)
            if rel is not None and rel != ".":
                anchored.append("./" + rel)
        else:
            loose.append(pat)
    if anchored:
        argv += ["--anchored", *(f"--exclude={p}" for p in anchored), "--no-anchored"]
    argv += [f"--exclude={p}" for p in loose]
    argv.append(".")
    return tuple(argv)


def _relative_to_mount(path: str, mountpoint: str) -> str | None:
    if mountpoint == "/":
        return path.lstrip("/") or "."
    if path == mountpoint:
        return "."
    if path.startswith(mountpoint + "/"):
        return path[len(mountpoint) + 1:]
    return None


def plan_archive_name(fs_key: str, compression: Compression) -> str:
    return f"{fs_key}{compression.suffix}"


def plan_archives(
    sources: Sequence[tuple[str, str, str, int]],
    *,
    excludes: Sequence[str] = (),
    exclude_dirs: Sequence[str] = (),
    compression: Compression = Compression.ZSTD,
) -> tuple[ArchiveJob, ...]:
    """``sources``: (fs key, mount point, source directory, estimated bytes), in mount order → archive jobs."""
    jobs = []
    for fs_key, mountpoint, source, estimate in sources:
        jobs.append(ArchiveJob(
            fs=fs_key,
            mountpoint=mountpoint,
            source=source,
            file=plan_archive_name(fs_key, compression),
            tar_argv=plan_tar_argv(source, mountpoint, excludes, exclude_dirs),
            filter_argv=COMPRESSORS[compression],
            estimate=estimate,
        ))
    return tuple(jobs)


def plan_extract(archive: Path, target: Path, compression: Compression) -> tuple[tuple[str, ...], ...]:
    """The chain that extracts an archive into ``target``: (decompressor,) + tar -x; fed the archive's bytes."""
    tar = ("tar", "--extract", "--file=-", *TAR_EXTRACT_OPTIONS, f"--directory={target}")
    dec = DECOMPRESSORS[compression]
    return (dec, tar) if dec is not None else (tar,)


# --------------------------------------------------------------------------------------------------------------
# Make (thin executors)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    archives: tuple[Archive, ...]
    manifest: str  # file name
    manifest_sha256: str
    file_count: int
    raw_bytes: int  # tar bytes before compression
    warnings: tuple[str, ...] = ()


def make_backup_set(
    jobs: Sequence[ArchiveJob],
    dest: Path,
    *,
    progress: Progress | None = None,
) -> BackupResult:
    """Make every archive of ``jobs`` in ``dest`` and the MANIFEST; return the records for the descriptor."""
    total = sum(j.estimate for j in jobs) or 1
    done = 0
    archives = []
    warnings: list[str] = []
    count = 0
    manifest_path = dest / MANIFEST_NAME
    # names and xattr names that are not UTF-8 are kept as their bytes (surrogate escapes), as read_manifest reads
    with open(manifest_path, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as manifest:
        manifest.write(json.dumps(MANIFEST_HEADER) + "\n")
        for job in jobs:
            base = done

            def tick(n: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + n, max(total, base + n))

            archive, raw, n_entries, warn = make_archive(job, dest, manifest, tick)
            archives.append(archive)
            done = base + raw
            count += n_entries
            warnings += warn
    if progress is not None:
        progress(done, max(done, 1))
    return BackupResult(tuple(archives), MANIFEST_NAME, sha256_file(manifest_path), count, done, tuple(warnings))


def make_archive(
    job: ArchiveJob, dest: Path, manifest: TextIO, tick: Callable[[int], None]
) -> tuple[Archive, int, int, list[str]]:
    """tar | zstd into dest/job.file; the tar stream is parsed on the way into MANIFEST lines."""
    lister = ManifestLister(job.fs, job.mountpoint, lambda e: manifest.write(e.to_json() + "\n"))
    parser = TarStreamParser(lister.add)
    raw = 0

    def on_data(chunk: memoryview) -> None:
        nonlocal raw
        parser.feed(chunk)
        raw += len(chunk)
        tick(raw)

    try:
        res = run_pipe(job.tar_argv, job.filter_argv, dest / job.file, on_data=on_data, ok_codes=TAR_OK_CODES)
        parser.close()
    except BackupSetError as e:
        raise BackupSetError(f"{job.file}: could not list the archive of {job.mountpoint}: {e}") from None
    warnings = []
    if res.returncode != 0:
        tail = " / ".join(res.stderr.strip().splitlines()[-3:])
        warnings.append(f"{job.mountpoint}: tar exit {res.returncode} (files changed while read): {tail}")
    return Archive(job.fs, job.file, res.out_bytes, res.sha256, lister.count), raw, lister.count, warnings


class ManifestLister:
    """Tar members → MANIFEST entries of one archive (``add`` is a TarStreamParser's ``emit``)."""

    def __init__(self, fs: str, mountpoint: str, emit: Callable[[ManifestEntry], object]) -> None:
        self.fs = fs
        self.mountpoint = mountpoint
        self.emit = emit
        self.count = 0
        self.contents: dict[str, tuple[int, str]] = {}  # member name → (size, sha256) of files, for hard links
        # member name → (xattrs, acl) of the members that have any: a hard link's member carries none of its own
        self.attrs: dict[str, tuple[dict[str, str], dict[str, str]]] = {}

    def add(self, m: TarMember) -> None:
        etype = EntryType.from_tar_type(m.type, m.name)
        size, sha, link = m.size, m.sha256, ""
        where = f"archive entry {m.name!r}"
        if etype is EntryType.HARDLINK:
            size, sha = self.contents.get(m.linkname, (0, ""))
            link = member_path(self.mountpoint, m.linkname)
            xattrs, acl = self.attrs.get(m.linkname, ({}, {}))
        else:
            xattrs, acl = describe_xattrs(pax_xattrs(m.pax, where), where)
            if xattrs or acl:
                self.attrs[m.name] = (xattrs, acl)
            if etype is EntryType.FILE:
                self.contents[m.name] = (size, sha)
            elif etype is EntryType.SYMLINK:
                link = m.linkname
        mtime = whole_seconds(m.mtime, where)
        self.count += 1
        self.emit(ManifestEntry(
            path=member_path(self.mountpoint, m.name),
            fs=self.fs,
            type=etype,
            mode=m.mode & 0o7777,
            uid=m.uid,
            gid=m.gid,
            mtime=mtime,
            size=size if etype.has_content else 0,
            sha256=sha,
            link=link,
            major=m.devmajor,
            minor=m.devminor,
            sparse=m.sparse,
            xattrs=xattrs,
            acl=acl,
        ))


def iter_tar_entries(stream: BinaryIO, fs: str, mountpoint: str) -> Iterator[ManifestEntry]:
    """Parse a tar stream (pax, as made by plan_tar_argv) into manifest entries with content digests."""
    entries: list[ManifestEntry] = []
    parser = TarStreamParser(ManifestLister(fs, mountpoint, entries.append).add)
    while chunk := stream.read(1 << 20):
        parser.feed(chunk)
        yield from entries
        entries.clear()
    parser.close()
    yield from entries


def member_path(mountpoint: str, name: str) -> str:
    """Archive member name ("./etc/x", ".") → absolute path in the captured system."""
    rel = name[2:] if name.startswith("./") else ("" if name == "." else name.lstrip("/"))
    rel = rel.rstrip("/")
    if not rel:
        return mountpoint
    return ("" if mountpoint == "/" else mountpoint) + "/" + rel


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_backup_record(
    result: BackupResult, *, path: str, media_label: str = "", media_uuid: str = "",
    compression: Compression = Compression.ZSTD,
) -> BackupSet:
    return BackupSet(
        media_label=media_label,
        media_uuid=media_uuid,
        path=path,
        compression=compression,
        manifest=result.manifest,
        manifest_sha256=result.manifest_sha256,
        file_count=result.file_count,
        archives=result.archives,
    )


# --------------------------------------------------------------------------------------------------------------
# Check and verify (restore side)
# --------------------------------------------------------------------------------------------------------------


def check_backup_set(directory: Path, backup: BackupSet) -> None:
    """Every archive and the MANIFEST are there with their recorded size and SHA-256; else BackupSetError."""
    problems = []
    for name, size, sha in [(a.file, a.size, a.sha256) for a in backup.archives] + [
            (backup.manifest, -1, backup.manifest_sha256)]:
        p = directory / name
        if not p.is_file():
            problems.append(f"{name}: missing")
            continue
        if size >= 0 and p.stat().st_size != size:
            problems.append(f"{name}: {p.stat().st_size} bytes, expected {size}")
            continue
        actual = sha256_file(p)
        if actual != sha:
            problems.append(f"{name}: SHA-256 {actual}, expected {sha}")
    if problems:
        raise BackupSetError(f"backup set {directory} is damaged or incomplete:\n  " + "\n  ".join(problems))


def extract_archive(
    archive: Path, target: Path, compression: Compression, *, expected_sha256: str = "",
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Extract an archive into ``target`` with GNU tar (the options it was made with): the decompressor (or tar)
    reads the archive file itself, ``on_progress`` gets the bytes of it read so far.  ``expected_sha256``, when
    given, is checked first, before anything is written (the restore checks the whole set with
    :func:`check_backup_set` beforehand and passes none).  Return the archive's bytes read."""
    if expected_sha256:
        actual = sha256_file(archive)
        if actual != expected_sha256:
            raise BackupSetError(f"{archive}: SHA-256 {actual}, expected {expected_sha256}: not extracted")
    return run_feed(plan_extract(archive, target, compression), archive, on_progress=on_progress)


def read_manifest(path: Path) -> tuple[ManifestEntry, ...]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    if not lines:
        raise BackupSetError(f"{path}: empty manifest")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise BackupSetError(f"{path} line 1: not a manifest header: {e}") from e
    if not isinstance(header, dict) or header.get("format") != MANIFEST_HEADER["format"] or set(header) != set(
            MANIFEST_HEADER) or header.get("version") not in MANIFEST_VERSIONS:
        raise BackupSetError(f"{path} line 1: header {header!r}, expected {MANIFEST_HEADER!r} (versions "
                             f"{', '.join(map(str, MANIFEST_VERSIONS))} are read)")
    version = int(header["version"])
    return tuple(ManifestEntry.from_json(line, f"{path} line {n}", version)
                 for n, line in enumerate(lines[1:], 2) if line)


@dataclass(frozen=True)
class Difference:
    path: str
    what: str  # missing, type, mode, uid, gid, size, sha256, link, device, mtime, xattrs, hardlink
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what} is {self.actual}, expected {self.expected}"


def verify_manifest(root: Path, manifest: Path, *, check_mtime: bool = True) -> list[Difference]:
    """Compare the tree under ``root`` (the restored system) with every MANIFEST entry; [] when all match."""
    entries: dict[str, ManifestEntry] = {}
    for e in read_manifest(manifest):
        entries.pop(e.path, None)
        entries[e.path] = e  # the later entry (a mounted filesystem's root) is the visible one
    diffs: list[Difference] = []
    for e in entries.values():
        diffs += verify_entry(root, e, check_mtime=check_mtime)
    return diffs


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


def read_entry(path: Path, e: ManifestEntry, st: os.stat_result) -> ManifestEntry:
    """The restored ``path`` as the MANIFEST entry ``e`` would record it: the same fields, normalised as the capture
    normalises the tar members (the SHA-256 of the content is left for verify_entry to compute when needed)."""
    raw = read_xattrs(path)
    xattrs, acl = describe_xattrs(raw, e.path)
    if e.acl is None:  # a version 1 MANIFEST: the ACLs were digests among the xattrs
        xattrs = {name: xattr_digest(value) for name, value in raw.items()}
    return ManifestEntry(
        path=e.path, fs=e.fs, type=e.type, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        mtime=whole_seconds_ns(st.st_mtime_ns), size=st.st_size if e.type.has_content else 0,
        link=os.readlink(path) if e.type is EntryType.SYMLINK else e.link,
        major=os.major(st.st_rdev), minor=os.minor(st.st_rdev), sparse=e.sparse, xattrs=xattrs,
        acl=acl if e.acl is not None else None,
    )


def verify_entry(root: Path, e: ManifestEntry, *, check_mtime: bool = True) -> list[Difference]:
    p = root / e.path.lstrip("/")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return [Difference(e.path, "missing", e.type.value, "absent")]
    if not e.type.matches_mode(st.st_mode):
        return [Difference(e.path, "type", e.type.value, oct(stat.S_IFMT(st.st_mode)))]
    try:
        actual = read_entry(p, e, st)
    except BackupSetError as err:
        return [Difference(e.path, "acl", "a POSIX ACL", str(err))]
    out: list[Difference] = []
    for what, applies, value in COMPARED:
        if not applies(e.type) or (what == "mtime" and not check_mtime):
            continue
        expected, got = value(e), value(actual)
        if expected != got:
            out.append(Difference(e.path, what, str(expected), str(got)))
    if e.type.has_content and st.st_size == e.size:
        sha = sha256_file(p)
        if sha != e.sha256:
            out.append(Difference(e.path, "sha256", e.sha256, sha))
    if e.type is EntryType.HARDLINK:
        try:
            other = os.lstat(root / e.link.lstrip("/"))
            linked = (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev)
            if not linked:
                out.append(Difference(e.path, "hardlink", f"same inode as {e.link}", f"not linked to {e.link}"))
        except FileNotFoundError:
            out.append(Difference(e.path, "hardlink", f"same inode as {e.link}", f"{e.link} absent"))
    return out


# --------------------------------------------------------------------------------------------------------------
# Capture checks: each raises a named CaptureRefused before anything is written
# --------------------------------------------------------------------------------------------------------------

# Compressed archive size ≈ used bytes × this (zstd -3 on system files is usually 0.35-0.5; 0.6 leaves room for
# less compressible data), plus a fixed margin for the MANIFEST, the descriptors and filesystem overhead.
COMPRESSION_ESTIMATE = 0.6
SPACE_MARGIN = 16 << 20


class SourceReader(StrEnum):
    """How the files of a backed-up filesystem are read."""

    MOUNTED = "mounted"  # through the directory it is mounted at (the normal case)
    MTOOLS = "mtools"  # a FAT filesystem in fstab but not mounted: read with mtools into a staging directory

    @property
    def describe(self) -> str:
        return {"mounted": "read where it is mounted", "mtools": "not mounted: read with mtools (fallback)"}[
            self.value]


@dataclass(frozen=True)
class Source:
    fs: str
    mountpoint: str
    directory: Path
    device: str
    used_bytes: int
    reader: SourceReader = SourceReader.MOUNTED
    options: str = ""  # the fstab options (the FAT fallback derives modes and owners from them)


def check_root(euid: int) -> None:
    if euid != 0:
        raise NotRootError(f"asr backup must run as root (effective uid is {euid}): it reads every file of the "
                           "system and the disks' partition tables")


def find_sources(layout: Layout, root: Path, *, fat_fallback: bool = True) -> tuple[Source, ...]:
    """The directory each backed-up filesystem is mounted at under ``root``; refuse one that is not mounted.

    The one exception (``fat_fallback``): a vfat filesystem that fstab lists but that is not mounted (a host
    kernel without vfat cannot mount it) is read with mtools from its device (:data:`SourceReader.MTOOLS`)."""
    out = []
    for m in layout.mounts:
        fs = next(f for f in layout.filesystems if f.key == m.filesystem)
        if not fs.backup:
            continue
        node = layout.devices[fs.key]
        directory = root / m.mountpoint.lstrip("/")
        if not _is_mounted_from(directory, node):
            if fat_fallback and fs.type is FsType.VFAT and not os.path.ismount(directory):
                out.append(Source(fs.key, m.mountpoint, directory, node, read_device_size(node),
                                  SourceReader.MTOOLS, m.options))
                continue
            raise LayoutError(
                f"{m.mountpoint} ({fs.key}, {fs.type.value} on {node}) is not mounted at {directory}: mount it "
                "there before the capture"
            )
        st = os.statvfs(directory)
        out.append(Source(fs.key, m.mountpoint, directory, node, (st.f_blocks - st.f_bfree) * st.f_frsize))
    return tuple(out)


def read_device_size(node: str, sys_root: Path = Path("/sys")) -> int:
    """Bytes of a block device from sysfs (the used-bytes estimate of a FAT source read with mtools)."""
    try:
        return int((sys_root / "class" / "block" / os.path.basename(os.path.realpath(node)) / "size")
                   .read_text()) * 512
    except (OSError, ValueError):
        return 0


# --------------------------------------------------------------------------------------------------------------
# The FAT fallback: a vfat filesystem that is not mounted, read with mtools
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FatView:
    """What a Linux vfat mount with given options shows for each file: modes, owner (FAT stores none of them)."""

    file_mode: int
    dir_mode: int
    uid: int
    gid: int
    showexec: bool = False

    def mode_of(self, name: str, is_dir: bool) -> int:
        if is_dir:
            return self.dir_mode
        if self.showexec and not name.upper().endswith((".EXE", ".COM", ".BAT")):
            return self.file_mode & ~0o111
        return self.file_mode


def plan_fat_view(options: str, default_umask: int = 0o022) -> FatView:
    """The modes and owner a vfat mount with fstab ``options`` gives (kernel rules: umask sets both masks,
    fmask/dmask override, octal values; uid/gid default 0).  Pure."""
    opts: dict[str, str] = {}
    flags: set[str] = set()
    for o in options.split(","):
        k, sep, v = o.partition("=")
        if sep:
            opts[k] = v
        else:
            flags.add(k)

    def octal(key: str, default: int) -> int:
        try:
            return int(opts[key], 8) if key in opts else default
        except ValueError:
            raise BackupSetError(f"vfat option {key}={opts[key]!r}: not an octal mask") from None

    def number(key: str) -> int:
        try:
            return int(opts.get(key, "0"))
        except ValueError:
            raise BackupSetError(f"vfat option {key}={opts[key]!r}: not a number") from None

    umask = octal("umask", default_umask)
    return FatView(0o777 & ~octal("fmask", umask), 0o777 & ~octal("dmask", umask), number("uid"), number("gid"),
                   "showexec" in flags)


def stage_fat_source(source: Source, staging: Path) -> Path:
    """Copy every file of an unmounted FAT filesystem into ``staging`` with mtools (``mcopy -s -m``: the real
    reader of the real filesystem, keeping mtimes), then give each entry the mode and owner a mount with the
    fstab options shows, and the root directory the time a FAT root shows (0: it has no directory entry).
    Returns ``staging``, the directory to archive in place of the mount point."""
    view = plan_fat_view(source.options)
    staging.mkdir(parents=True, exist_ok=True)
    # TZ=UTC: FAT stores local times; the rescue kernel reads them as UTC (sys_tz 0), so mtools must too
    listing = run(["mdir", "-b", "-i", source.device, "::/"], check=False, env={"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"})
    if listing.returncode == 0 and listing.stdout.strip():
        run(["mcopy", "-s", "-m", "-n", "-Q", "-i", source.device, "::/*", str(staging)],
            env={"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"})
    elif listing.returncode != 0:
        raise BackupSetError(f"{source.mountpoint} ({source.fs}): mtools cannot read {source.device}: "
                             f"{listing.stderr.strip()}")
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.chown(p, view.uid, view.gid, follow_symlinks=False)
            os.chmod(p, view.mode_of(name, True))
        for name in filenames:
            p = os.path.join(dirpath, name)
            os.chown(p, view.uid, view.gid, follow_symlinks=False)
            os.chmod(p, view.mode_of(name, False))
    os.chown(staging, view.uid, view.gid)
    os.chmod(staging, view.dir_mode)
    os.utime(staging, (0, 0))
    return staging


def _is_mounted_from(directory: Path, node: str) -> bool:
    try:
        return os.stat(directory).st_dev == os.stat(node).st_rdev != 0
    except OSError:
        return False


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_destination(dest: Path, layout: Layout, facts: Sequence[DiskFacts]) -> None:
    """DIR must be empty and on no filesystem of a critical disk and on no backed-up filesystem."""
    if dest.exists():
        if not dest.is_dir():
            raise DestinationError(f"{dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise DestinationError(f"{dest} is not empty: give a new or empty directory for the backup set")
    where = _existing_ancestor(dest)
    dev = os.stat(where).st_dev
    # what DIR depends on: its filesystem's device and, through loop devices (a backing file on a captured
    # filesystem, nested loops too), MD, device-mapper and btrfs, every device under it
    under = find_holding_devices(str(where))
    under.setdefault(f"{os.major(dev)}:{os.minor(dev)}", f"holds {where}")
    part_of = {p.key: p for p in layout.partitions}
    disks = {d.key: d for d in layout.disks}
    for fs in layout.filesystems:
        node = layout.devices.get(fs.key, "")
        try:
            rdev = os.stat(node).st_rdev if node else 0
        except OSError:
            continue
        held = under.get(f"{os.major(rdev)}:{os.minor(rdev)}") if rdev else None
        if held is None:
            continue
        disk = disks[part_of[fs.partition].disk]
        mp = layout.mountpoint_of(fs.key) or "not in fstab"
        if disk.critical or fs.backup:
            why = (f"a filesystem of critical disk {disk.device} ({disk.key}) that restore re-creates"
                   if disk.critical else "a filesystem that is backed up")
            via = f"; through loop devices: {node} {held}" if "(behind " in held else ""
            raise DestinationError(f"{dest} is on {node} ({fs.key}, {mp}), {why}{via}: put the backup on another disk")
    del facts  # the layout holds what is needed; facts kept in the signature for the offline capture


def estimate_size(sources: Sequence[Source]) -> int:
    return int(sum(s.used_bytes for s in sources) * COMPRESSION_ESTIMATE) + SPACE_MARGIN


def check_space(dest: Path, sources: Sequence[Source]) -> int:
    need = estimate_size(sources)
    st = os.statvfs(_existing_ancestor(dest))
    free = st.f_bavail * st.f_frsize
    if free < need:
        used = sum(s.used_bytes for s in sources)
        raise InsufficientSpaceError(
            f"{dest}: {format_size(free)} free, the backup needs about {format_size(need)} "
            f"({format_size(used)} used on {', '.join(s.mountpoint for s in sources)} × {COMPRESSION_ESTIMATE} "
            f"+ {format_size(SPACE_MARGIN)})"
        )
    return need

