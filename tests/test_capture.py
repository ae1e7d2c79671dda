"""`asr backup` end to end on a system root the test builds: a GPT disk image (BIOS boot partition + ext4 root)
attached with losetup + partx, its root mounted, captured with `asr backup --root MNT --disk /dev/loopN`, then the
archives restored with GNU tar into an empty directory and checked entry by entry.  Each refusal: the named
error, and nothing in DIR.  Also the device inventory on this machine's real /sys."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_backupset import make_tree
from test_layout import (
    GPT_DISK_ID,
    PartSpec,
    make_partitioned_image,
    mkfs_ext4,
    offender_image,  # noqa: F401 - a fixture, used by name
    partition_offsets,
)

from builder.capture import CaptureRequest, capture, render_progress
from recovery_env.capture.checks import ArchiveSource, SourceReader
from recovery_env.capture.flow import record_used_bytes
from recovery_env.errors import (
    AsrError,
    DestinationError,
    InsufficientSpaceError,
    LayoutError,
    NotRootError,
    UnsupportedLayoutError,
)
from recovery_env.model.descriptor import GPT_BIOS_BOOT, BootloaderKind, Filesystem, Firmware, FsType
from recovery_env.model.sif import parse_asr_sif, parse_asrpnp_sif
from recovery_env.model.validate import validate_inventory
from recovery_env.probe.inventory import AliasTable, make_device, parse_modules_alias, read_inventory
from recovery_env.probe.layout import read_mounts
from recovery_env.restore.verify import check_backup_set, read_manifest, verify_manifest
from recovery_env.run import run

REPO = Path(__file__).resolve().parent.parent
ROOT_UUID = "3d9a1c4e-5b6f-4a7d-8e9f-0a1b2c3d4e5f"
ROOT_PARTUUID = "aa11bb22-cc33-4d44-8e55-ff6677889900"
BIOS_PARTUUID = "aa11bb22-cc33-4d44-8e55-ff6677889901"
MACHINE_ID = "0123456789abcdef0123456789abcdef"
MiB = 1 << 20


def _need_root_and_loop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (losetup, mount)")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop devices (/dev/loop-control missing)")


@dataclass(frozen=True)
class Attached:
    image: Path
    loop: str
    mnt: Path | None


@pytest.fixture(scope="module")
def attach() -> Iterator[list[Attached]]:
    """Attach images with losetup + partx -a (and mount); everything is detached at the end, even on failure."""
    attached: list[Attached] = []
    yield attached
    for a in reversed(attached):
        if a.mnt is not None:
            run(["umount", str(a.mnt)], check=False)
        run(["partx", "-d", a.loop], check=False)
        run(["losetup", "-d", a.loop], check=False)


def attach_image(attach: list[Attached], img: Path, mount_part: int | None, mnt: Path | None) -> Attached:
    try:
        loop = run(["losetup", "-f", "--show", str(img)]).stdout.strip()
    except AsrError as e:
        pytest.skip(f"losetup does not work here: {e}")
    a = Attached(img, loop, None)
    attach.append(a)
    run(["partx", "-a", loop])
    if mount_part is not None and mnt is not None:
        mnt.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "ext4", f"{loop}p{mount_part}", str(mnt)])
        attach.remove(a)
        a = Attached(img, loop, mnt)
        attach.append(a)
    return a


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, attach: list[Attached]) -> Attached:
    """A GPT disk: 1 MiB bios_grub + ext4 root holding a small system tree, mounted."""
    _need_root_and_loop()
    tmp = tmp_path_factory.mktemp("sys")
    img = tmp / "disk.img"
    make_partitioned_image(img, 160, "gpt", GPT_DISK_ID, [
        PartSpec(1, GPT_BIOS_BOOT, BIOS_PARTUUID, "bios"), PartSpec(0, "L", ROOT_PARTUUID, "root")])
    off = partition_offsets(img)
    mkfs_ext4(img, *off[2], ROOT_UUID, "asr-root")
    a = attach_image(attach, img, 2, tmp / "mnt")
    assert a.mnt is not None
    make_tree(a.mnt)
    (a.mnt / "etc/fstab").write_text(f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\nproc /proc proc defaults 0 0\n")
    (a.mnt / "etc/hostname").write_text("asr-test\n")
    (a.mnt / "etc/machine-id").write_text(MACHINE_ID + "\n")
    (a.mnt / "etc/os-release").write_text('PRETTY_NAME="Test Linux 1"\nNAME="Test"\n')
    (a.mnt / "boot/grub/i386-pc").mkdir(parents=True)
    (a.mnt / "boot/grub/i386-pc/core.img").write_bytes(b"\x00" * 512)
    (a.mnt / "var/tmp").mkdir(parents=True)
    (a.mnt / "var/tmp/secret.key").write_text("left out by --exclude\n")
    return a


def asr(*args: str, user: int | None = None) -> tuple[int, str, str]:
    """Run the real `asr` command line (a new process), optionally as another user."""
    argv = [sys.executable, "-m", "builder.cli", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    p = run(argv, check=False, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    return p.returncode, p.stdout, p.stderr


def backup_args(system: Attached, dest: Path, *extra: str) -> list[str]:
    assert system.mnt is not None
    return ["backup", "--to", str(dest), "--root", str(system.mnt), "--disk", system.loop, *extra]


@pytest.fixture(scope="module")
def captured(system: Attached, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    dest = tmp_path_factory.mktemp("dest") / "set"
    code, out, err = asr(*backup_args(system, dest, "--exclude", "/var/tmp/secret.key", "--json"))
    assert code == 0, err
    return dest, json.loads(out)


# ---------------------------------------------------------------------------------------------------------------
# The live capture
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.root
def test_capture_writes_the_set(captured: tuple[Path, dict[str, object]]) -> None:
    dest, result = captured
    assert sorted(p.name for p in dest.iterdir()) == ["ASR.SIF", "ASRPNP.SIF", "MANIFEST", "fs1.tar.zst"]
    assert result["files"] == ["ASR.SIF", "ASRPNP.SIF", "MANIFEST", "fs1.tar.zst"]
    assert result["bootloader"] == {"kind": "grub-bios", "disk": "disk1"}
    assert [(s["mountpoint"], s["read"]) for s in result["sources"]] == [("/", "mounted")]  # type: ignore[index,union-attr]
    assert result["changed_while_read"] == []  # nothing changes under a --root capture of an idle image


@pytest.mark.root
def test_asr_sif_describes_the_image(system: Attached, captured: tuple[Path, dict[str, object]]) -> None:
    dest, _ = captured
    d = parse_asr_sif((dest / "ASR.SIF").read_text())
    (disk,) = d.disks
    assert (disk.disk_id, disk.device, disk.size_bytes, disk.critical) == (GPT_DISK_ID, system.loop, 160 * MiB,
                                                                          True)
    p1, p2 = d.partitions
    assert (p1.type, p1.partuuid, p1.name, p1.size) == (GPT_BIOS_BOOT, BIOS_PARTUUID, "bios", 2048)
    assert (p2.partuuid, p2.name, p2.start) == (ROOT_PARTUUID, "root", 4096)
    (fs,) = d.filesystems
    assert (fs.type, fs.uuid, fs.label, fs.partition, fs.backup) == (FsType.EXT4, ROOT_UUID, "asr-root", "disk1p2",
                                                                     True)
    assert 0 < fs.used_bytes < p2.size * 512  # what the resize solver never goes below (statvfs or tar's bytes)
    assert [(m.mountpoint, m.device, m.options) for m in d.mounts] == [("/", f"UUID={ROOT_UUID}", "errors=remount-ro")]
    assert (d.bootloader.kind, d.bootloader.disk, d.system.firmware) == (BootloaderKind.GRUB_BIOS, "disk1",
                                                                         Firmware.BIOS)
    assert (d.system.hostname, d.system.machine_id, d.system.os_release) == ("asr-test", MACHINE_ID, "Test Linux 1")
    assert d.backup is not None
    assert d.backup.path.endswith("/set") and [a.file for a in d.backup.archives] == ["fs1.tar.zst"]
    check_backup_set(dest, d.backup)  # every size and SHA-256 recorded in ASR.SIF matches the files
    inv = parse_asrpnp_sif((dest / "ASRPNP.SIF").read_text())
    assert inv.hostname == "asr-test"


def test_used_bytes_are_the_larger_of_statvfs_and_the_tar_stream() -> None:
    fs1, fs2, fs3 = (Filesystem(k, f"disk1p{n}", t) for n, (k, t) in enumerate(
        (("fs1", FsType.EXT4), ("fs2", FsType.VFAT), ("fs3", FsType.SWAP)), 1))
    sources = (ArchiveSource("fs1", "/", Path("/r"), "/dev/vda1", 5000),
               ArchiveSource("fs2", "/boot/efi", Path("/r/boot/efi"), "/dev/vda2", 1 << 30, SourceReader.MTOOLS))
    got = record_used_bytes((fs1, fs2, fs3), sources, (("fs1", 4096), ("fs2", 10240)))
    # statvfs wins on fs1; fs2 was read with mtools (its estimate is the device's size): the tar stream counts;
    # swap is not archived: not recorded
    assert [f.used_bytes for f in got] == [5000, 10240, 0]


@pytest.mark.root
def test_archives_restore_with_gnu_tar_and_every_entry_matches(
        captured: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    dest, _ = captured
    target = tmp_path / "restored"
    target.mkdir()
    run(["tar", "--zstd", "-x", "-f", str(dest / "fs1.tar.zst"), "--numeric-owner", "--xattrs",
         "--xattrs-include=*", "--acls", "--selinux", "--sparse", "-p", "-C", str(target)])
    assert verify_manifest(target, dest / "MANIFEST") == []
    # owners, modes, xattrs, ACLs, hard links, symlinks, sparse file, device node, fifo are really there
    assert os.stat(target / "usr/bin/tool").st_ino == os.stat(target / "usr/bin/tool-again").st_ino
    assert stat.S_IMODE(os.stat(target / "usr/bin/tool").st_mode) == 0o4755
    assert os.readlink(target / "usr/bin/tool-link") == "tool"
    assert os.lstat(target / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)
    assert (os.stat(target / "home/user").st_uid, os.stat(target / "etc/shadow").st_gid) == (1000, 42)
    assert os.getxattr(target / "etc/passwd", "user.asr.test") == b"value\x00\xff binary"
    assert "user:1000:r--" in run(["getfacl", "-n", str(target / "etc/shadow")]).stdout
    sp = os.stat(target / "var.sparse")
    assert sp.st_size == (64 << 20) + 3 and sp.st_blocks * 512 < 1 << 20
    # left out: the --exclude pattern; kept: the rest of /var/tmp
    assert not (target / "var/tmp/secret.key").exists() and (target / "var/tmp").is_dir()
    manifest = (dest / "MANIFEST").read_text()
    assert "/var/tmp/secret.key" not in manifest and '"path":"/etc/fstab"' in manifest


@pytest.mark.root
def test_summary_without_json(system: Attached, tmp_path: Path) -> None:
    code, out, err = asr(*backup_args(system, tmp_path / "plain"))
    assert code == 0, err
    assert "asr backup of asr-test" in out and "fs1.tar.zst" in out and "next: asr build --descriptor" in out


@pytest.mark.root
def test_a_filesystem_on_the_wiped_disk_not_backed_up_is_a_warning(attach: list[Attached], tmp_path: Path) -> None:
    """/srv is in fstab on the disk a restore wipes, but only /, /boot, /boot/efi, /usr, /var are backed up (no
    --include-mount /srv): `asr backup` says that a restore re-creates it EMPTY, on the terminal and in --json."""
    _need_root_and_loop()
    img = tmp_path / "disk.img"
    make_partitioned_image(img, 160, "gpt", GPT_DISK_ID, [
        PartSpec(1, GPT_BIOS_BOOT, BIOS_PARTUUID, "bios"), PartSpec(100, "L", ROOT_PARTUUID, "root"),
        PartSpec(0, "L", "aa11bb22-cc33-4d44-8e55-ff6677889902", "srv")])
    off = partition_offsets(img)
    mkfs_ext4(img, *off[2], ROOT_UUID, "asr-root")
    mkfs_ext4(img, *off[3], "3d9a1c4e-5b6f-4a7d-8e9f-0a1b2c3d4e60", "asr-srv")
    a = attach_image(attach, img, 2, tmp_path / "mnt")
    assert a.mnt is not None
    (a.mnt / "etc").mkdir()
    (a.mnt / "etc/fstab").write_text(f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"
                                     "LABEL=asr-srv /srv ext4 defaults 0 2\n")
    (a.mnt / "etc/hostname").write_text("asr-srv\n")
    (a.mnt / "boot/grub/i386-pc").mkdir(parents=True)
    (a.mnt / "boot/grub/i386-pc/core.img").write_bytes(b"\x00" * 512)
    warning = (f"/srv (ext4 on disk1p3, {a.loop}p3) is on disk1, which a restore wipes, but it is not backed up: a "
               "restore re-creates it EMPTY (--include-mount /srv backs it up)")
    code, out, err = asr("backup", "--to", str(tmp_path / "set1"), "--root", str(a.mnt), "--disk", a.loop, "--json")
    assert code == 0, err
    assert warning in json.loads(out)["warnings"]
    code, out, err = asr("backup", "--to", str(tmp_path / "set2"), "--root", str(a.mnt), "--disk", a.loop)
    assert code == 0, err
    assert f"  warning: {warning}\n" in out
    (a.mnt / "srv").mkdir(mode=0o700)
    os.chmod(a.mnt / "srv", 0o700)  # the mount point on the root filesystem; /srv's own root is 0755 (mke2fs)
    run(["mount", f"{a.loop}p3", str(a.mnt / "srv")])
    try:  # backed up with --include-mount /srv: no warning
        code, out, err = asr("backup", "--to", str(tmp_path / "set3"), "--root", str(a.mnt), "--disk", a.loop,
                             "--include-mount", "/srv", "--json")
    finally:
        run(["umount", str(a.mnt / "srv")])
    assert code == 0, err
    assert [f["backup"] for f in json.loads(out)["filesystems"]] == [True, True]
    assert not [w for w in json.loads(out)["warnings"] if "EMPTY" in w]
    # the root filesystem is read through a bind of it: /srv archived as the directory it is there, not as the
    # root of the filesystem mounted on it (that one is /srv's own archive)
    modes = {e.fs: stat.S_IMODE(e.mode) for e in read_manifest(tmp_path / "set3" / "MANIFEST") if e.path == "/srv"}
    assert modes == {"fs1": 0o700, "fs2": 0o755}
    assert not [m for m in read_mounts() if m.target.startswith("/run/asr-source-")]  # the binds are gone


# ---------------------------------------------------------------------------------------------------------------
# Refusals: the named error, and nothing in DIR
# ---------------------------------------------------------------------------------------------------------------


def _empty_or_absent(d: Path) -> bool:
    return not d.exists() or not any(d.iterdir())


@pytest.mark.root
def test_refused_when_not_root(system: Attached, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(dest, 0o777)  # so that only the root check can stop the capture
    if not os.access(sys.executable, os.X_OK) or os.stat(REPO).st_mode & 0o005 != 0o005:
        pytest.skip("the repository is not readable by uid 65534")
    code, _, err = asr(*backup_args(system, dest), user=65534)
    assert code == NotRootError.exit_code
    assert "must run as root (effective uid is 65534)" in err
    assert _empty_or_absent(dest)
    with pytest.raises(NotRootError):
        capture(CaptureRequest(dest, system.mnt or Path("/"), (system.loop,)), euid=65534)
    assert _empty_or_absent(dest)


@pytest.mark.root
def test_refused_when_dir_is_on_a_critical_disk(system: Attached) -> None:
    assert system.mnt is not None
    dest = system.mnt / "backup-here"
    with pytest.raises(DestinationError, match=r"p2 \(fs1, /\), a filesystem of critical disk /dev/loop\d+"):
        capture(CaptureRequest(dest, system.mnt, (system.loop,)), euid=0)
    assert not dest.exists()
    code, _, err = asr(*backup_args(system, dest))
    assert code == DestinationError.exit_code and "a filesystem of critical disk" in err
    assert not dest.exists()


@pytest.mark.root
def test_refused_to_record_control_characters_or_dotdot(system: Attached, tmp_path: Path) -> None:
    """Issue 10, finding 4: `asr backup` records no path the restore's validator refuses: a backup directory with
    an escape sequence in its name (DestinationError), a --disk path with '..' (LayoutError); exit 2, nothing
    written.  A '..' in --to is resolved: the recorded [BACKUP] path is the real one."""
    assert system.mnt is not None
    dest = tmp_path / "set\x1b[31m"
    with pytest.raises(DestinationError, match=r"has the control character '\\x1b'"):
        capture(CaptureRequest(dest, system.mnt, (system.loop,)), euid=0)
    code, _, err = asr(*backup_args(system, dest))
    assert code == DestinationError.exit_code and "has the control character" in err, err
    assert list(tmp_path.iterdir()) == []

    dest = tmp_path / "set"
    dotdot = "/dev/../dev/" + system.loop.removeprefix("/dev/")
    with pytest.raises(LayoutError, match=r"--disk '/dev/\.\./dev/loop\d+' has a '\.\.' component"):
        capture(CaptureRequest(dest, system.mnt, (dotdot,)), euid=0)
    code, _, err = asr("backup", "--to", str(dest), "--root", str(system.mnt), "--disk", dotdot)
    assert code == LayoutError.exit_code and "has a '..' component" in err, err
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "sub").mkdir()
    code, _, err = asr(*backup_args(system, tmp_path / "sub" / ".." / "set"))
    assert code == 0, err
    recorded = parse_asr_sif((dest / "ASR.SIF").read_text()).backup
    assert recorded is not None and recorded.path.endswith(f"/{tmp_path.name}/set"), recorded


@pytest.mark.root
def test_refused_when_dir_is_on_a_loop_whose_file_is_on_a_captured_filesystem(system: Attached, tmp_path: Path) -> None:
    """Issue 10, finding 5: DIR on a loop-mounted image whose file lives on the captured root, and DIR two loops
    down (an image on a loop-mounted filesystem whose image is on the captured root): DestinationError naming the
    chain, exit 2, nothing written (not even into the images)."""
    assert system.mnt is not None
    images = system.mnt / "var" / "images"
    images.mkdir(parents=True)
    undo: list[list[str]] = []

    def loop_mount(image: Path, size: str, mnt: Path) -> None:
        run(["mke2fs", "-q", "-t", "ext4", "-F", str(image), size])
        loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
        undo.append(["losetup", "-d", loop])
        mnt.mkdir()
        run(["mount", "-t", "ext4", loop, str(mnt)])
        undo.append(["umount", str(mnt)])

    try:
        loop_mount(images / "outer.img", "56M", tmp_path / "outer")
        loop_mount(tmp_path / "outer" / "inner.img", "24M", tmp_path / "inner")
        for top in (tmp_path / "outer", tmp_path / "inner"):
            dest = top / "set"
            with pytest.raises(DestinationError) as e:
                capture(CaptureRequest(dest, system.mnt, (system.loop,)), euid=0)
            msg = str(e.value)
            assert re.search(rf"is on {system.loop}p2 \(fs1, /\), a filesystem of critical disk {system.loop}", msg)
            assert f"through loop devices: {system.loop}p2 holds {images / 'outer.img'} (behind " in msg, msg
            code, _, err = asr(*backup_args(system, dest))
            assert code == DestinationError.exit_code and "through loop devices" in err, err
            assert sorted(p.name for p in top.iterdir()) == (["inner.img", "lost+found"] if top.name == "outer"
                                                              else ["lost+found"])
    finally:
        for argv in reversed(undo):
            run(argv, check=False)
        shutil.rmtree(images, ignore_errors=True)


@pytest.mark.root
def test_refused_when_dir_is_not_empty(system: Attached, tmp_path: Path) -> None:
    (tmp_path / "old").write_text("x")
    with pytest.raises(DestinationError, match="is not empty"):
        capture(CaptureRequest(tmp_path, system.mnt or Path("/"), (system.loop,)), euid=0)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


@pytest.mark.root
def test_refused_when_space_is_short(system: Attached, attach: list[Attached], tmp_path: Path) -> None:
    small = tmp_path / "small.img"
    make_partitioned_image(small, 8, "gpt", "0a0b0c0d-1111-4222-8333-444455556666", [PartSpec(0, "L")])
    off = partition_offsets(small)
    mkfs_ext4(small, *off[1], "9e8d7c6b-5a49-4837-a625-140f0e0d0c0b", "small")
    a = attach_image(attach, small, 1, tmp_path / "smallmnt")
    assert a.mnt is not None
    dest = a.mnt / "set"
    with pytest.raises(InsufficientSpaceError, match=r"free, the backup needs about .* used on /"):
        capture(CaptureRequest(dest, system.mnt or Path("/"), (system.loop,)), euid=0)
    assert not dest.exists()
    code, _, err = asr(*backup_args(system, dest))
    assert code == InsufficientSpaceError.exit_code and "the backup needs about" in err
    assert sorted(p.name for p in a.mnt.iterdir()) == ["lost+found"]


@pytest.mark.root
def test_refused_lvm_md_luks_listed(system: Attached, attach: list[Attached], offender_image: Path,  # noqa: F811
                                    tmp_path: Path) -> None:
    a = attach_image(attach, offender_image, None, None)
    dest = tmp_path / "set"
    with pytest.raises(UnsupportedLayoutError) as ei:
        capture(CaptureRequest(dest, system.mnt or Path("/"), (system.loop, a.loop)), euid=0)
    assert ei.value.offenders == [
        (f"{a.loop}p2", "LUKS encrypted volume (crypto_LUKS)"),
        (f"{a.loop}p3", "MD RAID member (linux_raid_member)"),
        (f"{a.loop}p4", "LVM physical volume (LVM2_member)"),
    ]
    code, _, err = asr(*backup_args(system, dest, "--disk", a.loop))
    assert code == UnsupportedLayoutError.exit_code
    assert "unsupported storage layout (3 device(s))" in err
    for dev in ("p2: LUKS", "p3: MD RAID member", "p4: LVM physical volume"):
        assert f"{a.loop}{dev}" in err
    assert not dest.exists()


# ---------------------------------------------------------------------------------------------------------------
# Device inventory on this machine's /sys; progress line
# ---------------------------------------------------------------------------------------------------------------


def test_inventory_matches_sysfs_and_lspci() -> None:
    inv = read_inventory("probe")
    validate_inventory(inv)
    pci = {d.address: d for d in inv.devices if d.bus == "pci"}
    sys_pci = Path("/sys/bus/pci/devices")
    if not sys_pci.is_dir() or not any(sys_pci.iterdir()):
        pytest.skip("no PCI devices in /sys")
    assert set(pci) == {p.name for p in sys_pci.iterdir()}
    for addr, d in pci.items():
        raw = sys_pci / addr
        assert d.vendor == (raw / "vendor").read_text().strip()[2:].lower()
        assert d.device == (raw / "device").read_text().strip()[2:].lower()
        assert d.device_class == (raw / "class").read_text().strip().lower()
        assert d.modalias == (raw / "modalias").read_text().strip()
        drv = raw / "driver"
        assert d.driver == (Path(os.path.realpath(drv)).name if drv.is_symlink() else "")
    if shutil.which("lspci"):
        # lspci -n -D: "0000:00:01.0 0200: 1af4:1041 (rev 01)"
        for line in run(["lspci", "-n", "-D"]).stdout.splitlines():
            addr, cls, ids = line.split()[:3]
            vendor, device = ids.split(":")
            assert (pci[addr].vendor, pci[addr].device, pci[addr].device_class[2:6]) == (vendor, device, cls[:4])
    virtio = [d for d in inv.devices if d.bus == "virtio"]
    for d in virtio:
        assert d.modalias.startswith("virtio:") and d.vendor
    # ASRPNP.SIF round trip of the real inventory
    from recovery_env.model.sif_render import render_asrpnp_sif

    assert parse_asrpnp_sif(render_asrpnp_sif(inv)) == inv


def test_modules_from_modules_alias() -> None:
    aliases = parse_modules_alias("# c\nalias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n"
                                  "alias pci:v00008086d00002922sv*sd*bc*sc*i* ahci\n"
                                  "alias virtio:d00000002v* virtio_blk\n")
    dev = make_device("pci", "0000:00:01.0", {"vendor": "0x1af4", "device": "0x1041", "class": "0x020000",
                                              "modalias": "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00"},
                      "virtio-pci", "", aliases)
    assert (dev.vendor, dev.device, dev.device_class, dev.modules) == ("1af4", "1041", "0x020000", ("virtio_pci",))
    blk = make_device("virtio", "virtio1", {"vendor": "0x1af4", "device": "0x0002",
                                            "modalias": "virtio:d00000002v00001AF4"}, "virtio_blk", "virtio_blk",
                      AliasTable())
    assert blk.modules == ("virtio_blk",) and blk.device_class == ""


def test_progress_line() -> None:
    line = render_progress(50 * MiB, 100 * MiB, 5.0)
    assert line.startswith("[" + "#" * 15 + "." * 15 + "]") and " 50.0%" in line
    assert "50.0 MiB / 100.0 MiB" in line and "10.0 MiB/s" in line and "ETA 0:05" in line
