"""The restore's side of the backup set: check every archive and the MANIFEST against the descriptor before any
disk is touched (:func:`check_backup_set`), extract an archive (:func:`plan_extract`, :func:`extract_archive`), and
verify the restored tree entry by entry (:func:`verify_manifest`) with the comparison the model defines once for
both sides (:data:`recovery_env.model.manifest.COMPARED`).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from recovery_env.errors import (
    BackupSetError,
)
from recovery_env.model.descriptor import BackupSet, Compression
from recovery_env.model.fileattrs import (
    describe_xattrs,
    read_xattrs,
    whole_seconds_ns,
    xattr_digest,
)
from recovery_env.model.manifest import (
    COMPARED,
    DECOMPRESSORS,
    MANIFEST_HEADER,
    MANIFEST_VERSIONS,
    TAR_EXTRACT_OPTIONS,
    EntryType,
    ManifestEntry,
    sha256_file,
)
from recovery_env.run import run_feed


def plan_extract(archive: Path, target: Path, compression: Compression) -> tuple[tuple[str, ...], ...]:
    """The chain that extracts an archive into ``target``: (decompressor,) + tar -x; fed the archive's bytes."""
    tar = ("tar", "--extract", "--file=-", *TAR_EXTRACT_OPTIONS, f"--directory={target}")
    dec = DECOMPRESSORS[compression]
    return (dec, tar) if dec is not None else (tar,)


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


@dataclass(frozen=True)
class Difference:
    path: str
    what: str  # missing, type, mode, uid, gid, size, sha256, link, device, mtime, xattrs, hardlink
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what} is {self.actual}, expected {self.expected}"


def verify_manifest(root: Path, manifest: Path, *, check_mtime: bool = True, filesystems: Collection[str] = (),
                    skip: Collection[str] = ()) -> list[Difference]:  # fmt: skip
    """Compare the tree under ``root`` (the restored system) with every MANIFEST entry; [] when all match.
    ``filesystems``: only the entries of these (all when empty); ``skip``: none of these (a btrfs filesystem's
    entries are compared on its top level, where their paths are)."""
    entries: dict[str, ManifestEntry] = {}
    for e in read_manifest(manifest):
        if (filesystems and e.fs not in filesystems) or e.fs in skip:
            continue
        entries.pop(e.path, None)
        entries[e.path] = e  # the later entry (a mounted filesystem's root) is the visible one
    diffs: list[Difference] = []
    for e in entries.values():
        diffs += verify_entry(root, e, check_mtime=check_mtime)
    return diffs
