"""The package set: lock, verified cache, downloads of NAME=VERSION, the .deb reader (checked by dpkg-deb), its
extraction cache and the .pyc cache."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from builder.media.packages import (
    KERNEL_META,
    PACKAGES,
    LockError,
    MemberKind,
    PackageHashMismatch,
    PackageLock,
    PackageSet,
    cache_dir,
    code_digest,
    compile_pyc_cached,
    extract_cache_path,
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


def test_extraction_cache_is_made_once_and_reads_back_the_same(
    package_set: PackageSet, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read of a package extracts it into extracted/<SHA-256>.members; a reader of the cache file
    (a second process: another path, same bytes) gets the same members as dpkg-deb shows, without lzma."""
    deb = tmp_path / "a" / package_set.deb("e2fsprogs").name
    deb.parent.mkdir()
    shutil.copyfile(package_set.deb("e2fsprogs"), deb)
    first = read_deb(deb)
    slot = extract_cache_path(deb)
    assert slot == deb.parent / "extracted" / f"{sha256_file(deb)}.members" and slot.is_file()
    other = tmp_path / "b" / deb.name  # the same package elsewhere: its cache file is copied, not made
    (other.parent / "extracted").mkdir(parents=True)
    shutil.copyfile(deb, other)
    shutil.copyfile(slot, other.parent / "extracted" / slot.name)
    import builder.media.packages as packages

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("the package was extracted again instead of read from the cache file")

    with monkeypatch.context() as patch:
        patch.setattr(packages, "_extract_deb", no_extraction)
        again = read_deb(other)
    assert set(again) == set(first)
    for name, member in first.items():
        twin = again[name]
        assert (twin.kind, twin.mode, twin.target, twin.data) == (member.kind, member.mode, member.target, member.data)
    assert again["sbin/mke2fs"].data == run_bytes_of(deb, "./sbin/mke2fs")
    assert read_deb(other, ["sbin/mke2"]).keys() == {"sbin/mke2fs"}

    # a damaged (truncated) cache file is noticed, named, and the package extracted again
    third = tmp_path / "c" / deb.name
    (third.parent / "extracted").mkdir(parents=True)
    shutil.copyfile(deb, third)
    (third.parent / "extracted" / slot.name).write_bytes(slot.read_bytes()[:-100])
    with caplog.at_level("WARNING", logger="asr.packages"):
        repaired = read_deb(third)
    assert "unusable extraction cache" in caplog.text and slot.name in caplog.text
    assert repaired["sbin/mke2fs"].data == first["sbin/mke2fs"].data
    assert (third.parent / "extracted" / slot.name).read_bytes() == slot.read_bytes()


def test_pyc_cache_compiles_each_source_once(tmp_path: Path) -> None:
    from builder.media.python import compile_pyc

    compiled: list[str] = []

    def counting(sources: Mapping[str, bytes]) -> dict[str, bytes]:
        compiled.extend(sources)
        return compile_pyc(sources)

    sources = {"usr/lib/asr/a.py": b"X = {1, 2, 3}\n", "usr/lib/asr/b.py": b"def f():\n    return 2\n"}
    first = compile_pyc_cached(sources, tmp_path, counting)
    assert compiled == list(sources)
    assert first == compile_pyc(sources)  # the same bytes as the compiler's
    again = compile_pyc_cached(sources, tmp_path, counting)
    assert again == first and compiled == list(sources)  # nothing compiled the second time
    edited = {**sources, "usr/lib/asr/b.py": b"def f():\n    return 3\n"}
    third = compile_pyc_cached(edited, tmp_path, counting)
    assert compiled == [*sources, "usr/lib/asr/b.py"]
    assert third["usr/lib/asr/a.pyc"] == first["usr/lib/asr/a.pyc"]
    assert third["usr/lib/asr/b.pyc"] != first["usr/lib/asr/b.pyc"]
    # a cache file that does not belong to its source (wrong source hash in the header) is compiled again
    for f in (tmp_path / "pyc").iterdir():
        f.write_bytes(first["usr/lib/asr/a.pyc"])
    assert compile_pyc_cached(sources, tmp_path, counting) == first
    assert compiled == [*sources, "usr/lib/asr/b.py", "usr/lib/asr/b.py"]


LEVEL = 2


def _compiler_a() -> int:
    return LEVEL


def _compiler_b() -> int:
    return LEVEL + 1


def test_the_pyc_cache_key_follows_the_code_that_runs() -> None:
    global LEVEL
    first = code_digest(_compiler_a)
    assert first == code_digest(_compiler_a) and first != code_digest(_compiler_b)
    LEVEL = 0  # a constant the compiler reads changes its key too
    try:
        assert code_digest(_compiler_a) != first
    finally:
        LEVEL = 2
