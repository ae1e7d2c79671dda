"""Which disks hold the boot and backup media (issue 10, finding 2): never restore targets, whatever the
filesystem (btrfs shows an anonymous 0:NN in mountinfo) and whatever lies between it and the disks (partitions,
MD, device-mapper, loop devices on files on other loop-mounted filesystems).

The walk reads sysfs only.  The unit tests give it a sysfs tree built in tmp with the shape of a real kernel's
(directories under ``devices/``, relative links from ``block/``, ``class/block/``, ``dev/block/``, ``slaves/`` and
``fs/btrfs/<fsuuid>/devices/``, as Debian 12's 6.1 kernel lays them out); the root tests run it on this host's
real /sys and /proc on loop devices: a two-device btrfs and nested loops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_plan import MOUNTINFO, gpt_descriptor

from recovery_env.errors import AsrError
from recovery_env.model.descriptor import TableType
from recovery_env.probe.disks import TargetDisk, find_holding_disks, find_media_disks, parse_mountinfo
from recovery_env.restore.match import match_disks
from recovery_env.run import run

GIB = 1 << 30
VIRTIO = "devices/pci0000:00/0000:00:{slot:02x}.0/virtio{n}/block"
SATA = "devices/pci0000:00/0000:00:1f.2/ata{n}/host{h}/target{h}:0:0/{h}:0:0:0/block"
VIRTUAL = "devices/virtual/block"


@dataclass
class FakeSys:
    """A sysfs tree in tmp, laid out as the kernel lays out /sys."""

    root: Path

    def _link(self, link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))

    def _node(self, directory: Path, devno: str, size: int) -> Path:
        directory.mkdir(parents=True)
        (directory / "dev").write_text(devno + "\n")
        (directory / "size").write_text(f"{size // 512}\n")
        self._link(self.root / "class" / "block" / directory.name, directory)
        self._link(self.root / "dev" / "block" / devno, directory)
        return directory

    def disk(self, name: str, devno: str, parent: str = VIRTUAL, size: int = GIB) -> Path:
        d = self._node(self.root / parent / name, devno, size)
        self._link(self.root / "block" / name, d)
        return d

    def partition(self, disk: Path, number: int, devno: str, size: int = GIB // 2) -> Path:
        sep = "p" if disk.name[-1].isdigit() else ""
        p = self._node(disk / f"{disk.name}{sep}{number}", devno, size)
        (p / "partition").write_text(f"{number}\n")
        return p

    def loop(self, n: int, backing_file: str) -> Path:
        d = self.disk(f"loop{n}", f"7:{n}")
        (d / "loop").mkdir()
        (d / "loop" / "backing_file").write_text(backing_file + "\n")
        return d

    def holder(self, name: str, devno: str, below: list[Path], dm_name: str = "") -> Path:
        """An MD array or a device-mapper device over ``below``."""
        d = self.disk(name, devno)
        (d / "slaves").mkdir()
        for b in below:
            self._link(d / "slaves" / b.name, b)
            self._link(b / "holders" / name, d)
        if dm_name:
            (d / "dm").mkdir()
            (d / "dm" / "name").write_text(dm_name + "\n")
        return d

    def btrfs(self, fsuuid: str, members: list[Path]) -> None:
        devices = self.root / "fs" / "btrfs" / fsuuid / "devices"
        devices.mkdir(parents=True)
        (devices.parent / "label").write_text("ASRBACKUP\n")
        for m in members:
            self._link(devices / m.name, m)


@pytest.fixture
def fake(tmp_path: Path) -> FakeSys:
    """sr0 (the boot CD), vda (the target), vdb and vdc, sdb and sdc: the machine the cases below share."""
    f = FakeSys(tmp_path / "sys")
    f.disk("sr0", "11:0", SATA.format(n=2, h=1))
    f.disk("vda", "254:0", VIRTIO.format(slot=4, n=2), 4 * GIB)
    for name, major_minor, slot in (("vdb", 16, 5), ("vdc", 32, 6), ("vdd", 48, 7)):
        d = f.disk(name, f"254:{major_minor}", VIRTIO.format(slot=slot, n=slot - 2), 4 * GIB)
        f.partition(d, 1, f"254:{major_minor + 1}")
    for name, minor, h in (("sdb", 16, 2), ("sdc", 32, 3)):
        d = f.disk(name, f"8:{minor}", SATA.format(n=h + 1, h=h), 4 * GIB)
        f.partition(d, 2, f"8:{minor + 2}")
    return f


def node(f: FakeSys, name: str) -> Path:
    return (f.root / "class" / "block" / name).resolve()


def held(f: FakeSys, mountinfo: str, paths: list[str], devices: tuple[str, ...] = ()) -> dict[str, str]:
    return find_holding_disks(paths, parse_mountinfo(mountinfo), f.root, devices=devices)


def media(f: FakeSys, mountinfo: str, paths: list[str]) -> dict[str, str]:
    """find_media_disks as the agent calls it, over the fake /sys and a /proc/self/mountinfo beside it."""
    proc = f.root.parent / "proc"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    return find_media_disks(paths, sys_root=f.root, proc_root=proc)


ROOTFS = "1 0 0:2 / / rw - rootfs rootfs rw\n22 1 0:21 / /proc rw - proc proc rw\n"


def test_btrfs_backup_medium_every_member(fake: FakeSys) -> None:
    """mountinfo says 0:45 for btrfs: the members come from /sys/fs/btrfs/<fsuuid>/devices (a partition of vdb and
    the whole disk vdc)."""
    fake.btrfs("c497c6eb-bec9-4171-b469-b3dccaebfb77", [node(fake, "vdb1"), node(fake, "vdc")])
    info = ROOTFS + (
        "31 1 11:0 / /run/asr/media ro - iso9660 /dev/sr0 ro\n"
        "32 1 0:45 / /run/asr/backup ro - btrfs /dev/vdb1 ro,space_cache=v2,subvolid=5,subvol=/\n"
    )
    got = media(fake, info, ["/run/asr/media", "/run/asr/backup"])
    assert got == {
        "/dev/sr0": "holds /run/asr/media",
        "/dev/vdb": "holds /run/asr/backup",
        "/dev/vdc": "holds /run/asr/backup (btrfs with vdb1)",
    }
    # the device the agent mounted is enough on its own (a mountinfo source may name the other member)
    assert set(held(fake, ROOTFS, [], ("/dev/vdc",))) == {"vdb", "vdc"}


def test_md_and_device_mapper_down_to_the_disks(fake: FakeSys) -> None:
    """A backup on /dev/mapper/backup (dm-0) over md127's first partition over sdb2 and sdc2; another on md0 over
    vdb1 and vdc1 (whole array, by device number)."""
    md127 = fake.holder("md127", "9:127", [node(fake, "sdb2"), node(fake, "sdc2")])
    fake.partition(md127, 1, "259:0")
    fake.holder("dm-0", "253:0", [node(fake, "md127p1")], dm_name="backup")
    fake.holder("md0", "9:0", [node(fake, "vdb1"), node(fake, "vdc1")])
    info = ROOTFS + (
        "32 1 253:0 / /run/asr/backup ro - ext4 /dev/mapper/backup ro\n"
        "33 1 9:0 / /run/asr/media ro - ext4 /dev/md0 ro\n"
    )
    got = media(fake, info, ["/run/asr/backup/asr/host", "/run/asr/media"])
    assert got == {
        "/dev/dm-0": "holds /run/asr/backup/asr/host",
        "/dev/md127": "holds /run/asr/backup/asr/host (under dm-0)",
        "/dev/sdb": "holds /run/asr/backup/asr/host (under dm-0) (under md127)",
        "/dev/sdc": "holds /run/asr/backup/asr/host (under dm-0) (under md127)",
        "/dev/md0": "holds /run/asr/media",
        "/dev/vdb": "holds /run/asr/media (under md0)",
        "/dev/vdc": "holds /run/asr/media (under md0)",
    }
    # by /dev/mapper name, as the agent names what it mounted
    assert set(held(fake, ROOTFS, [], ("/dev/mapper/backup",))) == {"dm-0", "md127", "sdb", "sdc"}


def test_nested_loops_down_to_the_disk(fake: FakeSys) -> None:
    """The backup on loop1, whose file is on the filesystem of loop0, whose file is on vdd1; a btrfs on loop2 whose
    file is on an MD array."""
    fake.loop(0, "/run/asr/spool/outer.img")
    fake.loop(1, "/run/asr/outer/inner.img")
    info = ROOTFS + (
        "40 1 254:49 / /run/asr/spool rw - ext4 /dev/vdd1 rw\n"
        "41 1 7:0 / /run/asr/outer rw - ext4 /dev/loop0 rw\n"
        "42 1 7:1 / /run/asr/backup ro - ext4 /dev/loop1 ro\n"
    )
    got = held(fake, info, ["/run/asr/backup"])
    assert got == {
        "loop1": "holds /run/asr/backup",
        "loop0": "holds /run/asr/outer/inner.img (behind /run/asr/backup)",
        "vdd": "holds /run/asr/spool/outer.img (behind /run/asr/outer/inner.img (behind /run/asr/backup))",
    }
    fake.holder("md0", "9:0", [node(fake, "sdb2"), node(fake, "sdc2")])
    fake.loop(2, "/srv/images/backup.img (deleted)")
    fake.btrfs("0d6e8a6c-25f4-4b5e-9c51-5a2ac1b1e0f3", [node(fake, "loop2")])
    info2 = ROOTFS + "50 1 9:0 / /srv rw - xfs /dev/md0 rw\n51 1 0:52 / /run/asr/backup ro - btrfs /dev/loop2 ro\n"
    assert set(held(fake, info2, ["/run/asr/backup"])) == {"loop2", "md0", "sdb", "sdc"}


def test_a_loop_whose_file_is_on_itself_ends(fake: FakeSys) -> None:
    fake.loop(3, "/run/asr/backup/self.img")
    info = ROOTFS + "42 1 7:3 / /run/asr/backup ro - ext4 /dev/loop3 ro\n"
    assert held(fake, info, ["/run/asr/backup"]) == {"loop3": "holds /run/asr/backup"}


def test_virtual_filesystems_hold_no_disk(fake: FakeSys) -> None:
    info = ROOTFS + "23 1 0:23 / /run rw - tmpfs tmpfs rw\n24 1 0:24 / /mnt rw - overlay overlay rw\n"
    assert held(fake, info, ["/run/asr/backup", "/mnt/x", "/tmp"], ("/dev/nonexistent", "tmpfs")) == {}


def test_a_btrfs_backup_disk_is_not_chosen_by_size_nor_by_a_forged_serial(fake: FakeSys) -> None:
    """The end of the chain: the exclusion as find_targets makes it keeps the matcher off the btrfs backup disk,
    which has the original disk's serial and the target's size (unexcluded, it would win on the serial)."""
    fake.btrfs("c497c6eb-bec9-4171-b469-b3dccaebfb77", [node(fake, "vdb1")])
    info = ROOTFS + "32 1 0:45 / /run/asr/backup ro - btrfs /dev/vdb1 ro\n"
    exclude = media(fake, info, ["/run/asr/backup"])
    assert exclude == {"/dev/vdb": "holds /run/asr/backup"}
    d = gpt_descriptor()  # disk1: serial QM00001, 2 GiB
    forged = TargetDisk("vdb", 4 * GIB, serial="QM00001", table=TableType.GPT)
    targets = [TargetDisk("vda", 4 * GIB), forged]
    assert match_disks(d, targets, unattended=True)["disk1"].name == "vdb"  # what the exclusion prevents
    assert match_disks(d, targets, exclude=exclude, unattended=True)["disk1"].name == "vda"
    by_size = [TargetDisk("vda", 4 * GIB), TargetDisk("vdb", 3 * GIB)]  # the smallest fitting disk wins on size
    assert match_disks(gpt_descriptor(serial=""), by_size, unattended=True)["disk1"].name == "vdb"
    assert match_disks(gpt_descriptor(serial=""), by_size, exclude=exclude, unattended=True)["disk1"].name == "vda"


def test_the_sr0_vdb1_loop_case(fake: FakeSys) -> None:
    """Real mountinfo of the boot media: the boot CD, an ext4 backup partition, a loop-mounted image whose file is
    on another disk (a path with a blank: mountinfo's octal escape)."""
    fake.loop(0, "/run/asr/spool/backup.img")
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[-1].mountpoint == "/run/asr/img dir"  # octal escapes undone
    got = find_holding_disks(["/run/asr/media", "/run/asr/backup/asr/sample", "/run/asr/img dir/x"], mounts, fake.root)
    assert got == {
        "sr0": "holds /run/asr/media",
        "vdb": "holds /run/asr/backup/asr/sample",
        "loop0": "holds /run/asr/img dir/x",
        "vdc": "holds /run/asr/spool/backup.img (behind /run/asr/img dir/x)",
    }
    assert find_holding_disks(["/tmp"], mounts, fake.root) == {}  # on the rootfs: no disk


# ------------------------------------------------------------------------------------------------ as root, real /sys


def _disk_of_this(path: Path) -> str:
    """The whole disk holding ``path`` on this host, found another way (st_dev → /sys/dev/block); "" for none."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys_dev.exists():
        return ""
    real = sys_dev.resolve()
    return "/dev/" + (real.parent.name if (real / "partition").exists() else real.name)


@pytest.fixture
def cleanup() -> Iterator[list[tuple[str, str]]]:
    """("umount", dir) / ("losetup", dev) in the order done; undone in reverse, even on failure."""
    done: list[tuple[str, str]] = []
    yield done
    for what, arg in reversed(done):
        run(["umount", arg] if what == "umount" else ["losetup", "-d", arg], check=False)


def _need_root_and_loop() -> None:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices")


def _attach(cleanup: list[tuple[str, str]], image: Path) -> str:
    try:
        loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    except AsrError as e:
        pytest.skip(f"losetup does not work here: {e}")
    cleanup.append(("losetup", loop))
    return loop


def _mount(cleanup: list[tuple[str, str]], device: str, directory: Path, fstype: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", fstype, device, str(directory)])
    cleanup.append(("umount", str(directory)))


@pytest.mark.root
def test_two_device_btrfs_on_this_host(tmp_path: Path, cleanup: list[tuple[str, str]]) -> None:
    """A real btrfs over two loop devices, mounted: mountinfo shows an anonymous 0:NN; both loops and the disk
    holding their files are found from the mount point alone."""
    _need_root_and_loop()
    if "btrfs" not in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has no btrfs")
    images = [tmp_path / "a.img", tmp_path / "b.img"]
    for img in images:
        with open(img, "wb") as f:
            f.truncate(160 << 20)
    loops = [_attach(cleanup, img) for img in images]
    run(["mkfs.btrfs", "-q", "-f", "-L", "ASRBACKUP", "-d", "single", "-m", "raid1", *loops])
    run(["btrfs", "device", "scan", *loops], check=False)
    mnt = tmp_path / "backup"
    _mount(cleanup, loops[0], mnt, "btrfs")
    (mnt / "asr").mkdir()
    (entry,) = [m for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text()) if m.mountpoint == str(mnt)]
    assert entry.devno.startswith("0:") and entry.fstype == "btrfs"  # the case the old code missed
    got = find_media_disks([str(mnt / "asr")])
    assert got[loops[0]] == f"holds {mnt / 'asr'}"
    assert got[loops[1]] == f"holds {mnt / 'asr'} (btrfs with {loops[0].removeprefix('/dev/')})"
    host_disk = _disk_of_this(tmp_path)
    assert set(got) == {*loops, *([host_disk] if host_disk else [])}
    assert set(find_media_disks([], devices=[loops[1]])) == set(got)  # from the device the agent mounted


@pytest.mark.root
def test_nested_loops_on_this_host(tmp_path: Path, cleanup: list[tuple[str, str]]) -> None:
    """ext4 on a loop whose file lives on another loop-mounted ext4 whose file lives on this host's disk."""
    _need_root_and_loop()
    outer_img = tmp_path / "outer.img"
    run(["mke2fs", "-q", "-t", "ext4", "-F", str(outer_img), "64M"])
    outer = _attach(cleanup, outer_img)
    _mount(cleanup, outer, tmp_path / "outer", "ext4")
    inner_img = tmp_path / "outer" / "inner.img"
    run(["mke2fs", "-q", "-t", "ext4", "-F", str(inner_img), "16M"])
    inner = _attach(cleanup, inner_img)
    _mount(cleanup, inner, tmp_path / "backup", "ext4")
    got = find_media_disks([str(tmp_path / "backup")])
    assert got[inner] == f"holds {tmp_path / 'backup'}"
    assert got[outer] == f"holds {inner_img} (behind {tmp_path / 'backup'})"
    host_disk = _disk_of_this(tmp_path)
    assert set(got) == {inner, outer, *([host_disk] if host_disk else [])}
