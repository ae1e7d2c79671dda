"""Issue 11, layout 4, restored: the real Debian 12 machine with a btrfs root (builder/vm/debian.py ``gpt-btrfs``:
bios_grub + btrfs with ``@`` at /, ``@home`` at /home, ``@snapshots`` at /.snapshots, the default ``@``, a
read-only snapshot ``@snapshots/1/snapshot`` of ``@``, subvol= in fstab, + swap; GRUB BIOS) captured on this host
by ``asr backup`` (its default subvolume loop-mounted read-only; the capture mounts the top level itself),
restored unattended by the rescue media booted under BIOS onto a blank disk 1.5x larger, then booted from that
disk alone to its serial autologin, where the check runs inside the restored system.

Asserted from the restored image (the host kernel mounts btrfs from a loop device + partx) and from the guest:
the subvolume list (paths, ids, parents, read-only flags) and the default subvolume equal the capture's, a user's
file in /home (the ``data=`` digest of the check), fstab's ``subvol=`` mounts active (the check's ``mounts=``),
the chroot GRUB path in the agent's restore log, the filesystem UUID kept.  One restore, one boot; artifacts
under tests/artifacts/real-btrfs/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.build import build_media
from builder.capture import CaptureRequest, capture
from builder.vm import rehearse
from builder.vm.debian import DebianImage, DebianLayout, DebianSpec, check_login, expected_mounts, make_debian_image
from builder.vm.qemu import QemuVM, VMFirmware, VMSpec, find_accel
from recovery_env.model.descriptor import Descriptor, Firmware, FsType
from recovery_env.model.sif import parse_asr_sif
from recovery_env.probe.btrfs import parse_default, parse_subvolume_list
from recovery_env.run import run

pytestmark = [pytest.mark.vm, pytest.mark.root]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "real-btrfs"
MiB = 1 << 20
BACKUP_MIB = 1024
CHROOT_BIOS = "install grub for BIOS on /dev/vda (chroot, the restored system's grub-install)"
UPDATE_GRUB = "rewrite the grub configuration (chroot, update-grub)"


@contextmanager
def _partitions(image: Path) -> Iterator[str]:
    """The image on a loop device with its partition nodes (partx: the host kernel parses no tables)."""
    loop = run(["losetup", "-f", "--show", str(image)]).stdout.strip()
    try:
        run(["partx", "-a", loop])
        yield loop
    finally:
        run(["partx", "-d", loop], check=False)
        run(["losetup", "-d", loop], check=False)


@contextmanager
def _mounted(device: str, where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "btrfs", "-o", options, device, str(where)])
    try:
        yield where
    finally:
        run(["umount", str(where)], check=False)


@dataclass(frozen=True)
class Subvolumes:
    listed: tuple[tuple[int, int, str], ...]  # (id, parent, path)
    readonly: frozenset[int]
    default: int


def read_subvolumes(top: Path) -> Subvolumes:
    """btrfs-progs' own view of a mounted top level."""
    listed = parse_subvolume_list(run(["btrfs", "subvolume", "list", "-p", str(top)]).stdout)
    ro = parse_subvolume_list(run(["btrfs", "subvolume", "list", "-p", "-r", str(top)]).stdout)
    default = parse_default(run(["btrfs", "subvolume", "get-default", str(top)]).stdout)
    return Subvolumes(tuple((s.id, s.parent, s.path) for s in listed), frozenset(s.id for s in ro), default)


@dataclass(frozen=True)
class Restored:
    machine: DebianImage
    descriptor: Descriptor
    source: Subvolumes  # read from the source image
    restored: Subvolumes  # read from the restored image
    restore_log: str
    home_file: str  # a user's file in /home of the restored image ("" when absent)
    source_home_file: str
    target: Path
    serial: str


@pytest.fixture(scope="module")
def machine() -> DebianImage:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices (debootstrap, the capture's loop mounts)")
    return make_debian_image(DebianSpec(layout=DebianLayout.GPT_BTRFS))


def _a_home_file(top: Path) -> tuple[str, str]:
    """(path in @home, content) of the first regular file there."""
    for dirpath, _dirs, files in sorted(os.walk(top / "@home")):
        for name in sorted(files):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                return str(p.relative_to(top)), p.read_text(errors="replace")
    return "", ""


@pytest.fixture(scope="module")
def restored(machine: DebianImage) -> Restored:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    work = ARTIFACTS / "capture"
    work.mkdir(parents=True)
    root_no = machine.plan.root.partition
    t1 = time.monotonic()
    backup_image = rehearse.make_disk(work / "backup.img", BACKUP_MIB * MiB)
    run(["mke2fs", "-q", "-t", "ext4", "-L", rehearse.BACKUP_LABEL, str(backup_image)])
    with _partitions(machine.disks[0]) as loop:
        with _mounted(f"{loop}p{root_no}", work / "top", "ro,rescue=nologreplay,subvolid=5") as top:
            source = read_subvolumes(top)
            home_path, home_text = _a_home_file(top)
        # the running system's view: / is the default subvolume (@), read-only
        root_fs = f"{loop}p{root_no}"
        with _mounted(root_fs, work / "root", "ro,rescue=nologreplay") as root, _ext4(backup_image, work / "bk") as bk:
            dest = bk / "asr" / machine.hostname
            capture(CaptureRequest(dest=dest, root=root, disks=(loop,), firmware=Firmware.BIOS), euid=os.geteuid())
            shutil.copytree(dest, work / "set")
    t2 = time.monotonic()
    sif_dir = ARTIFACTS / "sif"
    sif_dir.mkdir()
    for name in ("ASR.SIF", "ASRPNP.SIF"):
        shutil.copyfile(work / "set" / name, sif_dir / name)
    media = build_media(ARTIFACTS / "media", descriptor=sif_dir / "ASR.SIF", unattended=True, timeout=600)
    t3 = time.monotonic()
    target = rehearse.make_disk(ARTIFACTS / "target.img", machine.plan.disks[0].size_mib * 3 // 2 * MiB)
    spec = rehearse.make_rescue_spec(media.iso, media.floppy, (target, backup_image), firmware=VMFirmware.BIOS,
                                     memory="768M", cpus=2)  # fmt: skip
    serial = rehearse.run_rescue(spec, ARTIFACTS / "rescue", "reboot")
    t4 = time.monotonic()
    seconds = {"capture": round(t2 - t1, 1), "media": round(t3 - t2, 1), "rescue_run": round(t4 - t3, 1)}
    (ARTIFACTS / "restore-seconds.json").write_text(json.dumps(seconds))
    backup_image.unlink()
    with _partitions(target) as loop, _mounted(f"{loop}p{root_no}", ARTIFACTS / "check", "ro,subvolid=5") as top:
        after = read_subvolumes(top)
        logs = sorted((top / "@/var/log/asr").glob("restore-*.log"))
        log = logs[-1].read_text() if logs else ""
        home = (top / home_path).read_text(errors="replace") if home_path and (top / home_path).is_file() else ""
    descriptor = parse_asr_sif((sif_dir / "ASR.SIF").read_text())
    return Restored(machine, descriptor, source, after, log, home, home_text, target, serial)


@contextmanager
def _ext4(image: Path, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", str(image), str(where)])
    try:
        yield where
    finally:
        run(["umount", str(where)], check=False)


def test_the_capture_records_the_subvolumes_as_btrfs_lists_them(restored: Restored) -> None:
    d = restored.descriptor
    (fs,) = [f for f in d.filesystems if f.type is FsType.BTRFS]
    subs = d.subvolumes_of(fs.key)
    assert tuple((s.id, s.parent, s.path) for s in subs) == restored.source.listed
    assert {s.id for s in subs if s.readonly} == restored.source.readonly
    assert {s.path for s in subs} >= {"@", "@home", "@snapshots", "@snapshots/1/snapshot"}
    assert fs.default_subvolume == restored.source.default == next(s.id for s in subs if s.path == "@")
    assert sorted(m.mountpoint for m in d.mounts if m.filesystem == fs.key) == ["/", "/.snapshots", "/home"]
    assert d.backup is not None and [a.filesystem for a in d.backup.archives] == [fs.key]  # the whole top level


def test_the_restore_recreated_every_subvolume_with_its_id_flags_and_default(restored: Restored) -> None:
    assert "ASR: restore complete" in restored.serial and "ASR: error:" not in restored.serial
    assert re.search(r"ASR: manifest: \d+ entries, 0 differences", restored.serial)
    assert restored.restored == restored.source
    assert restored.source_home_file and restored.home_file == restored.source_home_file
    outcomes = rehearse.read_step_outcomes(restored.restore_log)
    assert outcomes[CHROOT_BIOS] == "done" and outcomes[UPDATE_GRUB] == "done"
    (fs,) = [f for f in restored.descriptor.filesystems if f.type is FsType.BTRFS]
    assert outcomes[f"unmount the top level of {fs.key}"] == "done"


def test_the_restored_machine_boots_with_its_subvolumes_mounted_as_fstab_says(restored: Restored) -> None:
    plan = restored.machine.plan
    spec = VMSpec(disks=(restored.target,), firmware=VMFirmware.BIOS, memory="1G", accel=find_accel(),
                  name="asr-restored-btrfs")  # fmt: skip
    with QemuVM(spec, workdir=ARTIFACTS / "boot-bios", log=ARTIFACTS / "restored-bios.serial.log") as vm:
        found = check_login(vm)
        seconds = round(vm.elapsed(), 1)
    (ARTIFACTS / "boot-bios.txt").write_text(f"login and check: {seconds} s\n{found.line}\n")
    assert found.state == "running", found.line
    assert (found.root_fstype, found.root_uuid) == ("btrfs", plan.root.uuid)
    assert tuple(sorted(found.mounts)) == expected_mounts(plan)  # /, /home, /.snapshots with their subvolumes
    assert found.data == plan.data_digest
    assert found.hostname == plan.spec.hostname and found.swap_uuid == plan.swap.uuid
