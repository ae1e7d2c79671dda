"""The restore executor, with real tools.

- Without root: the defence-in-depth checks refuse any step aimed outside the plan before anything runs (proved
  with ``ASR_FORBID_SUBPROCESS=1``: a command that ran would raise InternalError instead); the plan's sfdisk
  scripts and mkfs argv are applied to sparse image files with the real sfdisk/mkfs and read back with
  ``sfdisk --json`` / ``blkid -p`` through the executor's own checks.
- As root (marker ``root``): a whole restore onto a loop device 1.5x the original disk (``losetup`` + ``partx``;
  this host's kernel has no partition parser for loop devices): wipe, sfdisk, mkfs (vfat made but not mounted:
  the host kernel cannot mount vfat), mount ext4, extract a GNU tar + zstd archive, verify its MANIFEST; then
  independent checks with sfdisk, blkid, e2fsck and a read-only mount compared with the source tree.  And an MBR
  disk with 4096-byte sectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_plan import gpt_descriptor, mbr_descriptor, target

from recovery_env.capture.archive import make_backup_record, make_backup_set, plan_archives
from recovery_env.errors import (
    BackupMediaLostError,
    PlanViolationError,
    StepFailed,
    TargetPathError,
    UnconfirmedPlanError,
)
from recovery_env.model.descriptor import (
    GPT_BIOS_BOOT,
    GPT_ESP,
    Bootloader,
    BootloaderKind,
    Command,
    Descriptor,
    Disk,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    Mount,
    PartFlag,
    Partition,
    SystemInfo,
    TableType,
)
from recovery_env.probe.disks import TargetDisk, find_disks, find_media_disks
from recovery_env.probe.layout import parse_blkid_export, parse_sfdisk_json
from recovery_env.restore import execute
from recovery_env.restore.execute import (
    Outcome,
    Progress,
    _exists_in_root,
    _run_command,
    _run_step,
    check_filesystem,
    check_plan,
    check_table,
    confirm_plan,
    execute_plan,
    find_foreign_devices,
    resolve_step,
    rewrite_fstab,
)
from recovery_env.restore.flow import write_run_log
from recovery_env.restore.match import match_disks
from recovery_env.restore.plan import (
    DiskPlan,
    Extract,
    ExtractionPlan,
    FstabChange,
    LinkByUuid,
    Phase,
    RestorePlan,
    RunStep,
    Step,
    plan_restore,
)
from recovery_env.run import run

MIB = 1 << 20
GIB = 1 << 30
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root for loop devices, partx and mount")


def _plan(d: Descriptor, t: TargetDisk, root: str = "/target") -> RestorePlan:
    return plan_restore(d, match_disks(d, [t], unattended=True), backup_dir="/b", target_root=root)


# ------------------------------------------------------------------------------------------------ refusals


def _with_disk(plan: RestorePlan, **changes: object) -> RestorePlan:
    return replace(plan, disks=(replace(plan.disks[0], **changes),))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tamper", "msg"),
    [
        (lambda p: _with_disk(p, wipe_argv=("wipefs", "--all", "/dev/vdb")), "/dev/vdb"),
        (lambda p: _with_disk(p, sfdisk_argv=("sfdisk", "/dev/sda")), "/dev/sda"),
        (lambda p: replace(p, filesystems=(replace(p.filesystems[0], mkfs_argv=("mkfs.vfat", "/dev/vdb1")),
                                           *p.filesystems[1:])), "/dev/vdb1"),
        (lambda p: replace(p, bootloader=(RunStep("x", Phase.BOOTLOADER, ("dd", "if=/tmp/zero", "of=/dev/vdc")),)),
         "/dev/vdc"),
        (lambda p: replace(p, bootloader=(RunStep("x", Phase.BOOTLOADER, ("chroot", "/", "grub-install", "/dev/vda"),
                                                  writes=("/dev/vda",)),)), "chroot into /"),
        (lambda p: replace(p, mounts=(replace(p.mounts[0], argv=("mount", "/dev/vda3", "/mnt")), *p.mounts[1:])),
         "outside the target root"),
        (lambda p: replace(p, post_commands=(RunStep("x", Phase.COMMANDS, ("mkswap", "/dev/vda1")),)),
         "not a device this step may write"),
        (lambda p: replace(p, uuid_links=(("0123-4567", "/dev/vdb1"),)), "/dev/vdb1, which is not a filesystem"),
        (lambda p: replace(p, uuid_links=(("../../sda", "/dev/vda3"),)), "is not a filesystem UUID"),
    ],
)
def test_executor_refuses_steps_aimed_outside_the_plan(tamper, msg, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")  # if anything ran, InternalError would come instead
    plan = tamper(_plan(gpt_descriptor(), target("vda", 3 * GIB)))
    with pytest.raises(PlanViolationError, match=msg):
        check_plan(plan)
    logged: list[str] = []
    with pytest.raises(PlanViolationError, match=msg):
        execute_plan(plan, log=logged.append, progress=lambda _: None, confirm_token=confirm_plan(plan))
    assert logged == []  # refused before the first step


@pytest.mark.parametrize("root", ["/target", "/mnt/t"])
def test_every_planned_step_passes_the_checks(root: str) -> None:
    for d, t in [(gpt_descriptor(), target("vda", 3 * GIB)), (mbr_descriptor(extended=True), target("sda", GIB))]:
        check_plan(_plan(d, t, root))


def test_only_the_confirm_step_makes_a_token_and_it_fits_that_plan_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(gpt_descriptor(), target("vda", 3 * GIB))
    # a token of an earlier boot (another process confirmed the very same plan)
    code = ("from test_execute import _plan, gpt_descriptor, target, GIB\n"
            "from recovery_env.restore.execute import confirm_plan\n"
            "print(confirm_plan(_plan(gpt_descriptor(), target('vda', 3 * GIB))))")
    stale = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
                           ).stdout.strip()
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")  # nothing may run: a refusal comes before any step
    digest = hashlib.sha256(repr(plan.steps()).encode()).hexdigest()
    # what anyone can compute from the plan alone is no confirmation (the old token was digest[:16])
    for forged in (digest[:16], digest, plan.digest, plan.digest[:16], "", stale):
        with pytest.raises(UnconfirmedPlanError, match="was not confirmed"):
            execute_plan(plan, log=print, progress=lambda _: None, confirm_token=forged, sys_root=tmp_path)
    token = confirm_plan(plan)
    assert token != stale and confirm_plan(plan) == token
    other = _plan(gpt_descriptor(), target("vdb", 3 * GIB))
    edited = replace(plan, post_commands=(
        RunStep("x", Phase.COMMANDS, ("chroot", "/target", "/bin/sh", "-c", "rm -rf /home")),))
    for wrong in (other, edited):  # the token of another plan, of the plan before an edit
        with pytest.raises(UnconfirmedPlanError, match="was not confirmed"):
            execute_plan(wrong, log=print, progress=lambda _: None, confirm_token=token, sys_root=tmp_path)
    # the right token passes this check: the next one (the disk is not in this empty /sys) stops it
    with pytest.raises(PlanViolationError, match="/dev/vda: gone since the plan was made"):
        execute_plan(plan, log=print, progress=lambda _: None, confirm_token=token, sys_root=tmp_path)


def test_executor_refuses_a_disk_that_changed_since_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")
    plan = _plan(gpt_descriptor(), target("vda", 3 * GIB))
    (tmp_path / "class/block/vda").mkdir(parents=True)
    (tmp_path / "class/block/vda/size").write_text(f"{4 * GIB // 512}\n")  # someone swapped the disk
    with pytest.raises(PlanViolationError, match="/dev/vda: 4294967296 bytes now, 3221225472 when the plan"):
        execute_plan(plan, log=print, progress=lambda _: None, confirm_token=confirm_plan(plan), sys_root=tmp_path)


@pytest.mark.parametrize("how", ["the step succeeds (from the page cache)", "the step fails"])
def test_a_backup_medium_lost_during_a_step_that_reads_it_is_named(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The medium unplugged during an extraction: BackupMediaLostError naming it and the step where the restore
    resumes, whatever the step did; gone before a step that reads it: refused before it runs."""
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")
    plan = _plan(gpt_descriptor(), target("vda", 3 * GIB))
    steps = plan.steps()
    first = next(i for i, s in enumerate(steps) if isinstance(s, Extract))
    medium = tmp_path / "class/block/vdb"
    medium.mkdir(parents=True)
    (medium / "size").write_text("786432\n")
    ran: list[str] = []

    def unplugged_during(step: Step, *_: object, **__: object) -> tuple[Outcome, str]:
        ran.append(step.name)
        shutil.rmtree(medium, ignore_errors=True)
        if how == "the step fails":
            raise StepFailed(step.name, ["zstd"], "Input/output error", "exit code 1")
        return Outcome.DONE, ""

    monkeypatch.setattr(execute, "_run_step", unplugged_during)

    def resume() -> None:
        execute_plan(plan, log=lambda _: None, progress=lambda _: None, confirm_token=confirm_plan(plan),
                     phases=(Phase.RESTORE,), from_step=first, sys_root=tmp_path, backup_device="/dev/vdb")  # fmt: skip

    lost = (rf"the backup medium /dev/vdb \(holding /b\) disappeared during step {first + 1} \(restore / from "
            rf"\S+\); the disks are partly restored\. .* the restore resumes at step {first + 1}\.")  # fmt: skip
    with pytest.raises(BackupMediaLostError, match=lost) as e:
        resume()
    assert (e.value.index, e.value.device, ran) == (first, "/dev/vdb", [steps[first].name])
    with pytest.raises(BackupMediaLostError, match=lost):
        resume()
    assert ran == [steps[first].name]  # gone before the step: it did not run again
    (medium.parent / "vdb").mkdir()
    (medium / "size").write_text("0\n")  # an ejected CD: the drive is there, the medium is not
    with pytest.raises(BackupMediaLostError):
        resume()


# ------------------------------------------------------------------------------------------------ pure checks


def test_rewrite_fstab_changes_only_the_named_line() -> None:
    text = ("# /etc/fstab\nUUID=abc / ext4 errors=remount-ro 0 1\n/dev/sda2\tnone  swap sw 0 0\n"
            "/dev/sda2 /mnt/x ext4 defaults 0 2\n")
    out = rewrite_fstab(text, [FstabChange("swap", "/dev/sda2", "/dev/vda2")])
    assert out == text.replace("/dev/sda2\tnone", "/dev/vda2\tnone")


def test_check_table_and_filesystem_name_every_difference() -> None:
    dp = _plan(gpt_descriptor(), target("vda", 3 * GIB)).disks[0]
    good = {"partitiontable": {"label": "gpt", "id": dp.disk_id.upper(), "unit": "sectors", "sectorsize": 512,
            "partitions": [{"node": p.device, "start": p.start, "size": p.size, "type": p.type.upper(),
                            "uuid": p.partuuid.upper(), "name": p.name,
                            **({"attrs": "GUID:63"} if p.attributes else {})} for p in dp.partitions]}}
    assert check_table(dp, parse_sfdisk_json(json.dumps(good))) == []
    bad = json.loads(json.dumps(good))
    bad["partitiontable"]["id"] = "00000000-0000-0000-0000-000000000000"
    bad["partitiontable"]["partitions"][2]["uuid"] = "ffffffff-0000-4000-8000-000000000003"
    bad["partitiontable"]["partitions"][2]["size"] = 3983360
    del bad["partitiontable"]["partitions"][0]
    assert check_table(dp, parse_sfdisk_json(json.dumps(bad))) == [
        "/dev/vda: disk id 00000000-0000-0000-0000-000000000000, planned 6a4e5c3b-9f0d-4b7e-8a21-0c5d7e9f1a2b",
        "/dev/vda1: missing",
        "/dev/vda3: size 3983360, planned 6080512",
        "/dev/vda3: PARTUUID ffffffff-0000-4000-8000-000000000003, planned 11111111-0000-4000-8000-000000000003",
    ]
    esp = _plan(gpt_descriptor(), target("vda", 3 * GIB)).filesystems[0]
    assert check_filesystem(esp, {"TYPE": "vfat", "UUID": "ABCD-1234", "LABEL": "EFI"}) == []
    assert check_filesystem(esp, {"TYPE": "ext4", "UUID": "ABCD-1235"}) == [
        "/dev/vda2: type ext4, planned vfat", "/dev/vda2: UUID ABCD-1235, planned ABCD-1234",
        "/dev/vda2: label '', planned 'EFI'"]


def test_progress_line() -> None:
    p = Progress("restore /", 12 * MIB, 48 * MIB, 4.0)
    assert p.render() == "restore /:  25% 12.0 MiB of 48.0 MiB, 3.0 MiB/s, 0:12 left"
    assert Progress("x", 0, 0, 0.0).eta is None


# ------------------------------------------------------------------------------------------------ on image files


def _on_file(argv: tuple[str, ...], device: str, image: Path) -> list[str]:
    return [str(image) if a == device else a for a in argv]


@pytest.mark.parametrize(
    ("descriptor", "size"),
    [(gpt_descriptor(), 3 * GIB), (gpt_descriptor(), 2 * GIB), (mbr_descriptor(extended=True), 3 * GIB // 2),
     (mbr_descriptor(), GIB)],
    ids=["gpt-1.5x", "gpt-same", "mbr-extended-1.5x", "mbr-same"],
)
def test_sfdisk_scripts_apply_and_read_back(descriptor: Descriptor, size: int, tmp_path: Path) -> None:
    dp = _plan(descriptor, target("vda", size)).disks[0]
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size)
    run(_on_file(dp.sfdisk_argv, dp.device, image), input=dp.sfdisk_script)
    table = parse_sfdisk_json(run(["sfdisk", "--json", str(image)]).stdout)
    assert check_table(dp, table) == []
    assert table.partitions[-1].size == dp.partitions[-1].size
    # and the check does fail on a table that is not the plan's
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)],
        input=dp.sfdisk_script.replace(f"start={dp.partitions[-1].start},", f"start={dp.partitions[-1].start + 2048},")
        .replace(f"size={dp.partitions[-1].size}", f"size={dp.partitions[-1].size - 2048}"))
    assert check_table(dp, parse_sfdisk_json(run(["sfdisk", "--json", str(image)]).stdout)) != []


@pytest.mark.parametrize(
    ("fs", "size"),
    [
        (Filesystem("f", "disk1p3", FsType.EXT4, "0b9e7f3c-5a1d-4c2e-9f80-1d2c3b4a5e6f", "root", block_size=1024,
                    inode_size=256, features=("has_journal", "ext_attr", "dir_index", "filetype", "extent",
                                              "flex_bg", "sparse_super", "metadata_csum", "needs_recovery")), 32),
        (Filesystem("f", "disk1p3", FsType.EXT2, "1b9e7f3c-5a1d-4c2e-9f80-1d2c3b4a5e6f", "boot"), 8),
        (Filesystem("f", "disk1p3", FsType.VFAT, "ABCD-1234", "EFI", fat_size=16), 16),
        (Filesystem("f", "disk1p3", FsType.VFAT, "0000-00FF", "", fat_size=12), 4),
        (Filesystem("f", "disk1p3", FsType.SWAP, "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f", "swap"), 8),
        (Filesystem("f", "disk1p3", FsType.XFS, "2b9e7f3c-5a1d-4c2e-9f80-1d2c3b4a5e6f", "data"), 320),
        (Filesystem("f", "disk1p3", FsType.BTRFS, "3b9e7f3c-5a1d-4c2e-9f80-1d2c3b4a5e6f", "pool"), 128),
    ],
    ids=["ext4-features", "ext2", "vfat16", "vfat12-nolabel", "swap", "xfs", "btrfs"],
)
def test_mkfs_argv_make_what_the_descriptor_says(fs: Filesystem, size: int, tmp_path: Path) -> None:
    d = gpt_descriptor()
    d = replace(d, filesystems=(fs,), mounts=(), backup=None, bootloader=Bootloader(BootloaderKind.NONE))
    (fsp,) = _plan(d, target("vda", 2 * GIB)).filesystems
    image = tmp_path / "part.img"
    with open(image, "wb") as f:
        f.truncate(size * MIB)
    run(_on_file(fsp.mkfs_argv, fsp.device, image))
    probe = parse_blkid_export(run(["blkid", "-p", "-o", "export", str(image)]).stdout)
    assert check_filesystem(fsp, probe) == []
    if fs.type is FsType.EXT4:
        out = run(["dumpe2fs", "-h", str(image)]).stdout
        features = next(ln for ln in out.splitlines() if ln.startswith("Filesystem features:")).split(":")[1].split()
        assert set(features) == set(fs.features) - {"needs_recovery"}
        assert "Block size:               1024" in out and "Inode size:\t          256" in out
        run(["e2fsck", "-fn", str(image)])
    if fs.type is FsType.VFAT:
        run(["fsck.fat", "-n", str(image)])


def _disk_of(path: Path) -> str | None:
    """The whole disk holding a path, found another way than discover does: st_dev → /sys/dev/block."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys_dev.exists():
        return None  # overlay, tmpfs...: not on a block device
    real = sys_dev.resolve()
    return "/dev/" + (real.parent.name if (real / "partition").exists() else real.name)


def test_find_media_disks_on_this_machine(tmp_path: Path) -> None:
    expected = _disk_of(tmp_path)
    held = find_media_disks([str(tmp_path)])
    assert set(held) == ({expected} if expected else set())
    assert all(why == f"holds {tmp_path}" for why in held.values())


# ------------------------------------------------------------------------------------------------ as root, on loops


def _losetup(image: Path, sector: int = 512) -> str:
    return run(["losetup", "--find", "--show", f"--sector-size={sector}", str(image)]).stdout.strip()


def _cleanup(loop: str, mount_dirs: list[Path]) -> None:
    for d in reversed(mount_dirs):
        for _ in range(3):
            if os.path.ismount(d):
                run(["umount", str(d)], check=False)
    run(["partx", "--delete", loop], check=False)
    run(["losetup", "--detach", loop], check=False)


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[str, Path, list[Path]]]:
    """A blank 96 MiB sparse file on a loop device (1.5x the 64 MiB original disk)."""
    image = tmp_path / "target.img"
    with open(image, "wb") as f:
        f.truncate(96 * MIB)
    loop = _losetup(image)
    mounts: list[Path] = []
    try:
        yield loop, image, mounts
    finally:
        _cleanup(loop, mounts)


ESP_UUID = "5A1D-0C2E"
ROOT_UUID = "4e1f2a3b-6c5d-4e7f-8a9b-0c1d2e3f4a5b"
SWAP_UUID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"


def small_gpt_descriptor(backup_record: object) -> Descriptor:
    """64 MiB GPT disk: BIOS boot, ESP (vfat, made but not mounted), ext4 root, swap last."""
    disk = Disk("disk1", 64 * MIB, 512, 512, TableType.GPT, "c0ffee00-1234-4abc-8def-0123456789ab", True,
                device="/dev/sda", model="QEMU HARDDISK")
    parts = (
        Partition("disk1", 1, 2048, 2048, GPT_BIOS_BOOT, "c0ffee01-0000-4000-8000-000000000001", "bios",
                  flags=(PartFlag.BIOS_GRUB,)),
        Partition("disk1", 2, 4096, 32768, GPT_ESP, "c0ffee01-0000-4000-8000-000000000002", "EFI System",
                  attributes=1 << 0, flags=(PartFlag.ESP,)),
        Partition("disk1", 3, 36864, 61440, "0fc63daf-8483-4772-8e79-3d69d8477de4",
                  "c0ffee01-0000-4000-8000-000000000003", "root", attributes=(1 << 2) | (1 << 60)),
        Partition("disk1", 4, 98304, 30720, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
                  "c0ffee01-0000-4000-8000-000000000004", "swap"),
    )
    filesystems = (
        Filesystem("fs1", "disk1p2", FsType.VFAT, ESP_UUID, "ESP", fat_size=16, backup=False),
        Filesystem("fs2", "disk1p3", FsType.EXT4, ROOT_UUID, "rootfs", block_size=1024, inode_size=256,
                   features=("has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "extent",
                             "flex_bg", "sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize",
                             "metadata_csum")),
        Filesystem("fs3", "disk1p4", FsType.SWAP, SWAP_UUID, "swap0", backup=False),
    )
    mounts = (Mount("/", "fs2"), Mount("swap", "fs3", "sw"))
    system = SystemInfo("small", "f" * 32, "x86_64", Firmware.BIOS, "6.1.0-28-amd64", "Debian GNU/Linux 12",
                        "2026-11-26T01:02:03Z", "0.1.0")
    return Descriptor(system, (disk,), parts, filesystems, mounts, Bootloader(BootloaderKind.NONE),
                      backup_record)  # type: ignore[arg-type]


def _make_source_tree(src: Path) -> None:
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("small\n")
    (src / "etc/fstab").write_text(f"UUID={ROOT_UUID} / ext4 defaults 0 1\n")
    (src / "srv/private").mkdir(parents=True)
    os.chmod(src / "srv/private", 0o750)
    (src / "srv/private/data.bin").write_bytes(bytes(range(256)) * 4096)
    os.chown(src / "srv/private/data.bin", 1234, 5678)
    os.link(src / "srv/private/data.bin", src / "srv/hardlink.bin")
    os.symlink("../etc/hostname", src / "srv/link")
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/tool").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "usr/bin/tool", 0o4755)
    os.setxattr(src / "etc/hostname", "user.asr", b"kept")
    with open(src / "sparse.img", "wb") as f:
        f.seek(8 * MIB)
        f.write(b"end")
    for d in ("dev", "proc", "sys", "boot/efi"):
        (src / d).mkdir(parents=True, exist_ok=True)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must keep, per path: type, mode, owner, content digest or link, xattrs."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == str(root) and d == "lost+found")]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = "dir"
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(p, k) for k in os.listxattr(p) if k.startswith("user.")}
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                             st.st_gid, what, xattrs, st.st_nlink if not stat.S_ISDIR(st.st_mode)
                                             else 0)
    return out


@pytest.mark.root
@needs_root
def test_restore_gpt_onto_a_larger_loop_disk(loop_disk: tuple[str, Path, list[Path]], tmp_path: Path) -> None:
    loop, _image, mounts = loop_disk
    src, backup = tmp_path / "src", tmp_path / "backup"
    backup.mkdir()
    _make_source_tree(src)
    result = make_backup_set(plan_archives([("fs2", "/", str(src), 2 * MIB)]), backup)
    descriptor = small_gpt_descriptor(make_backup_record(result, path=str(backup)))

    # discovery sees the loop device only when asked to; matching takes it by size (it is blank)
    (disk,) = [d for d in find_disks(include={loop}) if d.device == loop]
    assert (disk.size_bytes, disk.logical_sector_size, disk.table, disk.disk_id) == (96 * MIB, 512, None, "")
    assert loop not in {d.device for d in find_disks()}
    mapping = match_disks(descriptor, [disk], unattended=True)
    root = tmp_path / "target"
    mounts.append(root)
    plan = plan_restore(descriptor, mapping, target_root=str(root), backup_dir=str(backup))
    assert plan.devices == {loop, *(f"{loop}p{n}" for n in (1, 2, 3, 4))}

    log: list[str] = []
    progress: list[Progress] = []
    report = execute_plan(plan, log=log.append, progress=progress.append, confirm_token=confirm_plan(plan))
    assert report.manifest_checked and report.differences == (), report.differences
    assert progress[-1].done == progress[-1].total == result.archives[0].size
    assert not os.path.ismount(root)  # the UNMOUNT phase ran
    assert f"[2/{len(plan.steps())}] erase old signatures on {loop}" in log

    # independent read-back: the table...
    table = json.loads(run(["sfdisk", "--json", loop]).stdout)["partitiontable"]
    assert (table["label"], table["id"].lower()) == ("gpt", "c0ffee00-1234-4abc-8def-0123456789ab")
    got = [(p["start"], p["size"], p["type"].lower(), p["uuid"].lower(), p.get("name"), p.get("attrs"))
           for p in table["partitions"]]
    assert got == [
        (2048, 2048, GPT_BIOS_BOOT, "c0ffee01-0000-4000-8000-000000000001", "bios", None),
        (4096, 32768, GPT_ESP, "c0ffee01-0000-4000-8000-000000000002", "EFI System", "RequiredPartition"),
        # the root (the one growable item) took the 32 MiB the larger disk added, up to the last 1 MiB boundary
        # before the backup GPT; the swap after it kept its 30720 sectors and moved
        (36864, 126976, "0fc63daf-8483-4772-8e79-3d69d8477de4", "c0ffee01-0000-4000-8000-000000000003", "root",
         "LegacyBIOSBootable GUID:60"),
        (163840, 30720, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "c0ffee01-0000-4000-8000-000000000004", "swap",
         None),
    ]
    # ...the filesystems (low-level probe: no cache)...
    probes = {n: parse_blkid_export(run(["blkid", "-p", "-o", "export", f"{loop}p{n}"]).stdout) for n in (2, 3, 4)}
    assert [(p["TYPE"], p["UUID"], p.get("LABEL", "")) for p in probes.values()] == [
        ("vfat", ESP_UUID, "ESP"), ("ext4", ROOT_UUID, "rootfs"), ("swap", SWAP_UUID, "swap0")]
    assert probes[2]["VERSION"] == "FAT16"
    assert probes[3]["PART_ENTRY_UUID"] == "c0ffee01-0000-4000-8000-000000000003"
    run(["e2fsck", "-fn", f"{loop}p3"])
    run(["fsck.fat", "-n", f"{loop}p2"])
    # ...and the files, compared with the source tree through a fresh read-only mount
    check = tmp_path / "check"
    check.mkdir()
    mounts.append(check)
    run(["mount", "-o", "ro", f"{loop}p3", str(check)])
    try:
        # a medium mounted from a loop device: its disk and the disk holding the loop's file are both excluded
        held = find_media_disks([str(check / "etc")])
        assert held[loop] == f"holds {check / 'etc'}"
        if _disk_of(tmp_path):
            assert held[str(_disk_of(tmp_path))].endswith(f"(behind {check / 'etc'})")
        assert _tree(check) == _tree(src)
        assert os.stat(check / "sparse.img").st_blocks * 512 < MIB  # restored sparse
    finally:
        run(["umount", str(check)])


def test_steps_resolve_their_paths_inside_the_root_and_refuse_a_mount_over_it(tmp_path: Path) -> None:
    root = tmp_path / "target"
    (root / "real/efi").mkdir(parents=True)
    os.symlink("/real", root / "boot")  # absolute: the host's /real would be meant on the host
    os.symlink("/", root / "dev")
    (root / "usr").mkdir()
    os.symlink("../../../..", root / "usr/sbin")  # the root, not the host's /
    r, ph = str(root), Phase.BOOTLOADER
    log: list[str] = []
    grub = RunStep("g", ph, ("grub-install", f"--efi-directory={r}/boot/efi", f"--boot-directory={r}/boot", "/dev/x"),
                   unless_any=(f"{r}/usr/sbin/grub-install",))
    got = resolve_step(grub, r, log.append)
    assert isinstance(got, RunStep)
    assert got.argv == ("grub-install", f"--efi-directory={r}/real/efi", f"--boot-directory={r}/real", "/dev/x")
    assert f"  --boot-directory={r}/boot resolves to --boot-directory={r}/real (symlinks in the restored files, " \
           f"resolved inside {r})" in log
    assert _exists_in_root(f"{r}/usr/sbin/boot", r) and not _exists_in_root(f"{r}/usr/sbin/grub-install", r)
    e = Extract("x", Phase.RESTORE, ExtractionPlan("fs1", "/boot/efi", "/b/a.tar", f"{r}/boot/efi", 1, "", (),
                                                   ("tar", "--extract", f"--directory={r}/boot/efi")))
    got_e = resolve_step(e, r, log.append)
    assert isinstance(got_e, Extract)
    assert got_e.extraction.pipeline == (("tar", "--extract", f"--directory={r}/real/efi"),)
    os.symlink("../..", root / "real/up")
    for mount in (("mount", "--bind", "/dev", f"{r}/dev"), ("mount", "/dev/x", f"{r}/boot/up")):
        with pytest.raises(TargetPathError, match=r"resolves to the target root .* itself"):
            resolve_step(RunStep("m", ph, mount), r, log.append)
    assert resolve_step(RunStep("m", ph, ("mount", "/dev/x", r)), r, log.append).argv[-1] == r  # / itself: fine


def test_a_step_runs_only_when_all_its_only_if_all_paths_exist_inside_the_root(tmp_path: Path) -> None:
    """The chroot GRUB steps' conditions: a grub-install in the restored system (any of) AND, e.g., its
    x86_64-efi modules and a UEFI-booted rescue system (all of), each looked up inside the target root."""
    root = tmp_path / "target"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/grub-install").write_text("")
    (root / "usr/lib/grub/i386-pc").mkdir(parents=True)
    os.symlink("/usr/lib/grub/i386-pc", root / "usr/lib/grub/x86_64-efi")  # inside the root: exists
    r, log = str(root), []
    own = (f"{r}/sbin/grub-install", f"{r}/usr/sbin/grub-install")
    step = RunStep("g", Phase.BOOTLOADER, ("true",), only_if_any=own,
                   only_if_all=(f"{r}/usr/lib/grub/x86_64-efi", f"{r}/sys/firmware/efi"))  # fmt: skip
    assert _run_command(step, r, log.append) == (Outcome.SKIPPED, f"{r}/sys/firmware/efi does not exist")
    (root / "sys/firmware/efi").mkdir(parents=True)
    assert _run_command(step, r, log.append) == (Outcome.DONE, "")
    (root / "usr/sbin/grub-install").unlink()
    assert _run_command(step, r, log.append)[0] is Outcome.SKIPPED  # the any-of still holds


def test_a_skipped_steps_paths_are_not_resolved(tmp_path: Path) -> None:
    """A rescue system booted under BIOS restoring a UEFI system: the efivarfs step is skipped by its condition
    before its mount point (below a /sys/firmware/efi that does not exist in the target) is resolved; it used to
    stop the restore with 'does not resolve inside the target root'."""
    root = tmp_path / "target"
    (root / "sys").mkdir(parents=True)
    r = str(root)
    gone = str(tmp_path / "no-efi" / "efivars")  # as /sys/firmware/efi/efivars on a BIOS-booted rescue system
    step = RunStep("mount efivarfs", Phase.BOOTLOADER, ("mount", "-t", "efivarfs", "efivarfs",
                   f"{r}/sys/firmware/efi/efivars"), optional=True, only_if_any=(gone,))  # fmt: skip
    outcome, why = _run_step(step, r, log=lambda line: None, progress=lambda p: None)
    assert (outcome, why) == (Outcome.SKIPPED, f"none of {gone} exists")


def _snapshot(top: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(top))] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else 0
    return out


@pytest.mark.root
@needs_root
def test_symlinks_in_the_restored_files_never_lead_a_later_step_outside_the_target(
    loop_disk: tuple[str, Path, list[Path]], tmp_path: Path
) -> None:
    """The restored / holds ``boot -> /abs/outside`` (the next filesystem's mount point /boot/efi behind it) and
    ``etc -> ../outside/etc`` (the fstab rewrite behind it), ``var -> ../../..<outside>/var`` (the run's log):
    each is resolved inside the target; the host's outside/ is untouched."""
    loop, _image, mounts = loop_disk
    src, esp_src, backup, outside = tmp_path / "src", tmp_path / "esp", tmp_path / "backup", tmp_path / "outside"
    fstab = f"/dev/sda2 /boot/efi ext4 defaults 0 2\nUUID={ROOT_UUID} / ext4 defaults 0 1\n"
    for top in (src, outside):  # the restored etc/fstab and one on the host where the links point
        (top / "outside/etc" if top == src else top / "etc").mkdir(parents=True)
        (top / "outside/etc/fstab" if top == src else top / "etc/fstab").write_text(fstab)
    (outside / "var/log").mkdir(parents=True)
    os.symlink(str(outside), src / "boot")
    os.symlink("../outside/etc", src / "etc")
    os.symlink("../../../../../../../../.." + str(outside / "var"), src / "var")
    (esp_src / "EFI/debian").mkdir(parents=True)
    (esp_src / "EFI/debian/grubx64.efi").write_bytes(b"MZ" * 1000)
    backup.mkdir()
    result = make_backup_set(plan_archives([("fs2", "/", str(src), MIB), ("fs1", "/boot/efi", str(esp_src), MIB)]),
                             backup)
    base = small_gpt_descriptor(make_backup_record(result, path=str(backup)))
    esp = Filesystem("fs1", "disk1p2", FsType.EXT4, "6e1f2a3b-6c5d-4e7f-8a9b-0c1d2e3f4a5b", "esp")
    d = replace(base, filesystems=(esp, *base.filesystems[1:]),
                mounts=(Mount("/", "fs2"), Mount("/boot/efi", "fs1", spec=FstabSpec.PATH, device="/dev/sda2")))
    (disk,) = [t for t in find_disks(include={loop}) if t.device == loop]
    root = tmp_path / "target"
    mounts += [root, outside / "efi", Path(f"{root}{outside}/efi")]
    plan = plan_restore(d, match_disks(d, [disk], unattended=True), target_root=str(root), backup_dir=str(backup))
    assert "rewrite /etc/fstab" in [s.name for s in plan.steps()]
    before = _snapshot(outside)
    agent_log = tmp_path / "agent.log"
    agent_log.write_text("ASR: log\n")
    log: list[str] = []
    token = confirm_plan(plan)
    execute_plan(plan, log=log.append, progress=lambda _: None, confirm_token=token,
                 phases=tuple(p for p in Phase if p is not Phase.UNMOUNT))
    # the ESP is mounted and extracted inside the target, where /boot/efi resolves in it
    assert (Path(f"{root}{outside}/efi/EFI/debian/grubx64.efi")).read_bytes() == b"MZ" * 1000
    assert f"  {root}/boot/efi resolves to {root}{outside}/efi (symlinks in the restored files, resolved inside " \
           f"{root})" in log
    assert (root / "outside/etc/fstab").read_text().startswith(f"{loop}p2 /boot/efi ext4")  # the restored fstab
    written = write_run_log(plan, str(agent_log), 1764118923)
    assert written == f"{root}{outside}/var/log/asr/restore-20251126-010203.log"
    execute_plan(plan, log=log.append, progress=lambda _: None, confirm_token=token, phases=(Phase.UNMOUNT,))
    assert not os.path.ismount(root)
    assert _snapshot(outside) == before  # nothing outside the target was made, mounted on, extracted or rewritten


@pytest.mark.root
@needs_root
def test_restore_mbr_4096_byte_sectors_partition_and_format(tmp_path: Path) -> None:
    image = tmp_path / "t.img"
    with open(image, "wb") as f:
        f.truncate(48 * MIB)
    loop = _losetup(image, 4096)
    try:
        disk = Disk("disk1", 32 * MIB, 4096, 4096, TableType.MBR, "0x0badcafe", True)
        parts = (Partition("disk1", 1, 256, 4096, "83", flags=(PartFlag.BOOT,)),
                 Partition("disk1", 2, 4352, 3840, "82"))
        fss = (Filesystem("fs1", "disk1p1", FsType.EXT4, ROOT_UUID, "r4k"),
               Filesystem("fs2", "disk1p2", FsType.SWAP, SWAP_UUID, ""))
        system = SystemInfo("k4", "f" * 32, "x86_64", Firmware.BIOS, "6.1", "Debian", "2026-11-26T01:02:03Z", "0")
        d = Descriptor(system, (disk,), parts, fss, (Mount("/", "fs1"),), Bootloader(BootloaderKind.NONE))
        (t,) = [x for x in find_disks(include={loop}) if x.device == loop]
        assert t.logical_sector_size == 4096
        plan = plan_restore(d, match_disks(d, [t], unattended=True), backup_dir="/nonexistent",
                            target_root=str(tmp_path / "target"))
        # the disk is not blank: an old table with three partitions the kernel knows, overlapping the new ones
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", loop], input="label: gpt\n\nsize=4M\nsize=4M\n"
            "size=20M\n")
        run(["partx", "--add", loop])
        assert os.path.exists(f"{loop}p3")
        execute_plan(plan, log=lambda _: None, progress=lambda _: None, confirm_token=confirm_plan(plan),
                     phases=(Phase.PARTITION, Phase.FORMAT))
        assert not os.path.exists(f"/sys/class/block/{os.path.basename(loop)}p3")  # the old partition is gone
        table = json.loads(run(["sfdisk", "--json", loop]).stdout)["partitiontable"]
        assert (table["id"], table["sectorsize"]) == ("0x0badcafe", 4096)
        assert [(p["start"], p["size"], p["type"], p.get("bootable", False)) for p in table["partitions"]] == [
            (256, 8192, "83", True), (8448, 3840, "82", False)]  # 48 MiB = 12288 sectors: the root grew, swap kept
        probe = parse_blkid_export(run(["blkid", "-p", "-o", "export", f"{loop}p1"]).stdout)
        assert (probe["UUID"], probe["LABEL"], probe["PART_ENTRY_UUID"]) == (ROOT_UUID, "r4k", "0badcafe-01")

        # a failing step names itself and its index, for retry
        broken = replace(plan, filesystems=(replace(plan.filesystems[0], mkfs_argv=(
            "mke2fs", "-F", "-t", "ext4", "-b", "3000", f"{loop}p1")),))
        with pytest.raises(StepFailed) as e:
            execute_plan(broken, log=lambda _: None, progress=lambda _: None, confirm_token=confirm_plan(broken),
                         phases=(Phase.FORMAT,))
        assert e.value.step == f"make ext4 on {loop}p1" and e.value.argv[-1] == f"{loop}p1"
        assert broken.steps()[e.value.index].name == e.value.step and "exit code" in e.value.reason
    finally:
        _cleanup(loop, [])


def test_disk_plan_is_data() -> None:
    # the plan holds no callables or handles: it can be shown, logged and compared
    dp: DiskPlan = _plan(gpt_descriptor(), target("vda", 3 * GIB)).disks[0]
    assert repr(dp).startswith("DiskPlan(key='disk1'")


# ------------------------------------------------------------------------------------------------ the device guard


@pytest.fixture
def machine(tmp_path: Path) -> str:
    """/dev and /sys of a machine with the plan's disk vda and another disk sdb (8:16)."""
    for d in ("dev/disk/by-id", "sys/devices/pci0/block/sdb/sdb1", "sys/devices/virtio0/block/vda/vda3",
              "sys/dev/block", "sys/block", "sys/class/block"):
        (tmp_path / d).mkdir(parents=True)
    for name in ("vda", "vda3", "sdb", "sdb1"):
        (tmp_path / "dev" / name).touch()
    os.symlink("../../vda", tmp_path / "dev/disk/by-id/virtio-PLAN")
    os.symlink("../../sdb", tmp_path / "dev/disk/by-id/ata-OTHER")
    os.symlink("/dev/sdb1", tmp_path / "dev/disk/by-id/ata-OTHER-part1")  # absolute: from the machine's /
    for majmin, path in (("8:16", "pci0/block/sdb"), ("8:17", "pci0/block/sdb/sdb1"), ("254:0", "virtio0/block/vda")):
        os.symlink(f"../../devices/{path}", tmp_path / "sys/dev/block" / majmin)
    return str(tmp_path)


PLAN_DEVICES = ("/dev/vda", "/dev/vda1", "/dev/vda2", "/dev/vda3")
HOSTILE_COMMANDS = [
    "mkfs.ext4 -F /dev/sdb",
    "mkfs.ext4 /dev/sdb1",
    "dd if=/dev/zero of=/dev/sdb bs=1M count=1",
    "some-tool --device=/dev/sdb",
    "cat /tmp/x > /dev/sdb",
    "dd of='/dev/sdb'",
    'dd of=/de""v/sdb',
    "wipefs -a /dev/disk/by-id/ata-OTHER",
    "wipefs -a /dev/disk/by-id/ata-OTHER-part1",
    "echo 1 > /sys/block/sdb/device/delete",
    "echo 1 > /sys/class/block/sdb1/holders",
    "cat /sys/devices/pci0/block/sdb/sdb1/size",
    "cat /sys/dev/block/8:16/size",
    "echo 8:17 > /sys/power/resume",
    "mknod /tmp/d b 8 16 && dd if=/dev/zero of=/tmp/d",
    "mkfs.ext4 /dev/nvme0n1",  # not on this machine at all: not a device of the plan either
    "echo 'unbalanced",
]


@pytest.mark.parametrize("command", HOSTILE_COMMANDS)
def test_the_device_guard_sees_every_way_a_command_names_a_disk(machine: str, command: str) -> None:
    argv = ("chroot", "/target", "/bin/sh", "-c", command)
    problems = find_foreign_devices(argv, PLAN_DEVICES, fs_root=machine)
    assert problems, command
    assert any(w in " ".join(problems) for w in ("sdb", "nvme0n1", "mknod", "cannot be read")), problems


@pytest.mark.parametrize("command", [
    "echo restored > /etc/asr-restored",
    "update-grub >/dev/null 2>&1 </dev/zero",
    "tune2fs -L root /dev/vda3",
    "blkid /dev/disk/by-id/virtio-PLAN",
    "cat /sys/block/vda/size /sys/dev/block/254:0/size /sys/devices/virtio0/block/vda/vda3/size",
    "date -s 12:30 && ls /devices /target/dev /dev",
    "true",
])
def test_the_device_guard_lets_the_plans_own_devices_and_harmless_words_pass(machine: str, command: str) -> None:
    assert find_foreign_devices(("chroot", "/target", "/bin/sh", "-c", command), PLAN_DEVICES, fs_root=machine) == []


@pytest.mark.parametrize("command", ["mkfs.ext4 -F /dev/sdb", "wipefs --all /dev/loop0", "blkdiscard /dev/vdb1",
                                     "echo 1 > /sys/block/loop0/device/delete", "cat /x | dd of=/dev/disk/by-id/x"])
def test_a_post_restore_command_naming_another_disk_is_refused_before_anything_runs(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")  # if anything ran, InternalError would come instead
    d = replace(gpt_descriptor(), commands=(Command(1, "true"), Command(2, command, critical=True)))
    plan = _plan(d, target("vda", 3 * GIB))
    logged: list[str] = []
    with pytest.raises(PlanViolationError, match=r"step 'post-restore command 2: .*names .*refused"):
        execute_plan(plan, log=logged.append, progress=lambda _: None, confirm_token=confirm_plan(plan))
    assert logged == []


def test_the_rescue_systems_grub_install_is_refused_where_boot_grub_leads_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "target", tmp_path / "outside"
    (root / "boot/grub2").mkdir(parents=True)
    outside.mkdir()
    r = str(root)
    grub = RunStep("g", Phase.BOOTLOADER, ("grub-install", "--target=i386-pc", f"--boot-directory={r}/boot",
                                           "--directory=/usr/lib/grub/i386-pc", "/dev/vda"), writes=("/dev/vda",))
    assert resolve_step(grub, r, print) == grub  # a real boot/grub (absent here: grub-install makes it)
    os.symlink("grub2", root / "boot/grub")  # a link that stays inside: fine
    assert resolve_step(grub, r, print) == grub
    os.unlink(root / "boot/grub")
    os.symlink(str(outside), root / "boot/grub")  # grub-install would write the host's outside/i386-pc/*.mod
    with pytest.raises(TargetPathError, match=f"{r}/boot/grub leads to {outside} for a tool of the rescue system"):
        resolve_step(grub, r, print)
    assert list(outside.iterdir()) == []


def test_by_uuid_links_are_made_as_udev_makes_them(tmp_path: Path) -> None:
    """The rescue system has no udev: the step links each restored filesystem by UUID (relative, as udev does) so
    that the restored system's update-grub, in the chroot, writes root=UUID=... (grub-mkconfig's 10_linux tests
    /dev/disk/by-uuid/<UUID>); a stale link of the same name is replaced."""
    where = tmp_path / "dev" / "disk" / "by-uuid"
    where.mkdir(parents=True)
    (where / "0123-4567").symlink_to("../../stale")
    step = LinkByUuid("link", Phase.BOOTLOADER, (("0123-4567", "/dev/vda2"), ("c0f664e7-3734-4747", "/dev/vda3")),
                      directory=str(where))  # fmt: skip
    logged: list[str] = []
    assert _run_step(step, str(tmp_path), log=logged.append, progress=lambda p: None) == (Outcome.DONE, "")
    assert os.readlink(where / "0123-4567") == os.path.relpath("/dev/vda2", str(where))
    assert os.readlink(where / "c0f664e7-3734-4747") == os.path.relpath("/dev/vda3", str(where))
    assert logged == [f"  {where}/0123-4567 -> /dev/vda2", f"  {where}/c0f664e7-3734-4747 -> /dev/vda3"]
