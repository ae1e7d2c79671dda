"""Writing the backup set: one archive per backed-up filesystem and the MANIFEST (the format:
:mod:`recovery_env.model.manifest`).

Python sits between tar and zstd: it counts the bytes (progress) and parses the tar stream as it passes
(:mod:`recovery_env.capture.tarstream`, in a thread of its own), so the MANIFEST lists exactly what the archive
holds; zstd writes the archive file itself and a thread hashes it (SHA-256) as it grows.  The plans
(:func:`plan_tar_argv`, :func:`plan_archives`) are pure; :func:`make_backup_set` runs them.

A running system (``asr backup`` of ``/``) changes files while tar reads them.  GNU tar then archives what it
read, says so on stderr and exits 1; :func:`parse_tar_changes` turns each of those lines into a
:class:`ChangedWhileRead` (the file, its filesystem, what happened), listed in the result and in ``--json``.  The
set stays consistent: the MANIFEST is made from the archive's own stream, so its sums are those of what was
archived (a file that shrank is archived padded with zeros to the size tar saw first, a file removed before it was
read is in neither).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, TextIO

from recovery_env.capture.tarstream import TarMember, TarStreamParser
from recovery_env.errors import (
    BackupSetError,
)
from recovery_env.model.descriptor import Archive, BackupSet, Compression
from recovery_env.model.fileattrs import (
    describe_xattrs,
    pax_xattrs,
    whole_seconds,
)
from recovery_env.model.manifest import (
    COMPRESSORS,
    MANIFEST_HEADER,
    MANIFEST_NAME,
    TAR_ATTR_OPTIONS,
    TAR_OK_CODES,
    EntryType,
    ManifestEntry,
    Progress,
    plan_archive_name,
    sha256_file,
)
from recovery_env.run import run_pipe


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


def plan_tar_argv(source: str, mountpoint: str, excludes: Sequence[str], exclude_dirs: Sequence[str] = (), *,
                  top_level: Sequence[tuple[str, str]] | None = None) -> tuple[str, ...]:  # fmt: skip
    """tar argv for one filesystem.  Members are named ``./rel/path``.  A pattern starting with "/" is a path in
    the captured system: it applies (anchored) only to the filesystem that holds it.  Other patterns are tar's
    unanchored wildcards (e.g. ``*.cache``).  ``exclude_dirs`` are absolute directories in the captured system
    left out as they are (the backup destination).

    ``top_level``: ``source`` is the top level of a btrfs filesystem, mounted privately (nothing is mounted below
    it), archived whole: tar crosses into its subvolumes (each has a device number of its own: no
    ``--one-file-system``), and an anchored pattern is placed through the filesystem's mounts, given as (mount
    point, subvolume path) pairs ("/home/u/cache" with @home at /home → ``./@home/u/cache``)."""
    one_fs = ("--one-file-system",) if top_level is None else ()
    argv = ["tar", "--create", "--file=-", *TAR_ATTR_OPTIONS, *one_fs, f"--directory={source}"]
    anchored: list[str] = []
    loose: list[str] = []
    for pat in [*excludes, *exclude_dirs]:
        if pat.startswith("/"):
            path = pat.rstrip("/") or "/"
            rel = _relative_to_mount(path, mountpoint) if top_level is None else _relative_to_top(path, top_level)
            if rel is not None and rel != ".":
                anchored.append("./" + rel)
        else:
            loose.append(pat)
    if anchored:
        argv += ["--anchored", *(f"--exclude={p}" for p in anchored), "--no-anchored"]
    argv += [f"--exclude={p}" for p in loose]
    argv.append(".")
    return tuple(argv)


def _relative_to_top(path: str, mounts: Sequence[tuple[str, str]]) -> str | None:
    """Where ``path`` of the captured system lies in a top level, through the deepest of its ``mounts``."""
    held = [(mp, sub, rel) for mp, sub in mounts if (rel := _relative_to_mount(path, mp)) is not None]
    if not held:
        return None
    _, sub, rel = max(held, key=lambda h: len(h[0]))
    return "/".join(p for p in (sub, "" if rel == "." else rel) if p) or "."


def _relative_to_mount(path: str, mountpoint: str) -> str | None:
    if mountpoint == "/":
        return path.lstrip("/") or "."
    if path == mountpoint:
        return "."
    if path.startswith(mountpoint + "/"):
        return path[len(mountpoint) + 1:]
    return None


def plan_archives(
    sources: Sequence[tuple[str, str, str, int]],
    *,
    excludes: Sequence[str] = (),
    exclude_dirs: Sequence[str] = (),
    compression: Compression = Compression.ZSTD,
    top_levels: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> tuple[ArchiveJob, ...]:
    """``sources``: (fs key, mount point, source directory, estimated bytes), in mount order → archive jobs.
    ``top_levels``: fs key → (mount point, subvolume path) pairs of each btrfs source that is its filesystem's
    whole top level (see :func:`plan_tar_argv`)."""
    tops = top_levels or {}
    jobs = []
    for fs_key, mountpoint, source, estimate in sources:
        jobs.append(ArchiveJob(
            fs=fs_key,
            mountpoint=mountpoint,
            source=source,
            file=plan_archive_name(fs_key, compression),
            tar_argv=plan_tar_argv(source, mountpoint, excludes, exclude_dirs, top_level=tops.get(fs_key)),
            filter_argv=COMPRESSORS[compression],
            estimate=estimate,
        ))
    return tuple(jobs)


#: tar runs in the C locale: its diagnostics (parsed by parse_tar_changes) are not translated, and the names in
#: them are quoted the same way everywhere (octal escapes for bytes outside ASCII).
TAR_ENV = {"LC_ALL": "C"}


class ReadChange(StrEnum):
    """What GNU tar reports about a file that changed while it was archived (it exits 1 and goes on)."""

    CHANGED = "changed"  # "file changed as we read it": archived as read (a directory: its entries as listed)
    SHRANK = "shrank"  # "File shrank by N bytes; padding with zeros": archived padded to the size first seen
    REMOVED = "removed"  # "File removed before we read it": not in the archive

    @property
    def consequence(self) -> str:
        return {
            "changed": "archived as it was read",
            "shrank": "archived padded with zeros to the size tar first saw",
            "removed": "not in the archive",
        }[self.value]


@dataclass(frozen=True)
class ChangedWhileRead:
    """One file of a running system that changed while tar read it (the capture's named warning)."""

    path: str  # absolute in the captured system
    fs: str  # Filesystem.key
    change: ReadChange
    tar_says: str  # tar's own line

    def describe(self) -> str:
        return (f"{self.path} ({self.fs}) {self.change.value} while read: {self.change.consequence}; the MANIFEST "
                f"lists what was archived (tar: {self.tar_says})")

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "fs": self.fs, "change": self.change.value, "tar": self.tar_says}


_TAR_CHANGE_RE = re.compile(
    r"^tar: (?P<name>.+): (?:(?P<changed>file changed as we read it)|(?P<shrank>File shrank by \d+ bytes?; "
    r"padding with zeros)|(?P<removed>File removed before we read it))$"
)
_TAR_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}


def unquote_tar_name(quoted: str) -> str:
    """A name as GNU tar quotes it in a diagnostic in the C locale (``\\ooo`` for a byte outside ASCII, ``\\n``,
    ``\\\\``, ``\\:``) → the member name (UTF-8, undecodable bytes as surrogate escapes, as the MANIFEST has it)."""
    out = bytearray()
    i = 0
    while i < len(quoted):
        c = quoted[i]
        if c != "\\" or i + 1 == len(quoted):
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = quoted[i + 1]
        octal = re.match(r"[0-7]{1,3}", quoted[i + 1 : i + 4])
        if octal:
            out.append(int(octal.group(0), 8) & 0xFF)
            i += 1 + len(octal.group(0))
        else:
            out += bytes([_TAR_ESCAPES[nxt]]) if nxt in _TAR_ESCAPES else nxt.encode("utf-8", "surrogateescape")
            i += 2
    return out.decode("utf-8", "surrogateescape")


def parse_tar_changes(stderr: str, fs: str, mountpoint: str) -> tuple[tuple[ChangedWhileRead, ...], tuple[str, ...]]:
    """tar's stderr (C locale) → (the files that changed while read, the other lines).  Pure."""
    changes: list[ChangedWhileRead] = []
    other: list[str] = []
    for line in stderr.splitlines():
        m = _TAR_CHANGE_RE.match(line)
        if m is None:
            if line.strip() and line != "tar: Exiting with failure status due to previous errors":
                other.append(line)
            continue
        change = next(ReadChange(k) for k in ("changed", "shrank", "removed") if m.group(k))
        path = member_path(mountpoint, unquote_tar_name(m.group("name")))
        changes.append(ChangedWhileRead(path, fs, change, line.removeprefix("tar: ")))
    return tuple(changes), tuple(other)


@dataclass(frozen=True)
class BackupResult:
    archives: tuple[Archive, ...]
    manifest: str  # file name
    manifest_sha256: str
    file_count: int
    raw_bytes: int  # tar bytes before compression
    warnings: tuple[str, ...] = ()
    raw_by_fs: tuple[tuple[str, int], ...] = ()  # (filesystem key, its tar stream's bytes), in job order
    changed: tuple[ChangedWhileRead, ...] = ()  # files of a running system that changed while read


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
    changed: list[ChangedWhileRead] = []
    count = 0
    raw_by_fs: list[tuple[str, int]] = []
    manifest_path = dest / MANIFEST_NAME
    # names and xattr names that are not UTF-8 are kept as their bytes (surrogate escapes), as read_manifest reads
    with open(manifest_path, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as manifest:
        manifest.write(json.dumps(MANIFEST_HEADER) + "\n")
        for job in jobs:
            base = done

            def tick(n: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + n, max(total, base + n))

            made = make_archive(job, dest, manifest, tick)
            archives.append(made.archive)
            raw_by_fs.append((job.fs, made.raw_bytes))
            done = base + made.raw_bytes
            count += made.archive.entries
            changed += made.changed
            warnings += [c.describe() for c in made.changed] + list(made.warnings)
    if progress is not None:
        progress(done, max(done, 1))
    return BackupResult(tuple(archives), MANIFEST_NAME, sha256_file(manifest_path), count, done, tuple(warnings),
                        raw_by_fs=tuple(raw_by_fs), changed=tuple(changed))


@dataclass(frozen=True)
class MadeArchive:
    archive: Archive
    raw_bytes: int  # tar bytes before compression
    changed: tuple[ChangedWhileRead, ...]  # what tar said changed while it read
    warnings: tuple[str, ...]  # anything else tar said when it exited 1


def make_archive(job: ArchiveJob, dest: Path, manifest: TextIO, tick: Callable[[int], None]) -> MadeArchive:
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
        res = run_pipe(job.tar_argv, job.filter_argv, dest / job.file, on_data=on_data, ok_codes=TAR_OK_CODES,
                       env=TAR_ENV)
        parser.close()
    except BackupSetError as e:
        raise BackupSetError(f"{job.file}: could not list the archive of {job.mountpoint}: {e}") from None
    changed: tuple[ChangedWhileRead, ...] = ()
    warnings: tuple[str, ...] = ()
    if res.returncode != 0:
        changed, other = parse_tar_changes(res.stderr, job.fs, job.mountpoint)
        if other or not changed:
            tail = " / ".join(other[-3:] or res.stderr.strip().splitlines()[-3:])
            warnings = (f"{job.mountpoint}: tar exit {res.returncode}: {tail}",)
    archive = Archive(job.fs, job.file, res.out_bytes, res.sha256, lister.count)
    return MadeArchive(archive, raw, changed, warnings)


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
