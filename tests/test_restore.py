"""The restore flow's own parts (recovery_env/restore/flow.py) and the capture's FAT fallback (capture/checks.py): pure
functions by comparison; the block-device reader with real blkid on real images; the FAT fallback with real
mtools on a real FAT image.  The whole flow runs in QEMU in test_restore_vm.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_plan import gpt_descriptor, target

from builder.build import VOLUME_ID
from recovery_env.capture.checks import ArchiveSource, SourceReader, plan_fat_view, stage_fat_source
from recovery_env.errors import BackupSetError, TargetPathError
from recovery_env.model.descriptor import BackupSet, Compression
from recovery_env.probe.media import (
    BACKUP_MOUNT,
    MEDIA_LABEL,
    MEDIA_MOUNT,
    BlockFs,
    find_boot_media,
    read_block_filesystems,
)
from recovery_env.restore.execute import Progress
from recovery_env.restore.flow import (
    BackupSource,
    describe_wanted,
    make_log_name,
    plan_backup_search,
    plan_leftover_unmounts,
    render_progress_bar,
    write_run_log,
)
from recovery_env.restore.match import match_disks
from recovery_env.restore.plan import plan_restore
from recovery_env.run import run


def backup_set(label: str = "ASRBACKUP", uuid: str = "", path: str = "/asr/host") -> BackupSet:
    return BackupSet(label, uuid, path, Compression.ZSTD, "MANIFEST", "0" * 64, 10)


ISO = BlockFs("/dev/sr0", "iso9660", MEDIA_LABEL, "2026-11-26-00-00-00-00")
BK = BlockFs("/dev/vdb", "ext4", "ASRBACKUP", "a58ba0f9-fa82-40cf-be1a-bc5e74ecead8")
OTHER = BlockFs("/dev/vdc1", "ext4", "data", "11111111-2222-4333-8444-555555555555")
SWAP = BlockFs("/dev/vdc2", "swap", "", "22222222-2222-4333-8444-555555555555")


def test_the_boot_medium_is_the_iso_with_the_media_label() -> None:
    assert MEDIA_LABEL == VOLUME_ID  # the builder names the ISO what the restore looks for
    assert find_boot_media([OTHER, ISO, BlockFs("/dev/sr1", "iso9660", "OTHER_CD")]) == [ISO]


def test_backup_search_by_uuid_then_label_then_the_embedded_set() -> None:
    wanted = backup_set(uuid=BK.uuid.upper())
    found = plan_backup_search(wanted, [ISO, OTHER, BK, SWAP], [ISO])
    assert [(c.fs.device, c.source, c.directory) for c in found] == [
        ("/dev/vdb", BackupSource.UUID, f"{BACKUP_MOUNT}/asr/host"),  # once, although the label matches too
        ("/dev/sr0", BackupSource.EMBEDDED, f"{MEDIA_MOUNT}/asr/backup"),
    ]
    by_label = plan_backup_search(backup_set(), [OTHER, BK], [])
    assert [(c.fs.device, c.source) for c in by_label] == [("/dev/vdb", BackupSource.LABEL)]


def test_backup_search_never_mounts_the_boot_medium_as_the_backup_medium() -> None:
    same_label = BlockFs("/dev/sr0", "iso9660", "ASRBACKUP")
    found = plan_backup_search(backup_set(), [same_label], [same_label])
    assert [c.source for c in found] == [BackupSource.EMBEDDED]


def test_backup_search_without_a_named_medium_tries_every_filesystem_with_files() -> None:
    found = plan_backup_search(backup_set(label=""), [OTHER, BK, SWAP], [])
    assert [(c.fs.device, c.source) for c in found] == [("/dev/vdc1", BackupSource.SEARCH),
                                                        ("/dev/vdb", BackupSource.SEARCH)]
    assert plan_backup_search(backup_set(label="NOPE"), [OTHER, BK, SWAP], []) == []


def test_an_earlier_attempts_mounts_under_the_target_are_unmounted_children_first() -> None:
    """After a failed step or a lost backup medium, F3 and a new restore: /target and what is under it (left
    mounted by the first attempt) are unmounted before the disks are erased again."""
    mountinfo = "\n".join([
        "22 1 0:5 / / rw - rootfs rootfs rw",
        "30 22 254:16 / /run/asr/backup ro - ext4 /dev/vdb ro",
        "31 22 254:3 / /target rw - ext4 /dev/vda3 rw",
        "32 31 254:2 / /target/boot/efi rw - vfat /dev/vda2 rw",
        "33 31 0:5 / /target/dev rw - devtmpfs devtmpfs rw",
        "34 22 0:40 / /target2 rw - tmpfs tmpfs rw",
    ])  # fmt: skip
    assert plan_leftover_unmounts(mountinfo) == ["/target/dev", "/target/boot/efi", "/target"]
    assert plan_leftover_unmounts(mountinfo, "/mnt") == []


def test_describe_wanted() -> None:
    assert describe_wanted(backup_set(uuid="abc")) == "the filesystem with UUID abc or label 'ASRBACKUP'"
    assert describe_wanted(backup_set(label="")) == "a filesystem"


def test_progress_bar_fits_the_status_row() -> None:
    bar = render_progress_bar(Progress("restore /", 3 << 20, 12 << 20, 2.0))
    assert bar == "[####............]  25% 3.0 MiB of 12.0 MiB 1.5 MiB/s ETA 0:06"
    assert len("restore / " + render_progress_bar(Progress("x", 999 << 20, 1000 << 20, 1.0))) <= 79  # else cut
    assert "ETA" not in render_progress_bar(Progress("x", 0, 10, 0.0))


def test_log_name() -> None:
    assert make_log_name(1764118923) == "restore-20251126-010203.log"


@pytest.mark.parametrize("link", ["absolute", "relative", "loop"])
def test_the_run_log_is_written_inside_the_target_whatever_var_points_at(tmp_path: Path, link: str) -> None:
    root, outside = tmp_path / "target", tmp_path / "outside"
    (outside / "log").mkdir(parents=True)
    root.mkdir()
    target_of = {"absolute": str(outside), "relative": "../outside", "loop": "var"}[link]
    os.symlink(target_of, root / "var")  # a restored /var -> ... that points, on this host, at outside/
    agent_log = tmp_path / "agent.log"
    agent_log.write_text("ASR: restore complete\n")
    d = gpt_descriptor()
    plan = plan_restore(d, match_disks(d, [target("vda", 3 << 30)], unattended=True), target_root=str(root),
                        backup_dir="/b")
    if link == "loop":
        with pytest.raises(TargetPathError, match=f"symlink {root}/var -> var"):
            write_run_log(plan, str(agent_log), 1764118923)
    else:
        written = write_run_log(plan, str(agent_log), 1764118923)
        inside = {"absolute": f"{root}{outside}", "relative": f"{root}/outside"}[link]
        assert written == f"{inside}/log/asr/restore-20251126-010203.log"
        assert Path(written).read_text() == "ASR: restore complete\n"
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    assert [p.name for p in outside.rglob("*")] == ["log"]  # nothing written outside the target


# -- real blkid on real images -------------------------------------------------------------------------------


def test_block_filesystems_read_with_blkid(tmp_path: Path) -> None:
    """A fake /sys/class/block naming image files as devices: blkid -p probes the real images."""
    dev = tmp_path / "dev"
    dev.mkdir()
    run(["mke2fs", "-q", "-t", "ext4", "-L", "ASRBACKUP", "-U", BK.uuid, str(dev / "vdb"), "8M"])
    (dev / "vdc").write_bytes(bytes(1 << 20))  # blank: no filesystem
    (dev / "fd0").write_bytes(b"")  # never probed
    block = tmp_path / "sys" / "class" / "block"
    for name, size in (("vdb", 16384), ("vdc", 2048), ("fd0", 2880), ("sr0", 0)):
        (block / name).mkdir(parents=True)
        (block / name / "size").write_text(f"{size}\n")
    found = read_block_filesystems(tmp_path / "sys", str(dev))
    assert found == [BlockFs(str(dev / "vdb"), "ext4", "ASRBACKUP", BK.uuid)]


# -- the capture's FAT fallback ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "want"),
    [
        ("umask=0077", (0o700, 0o700, 0, 0)),
        ("defaults", (0o755, 0o755, 0, 0)),
        ("fmask=0133,dmask=0022,uid=1000,gid=100", (0o644, 0o755, 1000, 100)),
        ("umask=077,fmask=0177", (0o600, 0o700, 0, 0)),
    ],
)
def test_fat_view_follows_the_kernel_rules(options: str, want: tuple[int, int, int, int]) -> None:
    v = plan_fat_view(options)
    assert (v.file_mode, v.dir_mode, v.uid, v.gid) == want


def test_fat_view_showexec_and_bad_values() -> None:
    v = plan_fat_view("showexec")
    assert (v.mode_of("GRUB.CFG", False), v.mode_of("SETUP.EXE", False), v.mode_of("EFI", True)) == (
        0o644, 0o755, 0o755)  # fmt: skip
    with pytest.raises(BackupSetError, match=r"umask='8x': not an octal mask"):
        plan_fat_view("umask=8x")


def test_fat_source_staged_with_mtools(tmp_path: Path) -> None:
    """A real FAT image read by mcopy: every file with its content and mtime, modes and owner as a mount with the
    fstab options would show them, the root directory dated 0 (FAT's root has no entry)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown of the staged files)")
    img = tmp_path / "esp.img"
    run(["mkfs.vfat", "-C", str(img), "8192"])
    (tmp_path / "BOOTX64.EFI").write_bytes(b"MZ loader" * 100)
    env = {"TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"}
    run(["mmd", "-i", str(img), "::/EFI", "::/EFI/BOOT", "::/EFI/debian"], env=env)
    run(["mcopy", "-m", "-i", str(img), str(tmp_path / "BOOTX64.EFI"), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    os.utime(tmp_path / "BOOTX64.EFI", (1700000000, 1700000000))
    run(["mcopy", "-m", "-o", "-i", str(img), str(tmp_path / "BOOTX64.EFI"), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    src = ArchiveSource("fs1", "/boot/efi", tmp_path / "mnt", str(img), 0, SourceReader.MTOOLS, "uid=7,umask=0027")
    staged = stage_fat_source(src, tmp_path / "staging")
    f = staged / "EFI" / "BOOT" / "BOOTX64.EFI"
    assert f.read_bytes() == b"MZ loader" * 100
    st = f.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o750, 7, 0, 1700000000)
    assert stat.S_IMODE((staged / "EFI" / "debian").stat().st_mode) == 0o750
    assert (stat.S_IMODE(staged.stat().st_mode), int(staged.stat().st_mtime)) == (0o750, 0)
    empty = tmp_path / "empty.img"
    run(["mkfs.vfat", "-C", str(empty), "1024"])
    src_empty = ArchiveSource("fs1", "/boot/efi", tmp_path, str(empty), 0, SourceReader.MTOOLS, "")
    assert list(stage_fat_source(src_empty, tmp_path / "staging2").iterdir()) == []
    broken = tmp_path / "broken.img"
    broken.write_bytes(bytes(1 << 20))
    with pytest.raises(BackupSetError, match=r"/boot/efi \(fs1\): mtools cannot read"):
        stage_fat_source(ArchiveSource("fs1", "/boot/efi", tmp_path, str(broken), 0, SourceReader.MTOOLS, ""),
                         tmp_path / "staging3")


# -- asr build --embed-backup: what is read (the ISO itself is checked in test_restore_vm.py) ---------------------


def test_embed_backup_refuses_a_set_that_is_not_the_descriptors(tmp_path: Path) -> None:
    from dataclasses import replace

    from builder.build import read_backup_set
    from builder.vm.sample import sample_descriptor
    from recovery_env.errors import InputError

    d = sample_descriptor()
    assert d.backup is not None
    with pytest.raises(BackupSetError, match=r"is damaged or incomplete:\n  fs\d\.tar\.zst: missing"):
        read_backup_set(tmp_path, d)
    with pytest.raises(BackupSetError, match=r"--embed-backup .*/nope: not a directory"):
        read_backup_set(tmp_path / "nope", d)
    with pytest.raises(InputError, match=r"the descriptor records no backup set to embed"):
        read_backup_set(tmp_path, replace(d, backup=None))
