"""The Debian package set of the rescue environment: table, lock file, cache, verified fetch, .deb reader.

``PACKAGES`` lists every package the rescue environment is assembled from (kernel, busybox, Python, the restore
tools, their libraries, and the boot loader files the media need).  ``packages.lock`` at the top of the repo
records for each one the exact version, architecture, file name and SHA-256.  A build reads the lock, finds the
files in the cache (``~/.cache/asr/debs``; ``$ASR_CACHE/debs``; or an explicit directory), downloads what is
missing as ``NAME=VERSION`` with the host's ``apt-get download``, and verifies every hash.  A warm cache needs
no network.

The Debian archive moves: point releases and security updates replace .debs, and the old versions leave the
archive.  A pin the archive no longer offers is not fatal by default (:func:`fetch_packages`): the current
candidate of that package is taken instead (for the kernel, the image the ``linux-image-amd64`` candidate
depends on), its SHA-256 is checked against apt's own index, the move is reported (:class:`MovedPackage`), and
the set really used is recorded in the cache (``resolved/<SHA-256 of the lock>.json``, so the next build with
the same lock needs no network) and, by ``asr build``, next to the media (``asr-packages.json``, itself a lock
that ``asr build --lock`` accepts).  ``locked=True`` (``asr build --locked``, ``ASR_LOCKED=1``) refuses instead:
:class:`LockedPackagesMovedError` names every package that moved and the command that refreshes the lock.

The work of reading a package is cached beside the .debs, by content: ``extracted/<SHA-256 of the .deb>.members``
holds the data of a package's files uncompressed (read back lazily, file by file), so a build with a warm package
cache does no lzma decompression; ``pyc/`` holds compiled bytecode by (host bytecode magic, compiler, path,
source) digest (:func:`compile_pyc_cached`).

Refresh the lock (newest candidate versions of the host's apt): ``python -m builder.media.packages --update-lock``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import io
import json
import logging
import lzma
import marshal
import os
import re
import struct
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import IO

from recovery_env.errors import InputError, InternalError, MediaError, ToolError
from recovery_env.model.manifest import sha256_file
from recovery_env.run import run

log = logging.getLogger("asr.packages")

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_PATH = REPO_ROOT / "packages.lock"
LOCK_FORMAT = 1

#: The meta package through which the generic (not cloud) kernel is resolved when the lock is made.
KERNEL_META = "linux-image-amd64"

#: Every package of the rescue environment and the boot media.  Libraries are listed explicitly: the rootfs
#: assembler resolves the DT_NEEDED closure of the tools against exactly this set and names what is missing.
PACKAGES: tuple[str, ...] = (
    # kernel (the versioned linux-image-6.1.0-NN-amd64 is added through KERNEL_META)
    KERNEL_META,
    # shell and basic userland
    "busybox-static",
    # C runtime
    "libc6",
    "libgcc-s1",
    # Python 3.11 and the libraries of the interpreter and the extensions we ship
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "zlib1g",
    "libexpat1",
    "liblzma5",
    "libbz2-1.0",
    # partitioning and probing: sfdisk, wipefs, blkid, mkswap, lsblk, blockdev
    "fdisk",
    "util-linux",
    "libfdisk1",
    "libsmartcols1",
    "libreadline8",
    "libtinfo6",
    "libuuid1",
    "libblkid1",
    "libmount1",
    "libselinux1",
    "libpcre2-8-0",
    # file systems: ext4, vfat, xfs, btrfs
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
    "dosfstools",
    "xfsprogs",
    "libinih1",
    "liburcu8",
    "btrfs-progs",
    "libudev1",
    "liblzo2-2",
    # archives: GNU tar, zstd
    "tar",
    "libacl1",
    "zstd",
    "libzstd1",
    "liblz4-1",
    # boot loader installation in the restored system: grub-install for i386-pc and x86_64-efi
    "grub2-common",
    "grub-common",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "libdevmapper1.02.1",
    "libefiboot1",
    "libefivar1",
    # boot media (used by the ISO builder, not in the initramfs)
    "isolinux",
    "syslinux-common",
)


class PackageHashMismatch(MediaError):
    """A cached .deb does not have the SHA-256 recorded in packages.lock: damaged, truncated or replaced."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{path}: SHA-256 {actual} does not match packages.lock ({expected}); "
            "delete the file to download it again"
        )


class PackageFetchError(MediaError):
    """A package could not be found in the cache nor downloaded."""


class LockError(InputError):
    """packages.lock is missing, unreadable, or does not cover the package table."""


REFRESH_COMMAND = "python -m builder.media.packages --update-lock"


class LockedPackagesMovedError(PackageFetchError):
    """``--locked``: pinned versions the archive no longer offers (each named with the version it offers now)."""

    def __init__(self, moved: Sequence[MovedPackage], lock_path: Path | str) -> None:
        self.moved = tuple(moved)
        super().__init__(
            f"{lock_path}: {len(self.moved)} pinned package(s) are no longer in the archive: "
            + "; ".join(m.describe() for m in self.moved)
            + f". Refresh the lock with `{REFRESH_COMMAND}` (or build without --locked / ASR_LOCKED=1 to take "
            "the current versions)"
        )


class BadDebError(MediaError):
    """A file is not a Debian package this reader understands."""


# ---------------------------------------------------------------------------------------------------------- lock


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    arch: str
    filename: str
    sha256: str

    @property
    def spec(self) -> str:
        """What ``apt-get download`` is given for exactly this version."""
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class PackageLock:
    packages: tuple[LockedPackage, ...]
    kernel_package: str

    def get(self, name: str) -> LockedPackage:
        for pkg in self.packages:
            if pkg.name == name:
                return pkg
        raise LockError(f"{LOCK_PATH.name}: no package {name!r}; run `python -m builder.media.packages --update-lock`")

    @property
    def kernel_version(self) -> str:
        """The kernel release string, e.g. ``6.1.0-56-amd64``, from the versioned kernel package name."""
        return self.kernel_package.removeprefix("linux-image-")

    def check_covers(self, names: Iterable[str]) -> None:
        have = {p.name for p in self.packages}
        missing = sorted(set(names) - have)
        if missing:
            raise LockError(
                f"{LOCK_PATH.name} lacks {', '.join(missing)}; run `python -m builder.media.packages --update-lock`"
            )


@dataclass(frozen=True)
class MovedPackage:
    """A pin the archive no longer offers, and what was taken instead (the kernel image may change its name
    with its ABI: ``linux-image-6.1.0-56-amd64`` → ``linux-image-6.1.0-57-amd64``)."""

    name: str
    old_version: str
    new_name: str
    new_version: str

    def describe(self) -> str:
        new = self.new_version if self.new_name == self.name else f"{self.new_name} {self.new_version}"
        return f"{self.name} {self.old_version} → {new}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "old_version": self.old_version, "new_name": self.new_name,
                "new_version": self.new_version}  # fmt: skip


def lock_document(lock: PackageLock) -> dict[str, object]:
    """The lock as a JSON object (packages sorted by name)."""
    return {
        "format": LOCK_FORMAT,
        "kernel_package": lock.kernel_package,
        "packages": [
            {"name": p.name, "version": p.version, "arch": p.arch, "filename": p.filename, "sha256": p.sha256}
            for p in sorted(lock.packages, key=lambda p: p.name)
        ],
    }


def render_lock(lock: PackageLock) -> str:
    """The lock as JSON text (sorted, one package per object, stable for diffs)."""
    return json.dumps(lock_document(lock), indent=1) + "\n"


def lock_digest(lock: PackageLock) -> str:
    """The SHA-256 of the lock's rendered text: what identifies a package set."""
    return hashlib.sha256(render_lock(lock).encode()).hexdigest()


def read_lock(path: Path = LOCK_PATH) -> PackageLock:
    """A lock file: packages.lock, or the record of a build (``asr-packages.json``: a lock with more keys)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LockError(f"{path}: missing; run `{REFRESH_COMMAND}`") from None
    except (OSError, ValueError) as exc:
        raise LockError(f"{path}: unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
        raise LockError(f"{path}: not a format-{LOCK_FORMAT} package lock")
    return parse_lock_document(doc, path)


def parse_lock_document(doc: Mapping[str, object], path: Path | str) -> PackageLock:
    """The lock an object describes (``path`` names it in errors)."""
    pkgs = []
    entries = doc.get("packages", [])
    if not isinstance(entries, list):
        raise LockError(f"{path}: 'packages' is not a list")
    for i, entry in enumerate(entries, start=1):
        try:
            pkg = LockedPackage(
                name=str(entry["name"]),
                version=str(entry["version"]),
                arch=str(entry["arch"]),
                filename=str(entry["filename"]),
                sha256=str(entry["sha256"]),
            )
        except (KeyError, TypeError):
            raise LockError(f"{path}: package entry {i} lacks name/version/arch/filename/sha256") from None
        if not re.fullmatch(r"[0-9a-f]{64}", pkg.sha256) or "/" in pkg.filename or not _is_deb_name(pkg.filename):
            raise LockError(f"{path}: package entry {i} ({pkg.name}): bad sha256 or file name")
        pkgs.append(pkg)
    lock = PackageLock(packages=tuple(pkgs), kernel_package=str(doc.get("kernel_package", "")))
    lock.check_covers([*PACKAGES, lock.kernel_package])
    return lock


# --------------------------------------------------------------------------------------------------------- cache


def cache_dir(override: Path | None = None) -> Path:
    """Where .debs are cached: ``override``, else ``$ASR_CACHE/debs``, else ``~/.cache/asr/debs``."""
    if override is not None:
        return Path(override)
    root = os.environ.get("ASR_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "asr"
    return base / "debs"


def _is_deb_name(filename: str) -> bool:
    return filename.endswith(".deb") and not filename.startswith(".") and "\0" not in filename


@dataclass(frozen=True)
class PackageSet:
    """The verified .debs of a build, in a cache directory: ``lock`` is the set really used; when pins had moved
    (:class:`MovedPackage`), ``pinned`` is the lock that was asked for."""

    cache: Path
    lock: PackageLock
    moved: tuple[MovedPackage, ...] = ()
    pinned: PackageLock | None = None

    def deb(self, name: str) -> Path:
        return self.cache / self.lock.get(name).filename

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.lock.packages)

    @property
    def kernel_package(self) -> str:
        return self.lock.kernel_package

    @property
    def kernel_version(self) -> str:
        return self.lock.kernel_version


def _download(specs: Sequence[str], dest: Path) -> None:
    """``apt-get download`` ``specs`` into ``dest`` (the host's apt configuration decides the source)."""
    dest.mkdir(parents=True, exist_ok=True)
    # apt drops privileges to _apt for downloads; a directory it can write avoids its sandbox warning.
    os.chmod(dest, 0o777)
    try:
        run(["apt-get", "download", "-q", *specs], cwd=dest, timeout=1800)
    except ToolError:
        # A fresh machine may have no package lists yet (or stale ones): refresh them once and try again.
        if not refresh_package_lists("apt-get download failed"):
            raise
        run(["apt-get", "download", "-q", *specs], cwd=dest, timeout=1800)


_LISTS_REFRESHED: list[bool] = []


def refresh_package_lists(why: str) -> bool:
    """``apt-get update``, at most once per process and only as root; whether it ran now."""
    if os.geteuid() != 0 or _LISTS_REFRESHED:
        return False
    log.info("%s; running apt-get update", why)
    run(["apt-get", "update", "-qq"], timeout=1800)
    _LISTS_REFRESHED.append(True)
    return True


#: SHA-256 of files this process has hashed, by (resolved path, size, mtime): read_deb finds a package's
#: extraction cache by the digest fetch_packages has just verified, without hashing the file again.
_HASHED: dict[tuple[str, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def file_sha256(path: Path) -> str:
    """The SHA-256 of ``path``, hashed once per process for an unchanged file (same size and mtime)."""
    key = _stat_key(path)
    digest = _HASHED.get(key)
    if digest is None:
        digest = _HASHED[key] = sha256_file(path)
    return digest


def check_package(path: Path, pkg: LockedPackage) -> None:
    """Raise PackageHashMismatch unless ``path`` has the locked SHA-256."""
    actual = sha256_file(path)
    _HASHED[_stat_key(path)] = actual
    if actual != pkg.sha256:
        raise PackageHashMismatch(path, pkg.sha256, actual)


def locked_from_env() -> bool:
    """``ASR_LOCKED=1``: pins that moved are an error (as ``asr build --locked``)."""
    return os.environ.get("ASR_LOCKED", "") not in ("", "0")


def fetch_packages(
    cache: Path | None = None,
    lock: PackageLock | None = None,
    *,
    locked: bool | None = None,
    lock_path: Path | str = LOCK_PATH,
) -> PackageSet:
    """Every package of the lock in the cache, downloaded when missing, all hashes verified.

    A missing pin the archive no longer offers is replaced by the package's current candidate (SHA-256 checked
    against apt's index; the kernel image through the ``linux-image-amd64`` candidate), reported as a
    :class:`MovedPackage`, and the set used is remembered in the cache (a later build with the same lock needs
    no network).  With ``locked`` (default: ``ASR_LOCKED``) a moved pin is a :class:`LockedPackagesMovedError`.
    """
    lock = lock if lock is not None else read_lock()
    locked = locked_from_env() if locked is None else locked
    where = cache_dir(cache)
    with file_lock(where / ".fetch.lock"):  # two builds at once (parallel test workers): one apt-get at a time
        return _fetch_packages(lock, where, locked, lock_path)


def _fetch_packages(lock: PackageLock, where: Path, locked: bool, lock_path: Path | str) -> PackageSet:
    missing = [p for p in lock.packages if not (where / p.filename).is_file()]
    if missing and not locked:
        remembered = read_resolution(where, lock)
        if remembered is not None and all((where / p.filename).is_file() for p in remembered.lock.packages):
            return _verified(remembered, lock_path)
    moved: list[MovedPackage] = []
    if missing:
        gone = find_unoffered(missing)
        offered = [p for p in missing if p not in gone]
        if gone:
            replacements = {p.name: find_replacement(p, lock) for p in gone}
            moved = [MovedPackage(p.name, p.version, r.name, r.version) for p, r in
                     ((p, replacements[p.name]) for p in gone)]  # fmt: skip
            if locked:
                raise LockedPackagesMovedError(moved, lock_path)
        if offered:
            _download_locked(offered, where)
        if gone:
            new = {name: _fetch_from_index(rec, where) for name, rec in replacements.items()}
            effective = PackageLock(
                tuple(sorted((new.get(p.name, p) for p in lock.packages), key=lambda p: p.name)),
                new[lock.kernel_package].name if lock.kernel_package in new else lock.kernel_package,
            )
            result = PackageSet(cache=where, lock=effective, moved=tuple(moved), pinned=lock)
            write_resolution(result)
            return _verified(result, lock_path)
    return _verified(PackageSet(cache=where, lock=lock), lock_path)


def _verified(pkgs: PackageSet, lock_path: Path | str) -> PackageSet:
    """``pkgs`` once every file has its SHA-256; the pins that moved are said (a warning)."""
    for p in pkgs.lock.packages:
        check_package(pkgs.cache / p.filename, p)
    if pkgs.moved:
        log.warning("%s: %d pinned package(s) are no longer in the archive; using %s", lock_path, len(pkgs.moved),
                    "; ".join(m.describe() for m in pkgs.moved))  # fmt: skip
    return pkgs


def _download_locked(pins: Sequence[LockedPackage], where: Path) -> None:
    """Download pins the archive offers, each checked against its locked SHA-256, into the cache."""
    log.info("downloading %d package(s) into %s", len(pins), where)
    with tempfile.TemporaryDirectory(prefix="dl-", dir=where) as tmp:
        try:
            _download([p.spec for p in pins], Path(tmp))
        except Exception as exc:
            raise PackageFetchError(f"cannot download {', '.join(p.spec for p in pins)} into {where}: {exc}") from exc
        for p in pins:
            got = Path(tmp) / p.filename
            if not got.is_file():
                raise PackageFetchError(f"apt-get download {p.spec} did not produce {p.filename}")
            check_package(got, p)
            os.replace(got, where / p.filename)


# ------------------------------------------------------------------------------------- the archive moved on


#: apt's own words (``Candidate:``) whatever the user's language.
APT_ENV = {"LC_ALL": "C"}


@dataclass(frozen=True)
class IndexRecord:
    """One version of a package in apt's index (``apt-cache show``): a version that can be downloaded."""

    name: str
    version: str
    arch: str
    sha256: str
    depends: str = ""

    @property
    def filename(self) -> str:
        """The file name ``apt-get download`` gives it (the epoch's colon written ``%3a``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def parse_apt_records(text: str) -> list[IndexRecord]:
    """The downloadable records of ``apt-cache show`` output (records without Filename and SHA256, such as
    dpkg's status of an installed package, are not)."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = _parse_control(stanza)
        if fields.get("Package") and fields.get("Version") and fields.get("Filename") and fields.get("SHA256"):
            out.append(IndexRecord(fields["Package"], fields["Version"], fields.get("Architecture", "amd64"),
                                   fields["SHA256"].lower(), fields.get("Depends", "")))  # fmt: skip
    return out


def read_index(name: str) -> list[IndexRecord]:
    """Every downloadable version of ``name`` in apt's index (empty when apt knows no such package)."""
    proc = run(["apt-cache", "show", name], check=False, env=APT_ENV)
    return parse_apt_records(proc.stdout) if proc.returncode == 0 else []


def parse_candidate(policy_text: str) -> str:
    """The ``Candidate:`` of ``apt-cache policy NAME`` ("" for none)."""
    m = re.search(r"^\s*Candidate:\s*(\S+)", policy_text, re.MULTILINE)
    return m.group(1) if m and m.group(1) != "(none)" else ""


def find_candidate(name: str) -> IndexRecord | None:
    """The version of ``name`` apt would install now, as its index records it."""
    version = parse_candidate(run(["apt-cache", "policy", name], check=False, env=APT_ENV).stdout)
    return next((r for r in read_index(name) if r.version == version), None) if version else None


def find_unoffered(pins: Sequence[LockedPackage]) -> list[LockedPackage]:
    """The pins apt's index does not offer for download.  When some are missing and this process may, the
    package lists are refreshed once first (a fresh machine has none; stale lists may lack a new pin)."""

    def scan() -> list[LockedPackage]:
        return [p for p in pins if not any(r.version == p.version for r in read_index(p.name))]

    gone = scan()
    if gone and refresh_package_lists(f"{len(gone)} pinned package(s) not in apt's index"):
        gone = scan()
    return gone


def find_replacement(pin: LockedPackage, lock: PackageLock) -> IndexRecord:
    """What replaces a pin the archive no longer offers: the package's candidate; for the kernel image, the
    candidate of the image the ``linux-image-amd64`` candidate depends on (its name changes with the ABI)."""
    name = pin.name
    if pin.name == lock.kernel_package:
        meta = find_candidate(KERNEL_META)
        if meta is None:
            raise PackageFetchError(f"{pin.name} {pin.version} is no longer in the archive and apt offers no "
                                    f"{KERNEL_META} to find its successor")  # fmt: skip
        name = find_kernel_package({"Depends": meta.depends})
    rec = find_candidate(name)
    if rec is None:
        raise PackageFetchError(f"{pin.name} {pin.version} is no longer in the archive and apt offers no other "
                                f"version of {name}; check the host's apt sources")  # fmt: skip
    return rec


class IndexHashMismatch(MediaError):
    """A downloaded .deb does not have the SHA-256 apt's index records for it."""


def _fetch_from_index(rec: IndexRecord, where: Path) -> LockedPackage:
    """``rec`` in the cache (downloaded unless there), its SHA-256 checked against apt's index."""
    pkg = LockedPackage(rec.name, rec.version, rec.arch, rec.filename, rec.sha256)
    target = where / pkg.filename
    if not target.is_file():
        with tempfile.TemporaryDirectory(prefix="dl-", dir=where) as tmp:
            try:
                _download([pkg.spec], Path(tmp))
            except Exception as exc:
                raise PackageFetchError(f"cannot download {pkg.spec} into {where}: {exc}") from exc
            found = sorted(Path(tmp).glob(f"{rec.name}_*.deb"))
            if len(found) != 1:
                raise PackageFetchError(f"apt-get download {pkg.spec} did not produce one {rec.name}_*.deb")
            os.replace(found[0], target)
    actual = file_sha256(target)
    if actual != rec.sha256:
        target.unlink(missing_ok=True)
        raise IndexHashMismatch(f"{target}: SHA-256 {actual} does not match apt's index ({rec.sha256}) for "
                                f"{pkg.spec}; the file was removed")  # fmt: skip
    return pkg


RESOLVED_DIR = "resolved"


def resolution_path(cache: Path, lock: PackageLock) -> Path:
    return cache / RESOLVED_DIR / f"{lock_digest(lock)}.json"


def packages_record(pkgs: PackageSet, lock_path: Path | str = LOCK_PATH) -> dict[str, object]:
    """The set a build really used, as a lock (``asr build --lock`` reads it back) that also names the lock
    asked for and the packages that moved."""
    doc = lock_document(pkgs.lock)
    pinned = pkgs.pinned if pkgs.pinned is not None else pkgs.lock
    doc["pinned_lock"] = {"path": str(lock_path), "sha256": lock_digest(pinned)}
    doc["moved"] = [m.to_json() for m in pkgs.moved]
    return doc


def write_resolution(pkgs: PackageSet) -> None:
    """Remember in the cache which set replaced a lock whose pins moved (offline builds later)."""
    assert pkgs.pinned is not None
    path = resolution_path(pkgs.cache, pkgs.pinned)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(packages_record(pkgs), indent=1) + "\n").encode())
    except OSError as exc:
        log.debug("cannot remember the resolution in %s: %s", path, exc)


def read_resolution(cache: Path, lock: PackageLock) -> PackageSet | None:
    """The set that replaced ``lock`` before (None when there is none, or it is unreadable)."""
    path = resolution_path(cache, lock)
    try:
        doc = json.loads(path.read_text())
        effective = parse_lock_document(doc, path)
        moved = tuple(MovedPackage(str(m["name"]), str(m["old_version"]), str(m["new_name"]), str(m["new_version"]))
                      for m in doc["moved"])  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, LockError) as exc:
        log.warning("%s: unusable record of moved packages (%s); resolving again", path, exc)
        return None
    return PackageSet(cache=cache, lock=effective, moved=moved, pinned=lock)


def make_lock(cache: Path | None = None) -> PackageLock:
    """Download the newest candidate of every package of the table (and the kernel the meta package depends
    on) into the cache, and describe them as a lock."""
    where = cache_dir(cache)
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lock-", dir=where) as tmp:
        tmpdir = Path(tmp)
        _download(PACKAGES, tmpdir)
        meta = _single(tmpdir, KERNEL_META)
        kernel_pkg = find_kernel_package(read_control(meta))
        _download([kernel_pkg], tmpdir)
        locked = []
        for deb in sorted(tmpdir.glob("*.deb")):
            ctl = read_control(deb)
            locked.append(
                LockedPackage(
                    name=ctl["Package"],
                    version=ctl["Version"],
                    arch=ctl["Architecture"],
                    filename=deb.name,
                    sha256=sha256_file(deb),
                )
            )
            os.replace(deb, where / deb.name)
    lock = PackageLock(packages=tuple(sorted(locked, key=lambda p: p.name)), kernel_package=kernel_pkg)
    lock.check_covers([*PACKAGES, kernel_pkg])
    return lock


def find_kernel_package(meta_control: Mapping[str, str]) -> str:
    """The versioned generic kernel package (``linux-image-6.1.0-NN-amd64``) a meta package depends on."""
    for dep in meta_control.get("Depends", "").split(","):
        name = dep.strip().split(" ")[0]
        if re.fullmatch(r"linux-image-[0-9.]+-[0-9]+-amd64", name):
            return name
    raise LockError(f"{KERNEL_META} depends on no generic amd64 kernel image: {meta_control.get('Depends')!r}")


def _single(directory: Path, name: str) -> Path:
    found = sorted(directory.glob(f"{name}_*.deb"))
    if len(found) != 1:
        raise PackageFetchError(f"expected one {name}_*.deb in {directory}, found {len(found)}")
    return found[0]


# ------------------------------------------------------------------------------------------------- .deb reading


class MemberKind(StrEnum):
    """The kind of a path in a package (or in the rescue tree)."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"

    @classmethod
    def of(cls, info: tarfile.TarInfo) -> MemberKind:
        if info.isreg():
            return cls.FILE
        if info.isdir():
            return cls.DIR
        if info.issym():
            return cls.SYMLINK
        if info.islnk():
            return cls.HARDLINK
        if info.ischr():
            return cls.CHAR
        if info.isblk():
            return cls.BLOCK
        if info.isfifo():
            return cls.FIFO
        raise BadDebError(f"unsupported tar member type {info.type!r} for {info.name}")


class _DataFile:
    """An open file holding members' bytes (an extraction cache file, or an unnamed temporary file when the
    cache cannot be written); members read their slice with ``pread``: no shared position, thread-safe."""

    def __init__(self, file: IO[bytes], name: str) -> None:
        self.file = file
        self.name = name

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self.file.fileno(), size, offset)
        if len(data) != size:
            raise BadDebError(f"{self.name}: {size} bytes at offset {offset} cut short; delete the file")
        return data


@dataclass(frozen=True)
class Extent:
    """``size`` bytes at ``offset`` of a data file: a member's content, read when asked for."""

    file: _DataFile
    offset: int
    size: int

    def read(self) -> bytes:
        return self.file.read(self.offset, self.size)


@dataclass(frozen=True)
class DebMember:
    """One path of a package's data.tar: ``path`` is relative (no leading ``./`` or ``/``).

    ``content`` is the file's bytes, or where to read them (an :class:`Extent` of the extraction cache): the
    kernel package holds 400 MB of modules of which the rescue system needs a few."""

    path: str
    kind: MemberKind
    mode: int
    target: str = ""
    content: bytes | Extent = field(default=b"", repr=False)

    @property
    def data(self) -> bytes:
        return self.content if isinstance(self.content, bytes) else self.content.read()

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.size


def _ar_members(blob: bytes, where: Path) -> dict[str, bytes]:
    if not blob.startswith(b"!<arch>\n"):
        raise BadDebError(f"{where}: not an ar archive (not a .deb)")
    members: dict[str, bytes] = {}
    off = 8
    while off + 60 <= len(blob):
        header = blob[off : off + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58])
        except ValueError:
            raise BadDebError(f"{where}: corrupt ar header at byte {off}") from None
        off += 60
        members[name] = blob[off : off + size]
        off += size + (size & 1)
    return members


def _tar_of(members: Mapping[str, bytes], stem: str, where: Path) -> tarfile.TarFile:
    for name, payload in members.items():
        if name == f"{stem}.tar.xz":
            return tarfile.open(fileobj=io.BytesIO(payload), mode="r|xz")
        if name == f"{stem}.tar.gz":
            return tarfile.open(fileobj=io.BytesIO(payload), mode="r|gz")
        if name == f"{stem}.tar":
            return tarfile.open(fileobj=io.BytesIO(payload), mode="r|")
    raise BadDebError(f"{where}: no {stem}.tar.xz/.gz in the package (members: {', '.join(members)})")


def read_control(path: Path) -> dict[str, str]:
    """The fields of a package's DEBIAN/control (continuation lines joined)."""
    members = _ar_members(path.read_bytes(), path)
    with _tar_of(members, "control", path) as tar:
        for info in tar:
            if info.name.lstrip("./") == "control":
                f = tar.extractfile(info)
                assert f is not None
                return _parse_control(f.read().decode())
    raise BadDebError(f"{path}: no control file")


def _parse_control(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    return "" if name == "." else name


def read_deb(path: Path, prefixes: Sequence[str] | None = None) -> dict[str, DebMember]:
    """Every member of the package's data.tar (or those under one of ``prefixes``); file data read on access.

    Paths are relative (``usr/bin/python3.11``); hard links have kind HARDLINK and their target path.
    The members come from the package's extraction cache (``extracted/`` beside it, by the package's SHA-256),
    made on first use; they are memoised per (file, size, mtime) in the process.
    """
    members = _read_deb_cached(str(path), *_stat_key(path)[1:])
    if not prefixes:
        return dict(members)
    return {name: m for name, m in members.items() if any(name.startswith(p) for p in prefixes)}


EXTRACT_DIR = "extracted"
EXTRACT_MAGIC = b"ASRDEB1\n"
#: Extraction cache file trailer: magic, SHA-256 of the package, offset and length of the JSON index.
EXTRACT_TRAILER = struct.Struct("<8s32sQQ")


def extract_cache_path(deb: Path) -> Path:
    """Where the extraction cache of ``deb`` is (or will be): ``extracted/<SHA-256>.members`` beside it."""
    return deb.parent / EXTRACT_DIR / f"{file_sha256(deb)}.members"


@lru_cache(maxsize=128)
def _read_deb_cached(path: str, size: int, mtime_ns: int) -> dict[str, DebMember]:
    del size, mtime_ns  # only part of the cache key
    where = Path(path)
    slot = extract_cache_path(where)
    members = read_extract_cache(slot, bytes.fromhex(slot.stem))
    if members is not None:
        return members
    started = time.monotonic()
    try:
        slot.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(prefix=f".{slot.stem[:16]}-", dir=slot.parent, delete=False)
    except OSError as exc:  # a read-only package directory: extract into an unnamed file, cache nothing
        log.debug("no extraction cache for %s: %s", where.name, exc)
        anonymous = tempfile.TemporaryFile()  # lives as long as its members
        members = _extract_deb(where, _DataFile(anonymous, where.name))
        return members
    with tmp:
        try:
            _extract_deb(where, _DataFile(tmp, tmp.name), write_index=bytes.fromhex(slot.stem))
            os.chmod(tmp.name, 0o644)
            os.replace(tmp.name, slot)  # atomic: a concurrent build sees the whole file or none
        except BaseException:
            os.unlink(tmp.name)
            raise
    log.debug("extracted %s into %s in %.2fs", where.name, slot, time.monotonic() - started)
    members = read_extract_cache(slot, bytes.fromhex(slot.stem))
    if members is None:
        raise InternalError(f"{slot}: the extraction cache just written does not read back")
    return members


def _extract_deb(where: Path, out: _DataFile, write_index: bytes | None = None) -> dict[str, DebMember]:
    """Decompress the package's data.tar, appending each file's bytes to ``out``; with ``write_index`` (the
    package's SHA-256) the index and trailer follow, which makes ``out`` an extraction cache file."""
    members = _ar_members(where.read_bytes(), where)
    out_members: dict[str, DebMember] = {}
    rows: list[tuple[str, str, int, str, int, int]] = []
    offset = 0
    try:
        with _tar_of(members, "data", where) as tar:
            for info in tar:
                name = _norm(info.name)
                if not name:
                    continue
                kind = MemberKind.of(info)
                size = 0
                if kind is MemberKind.FILE:
                    f = tar.extractfile(info)
                    assert f is not None
                    data = f.read()
                    out.file.write(data)
                    size = len(data)
                target = info.linkname if kind is MemberKind.SYMLINK else _norm(info.linkname)
                rows.append((name, kind.value, info.mode & 0o7777, target, offset, size))
                out_members[name] = DebMember(name, kind, info.mode & 0o7777, target, Extent(out, offset, size))
                offset += size
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise BadDebError(f"{where}: damaged data archive: {exc}") from None
    if write_index is not None:
        index = json.dumps(rows, separators=(",", ":")).encode()
        out.file.write(index)
        out.file.write(EXTRACT_TRAILER.pack(EXTRACT_MAGIC, write_index, offset, len(index)))
    out.file.flush()
    return out_members


def read_extract_cache(path: Path, sha256: bytes) -> dict[str, DebMember] | None:
    """The members recorded in an extraction cache file, or None when it is missing, of another package, or
    not whole (its trailer and sizes are checked; the package itself was hash-verified by fetch_packages)."""
    try:
        f = path.open("rb")
    except OSError:
        return None
    try:
        total = os.fstat(f.fileno()).st_size
        if total < EXTRACT_TRAILER.size:
            raise ValueError("too short")
        magic, digest, index_at, index_len = EXTRACT_TRAILER.unpack(
            os.pread(f.fileno(), EXTRACT_TRAILER.size, total - EXTRACT_TRAILER.size)
        )
        if magic != EXTRACT_MAGIC or digest != sha256 or index_at + index_len + EXTRACT_TRAILER.size != total:
            raise ValueError("bad trailer")
        rows = json.loads(os.pread(f.fileno(), index_len, index_at))
        data = _DataFile(f, str(path))
        members: dict[str, DebMember] = {}
        for name, kind, mode, target, offset, size in rows:
            if offset + size > index_at:
                raise ValueError(f"{name} beyond the data")
            members[name] = DebMember(name, MemberKind(kind), mode, target, Extent(data, offset, size))
        return members
    except (ValueError, TypeError, OSError) as exc:
        f.close()
        log.warning("%s: unusable extraction cache (%s); extracting the package again", path, exc)
        return None


# --------------------------------------------------------------------------------------------------- .pyc cache

PYC_DIR = "pyc"


def _pyc_key(magic: bytes, compiler: bytes, path: str, source: bytes) -> str:
    h = hashlib.sha256(magic + compiler)
    h.update(path.encode() + b"\0")
    h.update(source)
    return h.hexdigest()


def _pyc_matches(pyc: bytes, magic: bytes, source: bytes) -> bool:
    """The header of a cached .pyc: the host's magic and, for hash-based files, the source's hash."""
    if pyc[:4] != magic or len(pyc) < 16:
        return False
    flags = int.from_bytes(pyc[4:8], "little")
    return not flags & 1 or pyc[8:16] == importlib.util.source_hash(source)


def code_digest(fn: Callable[..., object]) -> bytes:
    """A digest of the code the process really runs for ``fn`` (its bytecode and constants, and the values of
    the plain str/int/bytes globals it names), not of the file on disk: a file edited while an old process
    still runs must not file the old compiler's output under the new compiler's key."""
    code = fn.__code__
    glob = getattr(fn, "__globals__", {})
    named = sorted((n, repr(glob[n])) for n in code.co_names if isinstance(glob.get(n), str | int | bytes))
    return hashlib.sha256(marshal.dumps(code) + repr(named).encode()).digest()


def compile_pyc_cached(
    sources: Mapping[str, bytes], cache: Path, compile_pyc: Callable[[Mapping[str, bytes]], Mapping[str, bytes]]
) -> dict[str, bytes]:
    """``compile_pyc`` ({path.py: source} → {path.pyc: bytecode}) with each result kept in ``cache/pyc/`` under
    the digest of (host bytecode magic, Python version, ``compile_pyc``'s own code, path, source): only the
    sources not compiled before reach the compiler.  A cached file whose header does not match is compiled
    again."""
    magic = importlib.util.MAGIC_NUMBER
    compiler = hashlib.sha256(sys.version.encode() + code_digest(compile_pyc)).digest()
    where = cache / PYC_DIR
    out: dict[str, bytes] = {}
    keys: dict[str, str] = {}
    for path, source in sources.items():
        key = keys[path] = _pyc_key(magic, compiler, path, source)
        try:
            pyc = (where / f"{key}.pyc").read_bytes()
        except OSError:
            continue
        if _pyc_matches(pyc, magic, source):
            out[path + "c"] = pyc
    missing = {path: source for path, source in sources.items() if path + "c" not in out}
    if missing:
        compiled = compile_pyc(missing)
        try:
            where.mkdir(parents=True, exist_ok=True)
            for path in missing:
                write_atomic(where / f"{keys[path]}.pyc", compiled[path + "c"])
        except OSError as exc:
            log.debug("no .pyc cache in %s: %s", where, exc)
        out.update({path + "c": compiled[path + "c"] for path in missing})
    log.debug("compile_pyc_cached: %d cached, %d compiled", len(sources) - len(missing), len(missing))
    return {path + "c": out[path + "c"] for path in sources}


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder): one process at a time fills a cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it: readers see the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.media.packages", description=__doc__.splitlines()[0])
    parser.add_argument("--update-lock", action="store_true", help="re-resolve the table and rewrite the lock")
    parser.add_argument("--cache", type=Path, default=None, help="the .deb cache directory")
    parser.add_argument("--lock", type=Path, default=LOCK_PATH, help="the lock file")
    parser.add_argument("--locked", action="store_true", default=None,
                        help="fail when a pinned version left the archive (default: ASR_LOCKED)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.update_lock:
        lock = make_lock(args.cache)
        args.lock.write_text(render_lock(lock))
        print(f"wrote {args.lock}: {len(lock.packages)} packages, kernel {lock.kernel_package}")
        return 0
    pkgs = fetch_packages(args.cache, read_lock(args.lock), locked=args.locked, lock_path=args.lock)
    for m in pkgs.moved:
        print(f"moved: {m.describe()}")
    print(f"{len(pkgs.names)} packages verified in {pkgs.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
