"""The initramfs: cpio writer (checked by GNU cpio), zstd frames (checked by zstd), segments and their cache,
/init, budget, reproducibility, and a real boot under QEMU with a self-check in place of the agent (which proves
the kernel unpacks the concatenated segments)."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import time
from pathlib import Path

import pytest

from builder.media.initramfs import (
    DIRS_SEGMENT,
    RescueEnv,
    SegmentCache,
    check_budget,
    compress_segments,
    compress_zstd,
    make_cpio,
    make_initramfs,
    make_rescue_env,
    make_segment_cpios,
    plan_segments,
    read_segments,
    render_init,
)
from builder.media.packages import PackageSet
from builder.media.tree import Entry, EntryKind, Group, RescueTree
from recovery_env.agent.states import ExitCode
from recovery_env.errors import BudgetError
from recovery_env.run import run, run_bytes

EPOCH = 1700000000

#: Runs as ``python3.11 -m recovery_env`` in the guest: checks what the rescue environment promises, prints one
#: verdict line on the console and asks /init to power off.
SELFTEST_MAIN = b'''
import json, os, sys, time
from recovery_env.run import run

def wait_for(path, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return os.path.exists(path)

checks = {"python": sys.version.split()[0], "late_modules": wait_for("/run/asr/modules-loaded"),
          "ext4_module": os.path.isdir("/sys/module/ext4"),
          "fd0": wait_for("/dev/fd0"), "vda": wait_for("/dev/vda")}
for name, argv in {"sfdisk": ["sfdisk", "--version"], "mkfs.xfs": ["mkfs.xfs", "-V"], "tar": ["tar", "--version"],
                   "zstd": ["zstd", "--version"], "grub-install": ["grub-install", "--version"],
                   "mkfs.ext4": ["mkfs.ext4", "-V"], "mkfs.btrfs": ["mkfs.btrfs", "--version"]}.items():
    try:
        proc = run(argv)
        checks[name] = (proc.stdout or proc.stderr).splitlines()[0]
    except Exception as exc:
        checks[name] = "FAILED: %s" % exc
print("ASR-SELFTEST " + json.dumps(checks, sort_keys=True), flush=True)
sys.exit(21)
'''


def _small_tree() -> RescueTree:
    return RescueTree(
        entries={
            "": Entry(EntryKind.DIR, 0o755),
            "dev": Entry(EntryKind.DIR, 0o755),
            "dev/console": Entry(EntryKind.CHAR, 0o600, rdev=(5, 1)),
            "init": Entry(EntryKind.FILE, 0o755, data=b"#!/bin/sh\necho hi\n"),
            "usr": Entry(EntryKind.DIR, 0o755),
            "usr/bin": Entry(EntryKind.DIR, 0o755),
            "usr/bin/odd": Entry(EntryKind.FILE, 0o644, data=bytes(range(256)) * 3 + b"x"),
            "usr/bin/sh": Entry(EntryKind.SYMLINK, 0o777, target="busybox"),
            "usr/bin-x": Entry(EntryKind.FILE, 0o600, data=b""),
        }
    )


# ---------------------------------------------------------------------------------------------------- units


def test_cpio_is_read_back_by_gnu_cpio(tmp_path: Path) -> None:
    archive = make_cpio(_small_tree(), EPOCH)
    listing = run(["cpio", "-t", "--quiet"], input=archive).stdout.split()
    assert listing == ["dev", "dev/console", "init", "usr", "usr/bin", "usr/bin/odd", "usr/bin/sh", "usr/bin-x"]
    verbose = run(["cpio", "-tv", "--quiet", "--numeric-uid-gid"], input=archive).stdout
    assert all(line.split()[2:4] == ["0", "0"] for line in verbose.splitlines())  # root-owned
    out = tmp_path / "x"
    out.mkdir()
    # we are root here; fakeroot gives the same without root
    argv = ["cpio", "-idm", "--quiet", "--no-absolute-filenames"]
    if os.geteuid() != 0:
        argv = ["fakeroot", *argv]
    run(argv, input=archive, cwd=out)
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "usr/bin/odd").read_bytes() == bytes(range(256)) * 3 + b"x"
    assert os.readlink(out / "usr/bin/sh") == "busybox"
    assert (out / "init").stat().st_mtime == EPOCH
    assert stat.S_IMODE((out / "init").stat().st_mode) == 0o755
    if os.geteuid() == 0:
        console = (out / "dev/console").lstat()
        assert stat.S_ISCHR(console.st_mode) and (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)


def test_cpio_is_reproducible_and_zstd_valid(tmp_path: Path) -> None:
    a = compress_zstd(make_cpio(_small_tree(), EPOCH), level=19)
    b = compress_zstd(make_cpio(_small_tree(), EPOCH), level=19)
    assert a == b
    frame = tmp_path / "i.zst"
    frame.write_bytes(a)
    run(["zstd", "-t", "-q", str(frame)])
    assert run_bytes(["zstd", "-dc", str(frame)]) == make_cpio(_small_tree(), EPOCH)


def _grouped_tree() -> RescueTree:
    """Entries of several groups, with directories that only one group's files live in."""
    e = Entry
    return RescueTree(
        entries={
            "": e(EntryKind.DIR, 0o755),
            "dev": e(EntryKind.DIR, 0o755),
            "dev/console": e(EntryKind.CHAR, 0o600, rdev=(5, 1)),
            "init": e(EntryKind.FILE, 0o755, data=b"#!/bin/sh\necho hi\n"),
            "usr": e(EntryKind.DIR, 0o755),
            "usr/bin": e(EntryKind.DIR, 0o755),
            "usr/bin/busybox": e(EntryKind.FILE, 0o755, data=b"\x7fELF" + bytes(5000), group=Group.BUSYBOX),
            "usr/bin/sh": e(EntryKind.SYMLINK, 0o777, target="busybox", group=Group.BUSYBOX),
            "usr/lib": e(EntryKind.DIR, 0o755),
            "usr/lib/asr": e(EntryKind.DIR, 0o755, group=Group.AGENT),
            "usr/lib/asr/agent.pyc": e(EntryKind.FILE, 0o644, data=b"agent " * 900, group=Group.AGENT),
            "usr/lib/modules": e(EntryKind.DIR, 0o755, group=Group.MODULES),
            "usr/lib/modules/a.ko": e(EntryKind.FILE, 0o644, data=bytes(range(256)) * 40, group=Group.MODULES),
        }
    )


def test_segments_directories_first_then_one_per_group() -> None:
    plans = plan_segments(_grouped_tree())
    assert [p.name for p in plans] == [DIRS_SEGMENT, "base", "kernel modules", "busybox", "agent"]
    assert set(plans[0].paths) == {"dev", "usr", "usr/bin", "usr/lib", "usr/lib/asr", "usr/lib/modules"}
    assert plans[4].paths == ("usr/lib/asr/agent.pyc",)
    firsts = [p.first_ino for p in plans]
    assert firsts == sorted(set(firsts))  # inode ranges never overlap


def test_segmented_initramfs_is_read_by_zstd_and_gnu_cpio(tmp_path: Path) -> None:
    """zstd decompresses the concatenated frames into the concatenated archives; GNU cpio reads each archive, and
    unpacking them in order (without -d: parents must exist already) rebuilds the tree, as the kernel does."""
    tree = _grouped_tree()
    cpios = make_segment_cpios(tree, EPOCH)
    initramfs = make_initramfs(tree, EPOCH)
    image = tmp_path / "initrd.zst"
    image.write_bytes(initramfs)
    run(["zstd", "-t", "-q", str(image)])
    assert run_bytes(["zstd", "-dc", str(image)]) == b"".join(c for _, c in cpios)
    assert read_segments(initramfs) == [c for _, c in cpios]
    out = tmp_path / "root"
    out.mkdir()
    listed: list[str] = []
    for _, cpio in cpios:
        listed += run(["cpio", "-t", "--quiet"], input=cpio).stdout.split()
        argv = ["cpio", "-im", "--quiet", "--no-absolute-filenames"]  # no -d: a missing parent fails
        run(argv if os.geteuid() == 0 else ["fakeroot", *argv], input=cpio, cwd=out)
    assert sorted(listed) == sorted(p for p in tree.entries if p)
    for path, entry in tree.entries.items():
        if entry.kind is EntryKind.FILE:
            assert (out / path).read_bytes() == entry.data, path
    assert os.readlink(out / "usr/bin/sh") == "busybox"


def test_segments_are_reproducible_and_cached_by_content(tmp_path: Path) -> None:
    tree = _grouped_tree()
    cpios = make_segment_cpios(tree, EPOCH)
    plain, _ = compress_segments(cpios, level=9, threads=1)
    cache = SegmentCache(tmp_path / "segments")
    first, segments = compress_segments(cpios, level=9, cache=cache, threads=2)
    assert first == plain  # neither the cache nor the thread count changes a byte
    assert not any(s.cached for s in segments)
    assert sum(s.size for s in segments) == len(first)
    # an edit of the agent: only the agent's segment is compressed again
    edited = dict(tree.entries)
    edited["usr/lib/asr/agent.pyc"] = Entry(EntryKind.FILE, 0o644, data=b"edited " * 900, group=Group.AGENT)
    again, segments = compress_segments(make_segment_cpios(RescueTree(edited), EPOCH), level=9, cache=cache)
    assert [s.name for s in segments if not s.cached] == ["agent"]
    assert again == compress_segments(make_segment_cpios(RescueTree(edited), EPOCH), level=9)[0]
    # a damaged cache file is noticed (decompressed and compared before use) and replaced
    modules = cache.path(cpios[2][1], 9)
    assert cpios[2][0] == "kernel modules" and modules.is_file()
    blob = bytearray(modules.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    modules.write_bytes(bytes(blob))
    repaired, segments = compress_segments(cpios, level=9, cache=cache)
    assert repaired == plain
    assert [s.name for s in segments if not s.cached] == ["kernel modules"]
    assert compress_segments(cpios, level=9, cache=cache)[1][2].cached


def test_budget_error_lists_the_largest_contributors() -> None:
    parts = {"kernel": 8_000_000, "kernel modules": 6_000_000, "python": 3_000_000, "agent": 100_000}
    check_budget(parts, 20_000_000)
    with pytest.raises(BudgetError) as info:
        check_budget(parts, 10_000_000, what="the recovery ISO")
    message = str(info.value)
    assert "the recovery ISO" in message and "over the budget" in message
    assert message.index("kernel 7.6 MiB") < message.index("kernel modules 5.7 MiB") < message.index("python")


def test_init_loads_modules_in_order_and_handles_agent_exits(tmp_path: Path) -> None:
    text = render_init(["lib/modules/K/kernel/a.ko", "lib/modules/K/kernel/b.ko"], ["lib/modules/K/kernel/c.ko"])
    assert text.index("/lib/modules/K/kernel/a.ko") < text.index("/lib/modules/K/kernel/b.ko")
    assert text.index("asr: modules loaded") < text.index("/lib/modules/K/kernel/c.ko") < text.index("-m recovery_env")
    assert "/run/asr/modules-loaded" in text
    for marker in ("mount -t devtmpfs", "asr: init started", "asr: modules loaded", "PYTHONHASHSEED=0",
                   "PYTHONDONTWRITEBYTECODE=1", "PYTHONPATH=/usr/lib/asr", "-m recovery_env",
                   "asr agent failed (exit $rc); starting a rescue shell", "reboot -f", "poweroff -f"):
        assert marker in text, marker
    assert f"{int(ExitCode.REBOOT)})" in text and f"{int(ExitCode.SHELL)})" in text
    assert "/proc/cmdline" not in text  # asr.* options are the agent's job
    script = tmp_path / "init"
    script.write_text(text)
    run(["sh", "-n", str(script)])  # a shell parses it


# --------------------------------------------------------------------------------------------- real build


@pytest.fixture(scope="module")
def selftest_env(package_set: PackageSet) -> RescueEnv:
    return make_rescue_env(package_set, epoch=EPOCH, agent_override=SELFTEST_MAIN)


@pytest.mark.image
def test_initramfs_is_a_valid_zstd_cpio(selftest_env: RescueEnv, tmp_path: Path) -> None:
    image = tmp_path / "initrd.zst"
    image.write_bytes(selftest_env.initramfs)
    run(["zstd", "-t", "-q", str(image)])
    assert len(run_bytes(["zstd", "-dc", str(image)])) == selftest_env.raw_size
    segments = read_segments(selftest_env.initramfs)
    assert [s.name for s in selftest_env.segments] == [DIRS_SEGMENT, *(g.value for g in Group)]
    assert [len(c) for c in segments] == [s.raw_size for s in selftest_env.segments]
    names: set[str] = set()
    for i, cpio in enumerate(segments):
        listed = run(["cpio", "-t", "--quiet"], input=cpio).stdout.split()
        assert not names & set(listed)  # every path in one segment only
        names.update(listed)
        kinds = {selftest_env.tree.entries[p].kind for p in listed}
        assert (kinds == {EntryKind.DIR}) if i == 0 else (EntryKind.DIR not in kinds)
    assert names == set(selftest_env.tree.entries) - {""}
    assert {"init", "usr/bin/busybox", "usr/bin/python3.11", "dev/console"} <= names
    assert "usr/lib/asr/recovery_env/__main__.pyc" in names
    out = tmp_path / "root"
    out.mkdir()
    for cpio in segments:
        run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "init", "usr/bin/busybox"], input=cpio, cwd=out)
    assert (out / "init").read_text().startswith("#!/bin/sh")
    assert (out / "usr/bin/busybox").read_bytes() == selftest_env.tree.entries["usr/bin/busybox"].data
    env = selftest_env
    print(f"\ninitramfs: raw {env.raw_size} bytes, zstd {len(env.initramfs)} bytes; kernel {len(env.kernel)} bytes")
    print(f"breakdown {env.breakdown}\nsteps {env.step_times}")


@pytest.mark.image
def test_two_builds_are_byte_identical(selftest_env: RescueEnv, package_set: PackageSet) -> None:
    again = make_rescue_env(package_set, epoch=EPOCH, agent_override=SELFTEST_MAIN)
    first, second = selftest_env.tree.entries, again.tree.entries
    differ = sorted(p for p in first.keys() | second.keys() if first.get(p) != second.get(p))
    assert differ == [], "paths differ between two builds (sources edited meanwhile?)"
    assert again.initramfs == selftest_env.initramfs
    assert again.kernel == selftest_env.kernel


@pytest.mark.vm
def test_boots_under_qemu_and_the_self_check_passes(selftest_env: RescueEnv, tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.zst"
    kernel.write_bytes(selftest_env.kernel)
    initrd.write_bytes(selftest_env.initramfs)
    floppy, disk = tmp_path / "fd.img", tmp_path / "disk.img"
    with floppy.open("wb") as f:
        f.truncate(1_474_560)
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512M", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=5", "-nographic", "-no-reboot",
        "-drive", f"file={floppy},if=floppy,format=raw", "-drive", f"file={disk},if=virtio,format=raw",
        "-device", "virtio-rng-pci",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    buffer = b""
    verdict: dict[str, object] | None = None
    marks: dict[str, float] = {}
    try:
        while time.monotonic() - started < 120 and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            buffer += chunk
            for mark in (b"asr: init started", b"asr: modules loaded", b"ASR-SELFTEST "):
                if mark in buffer and mark.decode() not in marks:
                    marks[mark.decode()] = time.monotonic() - started
            if b"ASR-SELFTEST " in buffer and b"\n" in buffer.split(b"ASR-SELFTEST ", 1)[1]:
                line = buffer.split(b"ASR-SELFTEST ", 1)[1].split(b"\n", 1)[0]
                verdict = json.loads(line.decode().strip())
                break
        # the self-check exits 21: /init says so and powers the machine off
        while proc.poll() is None and time.monotonic() - started < 180:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                buffer += os.read(proc.stdout.fileno(), 65536)
        buffer += proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = buffer.decode(errors="replace")
    assert verdict is not None, f"no self-check verdict on serial:\n{log[-3000:]}"
    print(f"\nTCG boot: {', '.join(f'{k} at {v:.1f} s' for k, v in marks.items())}; verdict {verdict}")
    assert verdict["python"] == "3.11.2"
    for check in ("late_modules", "ext4_module", "fd0", "vda"):
        assert verdict[check] is True, check
    for tool in ("sfdisk", "mkfs.xfs", "tar", "zstd", "grub-install", "mkfs.ext4", "mkfs.btrfs"):
        assert not str(verdict[tool]).startswith("FAILED"), (tool, verdict[tool])
    assert "GNU tar" in str(verdict["tar"]) and "GRUB" in str(verdict["grub-install"])
    assert "asr: powering off" in log
    assert proc.returncode == 0
