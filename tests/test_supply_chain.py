"""The media build whatever the Debian archive did since packages.lock was written (issue: supply chain).

A lock is made from the real one with pins the archive cannot offer: a small library at a version that never
existed, and the kernel image under an ABI name that does not exist (its successor is found through the
``linux-image-amd64`` candidate).  No test here depends on the versions the real lock pins: the expected
replacements are read from apt's index at test time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from builder.build import PACKAGES_RECORD_NAME, BuildResult, build_media, source_date_epoch
from builder.media.packages import (
    KERNEL_META,
    REFRESH_COMMAND,
    LockedPackage,
    LockedPackagesMovedError,
    PackageLock,
    PackageSet,
    fetch_packages,
    find_candidate,
    find_kernel_package,
    parse_apt_records,
    parse_candidate,
    read_lock,
    render_lock,
    resolution_path,
)
from builder.vm.qemu import F2_PROMPT, QemuVM, VMSpec, find_accel
from recovery_env.errors import InputError
from recovery_env.model.manifest import sha256_file

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts" / "supply-chain"
SMALL = "libinih1"
GONE_VERSION = "0.0~asr-never-released-1"
GONE_KERNEL = "linux-image-6.1.0-1-asrgone-amd64"


def moved_lock() -> PackageLock:
    """The real lock with two pins the archive does not have."""
    real = read_lock()
    out: list[LockedPackage] = []
    for p in real.packages:
        if p.name == SMALL:
            p = replace(p, version=GONE_VERSION, filename=f"{SMALL}_{GONE_VERSION}_amd64.deb", sha256="0" * 64)
        elif p.name == real.kernel_package:
            p = replace(p, name=GONE_KERNEL, filename=f"{GONE_KERNEL}_6.1.1-1_amd64.deb", sha256="1" * 64)
        out.append(p)
    return PackageLock(tuple(out), GONE_KERNEL)


def write_moved_lock(directory: Path) -> Path:
    path = directory / "moved.lock"
    path.write_text(render_lock(moved_lock()))
    return path


def expected_kernel() -> str:
    meta = find_candidate(KERNEL_META)
    assert meta is not None
    return find_kernel_package({"Depends": meta.depends})


# -- pure parsers ---------------------------------------------------------------------------------------------


def test_apt_records_keep_downloadable_versions_only() -> None:
    text = (
        "Package: zstd\nVersion: 1.5.4+dfsg2-5+deb12u1\nArchitecture: amd64\n"
        "Depends: libc6 (>= 2.34),\n libzstd1\nFilename: pool/main/z/zstd_1.5.4+dfsg2-5+deb12u1_amd64.deb\n"
        "SHA256: 59FD093988B4B7F17CB10329CE6DD080ACE367CD3B7928D6145012CB7FC3A334\n\n"
        "Package: zstd\nStatus: install ok installed\nVersion: 1.5.4+dfsg2-5\nArchitecture: amd64\n\n"
        "Package: busybox-static\nVersion: 1:1.35.0-4+b1\nArchitecture: amd64\nFilename: pool/b.deb\nSHA256: ab\n"
    )
    recs = parse_apt_records(text)
    assert [(r.name, r.version) for r in recs] == [("zstd", "1.5.4+dfsg2-5+deb12u1"),
                                                   ("busybox-static", "1:1.35.0-4+b1")]
    assert recs[0].sha256 == "59fd093988b4b7f17cb10329ce6dd080ace367cd3b7928d6145012cb7fc3a334"
    assert "libzstd1" in recs[0].depends
    assert recs[1].filename == "busybox-static_1%3a1.35.0-4+b1_amd64.deb"  # as apt-get download names it
    assert parse_candidate("zstd:\n  Installed: 1\n  Candidate: 1.5.4+dfsg2-5+deb12u1\n") == "1.5.4+dfsg2-5+deb12u1"
    assert parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n") == ""


# -- fetch with moved pins ------------------------------------------------------------------------------------


@pytest.fixture
def linked_cache(package_set: PackageSet, tmp_path: Path) -> Path:
    """A fresh cache directory holding (hard links to) the current .debs: the replacements need no download
    while the real lock is current, and are downloaded when it is not."""
    cache = tmp_path / "debs"
    cache.mkdir()
    for deb in package_set.cache.glob("*.deb"):
        os.link(deb, cache / deb.name)
    return cache


def test_moved_pins_are_replaced_by_the_candidates_checked_against_apts_index(
    linked_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = moved_lock()
    got = fetch_packages(linked_cache, lock, locked=False)
    moved = {m.name: m for m in got.moved}
    assert set(moved) == {SMALL, GONE_KERNEL}
    small = find_candidate(SMALL)
    assert small is not None
    assert (moved[SMALL].old_version, moved[SMALL].new_version) == (GONE_VERSION, small.version)
    kernel = expected_kernel()
    assert moved[GONE_KERNEL].new_name == kernel
    assert got.lock.kernel_package == kernel and got.kernel_version == kernel.removeprefix("linux-image-")
    assert got.pinned == lock
    for p in got.lock.packages:  # every .deb of the set really used has the SHA-256 apt's index gives
        assert sha256_file(got.deb(p.name)) == p.sha256
    rec = find_candidate(SMALL)
    assert rec is not None and got.lock.get(SMALL).sha256 == rec.sha256
    assert resolution_path(linked_cache, lock).is_file()
    # a warm cache works offline: the resolution is remembered, no apt-cache/apt-get runs
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")
    again = fetch_packages(linked_cache, lock, locked=False)
    assert again.lock == got.lock and again.moved == got.moved


def test_locked_refuses_moved_pins_naming_each_and_the_refresh_command(
    linked_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = moved_lock()
    fetch_packages(linked_cache, lock, locked=False)  # a remembered resolution must not satisfy --locked
    monkeypatch.setenv("ASR_LOCKED", "1")
    with pytest.raises(LockedPackagesMovedError) as info:
        fetch_packages(linked_cache, lock, lock_path="moved.lock")
    text = str(info.value)
    assert f"{SMALL} {GONE_VERSION} →" in text
    assert f"{GONE_KERNEL} 6.1.192" in text or f"{GONE_KERNEL} " in text
    assert expected_kernel() in text
    assert REFRESH_COMMAND in text and "moved.lock" in text
    assert {m.name for m in info.value.moved} == {SMALL, GONE_KERNEL}


def test_asr_build_locked_fails_with_the_named_error_and_writes_nothing(tmp_path: Path) -> None:
    lock = write_moved_lock(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("ASR_LOCKED", None)
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "build", "--lock", str(lock), "--locked",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "are no longer in the archive" in proc.stderr and f"{SMALL} {GONE_VERSION}" in proc.stderr
    assert REFRESH_COMMAND in proc.stderr
    assert not out.exists()
    env["ASR_LOCKED"] = "1"  # the environment variable does the same
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "build", "--lock", str(lock), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert proc.returncode != 0 and GONE_KERNEL in proc.stderr and not out.exists()


# -- SOURCE_DATE_EPOCH ----------------------------------------------------------------------------------------


def test_source_date_epoch_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1700000000
    for bad in ("soon", "100"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(InputError, match="SOURCE_DATE_EPOCH"):
            source_date_epoch()


# -- the build with moved pins, booted -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moved_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildResult, str, str]:
    """``asr build --json --lock moved.lock`` with SOURCE_DATE_EPOCH set, as a user runs it."""
    work = tmp_path_factory.mktemp("moved-build")
    lock = write_moved_lock(work)
    out = ARTIFACTS / "media"
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    env.pop("ASR_LOCKED", None)
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "build", "--json", "--lock", str(lock),
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    result = build_media(out, lock=lock, epoch=int(doc["epoch"]))  # the same build (all cached): a BuildResult
    assert result.iso_sha256 == doc["iso_sha256"]
    return result, proc.stdout, proc.stderr


@pytest.mark.vm
def test_a_lock_with_moved_pins_builds_media_that_boot_to_f2(moved_build: tuple[BuildResult, str, str]) -> None:
    result, stdout, stderr = moved_build
    doc = json.loads(stdout)
    assert doc["epoch"] == 1700000000  # SOURCE_DATE_EPOCH from the environment
    assert {m["name"] for m in doc["moved_packages"]} == {SMALL, GONE_KERNEL}
    assert f"{SMALL} {GONE_VERSION} → " in stderr  # named on the terminal too (the warning)
    record = json.loads((result.iso.parent / PACKAGES_RECORD_NAME).read_text())
    assert record["kernel_package"] == expected_kernel() == f"linux-image-{result.kernel_version}"
    assert {m["name"] for m in record["moved"]} == {SMALL, GONE_KERNEL}
    # the record is a lock: the build is reproduced from it, byte for byte, with nothing moved
    again = build_media(ARTIFACTS / "again", lock=result.iso.parent / PACKAGES_RECORD_NAME, epoch=1700000000)
    assert again.moved_packages == () and again.iso_sha256 == result.iso_sha256
    # the dates inside the media are SOURCE_DATE_EPOCH's (2023-11-14 22:13:20 UTC), read by xorriso
    info = subprocess.run(["xorriso", "-indev", str(result.iso), "-pvd_info"], capture_output=True, text=True)
    assert "Creation Time: 2023111422132000" in info.stdout, info.stdout
    listing = subprocess.run(["mdir", "-i", str(result.floppy), "::"], capture_output=True, text=True).stdout
    assert "2023-11-14" in listing, listing
    workdir = ARTIFACTS / "boot"
    workdir.mkdir(parents=True, exist_ok=True)
    with QemuVM(VMSpec(accel=find_accel(), iso=result.iso, floppy=result.floppy), workdir=workdir) as vm:
        vm.wait_serial(F2_PROMPT, 240.0)  # the replacement kernel (result.kernel_version) boots the agent
