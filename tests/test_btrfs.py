"""Issue 11, layout 4 below the VM tier: btrfs subvolumes through every layer.

Unit tests: the parsers of ``btrfs subvolume list`` / ``get-default``, which subvolume a mount shows, the archive
of a whole top level (no ``--one-file-system``, excludes placed through the subvolume mounts), and the restore
plan (subvolumes in id order with placeholders for id gaps, a subvolume moved into a later parent, extraction
into the top level compared on its own, read-only flags after the files, the default, fstab's ``subvol=`` mounts).

Root tier (loop devices, the host kernel's btrfs): a GPT disk image with a btrfs whose subvolumes have an id gap,
a nested subvolume, a read-only snapshot, a subvolume moved into a later one and a compression property is
captured by ``capture`` from its default subvolume mounted read-only, and restored by ``execute_plan`` onto a
larger loop disk; ``btrfs subvolume list`` on the result must show the same ids, parents, paths and flags.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from test_plan import target
from test_validation import BTRFS

from recovery_env.capture.archive import plan_tar_argv
from recovery_env.capture.flow import CaptureRequest, CaptureResult, capture
from recovery_env.model.descriptor import Firmware, FsType, Mount, Subvolume
from recovery_env.probe.btrfs import (
    ListedSubvolume,
    mount_subvolume,
    parse_default,
    parse_subvolume_list,
    top_level_path,
)
from recovery_env.probe.disks import find_disks
from recovery_env.restore.execute import confirm_plan, execute_plan
from recovery_env.restore.match import match_disks
from recovery_env.restore.plan import CheckManifest, Extract, MakeDir, RestorePlan, RunStep, plan_restore
from recovery_env.restore.verify import read_manifest
from recovery_env.run import run

MIB = 1 << 20

LIST = """\
ID 256 gen 12 parent 5 top level 5 path @
ID 258 gen 12 parent 5 top level 5 path @home
ID 259 gen 9 parent 5 top level 5 path @snapshots
ID 261 gen 10 parent 259 top level 259 path @snapshots/1/my snapshot
"""


def test_the_subvolume_list_is_read_in_id_order() -> None:
    listed = parse_subvolume_list("ID 261 gen 10 parent 259 top level 259 path <FS_TREE>/@snapshots/1/a b\n" + LIST)
    assert [(s.id, s.parent, s.path) for s in listed] == [
        (256, 5, "@"), (258, 5, "@home"), (259, 5, "@snapshots"), (261, 259, "@snapshots/1/a b"),
        (261, 259, "@snapshots/1/my snapshot")]  # fmt: skip
    assert parse_subvolume_list("") == ()
    with pytest.raises(Exception, match="line 1: cannot read"):
        parse_subvolume_list("ID x gen 1 path @\n")
    assert parse_default("ID 256 gen 7 top level 5 path @\n") == 256
    assert parse_default("ID 5 (FS_TREE)\n") == 5


SUBS = (Subvolume("fs2", "@", 256), Subvolume("fs2", "@home", 258), Subvolume("fs2", "@snapshots", 259))


def test_the_subvolume_a_mount_shows() -> None:
    assert mount_subvolume("defaults,subvol=/@home,compress=zstd", SUBS, 256) == "@home"
    assert mount_subvolume("subvol=@", SUBS, 5) == "@"
    assert mount_subvolume("subvolid=259", SUBS, 256) == "@snapshots"
    assert mount_subvolume("defaults", SUBS, 256) == "@"  # the default subvolume
    assert mount_subvolume("defaults", SUBS, 5) == ""  # the top level
    assert mount_subvolume("subvol=@gone", SUBS, 256) is None
    mounts = (Mount("/", "fs2", "subvol=@"), Mount("/home", "fs2", "subvol=@home"))
    assert top_level_path("/home/u/x", mounts, SUBS, 256) == "@home/u/x"
    assert top_level_path("/etc", mounts, SUBS, 256) == "@/etc"
    assert top_level_path("/", mounts, SUBS, 256) == "@"


def test_a_top_level_archive_crosses_into_subvolumes_and_places_excludes_through_the_mounts() -> None:
    argv = plan_tar_argv("/tmp/top", "/", ["/home/u/.cache", "/var/tmp", "*.swp", "/srv/x"], ["/backup"],
                         top_level=(("/", "@"), ("/home", "@home")))  # fmt: skip
    assert "--one-file-system" not in argv
    assert argv[argv.index("--anchored"):] == (
        "--anchored", "--exclude=./@home/u/.cache", "--exclude=./@/var/tmp", "--exclude=./@/srv/x",
        "--exclude=./@/backup", "--no-anchored", "--exclude=*.swp", ".")  # fmt: skip
    assert "--one-file-system" in plan_tar_argv("/mnt", "/", [])


def _run_steps(plan: RestorePlan) -> list[RunStep | MakeDir | Extract | CheckManifest]:
    return [s for s in plan.top_level_steps if isinstance(s, RunStep | MakeDir | Extract | CheckManifest)]


def test_the_plan_makes_the_subvolumes_in_id_order_on_the_top_level_then_mounts_them_as_fstab_does() -> None:
    subs = (
        Subvolume("fs2", "@", 256),
        Subvolume("fs2", "@home", 259, compression="zstd"),  # 257, 258: deleted on the source
        Subvolume("fs2", "@srv/early", 260, parent=261),  # moved into a later subvolume
        Subvolume("fs2", "@srv", 261),
        Subvolume("fs2", "@snapshots", 262),
        Subvolume("fs2", "@snapshots/1/snapshot", 263, parent=262, readonly=True),
    )
    d = replace(BTRFS, subvolumes=subs, mounts=(
        Mount("/", "fs2", "subvol=@,noatime", device="UUID=" + BTRFS.filesystems[1].uuid, passno=1),
        Mount("/boot/efi", "fs1", "umask=0077"),
        Mount("/home", "fs2", "subvol=/@home"),
    ))  # fmt: skip
    plan = plan_restore(d, match_disks(d, [target("vda", 3 << 30)], unattended=True), backup_dir="/b")
    t = "/target"
    described = [(s.name, getattr(s, "argv", getattr(s, "path", getattr(s, "root", "")))) for s in _run_steps(plan)]
    assert described[:2] == [("make the mount point /target", t),
                             ("mount the top level of fs2 (/dev/vda3)",
                              ("mount", "-t", "btrfs", "-o", "subvolid=5", "/dev/vda3", t))]  # fmt: skip
    argvs = [a for _, a in described[2:]]
    assert argvs == [
        ("btrfs", "subvolume", "create", f"{t}/@"),
        ("sh", "-c", 'for p in "$@"; do btrfs subvolume create "$p" || exit 1; done', "sh",
         f"{t}/.asr-subvolume-257", f"{t}/.asr-subvolume-258"),
        ("btrfs", "subvolume", "delete", f"{t}/.asr-subvolume-257", f"{t}/.asr-subvolume-258"),
        ("btrfs", "subvolume", "create", f"{t}/@home"),
        ("btrfs", "property", "set", f"{t}/@home", "compression", "zstd"),
        ("btrfs", "subvolume", "create", f"{t}/.asr-subvolume-260"),
        ("btrfs", "subvolume", "create", f"{t}/@srv"),
        f"{t}/@srv",
        ("mv", f"{t}/.asr-subvolume-260", f"{t}/@srv/early"),
        ("btrfs", "subvolume", "create", f"{t}/@snapshots"),
        f"{t}/@snapshots/1",
        ("btrfs", "subvolume", "create", f"{t}/@snapshots/1/snapshot"),
        "",  # the extraction (into the top level at /target)
        t,  # the MANIFEST comparison of fs2's entries, on its top level
        ("btrfs", "property", "set", "-ts", f"{t}/@snapshots/1/snapshot", "ro", "true"),
        ("btrfs", "subvolume", "set-default", "256", t),
        ("umount", t),
    ]
    extract = next(s for s in plan.top_level_steps if isinstance(s, Extract)).extraction
    assert extract.top_level and extract.directory == t and f"--directory={t}" in extract.tar_argv
    check = next(s for s in plan.top_level_steps if isinstance(s, CheckManifest))
    assert check.filesystems == ("fs2",)
    # then the mounts, as fstab has them: the subvolumes, not the top level; fs2 is not extracted a second time
    assert [m.argv for m in plan.mounts] == [
        ("mount", "-t", "btrfs", "-o", "subvol=@", "/dev/vda3", t),
        ("mount", "-t", "btrfs", "-o", "subvol=/@home", "/dev/vda3", f"{t}/home"),
        ("mount", "-t", "vfat", "-o", "codepage=437,iocharset=iso8859-1,quiet,umask=0077", "/dev/vda2",
         f"{t}/boot/efi"),
    ]
    steps = plan.steps()
    assert [s.extraction.filesystem for s in steps if isinstance(s, Extract)] == ["fs2", "fs1"]
    (final,) = [s for s in steps if isinstance(s, CheckManifest) and s.skip]
    assert final.skip == ("fs2",) and final.filesystems == ()
    assert steps.index(final) > max(i for i, s in enumerate(steps) if isinstance(s, Extract))
    assert steps.index(plan.top_level_steps[-1]) < next(i for i, s in enumerate(steps) if s.name.startswith("mount /"))


def test_a_format_1_btrfs_is_restored_as_before() -> None:
    """Format 1 archived what was mounted: no top-level steps; the archive goes into the mount."""
    old = replace(BTRFS, version=1, subvolumes=(), filesystems=(
        BTRFS.filesystems[0], replace(BTRFS.filesystems[1], default_subvolume=0)))  # fmt: skip
    plan = plan_restore(old, match_disks(old, [target("vda", 3 << 30)], unattended=True), backup_dir="/b")
    assert plan.top_level_steps == ()
    assert [e.directory for e in plan.extractions] == ["/target", "/target/boot/efi"]


# ------------------------------------------------------------------------------------------------ root tier

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
                                reason="needs root and loop devices")  # fmt: skip
UUID = "b7f3c2a1-0d4e-4f5a-9b8c-7d6e5f4a3b2c"
DISK_ID = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SOURCE_MIB, TARGET_MIB = 160, 240
FSTAB = f"""\
UUID={UUID} / btrfs subvol=@,defaults 0 1
UUID={UUID} /home btrfs subvol=@home 0 0
UUID={UUID} /.snapshots btrfs subvol=@snapshots 0 0
"""
# (path, id, parent, read-only) as the source ends up: 257 deleted, "early" moved into the later @srv
EXPECTED = [
    ("@", 256, 5, False), ("@home", 258, 5, False), ("@snapshots", 259, 5, False), ("early", 260, 5, False),
    ("@srv", 261, 5, False), ("@snapshots/1/snapshot", 262, 259, True), ("@/var/lib/machines", 263, 256, False),
]  # fmt: skip


@dataclass
class Source:
    work: Path
    loop: str
    result: CaptureResult


def _cleanup(loop: str, mounts: list[Path]) -> None:
    for d in reversed(mounts):
        if os.path.ismount(d):
            run(["umount", str(d)], check=False)
    run(["partx", "--delete", loop], check=False)
    run(["losetup", "--detach", loop], check=False)


def _loop(image: Path, size_mib: int) -> str:
    with open(image, "wb") as f:
        f.truncate(size_mib * MIB)
    loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    return loop


def _make_source(work: Path, loop: str, mounts: list[Path]) -> None:
    script = (f"label: gpt\nlabel-id: {DISK_ID}\n"
              "start=2048, size=2048, type=21686148-6449-6e6f-744e-656564454649\n"
              "start=4096, type=0fc63daf-8483-4772-8e79-3d69d8477de4\n")  # fmt: skip
    run(["sfdisk", "--quiet", loop], input=script)
    run(["partx", "--add", loop])
    run(["mkfs.btrfs", "-q", "-f", "-U", UUID, "-L", "root", f"{loop}p2"])
    top = work / "top"
    top.mkdir()
    run(["mount", "-t", "btrfs", f"{loop}p2", str(top)])
    mounts.append(top)

    def btrfs(*args: str) -> None:
        run(["btrfs", *args])

    btrfs("subvolume", "create", str(top / "@"))
    btrfs("subvolume", "create", str(top / "gone"))
    btrfs("subvolume", "delete", str(top / "gone"))  # id 257: a gap
    btrfs("subvolume", "create", str(top / "@home"))
    btrfs("property", "set", str(top / "@home"), "compression", "zstd")
    btrfs("subvolume", "create", str(top / "@snapshots"))
    btrfs("subvolume", "create", str(top / "early"))  # 260, moved into @srv (261) below
    btrfs("subvolume", "create", str(top / "@srv"))
    for d in ("etc", "home", ".snapshots", "var/lib", "boot"):
        (top / "@" / d).mkdir(parents=True)
    (top / "@/etc/fstab").write_text(FSTAB)
    (top / "@/etc/hostname").write_text("btrfs-test\n")
    (top / "@home/user").mkdir()
    (top / "@home/user/notes.txt").write_text("in @home\n" * 1000)
    (top / "early/data").write_text("moved\n")
    (top / "@snapshots/1").mkdir()
    btrfs("subvolume", "snapshot", "-r", str(top / "@"), str(top / "@snapshots/1/snapshot"))  # 262
    btrfs("subvolume", "create", str(top / "@/var/lib/machines"))  # 263, nested in @
    (top / "@/var/lib/machines/m.txt").write_text("nested\n")
    os.rename(top / "early", top / "@srv/early")
    btrfs("subvolume", "set-default", "256", str(top))
    run(["umount", str(top)])
    mounts.remove(top)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices")
    work = tmp_path_factory.mktemp("btrfs")
    loop = _loop(work / "source.img", SOURCE_MIB)
    mounts: list[Path] = []
    try:
        _make_source(work, loop, mounts)
        root = work / "root"
        root.mkdir()
        run(["mount", "-t", "btrfs", "-o", "ro", f"{loop}p2", str(root)])  # the default subvolume: @
        mounts.append(root)
        result = capture(CaptureRequest(dest=work / "set", root=root, disks=(loop,), firmware=Firmware.BIOS),
                         euid=os.geteuid())  # fmt: skip
    finally:
        _cleanup(loop, mounts)  # gone before the restore, as on the machine it is restored to (the same UUID)
    yield Source(work, loop, result)


def _expected(fs: str, moved: bool = True) -> list[Subvolume]:
    return [Subvolume(fs, "@srv/early" if p == "early" and moved else p, i, 261 if p == "early" else parent, ro,
                      "zstd" if p == "@home" else "") for p, i, parent, ro in EXPECTED]  # fmt: skip


@needs_root
def test_the_capture_records_the_subvolumes_and_archives_the_whole_top_level(source: Source) -> None:
    d = source.result.descriptor
    (fs,) = [f for f in d.filesystems if f.type is FsType.BTRFS]
    assert (fs.uuid, fs.default_subvolume) == (UUID, 256)
    assert sorted(d.subvolumes, key=lambda s: s.id) == _expected(fs.key)
    assert [(m.mountpoint, m.options) for m in d.mounts] == [
        ("/", "subvol=@,defaults"), ("/.snapshots", "subvol=@snapshots"), ("/home", "subvol=@home")]
    assert d.version >= 2 and [a.filesystem for a in d.backup.archives] == [fs.key]  # type: ignore[union-attr]
    text = (source.work / "set" / "ASR.SIF").read_text()
    assert f"filesystem={fs.key} path=@snapshots/1/snapshot id=262 parent=259 readonly=yes\n" in text
    paths = {e.path: e for e in read_manifest(source.work / "set" / "MANIFEST")}
    for p in ("/@/etc/fstab", "/@home/user/notes.txt", "/@snapshots/1/snapshot/etc/hostname",
              "/@/var/lib/machines/m.txt", "/@srv/early/data"):
        assert paths[p].fs == fs.key, p
    assert not [p for p in paths if "asr-btrfs-top" in p]


@needs_root
def test_the_restore_recreates_every_subvolume_with_its_id_and_flags(source: Source) -> None:
    d = source.result.descriptor
    work = source.work / "restore"
    work.mkdir()
    loop = _loop(work / "target.img", TARGET_MIB)
    root, check = work / "target", work / "check"
    mounts: list[Path] = [root, root / "home", root / ".snapshots", check]
    try:
        disk = next(dk for dk in find_disks(include={loop}) if dk.device == loop)
        plan = plan_restore(d, match_disks(d, [disk], unattended=True), target_root=str(root),
                            backup_dir=str(source.work / "set"))  # fmt: skip
        log: list[str] = []
        report = execute_plan(plan, log=log.append, progress=lambda _: None, confirm_token=confirm_plan(plan))
        assert report.manifest_checked and report.differences == (), report.differences
        assert "[" in log[0] and any("set-default 256" in line or "the default of" in line for line in log)
        check.mkdir()
        run(["mount", "-t", "btrfs", "-o", "ro,subvolid=5", f"{loop}p2", str(check)])
        listed = parse_subvolume_list(run(["btrfs", "subvolume", "list", "-p", str(check)]).stdout)
        readonly = {s.id for s in parse_subvolume_list(run(["btrfs", "subvolume", "list", "-p", "-r",
                                                             str(check)]).stdout)}  # fmt: skip
        want = _expected("fs1")
        assert listed == tuple(ListedSubvolume(s.id, s.parent, s.path) for s in want)
        assert readonly == {262}
        assert parse_default(run(["btrfs", "subvolume", "get-default", str(check)]).stdout) == 256
        assert os.getxattr(check / "@home", "btrfs.compression") == b"zstd"
        assert (check / "@home/user/notes.txt").read_text() == "in @home\n" * 1000
        assert (check / "@srv/early/data").read_text() == "moved\n"
        assert (check / "@snapshots/1/snapshot/etc/hostname").read_text() == "btrfs-test\n"
        with pytest.raises(OSError):  # read-only
            (check / "@snapshots/1/snapshot/x").write_text("")
        assert run(["blkid", "-p", "-o", "value", "-s", "UUID", f"{loop}p2"]).stdout.strip() == UUID
    finally:
        _cleanup(loop, mounts)
        subprocess.run(["rm", "-f", str(work / "target.img")], check=False)
