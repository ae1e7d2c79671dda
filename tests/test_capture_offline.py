"""The offline capture's pure planners (recovery_env.capture.flow) and its boot options; the whole flow is exercised in
QEMU by tests/test_capture_vm.py."""

from __future__ import annotations

import pytest

from recovery_env.agent.cmdline import Mode, parse_cmdline
from recovery_env.capture.flow import (
    plan_backup_medium,
    plan_mount_options,
    plan_set_dir,
    plan_source_mounts,
)
from recovery_env.errors import BackupMediaMissingError
from recovery_env.probe.layout import parse_fstab
from recovery_env.probe.media import BlockFs

ROOT = BlockFs("/dev/vda3", "ext4", "", "0b3f6a0e-8f6c-4c55-a2a4-0d3c5c6f3b11", "aa-3")
ESP = BlockFs("/dev/vda2", "vfat", "ESP", "ABCD-1234", "aa-2")
DATA = BlockFs("/dev/vda4", "ext4", "data", "5c1f8a3e-0000-4000-8000-000000000004", "aa-4")
BACKUP = BlockFs("/dev/vdb", "ext4", "ASRBACKUP", "7d1f8a3e-0000-4000-8000-000000000007")

FSTAB = parse_fstab(
    "UUID=0b3f6a0e-8f6c-4c55-a2a4-0d3c5c6f3b11 / ext4 errors=remount-ro 0 1\n"
    "LABEL=data /srv/data ext4 defaults,nofail 0 2\n"
    "UUID=abcd-1234 /boot/efi vfat umask=0077,x-systemd.automount 0 1\n"
    "/dev/vda9 none swap sw 0 0\n"
    "tmpfs /tmp tmpfs defaults 0 0\n"
)


def test_sources_are_mounted_read_only_without_journal_replay() -> None:
    assert plan_mount_options("ext4") == "ro,noload"
    assert plan_mount_options("xfs") == "ro,norecovery"
    # vfat keeps what shapes the modes it shows; drops rw and the systemd/automount words
    assert plan_mount_options("vfat", "rw,umask=0077,x-systemd.automount,nofail") == (
        "ro,codepage=437,iocharset=iso8859-1,umask=0077"
    )
    for vfstype in ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"):
        assert plan_mount_options(vfstype, "rw,defaults").split(",")[0] == "ro"


def test_source_mounts_follow_fstab_parents_first() -> None:
    mounts = plan_source_mounts(FSTAB, [ROOT, ESP, DATA], ROOT.device, "/run/asr/source")
    assert [(m.device, m.mountpoint, m.directory) for m in mounts] == [
        ("/dev/vda2", "/boot/efi", "/run/asr/source/boot/efi"),
        ("/dev/vda4", "/srv/data", "/run/asr/source/srv/data"),
    ]
    assert all(m.options.startswith("ro,") for m in mounts)
    # a filesystem that is not on the source disks (the backup medium, another disk) is never mounted
    assert plan_source_mounts(FSTAB, [ROOT, BACKUP], ROOT.device) == ()


def test_backup_medium_by_label_or_uuid() -> None:
    assert plan_backup_medium([ROOT, ESP, BACKUP]) == BACKUP
    assert plan_backup_medium([ROOT, BACKUP], f"UUID={BACKUP.uuid.upper()}") == BACKUP
    assert plan_backup_medium([ROOT, DATA], "LABEL=data") == DATA
    with pytest.raises(BackupMediaMissingError, match=r"no filesystem with LABEL 'ASRBACKUP'.*/dev/vda3"):
        plan_backup_medium([ROOT, ESP])
    with pytest.raises(BackupMediaMissingError, match="2 filesystems"):
        plan_backup_medium([BACKUP, BlockFs("/dev/vdc", "ext4", "ASRBACKUP", "x")])
    with pytest.raises(BackupMediaMissingError, match="expected LABEL=NAME or UUID=UUID"):
        plan_backup_medium([BACKUP], "PARTUUID=1")


def test_each_capture_gets_a_new_directory() -> None:
    assert plan_set_dir("asr-sample", 0) == "asr/asr-sample-19700101-000000"
    assert plan_set_dir("", 86400 + 3661) == "asr/unknown-19700102-010101"


def test_capture_boot_options() -> None:
    o = parse_cmdline("console=ttyS0 asr.mode=capture asr.unattended=1 asr.backup=label=MYDISK")
    assert (o.mode, o.unattended, o.backup, o.warnings) == (Mode.CAPTURE, True, "LABEL=MYDISK", ())
    assert parse_cmdline("").backup == "LABEL=ASRBACKUP"
    bad = parse_cmdline("asr.backup=/dev/sdb")
    assert bad.backup == "LABEL=ASRBACKUP" and "expected LABEL=NAME or UUID=UUID" in bad.warnings[0]
