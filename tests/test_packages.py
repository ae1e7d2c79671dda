"""The package set: lock, verified cache, downloads of NAME=VERSION, and the .deb reader (checked by dpkg-deb)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from builder.packages import (
    KERNEL_META,
    PACKAGES,
    LockError,
    MemberKind,
    PackageHashMismatch,
    PackageLock,
    PackageSet,
    cache_dir,
    fetch_packages,
    read_control,
    read_deb,
    read_lock,
    render_lock,
    sha256_file,
)
from recovery_env.run import run

SMALL = "libinih1"  # a few kB: cheap to copy, corrupt and download


def test_lock_covers_the_table_and_pins_the_generic_kernel() -> None:
    lock = read_lock()
    names = {p.name for p in lock.packages}
    assert set(PACKAGES) <= names
    assert re.fullmatch(r"linux-image-6\.1\.0-\d+-amd64", lock.kernel_package), lock.kernel_package
    assert "cloud" not in lock.kernel_package
    assert lock.kernel_package in names
    for p in lock.packages:
        assert re.fullmatch(r"[0-9a-f]{64}", p.sha256)
        assert p.filename.endswith(f"_{p.arch}.deb")
    for needed in ("isolinux", "syslinux-common", "grub-efi-amd64-bin", "busybox-static", "python3.11-minimal"):
        assert needed in names


def test_lock_round_trips(tmp_path: Path) -> None:
    lock = read_lock()
    path = tmp_path / "packages.lock"
    path.write_text(render_lock(lock))
    assert read_lock(path) == PackageLock(tuple(sorted(lock.packages, key=lambda p: p.name)), lock.kernel_package)


def test_lock_missing_a_table_package_is_a_named_error(tmp_path: Path) -> None:
    lock = read_lock()
    kept = tuple(p for p in lock.packages if p.name != "zstd")
    path = tmp_path / "packages.lock"
    path.write_text(render_lock(PackageLock(kept, lock.kernel_package)))
    with pytest.raises(LockError, match="zstd"):
        read_lock(path)


def test_cache_dir_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASR_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "debs"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("ASR_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "asr" / "debs"


def test_warm_cache_needs_no_subprocess_and_verifies_every_hash(
    package_set: PackageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")  # no apt-get: the run() choke point would refuse it
    again = fetch_packages(package_set.cache)
    for p in again.lock.packages:
        assert sha256_file(again.deb(p.name)) == p.sha256


def _one_package_lock(name: str) -> PackageLock:
    lock = read_lock()
    return PackageLock((lock.get(name),), lock.kernel_package)


def test_corrupted_cached_package_is_named(package_set: PackageSet, tmp_path: Path) -> None:
    sub = _one_package_lock(SMALL)
    deb = tmp_path / sub.packages[0].filename
    shutil.copyfile(package_set.deb(SMALL), deb)
    blob = bytearray(deb.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    deb.write_bytes(bytes(blob))
    with pytest.raises(PackageHashMismatch) as info:
        fetch_packages(tmp_path, sub)
    assert sub.packages[0].filename in str(info.value)
    assert sub.packages[0].sha256 in str(info.value)


def test_missing_package_is_downloaded_at_the_locked_version(tmp_path: Path) -> None:
    sub = _one_package_lock(SMALL)
    got = fetch_packages(tmp_path, sub)
    deb = got.deb(SMALL)
    assert deb.is_file()
    assert sha256_file(deb) == sub.packages[0].sha256
    assert read_control(deb)["Version"] == sub.packages[0].version
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the download directory is cleaned up


def test_read_deb_matches_dpkg_deb(package_set: PackageSet) -> None:
    deb = package_set.deb("e2fsprogs")
    members = read_deb(deb)
    names = run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines()
    expected = {line.split()[5].removeprefix("./").rstrip("/") for line in names} - {""}
    assert set(members) == expected
    assert members["sbin/mkfs.ext4"].kind is MemberKind.SYMLINK
    assert members["sbin/mkfs.ext4"].target == "mke2fs"
    mke2fs = members["sbin/mke2fs"]
    assert mke2fs.kind is MemberKind.FILE and mke2fs.mode & 0o111
    assert mke2fs.data[:4] == b"\x7fELF"
    extracted = run_bytes_of(deb, "./sbin/mke2fs")
    assert extracted == mke2fs.data


def run_bytes_of(deb: Path, member: str) -> bytes:
    """A member's bytes as extracted by dpkg-deb and tar (independent of our reader)."""
    from recovery_env.run import run_bytes

    tar = run_bytes(["dpkg-deb", "--fsys-tarfile", str(deb)])
    return run_bytes(["tar", "-xO", member], input=tar)


def test_read_deb_prefixes_and_control(package_set: PackageSet) -> None:
    members = read_deb(package_set.deb("busybox-static"), ["bin/"])
    assert set(members) == {"bin/busybox"}
    ctl = read_control(package_set.deb(KERNEL_META))
    assert package_set.kernel_package in ctl["Depends"]
