"""The layout reader on real tool output: images made here with sfdisk, mke2fs, mkfs.vfat, mkswap (and LVM, LUKS,
MD signatures), read back with sfdisk --json, blkid -p and dumpe2fs -h, and every field compared with what was made.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from recovery_env.errors import AsrError, InputError, LayoutError, UnsupportedLayoutError
from recovery_env.model.descriptor import (
    GPT_ESP,
    MBR_EXTENDED,
    BootloaderKind,
    Firmware,
    FstabSpec,
    FsType,
    PartFlag,
    TableType,
)
from recovery_env.probe.layout import (
    BootFacts,
    DiskFacts,
    ExtFacts,
    check_supported,
    choose_default_disks,
    find_offenders,
    parse_blkid_export,
    parse_dumpe2fs,
    parse_findmnt_json,
    parse_fstab,
    parse_gpt_attrs,
    parse_lsblk_json,
    parse_os_release,
    parse_sfdisk_json,
    plan_layout,
    read_blkid,
)
from recovery_env.run import run

pytestmark = pytest.mark.image
MiB = 1 << 20
GPT_LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"


# ---------------------------------------------------------------------------------------------------------------
# Image makers (real tools on plain files; shared with test_capture)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartSpec:
    size_mib: int  # 0 = the rest of the disk
    type: str
    uuid: str = ""
    name: str = ""
    attrs: str = ""
    bootable: bool = False


def make_partitioned_image(path: Path, size_mib: int, label: str, disk_id: str, parts: list[PartSpec]) -> None:
    """sfdisk on a plain file; partitions start at 1 MiB and follow each other."""
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    lines = [f"label: {label}", f"label-id: {disk_id}", "unit: sectors"]
    for p in parts:
        fields = [f"type={p.type}"]
        if p.size_mib:
            fields.insert(0, f"size={p.size_mib * MiB // 512}")
        if p.uuid:
            fields.append(f"uuid={p.uuid}")
        if p.name:
            fields.append(f'name="{p.name}"')
        if p.attrs:
            fields.append(f'attrs="{p.attrs}"')
        if p.bootable:
            fields.append("bootable")
        lines.append(", ".join(fields))
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path)], input="\n".join(lines) + "\n")


def partition_offsets(img: Path) -> dict[int, tuple[int, int]]:
    """Partition number → (byte offset, byte size), as sfdisk reads them back."""
    t = parse_sfdisk_json(run(["sfdisk", "--json", str(img)]).stdout)
    return {p.number: (p.start * t.sector_size, p.size * t.sector_size) for p in t.partitions}


def mkfs_ext4(img: Path, offset: int, size: int, uuid_: str, label: str, block: int = 4096, inode: int = 256,
              root_dir: Path | None = None) -> None:
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-U", uuid_, "-L", label, "-b", str(block), "-I", str(inode),
            "-E", f"offset={offset}"]
    if root_dir is not None:
        argv += ["-d", str(root_dir)]
    run([*argv, str(img), f"{size // 1024}k"])


def mkfs_vfat(img: Path, offset: int, size: int, volid: str, label: str, fat: int) -> None:
    run(["mkfs.vfat", "-F", str(fat), "-i", volid, "-n", label, "--offset", str(offset // 512), str(img),
         str(size // 1024)])


def copy_into(img: Path, offset: int, part_file: Path) -> None:
    with open(img, "r+b") as out, open(part_file, "rb") as src:
        out.seek(offset)
        shutil.copyfileobj(src, out)


def mkswap_at(img: Path, offset: int, size: int, uuid_: str, label: str, tmp: Path) -> None:
    sw = tmp / "swap.part"
    with open(sw, "wb") as f:
        f.truncate(size)
    run(["mkswap", "-U", uuid_, "-L", label, str(sw)])
    copy_into(img, offset, sw)


def md_superblock_v12(set_uuid: str, dev_uuid: str, name: str, dev_sectors: int) -> bytes:
    """An MD RAID1 member superblock (metadata 1.2, 4 KiB into the device) with its checksum: what mdadm --create
    writes; the host kernel has no md driver, so the test writes it itself and lets blkid judge it."""
    max_dev = 2
    sb = bytearray(256 + 2 * max_dev)
    struct.pack_into("<IIII", sb, 0, 0xA92B4EFC, 1, 0, 0)
    sb[16:32] = uuid.UUID(set_uuid).bytes
    sb[32:64] = name.encode().ljust(32, b"\0")
    struct.pack_into("<QiIQIII", sb, 64, 0, 1, 0, dev_sectors - 2048, 0, 2, 0)
    struct.pack_into("<QQQQ", sb, 128, 2048, dev_sectors - 2048, 8, 0)
    sb[168:184] = uuid.UUID(dev_uuid).bytes
    struct.pack_into("<QQQ", sb, 192, 0, 1, 0xFFFFFFFFFFFFFFFF)
    struct.pack_into("<I", sb, 220, max_dev)
    struct.pack_into("<HH", sb, 256, 0, 1)
    total = sum(struct.unpack_from(f"<{len(sb) // 4}I", sb))
    struct.pack_into("<I", sb, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)
    return bytes(sb)


def read_image_facts(img: Path) -> DiskFacts:
    """DiskFacts of an image file from the same tools the live reader runs (sfdisk, blkid -p, dumpe2fs -h)."""
    table = parse_sfdisk_json(run(["sfdisk", "--json", str(img)]).stdout)
    probes = {}
    ext = {}
    for p in table.partitions:
        off = p.start * table.sector_size
        probes[p.number] = read_blkid(str(img), off)
        if probes[p.number].get("TYPE", "").startswith("ext"):
            ext[p.number] = parse_dumpe2fs(run(["dumpe2fs", "-h", f"{img}?offset={off}"]).stdout)
    return DiskFacts(
        device=str(img),
        size_bytes=img.stat().st_size,
        logical_sector_size=512,
        physical_sector_size=512,
        table=table,
        whole_probe=read_blkid(str(img)),
        probes=probes,
        ext=ext,
    )


# ---------------------------------------------------------------------------------------------------------------
# GPT: ESP (vfat) + ext4 root + swap
# ---------------------------------------------------------------------------------------------------------------

GPT_DISK_ID = "5b6c1a2e-0f1d-4c3b-9a8e-7d6c5b4a3f21"
GPT_PARTUUIDS = ("11111111-aaaa-4bbb-8ccc-000000000001", "11111111-aaaa-4bbb-8ccc-000000000002",
                 "11111111-aaaa-4bbb-8ccc-000000000003")
ROOT_UUID = "2c6f4a3e-9d1b-4e8f-a7c5-3b2d1e0f9a8b"
SWAP_UUID = "7e1d2c3b-4a59-4687-9766-5a4b3c2d1e0f"


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("gpt")
    img = tmp / "gpt.img"
    make_partitioned_image(img, 96, "gpt", GPT_DISK_ID.upper(), [
        PartSpec(33, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", GPT_PARTUUIDS[0], "EFI system", "RequiredPartition"),
        PartSpec(48, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", GPT_PARTUUIDS[1], "root", "LegacyBIOSBootable GUID:60"),
        PartSpec(0, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", GPT_PARTUUIDS[2], "swap"),
    ])
    off = partition_offsets(img)
    mkfs_vfat(img, *off[1], "1234ABCD", "ESP", 32)
    mkfs_ext4(img, *off[2], ROOT_UUID, "rootfs", block=1024, inode=128)
    mkswap_at(img, *off[3], SWAP_UUID, "swap0", tmp)
    return img


GPT_FSTAB = f"""\
# /etc/fstab written by the test
UUID={ROOT_UUID}  /          ext4  errors=remount-ro  0  1
PARTUUID={GPT_PARTUUIDS[0]}  /boot/efi  vfat  umask=0077  0  2
LABEL=swap0   none   swap   sw   0   0
proc  /proc  proc  defaults  0  0
tmpfs /tmp   tmpfs defaults  0  0
"""


def test_gpt_image_every_field(gpt_image: Path) -> None:
    facts = read_image_facts(gpt_image)
    layout = plan_layout([facts], parse_fstab(GPT_FSTAB), firmware=Firmware.UEFI,
                         boot=BootFacts(grub_platforms=("x86_64-efi",), esp_loaders=("debian",)))
    (disk,) = layout.disks
    assert (disk.key, disk.table, disk.disk_id, disk.size_bytes, disk.critical) == (
        "disk1", TableType.GPT, GPT_DISK_ID, 96 * MiB, True)
    assert (disk.logical_sector_size, disk.physical_sector_size, disk.device) == (512, 512, str(gpt_image))

    p1, p2, p3 = layout.partitions
    assert (p1.key, p1.start, p1.size, p1.type, p1.partuuid, p1.name) == (
        "disk1p1", 2048, 33 * 2048, GPT_ESP, GPT_PARTUUIDS[0], "EFI system")
    assert (p1.attributes, p1.flags) == (1, (PartFlag.ESP,))
    assert (p2.key, p2.start, p2.size, p2.type, p2.partuuid, p2.name) == (
        "disk1p2", 2048 + 33 * 2048, 48 * 2048, GPT_LINUX, GPT_PARTUUIDS[1], "root")
    assert (p2.attributes, p2.flags) == ((1 << 2) | (1 << 60), (PartFlag.BOOT,))
    # "the rest of the disk": sfdisk ends it on the last whole MiB before GPT's backup header (33 sectors)
    assert (p3.number, p3.start, p3.type, p3.partuuid, p3.name, p3.flags) == (
        3, p2.end, GPT_SWAP, GPT_PARTUUIDS[2], "swap", ())
    assert p3.end == 95 * 2048

    esp, root, swap = layout.filesystems
    assert (esp.key, esp.partition, esp.type, esp.uuid, esp.label, esp.fat_size, esp.backup) == (
        "fs1", "disk1p1", FsType.VFAT, "1234-ABCD", "ESP", 32, True)
    assert (root.key, root.partition, root.type, root.uuid, root.label, root.backup) == (
        "fs2", "disk1p2", FsType.EXT4, ROOT_UUID, "rootfs", True)
    assert (root.block_size, root.inode_size) == (1024, 128)
    assert {"has_journal", "extent", "64bit", "metadata_csum"} <= set(root.features)
    assert (swap.key, swap.type, swap.uuid, swap.label, swap.backup) == ("fs3", FsType.SWAP, SWAP_UUID, "swap0",
                                                                        False)

    assert [(m.mountpoint, m.filesystem, m.spec, m.device, m.options, m.passno) for m in layout.mounts] == [
        ("/", "fs2", FstabSpec.UUID, f"UUID={ROOT_UUID}", "errors=remount-ro", 1),
        ("/boot/efi", "fs1", FstabSpec.PARTUUID, f"PARTUUID={GPT_PARTUUIDS[0]}", "umask=0077", 2),
        ("swap", "fs3", FstabSpec.LABEL, "LABEL=swap0", "sw", 0),
    ]
    bl = layout.bootloader
    assert (bl.kind, bl.disk, bl.esp_mountpoint, bl.efi_directory) == (
        BootloaderKind.GRUB_EFI, "disk1", "/boot/efi", "debian")


def test_gpt_image_independent_tools_agree(gpt_image: Path) -> None:
    """The facts the reader used are what fsck.fat, e2fsck and blkid (by UUID) say of the same image."""
    off = partition_offsets(gpt_image)
    run(["e2fsck", "-fn", f"{gpt_image}?offset={off[2][0]}"])
    dumped = parse_dumpe2fs(run(["dumpe2fs", "-h", f"{gpt_image}?offset={off[2][0]}"]).stdout)
    assert dumped.block_size == 1024
    mdir = run(["minfo", "-i", f"{gpt_image}@@{off[1][0]}", "::"]).stdout
    assert "serial number: 1234ABCD" in mdir
    assert "ESP" in mdir


# ---------------------------------------------------------------------------------------------------------------
# MBR: boot (ext4, active) + root (ext4)
# ---------------------------------------------------------------------------------------------------------------

MBR_ID = "0x5eed1234"
BOOT_UUID = "0a1b2c3d-4e5f-4061-8273-9495a6b7c8d9"
MBR_ROOT_UUID = "f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f"


@pytest.fixture(scope="module")
def mbr_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = tmp_path_factory.mktemp("mbr") / "mbr.img"
    make_partitioned_image(img, 64, "dos", MBR_ID, [PartSpec(16, "83", bootable=True), PartSpec(0, "83")])
    off = partition_offsets(img)
    mkfs_ext4(img, *off[1], BOOT_UUID, "boot")
    mkfs_ext4(img, *off[2], MBR_ROOT_UUID, "root", block=2048, inode=256)
    return img


def test_mbr_image_every_field(mbr_image: Path) -> None:
    facts = read_image_facts(mbr_image)
    fstab = f"/dev/sda2 / ext4 defaults 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n"
    # the fstab names root by path: the reader resolves a path against the device node of each partition
    assert facts.table is not None
    nodes = tuple(replace(p, node=f"/dev/sda{p.number}") for p in facts.table.partitions)
    facts = replace(facts, table=replace(facts.table, partitions=nodes))
    layout = plan_layout([facts], parse_fstab(fstab), firmware=Firmware.BIOS,
                         boot=BootFacts(grub_platforms=("i386-pc",)))
    (disk,) = layout.disks
    assert (disk.table, disk.disk_id, disk.size_bytes, disk.critical) == (TableType.MBR, MBR_ID, 64 * MiB, True)
    p1, p2 = layout.partitions
    assert (p1.number, p1.start, p1.size, p1.type, p1.partuuid, p1.flags, p1.attributes) == (
        1, 2048, 16 * 2048, "83", "5eed1234-01", (PartFlag.BOOT,), 0)
    assert (p2.number, p2.start, p2.size, p2.type, p2.partuuid, p2.flags) == (
        2, 2048 + 16 * 2048, 64 * 2048 - 2048 - 16 * 2048, "83", "5eed1234-02", ())
    boot, root = layout.filesystems
    assert (boot.partition, boot.type, boot.uuid, boot.label, boot.block_size, boot.inode_size, boot.backup) == (
        "disk1p1", FsType.EXT4, BOOT_UUID, "boot", 4096, 256, True)
    assert (root.partition, root.uuid, root.label, root.block_size, root.inode_size) == (
        "disk1p2", MBR_ROOT_UUID, "root", 2048, 256)
    assert [(m.mountpoint, m.filesystem, m.spec, m.device) for m in layout.mounts] == [
        ("/", "fs2", FstabSpec.PATH, "/dev/sda2"), ("/boot", "fs1", FstabSpec.UUID, f"UUID={BOOT_UUID}")]
    assert (layout.bootloader.kind, layout.bootloader.disk) == (BootloaderKind.GRUB_BIOS, "disk1")
    assert layout.devices == {"fs1": "/dev/sda1", "fs2": "/dev/sda2"}


def test_non_system_disk_is_listed_not_critical(gpt_image: Path, mbr_image: Path) -> None:
    """Two disks: the MBR disk's filesystems are not mounted by fstab → listed, not critical, not backed up."""
    layout = plan_layout([read_image_facts(gpt_image), read_image_facts(mbr_image)], parse_fstab(GPT_FSTAB),
                         firmware=Firmware.BIOS)
    assert [(d.key, d.critical) for d in layout.disks] == [("disk1", True), ("disk2", False)]
    assert [(f.key, f.partition, f.backup) for f in layout.filesystems] == [
        ("fs1", "disk1p1", True), ("fs2", "disk1p2", True), ("fs3", "disk1p3", False),
        ("fs4", "disk2p1", False), ("fs5", "disk2p2", False)]
    assert layout.bootloader.kind is BootloaderKind.NONE


def test_include_mount_backs_up_a_non_system_filesystem(gpt_image: Path, mbr_image: Path) -> None:
    fstab = GPT_FSTAB + f"UUID={MBR_ROOT_UUID} /srv/data ext4 defaults 0 2\n"
    facts = [read_image_facts(gpt_image), read_image_facts(mbr_image)]
    plain = plan_layout(facts, parse_fstab(fstab), firmware=Firmware.BIOS)
    assert [f.backup for f in plain.filesystems if f.partition == "disk2p2"] == [False]
    assert [d.critical for d in plain.disks] == [True, False]
    extra = plan_layout(facts, parse_fstab(fstab), firmware=Firmware.BIOS, include_mounts=["/srv/data/"])
    assert [f.backup for f in extra.filesystems if f.partition == "disk2p2"] == [True]
    # the disk holding a backed-up filesystem is re-created at restore, else its archive had nowhere to go
    assert [d.critical for d in extra.disks] == [True, True]
    with pytest.raises(InputError, match="--include-mount /nope"):
        plan_layout(facts, parse_fstab(fstab), firmware=Firmware.BIOS, include_mounts=["/nope"])


def test_critical_mount_off_the_captured_disks_is_refused(mbr_image: Path) -> None:
    with pytest.raises(LayoutError, match=r"line 2: / is on UUID=2c6f.* not a filesystem of the captured disks"):
        plan_layout([read_image_facts(mbr_image)], parse_fstab(GPT_FSTAB), firmware=Firmware.BIOS)


@pytest.mark.parametrize(("line", "message"), [
    (f"PARTUUID={GPT_PARTUUIDS[0]} /boot/../../efi vfat umask=0077 0 2", "'/boot/../../efi' has a '..' component"),
    (f"PARTUUID={GPT_PARTUUIDS[0]} /boot/./efi vfat umask=0077 0 2", "'/boot/./efi' has a '.' component"),
    (f"PARTUUID={GPT_PARTUUIDS[0]} /boot/efi\\033[2J vfat umask=0077 0 2", "has the control character '\\x1b'"),
    (f"PARTUUID={GPT_PARTUUIDS[0]} /boot/efi\\000x vfat umask=0077 0 2", "has a NUL character"),
    ("/dev/disk/by-id/../../sda1 /boot/efi vfat umask=0077 0 2", "'/dev/disk/by-id/../../sda1' has a '..' component"),
])
def test_fstab_paths_that_walk_or_carry_control_characters_are_not_recorded(
    gpt_image: Path, line: str, message: str
) -> None:
    """Issue 10, finding 4: capture refuses to record a mount point or device with '..', '.', NUL or a control
    character, naming the fstab line (the validator would refuse the descriptor at restore)."""
    fstab = GPT_FSTAB.replace(f"PARTUUID={GPT_PARTUUIDS[0]}  /boot/efi  vfat  umask=0077  0  2", line)
    assert line in fstab
    with pytest.raises(LayoutError) as e:
        plan_layout([read_image_facts(gpt_image)], parse_fstab(fstab), firmware=Firmware.UEFI)
    assert str(e.value).startswith("/etc/fstab line 3: "), str(e.value)
    assert message in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# LVM / MD / LUKS: refused, every offender listed
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offender_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("offenders")
    img = tmp / "offenders.img"
    make_partitioned_image(img, 96, "gpt", GPT_DISK_ID, [
        PartSpec(24, "L"), PartSpec(24, "L"), PartSpec(24, "L"), PartSpec(0, "L")])
    off = partition_offsets(img)
    mkfs_ext4(img, *off[1], ROOT_UUID, "root")
    if shutil.which("cryptsetup") is None:
        pytest.skip("cryptsetup is not installed (Makefile APT_PACKAGES: cryptsetup-bin)")
    luks = tmp / "luks.part"
    with open(luks, "wb") as f:
        f.truncate(off[2][1])
    run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000", str(luks)], input="test passphrase\n")
    copy_into(img, off[2][0], luks)
    with open(img, "r+b") as f:
        f.seek(off[3][0] + 4096)
        f.write(md_superblock_v12("6d5c4b3a-2918-4716-a5b4-c3d2e1f00a1b", "00000000-0000-4000-8000-000000000002",
                                  "host:0", off[3][1] // 512))
    pv = tmp / "pv.part"
    with open(pv, "wb") as f:
        f.truncate(off[4][1])
    if shutil.which("pvcreate") is None:
        pytest.skip("pvcreate is not installed (Makefile APT_PACKAGES: lvm2)")
    try:
        loop = run(["losetup", "-f", "--show", str(pv)]).stdout.strip()
    except AsrError as e:  # no loop device on this machine
        pytest.skip(f"no loop device for pvcreate: {e}")
    try:
        run(["pvcreate", "-q", "--config", "devices { use_devicesfile=0 obtain_device_list_from_udev=0 }", loop])
    finally:
        run(["losetup", "-d", loop])
    copy_into(img, off[4][0], pv)
    return img


def test_lvm_md_luks_are_each_named(offender_image: Path) -> None:
    facts = read_image_facts(offender_image)
    # what blkid itself reports of the three signatures
    assert [facts.probes[n].get("TYPE") for n in (1, 2, 3, 4)] == [
        "ext4", "crypto_LUKS", "linux_raid_member", "LVM2_member"]
    with pytest.raises(UnsupportedLayoutError) as ei:
        plan_layout([facts], parse_fstab(f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"), firmware=Firmware.BIOS)
    assert ei.value.offenders == [
        (f"{offender_image}2", "LUKS encrypted volume (crypto_LUKS)"),
        (f"{offender_image}3", "MD RAID member (linux_raid_member)"),
        (f"{offender_image}4", "LVM physical volume (LVM2_member)"),
    ]
    text = str(ei.value)
    assert "3 device(s)" in text and "crypto_LUKS" in text and "linux_raid_member" in text and "LVM2_member" in text


LSBLK_WITH_DM = """{"blockdevices": [{"name": "sda", "path": "/dev/sda", "type": "disk", "size": 1073741824,
 "log-sec": 512, "phy-sec": 4096, "model": "QEMU HARDDISK", "serial": "QM0001", "wwn": null, "maj:min": "8:0",
 "mountpoints": [null], "children": [
  {"name": "sda1", "path": "/dev/sda1", "type": "part", "size": 536870912, "log-sec": 512, "phy-sec": 4096,
   "maj:min": "8:1", "mountpoints": [null], "children": [
     {"name": "vg-root", "path": "/dev/mapper/vg-root", "type": "lvm", "size": 268435456, "log-sec": 512,
      "phy-sec": 4096, "maj:min": "253:0", "mountpoints": ["/"]}]},
  {"name": "sda2", "path": "/dev/sda2", "type": "part", "size": 536870912, "log-sec": 512, "phy-sec": 4096,
   "maj:min": "8:2", "mountpoints": [null], "children": [
     {"name": "md0", "path": "/dev/md0", "type": "raid1", "size": 535822336, "log-sec": 512, "phy-sec": 4096,
      "maj:min": "9:0", "mountpoints": ["/srv"]}]}]}]}"""


def test_lsblk_children_of_dm_and_md_types_are_offenders(gpt_image: Path) -> None:
    (sda,) = parse_lsblk_json(LSBLK_WITH_DM)
    assert (sda.model, sda.serial, sda.physical_sector_size, sda.size) == ("QEMU HARDDISK", "QM0001", 4096, 1 << 30)
    facts = read_image_facts(gpt_image)
    facts = replace(facts, holders=tuple((b.path, b.type) for b in sda.walk() if b is not sda))
    assert find_offenders([facts]) == (("/dev/mapper/vg-root", "LVM logical volume"), ("/dev/md0", "MD RAID1 array"))


def test_whole_disk_without_table_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "bare.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    mkfs_ext4(img, 0, 8 * MiB, ROOT_UUID, "bare")
    facts = DiskFacts(device="/dev/sdz", size_bytes=8 * MiB, logical_sector_size=512, physical_sector_size=512,
                      table=None, whole_probe=read_blkid(str(img)))
    with pytest.raises(UnsupportedLayoutError, match=r"/dev/sdz: no partition table \(whole-disk ext4\)"):
        plan_layout([facts], parse_fstab(f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"), firmware=Firmware.BIOS)


# ---------------------------------------------------------------------------------------------------------------
# Small parsers
# ---------------------------------------------------------------------------------------------------------------


def test_gpt_attrs_bits() -> None:
    assert parse_gpt_attrs("RequiredPartition NoBlockIOProtocol LegacyBIOSBootable GUID:63") == 0b111 | 1 << 63
    assert parse_gpt_attrs("") == 0
    with pytest.raises(InputError, match="unknown GPT attribute 'Bogus'"):
        parse_gpt_attrs("Bogus")


def test_fstab_parser_names_the_line() -> None:
    entries = parse_fstab("# c\n\nUUID=ab /  ext4 defaults 0 1\nLABEL=my\\040disk /mnt/a\\040b ext4\n")
    assert [(e.kind, e.value, e.mountpoint, e.line) for e in entries] == [
        (FstabSpec.UUID, "ab", "/", 3), (FstabSpec.LABEL, "my disk", "/mnt/a b", 4)]
    with pytest.raises(InputError, match="/etc/fstab line 2: expected at least 3 fields"):
        parse_fstab("UUID=a / ext4\nbroken /x\n")
    with pytest.raises(InputError, match="line 1: dump and pass must be numbers"):
        parse_fstab("UUID=a / ext4 defaults x 1\n")


def test_sfdisk_json_errors_say_where() -> None:
    with pytest.raises(InputError, match="sfdisk --json: output is not JSON"):
        parse_sfdisk_json("nope")
    with pytest.raises(InputError, match="unsupported partition table label 'sun'"):
        parse_sfdisk_json('{"partitiontable": {"label": "sun"}}')


def test_dumpe2fs_needs_block_size() -> None:
    assert parse_dumpe2fs("Block size:  4096\nInode size: 256\nFilesystem features: a needs_recovery b\n") == (
        ExtFacts(4096, 256, ("a", "b")))
    with pytest.raises(InputError, match="dumpe2fs -h: no usable 'Block size'"):
        parse_dumpe2fs("nothing")


def test_findmnt_and_os_release_and_blkid_of_this_machine() -> None:
    mounts = parse_findmnt_json(run(["findmnt", "--json", "--real", "--list", "-o",
                                     "TARGET,SOURCE,FSTYPE,OPTIONS"]).stdout)
    assert any(m.target == "/" for m in mounts)
    assert parse_os_release('NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n') == (
        "Debian GNU/Linux 12 (bookworm)")
    assert parse_blkid_export("TYPE=ext4\nUUID=x\n") == {"TYPE": "ext4", "UUID": "x"}


def test_mbr_type_ids_are_two_hex_digits(tmp_path: Path) -> None:
    """sfdisk prints the extended type as "5"; the model (and the validator) spell MBR ids "05"."""
    img = tmp_path / "ext.img"
    img.write_bytes(b"")
    os.truncate(img, 32 * MiB)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", str(img)],
        input="label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=16384, type=5\n"
              "start=12288, size=4096, type=83\n")
    text = run(["sfdisk", "--json", str(img)]).stdout
    assert '"type":"5"' in text.replace(" ", "")  # the spelling this normalisation exists for
    table = parse_sfdisk_json(text, "ext.img")
    assert [p.type for p in table.partitions] == ["83", "05", "83"]
    assert table.partitions[1].type in MBR_EXTENDED


def test_a_capture_without_disks_leaves_out_unpartitioned_disks_the_system_does_not_use() -> None:
    def disk(device: str, table: bool = False, **whole: str) -> DiskFacts:
        return DiskFacts(device=device, size_bytes=8 * MiB, logical_sector_size=512, physical_sector_size=512,
                         table=parse_sfdisk_json(json.dumps({"partitiontable": {
                             "label": "gpt", "id": GPT_DISK_ID, "device": device, "unit": "sectors",
                             "partitions": []}})) if table else None, whole_probe=whole)  # fmt: skip

    system = disk("/dev/vda", table=True)
    floppy = disk("/dev/fd0")  # an empty drive: nothing on it
    backup = disk("/dev/vdc", TYPE="ext4", LABEL="ASRBACKUP", UUID="1111-2222")
    srv = disk("/dev/vdd", TYPE="xfs", UUID="3333-4444")  # a whole-disk filesystem that fstab mounts
    pv = disk("/dev/vde", TYPE="LVM2_member")
    fstab = parse_fstab("UUID=3333-4444 /srv xfs defaults 0 2\n")
    chosen, notes = choose_default_disks([system, floppy, backup, srv, pv], fstab)
    assert [d.device for d in chosen] == ["/dev/vda", "/dev/vdd", "/dev/vde"]
    assert notes == ("/dev/fd0: no partition table (nothing on it), not in /etc/fstab: not recorded",
                     "/dev/vdc: no partition table (whole-disk ext4 ASRBACKUP 1111-2222), not in /etc/fstab: not "
                     "recorded")  # fmt: skip
    with pytest.raises(UnsupportedLayoutError, match=r"/dev/vdd: no partition table.*\n.*/dev/vde: LVM"):
        check_supported(chosen)  # still refused: fstab uses the whole-disk filesystem; an LVM PV
