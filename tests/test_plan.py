"""Disk discovery parsing, disk matching and the restore planner: pure functions, compared with expected output.

Every test here runs with ``ASR_FORBID_SUBPROCESS=1``: planning must not run anything.  The tool outputs parsed
here were captured on real machines (this project's CI host and Debian 12 guests).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from builder.vm.qemu import strip_ansi
from recovery_env.agent.screens import PLAN_PROMPT, Size, plan_pages, render_plan_page, render_screen
from recovery_env.errors import (
    AmbiguousDiskMatchError,
    DataDoesNotFitError,
    DiskMatchError,
    NoTargetDiskError,
    PlanError,
    TargetTooSmallError,
)
from recovery_env.model.descriptor import (
    GPT_BIOS_BOOT,
    GPT_ESP,
    Archive,
    BackupSet,
    Bootloader,
    BootloaderKind,
    Command,
    Compression,
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
from recovery_env.probe.disks import (
    TargetDisk,
    is_skipped_name,
    make_target_disk,
    normalize_wwn,
    parse_table_facts,
    parse_vpd_pg80,
    partition_device,
)
from recovery_env.probe.layout import parse_blkid_export
from recovery_env.restore.execute import find_foreign_devices
from recovery_env.restore.match import MatchReason, match_disks
from recovery_env.restore.plan import (
    CheckManifest,
    Extract,
    LinkByUuid,
    Phase,
    RestorePlan,
    RunStep,
    WaitPartitions,
    plan_restore,
    render_plan,
)
from recovery_env.restore.resize import descriptor_minimum_bytes
from recovery_env.text import format_size

GIB = 1 << 30
MIB = 1 << 20
ROOT_UUID = "0b9e7f3c-5a1d-4c2e-9f80-1d2c3b4a5e6f"
SWAP_UUID = "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
GPT_ID = "6a4e5c3b-9f0d-4b7e-8a21-0c5d7e9f1a2b"
LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")


def _system(firmware: Firmware) -> SystemInfo:
    return SystemInfo("sample", "0123456789abcdef0123456789abcdef", "x86_64", firmware, "6.1.0-28-amd64",
                      "Debian GNU/Linux 12 (bookworm)", "2026-11-26T01:02:03Z", "0.1.0")


def gpt_descriptor(*, serial: str = "QM00001", grow: bool = True) -> Descriptor:
    """A UEFI machine on one 2 GiB GPT disk: BIOS boot, ESP (vfat), ext4 root."""
    disk = Disk("disk1", 2 * GIB, 512, 4096, TableType.GPT, GPT_ID, True, device="/dev/sda",
                model="QEMU HARDDISK", serial=serial, grow_last=grow)
    parts = (
        Partition("disk1", 1, 2048, 2048, GPT_BIOS_BOOT, "11111111-0000-4000-8000-000000000001", "bios",
                  flags=(PartFlag.BIOS_GRUB,)),
        Partition("disk1", 2, 4096, 204800, GPT_ESP, "11111111-0000-4000-8000-000000000002", "EFI System Partition",
                  flags=(PartFlag.ESP,)),
        Partition("disk1", 3, 208896, 3983360, LINUX_FS, "11111111-0000-4000-8000-000000000003", "root",
                  attributes=1 << 63),
    )
    filesystems = (
        Filesystem("fs1", "disk1p2", FsType.VFAT, "ABCD-1234", "EFI", fat_size=32),
        Filesystem("fs2", "disk1p3", FsType.EXT4, ROOT_UUID, "root", block_size=4096, inode_size=256,
                   features=("has_journal", "ext_attr", "dir_index", "filetype", "needs_recovery", "extent",
                             "64bit", "flex_bg", "metadata_csum")),
    )
    mounts = (
        Mount("/boot/efi", "fs1", "umask=0077", FstabSpec.UUID, "UUID=ABCD-1234", 0, 1),
        Mount("/", "fs2", "errors=remount-ro", FstabSpec.UUID, f"UUID={ROOT_UUID}", 0, 1),
    )
    backup = BackupSet("ASRBACKUP", "", "/asr/sample", Compression.ZSTD, "MANIFEST", "a" * 64, 1234, (
        Archive("fs2", "fs2.tar.zst", 50 * MIB, "b" * 64, 1200),
        Archive("fs1", "fs1.tar.zst", 3 * MIB, "c" * 64, 34),
    ))
    return Descriptor(_system(Firmware.UEFI), (disk,), parts, filesystems, mounts,
                      Bootloader(BootloaderKind.GRUB_EFI, "disk1", "/boot/efi", "debian"), backup,
                      (Command(1, "echo restored > /etc/asr-restored", critical=True), Command(2, "true")))


def gpt4k_descriptor() -> Descriptor:
    """A 4 GiB GPT disk with 4096-byte logical sectors: ESP + xfs root."""
    disk = Disk("disk1", 4 * GIB, 4096, 4096, TableType.GPT, GPT_ID, True, device="/dev/nvme0n1")
    parts = (
        Partition("disk1", 1, 256, 65536, GPT_ESP, "22222222-0000-4000-8000-000000000001", "esp"),
        Partition("disk1", 2, 65792, 982528, LINUX_FS, "22222222-0000-4000-8000-000000000002", "root"),
    )
    filesystems = (
        Filesystem("fs1", "disk1p1", FsType.VFAT, "1A2B-3C4D", "ESP", fat_size=32),
        Filesystem("fs2", "disk1p2", FsType.XFS, ROOT_UUID, "root", block_size=4096),
    )
    mounts = (Mount("/", "fs2"), Mount("/boot/efi", "fs1"))
    return Descriptor(_system(Firmware.UEFI), (disk,), parts, filesystems, mounts,
                      Bootloader(BootloaderKind.GRUB_EFI, "disk1", "/boot/efi", "debian"))


def mbr_descriptor(*, extended: bool = False) -> Descriptor:
    """A BIOS machine on one 1 GiB MBR disk: bootable ext4 root, swap (in an extended partition if asked); fstab
    names the swap by path."""
    disk = Disk("disk1", GIB, 512, 512, TableType.MBR, "0x1234abcd", True, device="/dev/sda", model="QEMU HARDDISK")
    root = Partition("disk1", 1, 2048, 1048576, "83", "1234abcd-01", flags=(PartFlag.BOOT,))
    if extended:
        parts: tuple[Partition, ...] = (
            root,
            Partition("disk1", 2, 1050624, 1046528, "05", "1234abcd-02"),
            Partition("disk1", 5, 1052672, 1044480, "82", "1234abcd-05"),
        )
        swap_part = "disk1p5"
    else:
        parts = (root, Partition("disk1", 2, 1050624, 1046528, "82", "1234abcd-02"))
        swap_part = "disk1p2"
    filesystems = (
        Filesystem("fs1", "disk1p1", FsType.EXT4, ROOT_UUID, "rootfs"),
        Filesystem("fs2", swap_part, FsType.SWAP, SWAP_UUID, "", backup=False),
    )
    mounts = (
        Mount("/", "fs1", spec=FstabSpec.UUID, device=f"UUID={ROOT_UUID}"),
        Mount("swap", "fs2", "sw", FstabSpec.PATH, "/dev/sda" + swap_part[-1]),
    )
    backup = BackupSet("", "", "/asr/mbr", Compression.ZSTD, "MANIFEST", "a" * 64, 10,
                       (Archive("fs1", "fs1.tar.zst", MIB, "d" * 64, 10),))
    return Descriptor(_system(Firmware.BIOS), (disk,), parts, filesystems, mounts,
                      Bootloader(BootloaderKind.GRUB_BIOS, "disk1"), backup)


def target(name: str, size: int, *, sector: int = 512, model: str = "QEMU HARDDISK", **kw: object) -> TargetDisk:
    return TargetDisk(name, size, sector, sector if sector == 4096 else 512, model, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ discovery


# /sys/block/vda on the CI host (virtio disk) and /sys/block/sda of a Debian 12 guest (QEMU IDE disk).
SYSFS_VDA = {"dev": "254:0\n", "size": "536870912\n", "ro": "0\n", "removable": "0\n", "hidden": "0\n",
             "queue/logical_block_size": "512\n", "queue/physical_block_size": "4096\n", "serial": "overlayblk\n",
             "device/vendor": "0x1af4\n"}
SYSFS_SDA = {"dev": "8:0\n", "size": "4194304\n", "ro": "0\n", "removable": "0\n",
             "queue/logical_block_size": "512\n", "queue/physical_block_size": "512\n",
             "device/model": "QEMU HARDDISK   \n", "device/vendor": "ATA     \n",
             "device/wwid": "t10.ATA     QEMU HARDDISK                           QM00001             \n"}
VPD_PG80_SDA = b"\x00\x80\x00\x14QM00001             "

# blkid -p -o export of a GPT image and an MBR image made by sfdisk (util-linux 2.38.1).
BLKID_GPT = "DEVNAME=g_a.img\nPTUUID=11111111-2222-3333-4444-555555555555\nPTTYPE=gpt\n"
BLKID_MBR = "DEVNAME=g_b.img\nPTUUID=1234abcd\nPTTYPE=dos\n"

# /proc/self/mountinfo inside the boot media: the ISO from the CD, the backup set on a second disk's partition
# and a loop-mounted image file on a third disk (the walk from it to the disks: tests/test_holding.py).
MOUNTINFO = """\
22 1 0:21 / / rw,relatime - rootfs rootfs rw
23 22 0:5 / /dev rw,relatime - devtmpfs devtmpfs rw,size=493364k,nr_inodes=123341,mode=755
24 22 0:22 / /proc rw,relatime - proc proc rw
31 22 11:0 / /run/asr/media ro,relatime - iso9660 /dev/sr0 ro,nojoliet,check=s,map=n,blocksize=2048
32 22 254:17 / /run/asr/backup ro,relatime - ext4 /dev/vdb1 ro
33 22 254:33 / /run/asr/spool rw,relatime - ext4 /dev/vdc1 rw
34 22 7:0 / /run/asr/img\\040dir ro,relatime - ext4 /dev/loop0 ro
"""


def test_sysfs_virtio_disk() -> None:
    d = make_target_disk("vda", SYSFS_VDA, blkid=parse_blkid_export(BLKID_GPT))
    assert d == TargetDisk("vda", 256 * GIB, 512, 4096, "", "overlayblk", "", TableType.GPT,
                           "11111111-2222-3333-4444-555555555555")
    assert d.device == "/dev/vda"
    assert d.describe() == "/dev/vda (256.0 GiB)"


def test_sysfs_ata_disk_serial_from_vpd_and_mbr_id() -> None:
    d = make_target_disk("sda", SYSFS_SDA, vpd_pg80=VPD_PG80_SDA, blkid=parse_blkid_export(BLKID_MBR))
    assert (d.model, d.serial, d.wwn) == ("QEMU HARDDISK", "QM00001", "")  # a t10 id is not a WWN
    assert (d.table, d.disk_id) == (TableType.MBR, "0x1234abcd")
    assert d.describe() == "/dev/sda (QEMU HARDDISK, 2.0 GiB)"


def test_blank_disk_has_no_table() -> None:
    assert parse_table_facts({}) == (None, "")
    assert parse_vpd_pg80(b"") == ""
    assert parse_vpd_pg80(b"\x00\x83\x00\x04abcd") == ""  # another VPD page


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("naa.5000C500A1B2C3D4", "5000c500a1b2c3d4"), ("0x5000c500a1b2c3d4", "5000c500a1b2c3d4"),
     ("eui.0025385b71b07e2f", "0025385b71b07e2f"), ("t10.ATA QEMU HARDDISK QM00001", ""), ("", "")],
)
def test_normalize_wwn(raw: str, norm: str) -> None:
    assert normalize_wwn(raw) == norm


@pytest.mark.parametrize(
    ("disk", "n", "dev"),
    [("/dev/vda", 1, "/dev/vda1"), ("/dev/sda", 12, "/dev/sda12"), ("/dev/nvme0n1", 1, "/dev/nvme0n1p1"),
     ("/dev/loop0", 3, "/dev/loop0p3"), ("/dev/mmcblk0", 2, "/dev/mmcblk0p2")],
)
def test_partition_device_names(disk: str, n: int, dev: str) -> None:
    assert partition_device(disk, n) == dev


def test_skipped_names() -> None:
    assert [n for n in ("sda", "vda", "nvme0n1", "loop0", "sr0", "fd0", "zram0", "dm-0", "md127", "ram1")
            if not is_skipped_name(n)] == ["sda", "vda", "nvme0n1"]


def test_format_size() -> None:
    assert [format_size(x) for x in (512, 1536, 2 * GIB, 3 * GIB // 2, 5 << 40)] == [
        "512 B", "1.5 KiB", "2.0 GiB", "1.5 GiB", "5.0 TiB"]


# ------------------------------------------------------------------------------------------------ matching


def test_match_by_serial_before_size() -> None:
    d = gpt_descriptor()
    m = match_disks(d, [target("vda", 2 * GIB, serial="X"), target("vdb", 3 * GIB, serial="QM00001")],
                    unattended=True)
    assert m["disk1"].name == "vdb" and m.reason("disk1") is MatchReason.SERIAL and m.complete


def test_match_by_wwn_spelled_differently() -> None:
    d = replace(gpt_descriptor(serial=""), disks=(replace(gpt_descriptor().disks[0], serial="",
                                                          wwn="0x5000c500a1b2c3d4"),))
    m = match_disks(d, [target("sda", 2 * GIB), target("sdb", 4 * GIB, wwn="5000c500a1b2c3d4")], unattended=True)
    assert (m["disk1"].name, m.reason("disk1")) == ("sdb", MatchReason.WWN)


def test_match_by_disk_guid() -> None:
    d = gpt_descriptor(serial="")
    ts = [target("vda", 2 * GIB), target("vdb", 8 * GIB, table=TableType.GPT, disk_id=GPT_ID)]
    m = match_disks(d, ts, unattended=True)
    assert (m["disk1"].name, m.reason("disk1")) == ("vdb", MatchReason.DISK_ID)


def test_match_by_size_smallest_fitting_first() -> None:
    d = gpt_descriptor(serial="")
    ts = [target("vda", 4 * GIB), target("vdb", 3 * GIB), target("vdc", GIB), target("vdd", 5 * GIB // 2)]
    m = match_disks(d, ts, unattended=True)
    assert (m["disk1"].name, m.reason("disk1")) == ("vdd", MatchReason.SIZE)


def test_excluded_disk_never_chosen_even_with_the_same_serial() -> None:
    d = gpt_descriptor()
    ts = [target("vda", 3 * GIB), target("vdb", 2 * GIB, serial="QM00001")]
    m = match_disks(d, ts, exclude={"/dev/vdb": "holds the backup set"}, unattended=True)
    assert m["disk1"].name == "vda"


def test_backup_disk_of_the_same_size_is_not_chosen() -> None:
    d = gpt_descriptor(serial="")
    ts = [target("vda", 3 * GIB), target("vdb", 3 * GIB)]
    m = match_disks(d, ts, exclude={"vdb"}, unattended=True)  # names and /dev paths both work
    assert m["disk1"].name == "vda"


def test_a_disk_too_small_for_the_data_is_a_named_error() -> None:
    """No used bytes recorded (an older descriptor): nothing may shrink, so the data needs the original's space."""
    with pytest.raises(DataDoesNotFitError) as e:
        match_disks(gpt_descriptor(serial=""), [target("vda", GIB)], unattended=True)
    assert isinstance(e.value, TargetTooSmallError)  # XP's rule's error, refined
    assert str(e.value) == (
        "the data of disk1 (was /dev/sda, 2.0 GiB) does not fit on /dev/vda (QEMU HARDDISK, 1.0 GiB): 1023.0 MiB "
        "(1072710144 bytes) missing; its partitions at the least their data needs: / (disk1p3, ext4) 1.9 GiB (no "
        "used size recorded: at least its original size); /boot/efi (disk1p2, vfat) 100.0 MiB (fixed: ESP); "
        "disk1p1 1.0 MiB (fixed: BIOS boot partition)"
    )


def test_one_sector_short_of_the_data_is_too_small() -> None:
    """Without used bytes the partitions keep their sizes: the least disk ends the root's 1 MiB-aligned end plus
    the backup GPT (33 sectors), a little less than the original 2 GiB (whose last 2015 sectors were free)."""
    d = gpt_descriptor(serial="")
    need = (208896 + 3983360 + 33) * 512
    assert descriptor_minimum_bytes(d, d.disks[0]) == need < 2 * GIB
    assert match_disks(d, [target("vda", need)], unattended=True)["disk1"].name == "vda"
    with pytest.raises(DataDoesNotFitError, match=r"512 B \(512 bytes\) missing"):
        match_disks(d, [target("vda", need - 512)], unattended=True)


def test_nothing_left_names_why() -> None:
    ts = [target("vda", 3 * GIB), target("vdb", 3 * GIB, read_only=True), target("vdc", 3 * GIB, sector=4096)]
    with pytest.raises(NoTargetDiskError) as e:
        match_disks(gpt_descriptor(serial=""), ts, exclude={"/dev/vda": "holds /run/asr/media"}, unattended=True)
    msg = str(e.value)
    assert msg.startswith("no disk to restore disk1 (was /dev/sda, QEMU HARDDISK, 2.0 GiB) onto: ")
    assert "/dev/vda is excluded (holds /run/asr/media)" in msg
    assert "/dev/vdb is read-only" in msg
    assert "/dev/vdc (QEMU HARDDISK, 3.0 GiB) has 4096-byte sectors, disk1 had 512-byte sectors" in msg


def test_tie_is_an_error_when_unattended() -> None:
    ts = [target("vda", 3 * GIB), target("vdb", 3 * GIB)]
    with pytest.raises(AmbiguousDiskMatchError, match=r"fits 2 disks equally .*/dev/vda.*/dev/vdb.*unattended"):
        match_disks(gpt_descriptor(serial=""), ts, unattended=True)


def test_tie_is_a_choice_when_interactive_then_pinned() -> None:
    d = gpt_descriptor(serial="")
    ts = [target("vda", 3 * GIB), target("vdb", 3 * GIB), target("vdc", 8 * GIB), target("vdd", GIB)]
    m = match_disks(d, ts, unattended=False)
    assert not m.complete and len(m) == 0
    (choice,) = m.pending
    assert choice.disk.key == "disk1" and choice.reason is MatchReason.SIZE
    assert [t.name for t in choice.candidates] == ["vda", "vdb", "vdc"]  # every fitting disk, smallest first
    m2 = match_disks(d, ts, unattended=False, pinned={"disk1": "/dev/vdb"})
    assert m2.complete and m2["disk1"].name == "vdb" and m2.reason("disk1") is MatchReason.CHOSEN
    with pytest.raises(TargetTooSmallError):
        match_disks(d, ts, unattended=False, pinned={"disk1": "vdd"})
    with pytest.raises(DiskMatchError, match="not a free disk"):
        match_disks(d, ts, exclude={"vdb"}, unattended=False, pinned={"disk1": "vdb"})


def test_two_disks_each_onto_the_smallest_that_fits() -> None:
    base = gpt_descriptor(serial="")
    small = Disk("disk2", GIB, 512, 512, TableType.MBR, "0x0badcafe", True)
    d = replace(base, disks=(*base.disks, small))
    m = match_disks(d, [target("vda", 2 * GIB), target("vdb", GIB)], unattended=True)
    assert {k: t.name for k, t in m.items()} == {"disk1": "vda", "disk2": "vdb"}
    assert list(m) == ["disk1", "disk2"]  # descriptor order


def test_non_critical_disks_are_not_matched() -> None:
    base = gpt_descriptor(serial="")
    data = Disk("disk2", 100 * GIB, 512, 512, TableType.GPT, "99999999-0000-4000-8000-000000000000", False)
    m = match_disks(replace(base, disks=(*base.disks, data)), [target("vda", 2 * GIB)], unattended=True)
    assert dict(m) == {"disk1": target("vda", 2 * GIB)}


# ------------------------------------------------------------------------------------------------ planning

GPT_SCRIPT_SAME_SIZE = """\
label: gpt
label-id: 6a4e5c3b-9f0d-4b7e-8a21-0c5d7e9f1a2b
unit: sectors
first-lba: 34
last-lba: 4194270
sector-size: 512

/dev/vda1 : start=2048, size=2048, type=21686148-6449-6e6f-744e-656564454649, uuid=11111111-0000-4000-8000-000000000001, name="bios"
/dev/vda2 : start=4096, size=204800, type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b, uuid=11111111-0000-4000-8000-000000000002, name="EFI System Partition"
/dev/vda3 : start=208896, size=3983360, type=0fc63daf-8483-4772-8e79-3d69d8477de4, uuid=11111111-0000-4000-8000-000000000003, name="root", attrs="GUID:63"
"""  # noqa: E501


def _plan(d: Descriptor, t: TargetDisk, **kw: str):  # type: ignore[no-untyped-def]
    return plan_restore(d, match_disks(d, [t], unattended=True), backup_dir="/run/asr/backup/asr/sample", **kw)


def test_gpt_same_size_script() -> None:
    p = _plan(gpt_descriptor(), target("vda", 2 * GIB, serial="QM00001"))
    (dp,) = p.disks
    assert dp.sfdisk_script == GPT_SCRIPT_SAME_SIZE
    assert dp.wipe_argv == ("wipefs", "--all", "/dev/vda")
    assert dp.sfdisk_argv == ("sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "always", "--wipe-partitions",
                              "always", "/dev/vda")
    assert not any(pp.resized for pp in dp.partitions)


def test_gpt_on_a_larger_disk_the_root_grows() -> None:
    p = _plan(gpt_descriptor(), target("vda", 3 * GIB))
    (dp,) = p.disks
    # 3 GiB = 6291456 sectors: backup GPT from 6291423 on; the grown end is aligned down to 1 MiB.
    expected = (GPT_SCRIPT_SAME_SIZE.replace("last-lba: 4194270", "last-lba: 6291422")
                .replace("size=3983360", "size=6080512"))
    assert dp.sfdisk_script == expected
    assert [(pp.number, pp.size, pp.resized) for pp in dp.partitions] == [
        (1, 2048, False), (2, 204800, False), (3, 6080512, True)]
    assert list(p.disks_to_wipe[0].makes[1:]) == [
        "/dev/vda1  1.0 MiB  BIOS boot",
        "    fixed: BIOS boot partition",
        "/dev/vda2  100.0 MiB  EFI System  vfat 'EFI'  /boot/efi",
        "    fixed: ESP",
        "/dev/vda3  1.9 GiB -> 2.9 GiB  Linux filesystem  ext4 'root'  /",
        "    grows: / (disk1p3, ext4) takes 100% of the 1.0 GiB added, in",
        "      proportion to its size",
    ]


def test_grow_last_false_keeps_every_size() -> None:
    p = _plan(gpt_descriptor(grow=False), target("vda", 3 * GIB))
    assert "size=3983360" in p.disks[0].sfdisk_script and "last-lba: 6291422" in p.disks[0].sfdisk_script


def test_mbr_script_and_growth() -> None:
    d = mbr_descriptor()
    same = _plan(d, target("sda", GIB))
    assert same.disks[0].sfdisk_script == (
        "label: dos\nlabel-id: 0x1234abcd\nunit: sectors\nsector-size: 512\n\n"
        "/dev/sda1 : start=2048, size=1048576, type=83, bootable\n"
        "/dev/sda2 : start=1050624, size=1046528, type=82\n"
    )
    bigger = _plan(d, target("vda", 3 * GIB // 2))  # the root grows by the 512 MiB added; swap keeps its size
    assert bigger.disks[0].sfdisk_script.endswith(
        "/dev/vda1 : start=2048, size=2097152, type=83, bootable\n"
        "/dev/vda2 : start=2099200, size=1046528, type=82\n"
    )


def test_mbr_extended_moves_with_its_logical_swap() -> None:
    p = _plan(mbr_descriptor(extended=True), target("vda", 3 * GIB // 2))
    assert p.disks[0].sfdisk_script.splitlines()[5:] == [
        "/dev/vda1 : start=2048, size=2097152, type=83, bootable",
        "/dev/vda2 : start=2099200, size=1046528, type=05",  # the EBR gap of 2048 sectors kept
        "/dev/vda5 : start=2101248, size=1044480, type=82",
    ]


def test_the_extended_partition_is_waited_for_by_its_start_only() -> None:
    """The kernel shows an MBR extended partition as its first sectors (sysfs size 2), not its table size: the wait
    for the partitions checks its start alone (the restore of the real MBR Debian machine, layout 2, stopped
    there: "/dev/vda3: the kernel sees start 3667968 size 2, planned 3667968 2623488")."""
    p = _plan(mbr_descriptor(extended=True), target("vda", 3 * GIB // 2))
    (wait,) = [s for s in p.steps() if isinstance(s, WaitPartitions)]
    assert wait.partitions == ("/dev/vda1", "/dev/vda2", "/dev/vda5")
    assert wait.extents == ((2048, 2097152), (2099200, -1), (2101248, 1044480))  # -1: any size


def test_mbr_never_grows_past_2_tib() -> None:
    p = _plan(mbr_descriptor(), target("sdb", 3 << 40))
    last = p.disks[0].partitions[-1]
    assert last.start + last.size == 1 << 32  # 32-bit LBA limit of an MBR entry (2 TiB with 512-byte sectors)
    assert p.disks[0].partitions[0].size == (1 << 32) - 2048 - 1046528  # the root took it all; swap kept


def test_4096_byte_sectors_on_nvme() -> None:
    d = gpt4k_descriptor()
    p = _plan(d, target("nvme0n1", 6 * GIB, sector=4096, model="QEMU NVMe Ctrl"))
    (dp,) = p.disks
    assert dp.sfdisk_script == (
        "label: gpt\nlabel-id: 6a4e5c3b-9f0d-4b7e-8a21-0c5d7e9f1a2b\nunit: sectors\n"
        "first-lba: 6\nlast-lba: 1572858\nsector-size: 4096\n\n"
        "/dev/nvme0n1p1 : start=256, size=65536, type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b, "
        'uuid=22222222-0000-4000-8000-000000000001, name="esp"\n'
        "/dev/nvme0n1p2 : start=65792, size=1506816, type=0fc63daf-8483-4772-8e79-3d69d8477de4, "
        'uuid=22222222-0000-4000-8000-000000000002, name="root"\n'
    )
    assert [f.mkfs_argv for f in p.filesystems] == [
        ("mkfs.vfat", "-i", "1A2B3C4D", "-n", "ESP", "-F", "32", "/dev/nvme0n1p1"),
        ("mkfs.xfs", "-f", "-m", f"uuid={ROOT_UUID}", "-L", "root", "-b", "size=4096", "/dev/nvme0n1p2"),
    ]
    assert [m.argv for m in p.mounts] == [
        ("mount", "-t", "xfs", "/dev/nvme0n1p2", "/target"),
        ("mount", "-t", "vfat", "-o", "codepage=437,iocharset=iso8859-1,quiet", "/dev/nvme0n1p1", "/target/boot/efi"),
    ]


def test_sector_size_mismatch_is_refused_by_the_planner_too() -> None:
    d = gpt4k_descriptor()
    with pytest.raises(PlanError, match="4096-byte sectors"):
        plan_restore(d, {"disk1": target("vda", 8 * GIB)}, backup_dir="/b")


def test_mkfs_argv_table() -> None:
    p = _plan(gpt_descriptor(), target("vda", 3 * GIB))
    assert [f.mkfs_argv for f in p.filesystems] == [
        ("mkfs.vfat", "-i", "ABCD1234", "-n", "EFI", "-F", "32", "/dev/vda2"),
        ("mke2fs", "-F", "-t", "ext4", "-U", ROOT_UUID, "-L", "root", "-b", "4096", "-I", "256", "-O",
         "none,has_journal,ext_attr,dir_index,filetype,extent,64bit,flex_bg,metadata_csum", "/dev/vda3"),
    ]  # needs_recovery (a state of a mounted filesystem) is not passed on
    swap = _plan(mbr_descriptor(), target("vda", GIB)).filesystems[1]
    assert swap.mkfs_argv == ("mkswap", "-f", "-U", SWAP_UUID, "/dev/vda2")
    btrfs = Filesystem("fs9", "disk1p3", FsType.BTRFS, ROOT_UUID, "data", features=("no-holes",))
    d = gpt_descriptor()
    d = replace(d, filesystems=(d.filesystems[0], btrfs), mounts=(Mount("/", "fs9"),), backup=None)
    assert _plan(d, target("vda", 2 * GIB)).filesystems[1].mkfs_argv == (
        "mkfs.btrfs", "-f", "-U", ROOT_UUID, "-L", "data", "/dev/vda3")


def test_mounts_extractions_and_steps_in_order() -> None:
    p = _plan(gpt_descriptor(), target("vda", 3 * GIB))
    assert [m.argv for m in p.mounts] == [
        ("mount", "-t", "ext4", "/dev/vda3", "/target"),  # errors=remount-ro is not needed to restore
        ("mount", "-t", "vfat", "-o", "codepage=437,iocharset=iso8859-1,quiet,umask=0077", "/dev/vda2",
         "/target/boot/efi"),  # the fstab umask: the modes the MANIFEST recorded
    ]
    root, esp = p.extractions
    assert root.archive == "/run/asr/backup/asr/sample/fs2.tar.zst"
    assert root.pipeline == (
        ("zstd", "-d", "-q", "-c"),
        ("tar", "--extract", "--file=-", "--directory=/target", "--numeric-owner", "--xattrs", "--xattrs-include=*",
         "--acls", "--selinux", "--sparse", "--preserve-permissions", "--same-owner"),
    )
    assert esp.tar_argv == ("tar", "--extract", "--file=-", "--directory=/target/boot/efi", "--no-same-owner",
                            "--no-same-permissions", "--no-overwrite-dir")
    assert p.fstab_changes == ()  # UUIDs are preserved: nothing to rewrite
    names = [s.name for s in p.steps()]
    assert names[:10] == [
        "forget the old partitions of /dev/vda",
        "erase old signatures on /dev/vda",
        "write the GPT partition table on /dev/vda",
        "tell the kernel about the partitions of /dev/vda",
        "wait for the partitions of /dev/vda",
        "check the partition table of /dev/vda",
        "make vfat on /dev/vda2",
        "check vfat on /dev/vda2",
        "make ext4 on /dev/vda3",
        "check ext4 on /dev/vda3",
    ]
    restore = [s.name for s in p.steps() if s.phase is Phase.RESTORE]
    assert restore == [
        "make the mount point /target", "mount / (/dev/vda3)", "restore / from fs2.tar.zst",
        "make the mount point /target/boot/efi", "mount /boot/efi (/dev/vda2)", "restore /boot/efi from fs1.tar.zst",
        "compare the restored files with the MANIFEST",
    ]
    check = next(s for s in p.steps() if isinstance(s, CheckManifest))
    assert (check.root, check.manifest) == ("/target", "/run/asr/backup/asr/sample/MANIFEST")
    assert sum(isinstance(s, Extract) for s in p.steps()) == 2
    unmount = [s.argv for s in p.steps() if isinstance(s, RunStep) and s.phase is Phase.UNMOUNT]
    assert unmount == [("umount", "/target/sys/firmware/efi/efivars"), ("umount", "/target/sys"),
                       ("umount", "/target/proc"), ("umount", "/target/dev"), ("umount", "/target/boot/efi"),
                       ("umount", "/target"), ("sync",)]


OWN_GRUB = ("/target/usr/sbin/grub-install", "/target/sbin/grub-install")
BOOTED_UEFI = "/target/sys/firmware/efi"


def _conditions(p: RestorePlan) -> list[tuple[tuple[str, ...], bool, tuple[str, ...], tuple[str, ...], bool]]:
    return [(s.argv, s.optional, s.only_if_any, s.only_if_all, s.unless_any != ()) for s in p.bootloader]


def test_uefi_boot_loader_commands() -> None:
    """grub-efi recorded, a BIOS boot partition on the disk: the restored system's grub-install in a chroot for
    both platforms (i386-pc only if its modules are there), NVRAM only when booted under UEFI, the removable path
    always, the rescue system's grub when the restored system has none, then its update-grub."""
    p = _plan(gpt_descriptor(), target("vda", 3 * GIB))
    efi = ("--target=x86_64-efi", "--efi-directory=/boot/efi", "--bootloader-id=debian")
    assert _conditions(p) == [
        (("mount", "--bind", "/dev", "/target/dev"), False, (), (), False),
        (("mount", "-t", "proc", "proc", "/target/proc"), False, (), (), False),
        (("mount", "-t", "sysfs", "sysfs", "/target/sys"), False, (), (), False),
        (("mount", "-t", "efivarfs", "efivarfs", "/target/sys/firmware/efi/efivars"), True,
         ("/sys/firmware/efi/efivars",), (), False),
        (("chroot", "/target", "grub-install", "--target=i386-pc", "/dev/vda"), False, OWN_GRUB,
         ("/target/usr/lib/grub/i386-pc",), False),
        (("chroot", "/target", "grub-install", *efi), True, OWN_GRUB, (BOOTED_UEFI,), False),
        (("chroot", "/target", "grub-install", *efi, "--removable", "--no-nvram"), False, OWN_GRUB, (), False),
        (("grub-install", "--target=x86_64-efi", "--efi-directory=/target/boot/efi", "--boot-directory=/target/boot",
          "--directory=/usr/lib/grub/x86_64-efi", "--bootloader-id=debian", "--removable", "--no-nvram"),
         False, (), (), True),
        (("chroot", "/target", "update-grub"), False, ("/target/usr/sbin/update-grub", "/target/sbin/update-grub"),
         (), False),
    ]  # fmt: skip
    assert p.bootloader[7].unless_any == OWN_GRUB
    assert all(s.writes == ("/dev/vda",) for s in p.bootloader if "grub-install" in s.argv)
    assert [s.argv[-1] for s in p.post_commands] == ["echo restored > /etc/asr-restored", "true"]
    assert [s.optional for s in p.post_commands] == [False, True]  # critical commands stop the restore


def test_layout_1_grub_bios_recorded_with_an_esp_installs_both_platforms_from_the_chroot() -> None:
    """The real Debian machine (bios_grub + ESP + root), captured from a BIOS boot: grub-bios is recorded, the ESP
    is mounted.  Both loaders come from the restored system: i386-pc on the disk (the rescue grub as fallback),
    x86_64-efi when its modules are in the restored /usr/lib/grub; efivarfs bound in for the NVRAM entry."""
    d = gpt_descriptor()
    d = replace(d, bootloader=Bootloader(BootloaderKind.GRUB_BIOS, "disk1"))
    p = _plan(d, target("vda", 3 * GIB))
    efi = ("--target=x86_64-efi", "--efi-directory=/boot/efi", "--bootloader-id=debian")
    modules = ("/target/usr/lib/grub/x86_64-efi",)
    assert _conditions(p)[3:] == [
        (("mount", "-t", "efivarfs", "efivarfs", "/target/sys/firmware/efi/efivars"), True,
         ("/sys/firmware/efi/efivars",), (), False),
        (("chroot", "/target", "grub-install", "--target=i386-pc", "/dev/vda"), False, OWN_GRUB, (), False),
        (("grub-install", "--target=i386-pc", "--boot-directory=/target/boot", "--directory=/usr/lib/grub/i386-pc",
          "/dev/vda"), False, (), (), True),
        (("chroot", "/target", "grub-install", *efi), True, OWN_GRUB, (BOOTED_UEFI, *modules), False),
        (("chroot", "/target", "grub-install", *efi, "--removable", "--no-nvram"), False, OWN_GRUB, modules, False),
        (("chroot", "/target", "update-grub"), False, ("/target/usr/sbin/update-grub", "/target/sbin/update-grub"),
         (), False),
    ]  # fmt: skip
    assert p.chroot_mounts == ("/target/dev", "/target/proc", "/target/sys", "/target/sys/firmware/efi/efivars")
    # update-grub writes root=UUID=... only where /dev/disk/by-uuid/<UUID> exists: linked before the boot loader
    steps = p.steps()
    (link,) = [i for i, s in enumerate(steps) if isinstance(s, LinkByUuid)]
    assert link < min(i for i, s in enumerate(steps) if isinstance(s, RunStep) and s.phase is Phase.BOOTLOADER)
    assert steps[link].links == tuple((f.uuid, f.device) for f in p.filesystems) and len(steps[link].links) >= 2
    names = [s.name for s in p.bootloader]
    assert "install grub for BIOS on /dev/vda (chroot, the restored system's grub-install)" in names
    assert "install grub for UEFI into /boot/efi (chroot, \\EFI\\BOOT\\BOOTX64.EFI)" in names
    # the chroot argv name the target disk, which the plan writes: the one device guard lets them through
    assert [find_foreign_devices(s.argv, p.devices) for s in p.bootloader] == [[]] * len(p.bootloader)
    assert find_foreign_devices(("chroot", "/target", "grub-install", "--target=i386-pc", "/dev/vdb"), p.devices)
    # unmounted children first, after the boot loader
    unmount = [s.argv for s in p.steps() if isinstance(s, RunStep) and s.phase is Phase.UNMOUNT][:4]
    assert unmount == [("umount", "/target/sys/firmware/efi/efivars"), ("umount", "/target/sys"),
                       ("umount", "/target/proc"), ("umount", "/target/dev")]  # fmt: skip
    efivars = next(s for s in p.steps() if isinstance(s, RunStep) and s.argv == ("umount", BOOTED_UEFI + "/efivars"))
    assert efivars.optional and efivars.only_if_any == ("/sys/firmware/efi/efivars",)  # as its mount: UEFI only


def test_bios_boot_loader_and_fstab_change_by_path() -> None:
    p = _plan(mbr_descriptor(), target("vda", GIB), target_root="/mnt/t", rescue_grub_dir="/opt/grub")
    assert [c.__dict__ for c in p.fstab_changes] == [{"mountpoint": "swap", "old": "/dev/sda2", "new": "/dev/vda2"}]
    assert [s.argv for s in p.bootloader][3:] == [
        ("chroot", "/mnt/t", "grub-install", "--target=i386-pc", "/dev/vda"),
        ("grub-install", "--target=i386-pc", "--boot-directory=/mnt/t/boot", "--directory=/opt/grub/i386-pc",
         "/dev/vda"),
        ("chroot", "/mnt/t", "update-grub"),  # no ESP on an MBR disk: no x86_64-efi, no efivarfs
    ]
    assert "rewrite /etc/fstab" in [s.name for s in p.steps()]
    assert p.mounts[0].argv == ("mount", "-t", "ext4", "/dev/vda1", "/mnt/t")


def test_render_plan_lists_every_disk_to_wipe() -> None:
    t = target("vda", 3 * GIB, serial="QM00001")
    p = _plan(gpt_descriptor(), t)
    lines = render_plan(p)
    assert lines[:12] == [
        "Automated System Recovery will restore sample (Debian GNU/Linux 12 (bookworm)), backed up "
        "2026-11-26T01:02:03Z.",
        "",
        "These disks will be ERASED. Everything on them will be lost:",
        "  /dev/vda (QEMU HARDDISK, serial QM00001, 3.0 GiB)  <- disk1",
        "      in place of disk1 (was /dev/sda, QEMU HARDDISK, 2.0 GiB): same serial",
        "        number",
        "      GPT partition table, disk GUID 6a4e5c3b-9f0d-4b7e-8a21-0c5d7e9f1a2b",
        "      /dev/vda1  1.0 MiB  BIOS boot",
        "          fixed: BIOS boot partition",
        "      /dev/vda2  100.0 MiB  EFI System  vfat 'EFI'  /boot/efi",
        "          fixed: ESP",
        "      /dev/vda3  1.9 GiB -> 2.9 GiB  Linux filesystem  ext4 'root'  /",
    ]
    assert lines[12:15] == [
        "          grows: / (disk1p3, ext4) takes 100% of the 1.0 GiB added, in",
        "            proportion to its size",
        "",
    ]
    assert lines[15].startswith("Then restore 2 archive(s), 53.0 MiB, from /run/asr/backup/asr/sample:")
    assert "Install the boot loader: grub-efi." in lines
    w = p.disks_to_wipe[0]
    assert (w.device, w.model, w.serial, w.size_bytes) == ("/dev/vda", "QEMU HARDDISK", "QM00001", 3 * GIB)


def test_plan_is_deterministic_and_digest_tracks_content() -> None:
    t = target("vda", 3 * GIB)
    a, b = _plan(gpt_descriptor(), t), _plan(gpt_descriptor(), t)
    assert a == b and a.digest == b.digest and len(a.digest) == 64
    assert _plan(gpt_descriptor(), target("vdb", 3 * GIB)).digest != a.digest
    assert {"wipefs", "sfdisk", "partx", "mke2fs", "mkfs.vfat", "mount", "umount", "zstd", "tar", "grub-install",
            "blkid", "sync"} <= set(a.tools)
    assert a.devices == {"/dev/vda", "/dev/vda1", "/dev/vda2", "/dev/vda3"}


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda d: replace(d, partitions=(replace(d.partitions[0], name='say "hi"'), *d.partitions[1:])),
         "cannot quote"),
        (lambda d: replace(d, partitions=(replace(d.partitions[0], attributes=1 << 5), *d.partitions[1:])),
         "bit 5 is reserved"),
        (lambda d: replace(d, backup=replace(d.backup, archives=d.backup.archives[:1])),
         r"/boot/efi \(fs1\): the backup set has no archive"),
        (lambda d: replace(d, bootloader=Bootloader(BootloaderKind.GRUB_BIOS, "disk7")), "disk7"),
    ],
)
def test_plan_errors_name_what_and_where(edit, msg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanError, match=msg):
        _plan(edit(gpt_descriptor()), target("vda", 2 * GIB))


def test_plan_refuses_an_incomplete_or_doubled_mapping() -> None:
    base = gpt_descriptor()
    with pytest.raises(PlanError, match="no target disk chosen for disk1"):
        plan_restore(base, {}, backup_dir="/b")
    two = replace(base, disks=(*base.disks, Disk("disk2", GIB, 512, 512, TableType.MBR, "0x0badcafe", True)))
    t = target("vda", 3 * GIB)
    with pytest.raises(PlanError, match="both disk1 and disk2"):
        plan_restore(two, {"disk1": t, "disk2": t}, backup_dir="/b")
    with pytest.raises(TargetTooSmallError):
        plan_restore(base, {"disk1": target("vda", GIB)}, backup_dir="/b")
    with pytest.raises(PlanError, match="target root cannot be /"):
        plan_restore(base, {"disk1": t}, backup_dir="/b", target_root="/")


LONG_COMMAND = ("for k in /etc/ssh/ssh_host_*_key; do ssh-keygen -l -f \"$k\"; done; "
                "/usr/local/sbin/" + "x" * 120 + " --config=/etc/site.conf && update-initramfs -u -k all")


def test_the_plan_screen_lists_every_post_restore_command_in_full() -> None:
    d = replace(gpt_descriptor(), commands=(Command(1, "echo restored > /etc/asr-restored", critical=True),
                                            Command(2, LONG_COMMAND)))
    lines = render_plan(_plan(d, target("vda", 3 * GIB)))
    i = lines.index("Then run 2 post-restore command(s) in the restored system, in order:")
    assert lines[i + 1] == "  1. (critical) echo restored > /etc/asr-restored"
    second = lines[i + 2:]
    assert second[0].startswith("  2. for k in /etc/ssh/ssh_host_*_key;") and len(second) == 4
    assert all(line.startswith("     ") for line in second[1:])
    assert "".join(line[5:] for line in second).replace(" ", "") == LONG_COMMAND.replace(" ", "")
    # every line of it is shown whole on the screen: nothing cut with "...", nothing hidden below the screen
    pages = plan_pages(lines)
    assert [line for page in pages for line in page] == lines
    for n, page in enumerate(pages):
        screen = strip_ansi(render_screen(render_plan_page(pages, n, confirmable=True)).encode())
        for line in page:
            if line in lines[i:]:  # every line of the commands, whole
                assert line in screen
        assert "more lines" not in screen


def test_a_plan_longer_than_the_screen_offers_c_only_after_its_last_page() -> None:
    many = tuple(Command(n, f"echo step {n} >> /var/log/site-restore.log") for n in range(1, 30))
    lines = render_plan(_plan(replace(gpt_descriptor(), commands=many), target("vda", 3 * GIB)))
    pages = plan_pages(lines)
    assert len(pages) == 3 and [line for page in pages for line in page] == lines
    first = render_plan_page(pages, 0, confirmable=False)
    assert first.status == "N=Next page   P=Previous page   F3=Quit" and PLAN_PROMPT not in first.body
    assert first.body[-2] == "Page 1 of 3 of the plan: N shows the next page, P the previous one."
    last = render_plan_page(pages, 2, confirmable=True)
    assert last.status == "C=Continue   F3=Quit" and last.body[-1] == PLAN_PROMPT
    assert len(first.body) <= Size().body_rows and len(last.body) <= Size().body_rows
    assert plan_pages(lines[:18]) == [tuple(lines[:18])]  # a plan that fits: one page, as before


def test_filesystems_not_backed_up_are_announced_as_re_created_empty() -> None:
    base = gpt_descriptor()
    assert base.backup is not None
    # the ESP was not backed up (no archive for it): it will be made anew, empty
    d = replace(base, filesystems=(replace(base.filesystems[0], backup=False), base.filesystems[1]),
                backup=replace(base.backup, archives=base.backup.archives[:1]))
    p = _plan(d, target("vda", 3 * GIB))
    assert p.empty_filesystems == ("/boot/efi (vfat on /dev/vda2)",)
    lines = render_plan(p)
    i = lines.index("WARNING: not in the backup set, so these will be re-created EMPTY (their files are lost):")
    assert lines[i + 1] == "  /boot/efi (vfat on /dev/vda2)" and i < lines.index(next(
        x for x in lines if x.startswith("Then restore 1 archive(s)")))
    assert _plan(base, target("vda", 3 * GIB)).empty_filesystems == ()  # everything archived: no warning
    nothing = _plan(replace(base, backup=None), target("vda", 3 * GIB))  # no backup set at all
    assert nothing.empty_filesystems == ("/boot/efi (vfat on /dev/vda2)", "/ (ext4 on /dev/vda3)")
    swap = _plan(mbr_descriptor(), target("vda", GIB))  # swap holds no files: not announced
    assert swap.empty_filesystems == ()


def two_disk_descriptor() -> Descriptor:
    """Layout 5 of issue 11: root (ESP + ext4 / + swap, 153 MiB free at its end) on a 3.25 GiB disk1, /srv (ext4,
    40 MiB used) on a 1 GiB disk2; used bytes recorded by the capture."""
    base = gpt_descriptor(serial="")
    d1 = replace(base.disks[0], size_bytes=3328 * MIB)
    d2 = Disk("disk2", GIB, 512, 512, TableType.GPT, "99999999-0000-4000-8000-000000000002", True, device="/dev/sdb")
    parts = (
        replace(base.partitions[1], number=1, start=2048, size=206848 - 2048 + 2048),
        replace(base.partitions[2], number=2, start=208896, size=5 * GIB // 2 // 512),
        Partition("disk1", 3, 208896 + 5 * GIB // 2 // 512, 512 * 2048, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
        Partition("disk2", 1, 2048, GIB // 512 - 4096, LINUX_FS, "22222222-0000-4000-8000-000000000001", "srv"),
    )
    filesystems = (
        replace(base.filesystems[0], partition="disk1p1"),
        replace(base.filesystems[1], partition="disk1p2", used_bytes=700 * MIB),
        Filesystem("fs3", "disk1p3", FsType.SWAP, SWAP_UUID),
        Filesystem("fs4", "disk2p1", FsType.EXT4, "5e5e5e5e-0000-4000-8000-000000000004", "srv", used_bytes=40 * MIB),
    )
    mounts = (*base.mounts, Mount("swap", "fs3"), Mount("/srv", "fs4"))
    backup = replace(base.backup, archives=(*base.backup.archives, Archive("fs4", "fs4.tar.zst", MIB, "d" * 64, 3)))
    return replace(base, disks=(d1, d2), partitions=parts, filesystems=filesystems, mounts=mounts, backup=backup)


def test_two_disks_onto_a_larger_and_a_smaller_disk() -> None:
    d = two_disk_descriptor()
    ts = [target("vda", 9 * GIB // 2), target("vdb", 700 * MIB)]
    m = match_disks(d, ts, unattended=True)
    # disk2 (the smaller original) first: no free disk is as large as its 1 GiB, the 700 MiB one holds its data;
    # disk1 then takes the 4.5 GiB one
    assert [(k, m[k].name, m.reason(k)) for k in m] == [("disk1", "vda", MatchReason.SIZE),
                                                        ("disk2", "vdb", MatchReason.DATA)]
    p = plan_restore(d, m, backup_dir="/b")
    d1, d2 = p.disks
    assert [(pp.number, pp.size * 512 // MIB, pp.resized) for pp in d1.partitions] == [
        (1, 101, False), (2, 2560 + 1280, True), (3, 512, False)]  # the root took the 1.25 GiB added
    assert [(pp.number, pp.start, pp.size * 512 // MIB) for pp in d2.partitions] == [(1, 2048, 698)]
    assert d2.partitions[0].reason.startswith("shrinks to fit: gives up 324.0 MiB in proportion to its size")
    lines = render_plan(p)
    assert "      in place of disk2 (was /dev/sdb, 1.0 GiB): no free disk is as large;" in lines
    assert "      /dev/vdb1  1022.0 MiB -> 698.0 MiB  Linux filesystem  ext4 'srv'  /srv" in lines
    assert [f.mkfs_argv[-1] for f in p.filesystems] == ["/dev/vda1", "/dev/vda2", "/dev/vda3", "/dev/vdb1"]
    assert not any(str(1022 * MIB) in " ".join(f.mkfs_argv) for f in p.filesystems)  # no size passed to mkfs


def test_a_disk_too_small_for_the_srv_data_is_refused_before_anything_is_planned() -> None:
    d = two_disk_descriptor()
    ts = [target("vda", 9 * GIB // 2), target("vdb", 64 * MIB)]
    with pytest.raises(DataDoesNotFitError) as e:
        match_disks(d, ts, unattended=True)
    msg = str(e.value)
    assert msg.startswith("the data of disk2 (was /dev/sdb, 1.0 GiB) does not fit on /dev/vdb (QEMU HARDDISK, "
                          "64.0 MiB): ")
    assert "/srv (disk2p1, ext4) 117.0 MiB (40.0 MiB used + 10% + ext4's own 64.0 MiB and 7%)" in msg
    assert "MiB (" in msg.split("missing")[0]
