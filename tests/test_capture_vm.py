"""Acceptance 3 of issue 5, in QEMU: the boot media capture a machine that is switched off.

The GPT test machine of builder/vm/machine.py is captured twice:

A. on this host by ``asr backup`` (its root loop-mounted read-only, its ESP read with mtools: the host kernel has
   no vfat), onto an ext4 image -- as tests/test_restore_vm.py does;
B. by the boot media: the ISO's kernel and initrd booted directly with ``asr.mode=capture asr.unattended=1``, the
   machine's disk, a blank writable floppy and an empty ext4 backup medium labelled ASRBACKUP attached.  The guest
   mounts the machine read-only (ext4 ``ro,noload``, the ESP vfat ``ro``), writes the set onto the backup medium,
   ASR.SIF and ASRPNP.SIF onto the floppy, and powers off.

B's ASR.SIF (read from the floppy with mtools) equals A's apart from the capture time, the kernel names of the
disks (loop device vs virtio) and where the backup set lives (path, medium UUID, the archives' bytes); both
MANIFESTs list the same files, and the root filesystem's entries agree in every field.  The machine's disk image is
byte-identical afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from builder.build import BuildResult, build_media
from builder.media.fatimage import make_floppy
from builder.vm.machine import Layout, MachineImage, MachineSpec, PartRole, make_machine_image, read_machine_inputs
from builder.vm.qemu import QemuVM, VMSpec, find_accel, read_boot_files
from builder.vm.rehearse import capture_disk_image
from recovery_env.model.descriptor import Descriptor
from recovery_env.model.descriptor import Firmware as DescFirmware
from recovery_env.model.manifest import ManifestEntry, sha256_file
from recovery_env.model.sif import parse_asr_sif, parse_asrpnp_sif
from recovery_env.restore.verify import read_manifest
from recovery_env.run import run, run_bytes

pytestmark = [pytest.mark.vm, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts" / "capture-vm"
MiB = 1 << 20
MACHINE_MIB = 256
BACKUP_MIB = 384
BACKUP_LABEL = "ASRBACKUP"
BOOT_TIMEOUT = 150.0
RUN_TIMEOUT = 420.0


def _need_root() -> None:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices (the host capture loop-mounts the machine's root)")


def make_backup_image(path: Path) -> Path:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(BACKUP_MIB * MiB)
    run(["mke2fs", "-q", "-t", "ext4", "-L", BACKUP_LABEL, str(path)])
    return path


def capture_on_host(machine: MachineImage, work: Path) -> Path:
    """`asr backup` of the machine image, as `asr rehearse` captures one; returns a copy of the set's directory."""
    root_no = next(p.number for p in machine.partitions if p.role is PartRole.ROOT)
    _, set_dir = capture_disk_image(machine.path, root_no, machine.plan.spec.hostname, str(DescFirmware.BIOS),
                                    work / "host")  # fmt: skip
    return set_dir


def comparable(d: Descriptor) -> Descriptor:
    """``d`` without what legitimately differs between two captures of one machine: the capture time, the disks'
    kernel names and identity strings (a loop device on the host, a virtio disk in the VM), and where the backup
    set is (its path, the medium's UUID, the archives' bytes)."""
    disks = tuple(replace(k, device="", model="", serial="", wwn="", by_id=()) for k in d.disks)
    backup = d.backup
    if backup is not None:
        archives = tuple(replace(a, size=0, sha256="") for a in backup.archives)
        backup = replace(backup, path="", media_uuid="", manifest_sha256="", archives=archives)
    return replace(d, system=replace(d.system, captured_at=""), disks=disks, backup=backup)


def mtype(floppy: Path, name: str) -> str:
    return run_bytes(["mtype", "-i", str(floppy), f"::{name}"]).decode("utf-8")


def debugfs_read(image: Path, path: str, out: Path) -> Path:
    run(["debugfs", "-R", f"dump {path} {out}", str(image)])
    return out


def _key(e: ManifestEntry) -> str:
    return e.path


@dataclass(frozen=True)
class Setup:
    machine: MachineImage
    host_set: Path  # a copy of `asr backup`'s set (ASR.SIF, ASRPNP.SIF, MANIFEST, archives)
    media: BuildResult
    source_sha: str  # of the machine's disk image after the host capture


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    _need_root()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    machine = make_machine_image(
        tmp_path_factory.mktemp("capture-vm") / "gpt.img",
        MachineSpec(layout=Layout.GPT, size_mib=MACHINE_MIB),
        read_machine_inputs(),
    )
    host_set = capture_on_host(machine, ARTIFACTS)
    media = build_media(ARTIFACTS / "media", descriptor=host_set / "ASR.SIF", timeout=600)
    return Setup(machine, host_set, media, sha256_file(machine.path))


def run_capture(s: Setup, name: str, disks: tuple[Path, ...], floppy: Path, *, writable: bool) -> str:
    """Boot the media's kernel and initrd with ``asr.mode=capture asr.unattended=1``; the serial text once the
    agent has logged its capture verdict and powered off."""
    work = ARTIFACTS / name
    work.mkdir()
    kernel, initrd, default = read_boot_files(s.media.iso, work)
    spec = VMSpec(iso=s.media.iso, floppy=floppy, floppy_writable=writable, disks=disks, accel=find_accel(),
                  kernel=kernel, initrd=initrd, append=f"{default} asr.mode=capture asr.unattended=1",
                  name="capture")  # fmt: skip
    with QemuVM(spec, workdir=work / "vm") as vm:
        vm.wait_serial(r"ASR: agent \S+ started", BOOT_TIMEOUT)
        vm.wait_serial(r"ASR: (capture complete|capture failed|internal error): [^\r\n]*", RUN_TIMEOUT)
        vm.wait_serial(r"ASR: exit 21 \(power off\)", 60.0)
        assert vm.wait_exit(60.0) == 0
        serial = vm.serial_text
    (work / "serial.txt").write_text(serial)
    return serial


def blank_floppy(path: Path) -> Path:
    path.write_bytes(make_floppy({}, label="ASR DISK", epoch=0))
    return path


def test_capture_from_the_boot_media_equals_asr_backup(setup: Setup) -> None:
    machine, host_set, work = setup.machine, setup.host_set, ARTIFACTS
    a = parse_asr_sif((host_set / "ASR.SIF").read_text())
    floppy = blank_floppy(work / "blank-floppy.img")
    backup = make_backup_image(work / "vm-backup.img")
    serial = run_capture(setup, "equal", (machine.path, backup), floppy, writable=True)
    assert re.search(r"ASR: capture complete: /run/asr/backup/asr/\S+ on /dev/vdb, 2 archive", serial), serial[-4000:]
    assert re.search(r"ASR: source /boot/efi: /dev/vda\d \(vfat\) read-only", serial), serial[-3000:]
    assert re.search(r"ASR: source root: /dev/vda\d \(ext4 \S+\) read-only", serial)
    assert "ASR: ASR.SIF and ASRPNP.SIF written to the floppy /dev/fd0" in serial
    source_sha = setup.source_sha

    # the source disk was never written
    assert sha256_file(machine.path) == source_sha

    # the floppy: checked by fsck.fat, read with mtools
    run(["fsck.fat", "-n", str(floppy)])
    b_text = mtype(floppy, "ASR.SIF")
    b = parse_asr_sif(b_text)
    parse_asrpnp_sif(mtype(floppy, "ASRPNP.SIF"))
    assert b.system.firmware is DescFirmware.BIOS
    assert [k.device for k in b.disks] == ["/dev/vda"]
    assert b.backup is not None and b.backup.media_label == BACKUP_LABEL
    assert re.fullmatch(rf"/asr/{machine.plan.spec.hostname}-\d{{8}}-\d{{6}}", b.backup.path)
    assert comparable(b) == comparable(a)

    # the set on the backup medium (read with debugfs): its ASR.SIF is the floppy's, its MANIFEST lists the files
    # the host's lists, the root filesystem's entries agree in every field
    vm_set = work / "vm-set"
    vm_set.mkdir()
    debugfs_read(backup, f"{b.backup.path}/ASR.SIF", vm_set / "ASR.SIF")
    assert (vm_set / "ASR.SIF").read_text() == b_text
    debugfs_read(backup, f"{b.backup.path}/{b.backup.manifest}", vm_set / "MANIFEST")
    assert sha256_file(vm_set / "MANIFEST") == b.backup.manifest_sha256
    host_entries = {_key(e): e for e in read_manifest(host_set / a.backup.manifest)} if a.backup else {}
    vm_entries = {_key(e): e for e in read_manifest(vm_set / "MANIFEST")}
    assert set(vm_entries) == set(host_entries)
    root_fs = next(m.filesystem for m in b.mounts if m.mountpoint == "/")
    for path, e in vm_entries.items():
        if e.fs == root_fs:
            assert e == host_entries[path], path


def test_a_write_protected_floppy_leaves_the_sif_files_beside_the_set(setup: Setup) -> None:
    floppy = blank_floppy(ARTIFACTS / "ro-floppy.img")
    before = sha256_file(floppy)
    backup = make_backup_image(ARTIFACTS / "ro-backup.img")
    serial = run_capture(setup, "ro-floppy", (setup.machine.path, backup), floppy, writable=False)
    assert "ASR: capture complete: " in serial, serial[-4000:]
    assert re.search(r"ASR: ASR.SIF and ASRPNP.SIF written to /run/asr/backup/asr/\S+ \(beside the backup set\)",
                     serial)  # fmt: skip
    assert sha256_file(floppy) == before
    assert sha256_file(setup.machine.path) == setup.source_sha
    d = re.search(r"ASR: capture complete: /run/asr/backup(/asr/\S+) on", serial)
    assert d is not None
    got = debugfs_read(backup, f"{d.group(1)}/ASR.SIF", ARTIFACTS / "ro-floppy" / "ASR.SIF")
    assert comparable(parse_asr_sif(got.read_text())) == comparable(
        parse_asr_sif((setup.host_set / "ASR.SIF").read_text()))


def test_no_backup_medium_is_a_named_error_and_nothing_is_written(setup: Setup) -> None:
    floppy = blank_floppy(ARTIFACTS / "nb-floppy.img")
    before = sha256_file(floppy)
    serial = run_capture(setup, "no-backup", (setup.machine.path,), floppy, writable=True)
    assert re.search(r"ASR: capture failed: BackupMediaMissingError: no backup medium: no filesystem with LABEL "
                     r"'ASRBACKUP'; filesystems on this machine: [^\r\n]*/dev/vda3", serial), serial[-4000:]
    assert sha256_file(floppy) == before
    assert sha256_file(setup.machine.path) == setup.source_sha
