"""Issue 11, layout 1, restored: the real Debian 12 machine (builder/vm/debian.py: GPT with bios_grub + vfat ESP +
ext4 root + swap, the distribution's GRUB for BIOS and UEFI) captured on this host by ``asr backup``
(builder.vm.rehearse.capture_disk_image: its root loop-mounted read-only, its unmounted ESP read with mtools),
restored unattended by the rescue media booted under UEFI onto a blank disk 1.5x larger, then booted from that
disk alone under BIOS and under UEFI (a fresh OVMF store: the removable path) to its serial autologin, where a
check runs inside the restored system.

What is asserted comes from the guests and from independent tools: the agent's restore log (the chroot GRUB path
ran: the restored system's own grub-install for i386-pc and x86_64-efi, its update-grub; the rescue system's GRUB
was skipped), the OVMF variable store the restore left (the NVRAM boot entry the restored efibootmgr wrote),
sfdisk/blkid on the restored image against the descriptor (disk, partition and filesystem ids), and the
``ASR-CHECK`` line of the restored system (systemd state, root by UUID, ESP mounted, swap, hostname, firmware).

One restore, two boots; artifacts (serial logs, timings) under tests/artifacts/real-restore/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.build import build_media
from builder.vm import rehearse
from builder.vm.debian import DebianImage, DebianSpec, check_login, expected_mounts, make_debian_image
from builder.vm.qemu import OVMF_VARS, QemuVM, VMFirmware, VMSpec, find_accel
from recovery_env.model.descriptor import BootloaderKind, Descriptor, FsType
from recovery_env.model.sif import parse_asr_sif
from recovery_env.restore.resize import solve_disk
from recovery_env.restore.verify import check_backup_set, read_manifest
from recovery_env.run import run

pytestmark = [pytest.mark.vm, pytest.mark.root]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "real-restore"
MiB = 1 << 20
BACKUP_MIB = 1024  # the set of a ~700 MB system, zstd (sparse image)
CHROOT_BIOS = "install grub for BIOS on /dev/vda (chroot, the restored system's grub-install)"
CHROOT_EFI_NVRAM = "install grub for UEFI into /boot/efi (chroot, \\EFI\\debian and an NVRAM entry)"
CHROOT_EFI_REMOVABLE = "install grub for UEFI into /boot/efi (chroot, \\EFI\\BOOT\\BOOTX64.EFI)"
UPDATE_GRUB = "rewrite the grub configuration (chroot, update-grub)"
RESCUE_GRUB = "install grub for UEFI into /boot/efi (rescue system's grub, \\EFI\\BOOT\\BOOTX64.EFI)"


def _record(what: str, data: object) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "timings.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc[what] = data
    path.write_text(json.dumps(doc, indent=1))


@dataclass(frozen=True)
class Restored:
    machine: DebianImage
    descriptor: Descriptor
    set_dir: Path
    target: Path
    serial: str  # the rescue run's serial console
    restore_log: str  # /var/log/asr/restore-*.log of the restored system, as the agent wrote it
    ovmf_vars: bytes  # the variable store the UEFI rescue run left


@pytest.fixture(scope="module")
def machine() -> DebianImage:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices (debootstrap, the capture's loop mounts)")
    started = time.monotonic()
    image = make_debian_image(DebianSpec())
    _record("machine", round(time.monotonic() - started, 1))
    return image


def read_restore_log(disk: Path, root_offset: int) -> str:
    """The agent's log that the restore left in the restored system's /var/log/asr/ (debugfs on the image)."""
    image = f"{disk}?offset={root_offset}"
    names = re.findall(r"restore-\d{8}-\d{6}\.log", run(["debugfs", "-R", "ls -l /var/log/asr", image]).stdout)
    assert len(names) == 1, f"restore logs in /var/log/asr: {names}"
    return run(["debugfs", "-R", f"cat /var/log/asr/{names[0]}", image]).stdout


@pytest.fixture(scope="module")
def restored(machine: DebianImage) -> Restored:
    for stale in ("capture", "sif", "media", "rescue"):
        shutil.rmtree(ARTIFACTS / stale, ignore_errors=True)
    (ARTIFACTS / "target.img").unlink(missing_ok=True)
    t1 = time.monotonic()
    root_no = machine.plan.root.partition
    backup_image, set_dir = rehearse.capture_disk_image(machine.disks, root_no, machine.hostname, "uefi",
                                                         ARTIFACTS / "capture", backup_mib=BACKUP_MIB)  # fmt: skip
    t2 = time.monotonic()
    sif_dir = ARTIFACTS / "sif"
    sif_dir.mkdir()
    for name in ("ASR.SIF", "ASRPNP.SIF"):
        shutil.copyfile(set_dir / name, sif_dir / name)
    media = build_media(ARTIFACTS / "media", descriptor=sif_dir / "ASR.SIF", unattended=True, timeout=600)
    t3 = time.monotonic()
    target = rehearse.make_disk(ARTIFACTS / "target.img", machine.plan.disks[0].size_mib * 3 // 2 * MiB)
    rescue_dir = ARTIFACTS / "rescue"
    spec = rehearse.make_rescue_spec(media.iso, media.floppy, (target, backup_image), firmware=VMFirmware.UEFI,
                                     memory="768M", cpus=2)  # fmt: skip
    serial = rehearse.run_rescue(spec, rescue_dir, "reboot")
    t4 = time.monotonic()
    _record("restore", {"capture": round(t2 - t1, 1), "media": round(t3 - t2, 1), "rescue_run": round(t4 - t3, 1)})
    descriptor = parse_asr_sif((sif_dir / "ASR.SIF").read_text())
    log = read_restore_log(target, machine.plan.disks[0].partitions[root_no - 1].start * 512)
    return Restored(machine, descriptor, set_dir, target, serial, log, (rescue_dir / "OVMF_VARS.fd").read_bytes())


def test_the_capture_records_layout_1_and_reads_the_unmounted_esp_with_mtools(restored: Restored) -> None:
    d, plan = restored.descriptor, restored.machine.plan
    assert d.bootloader.kind is BootloaderKind.GRUB_EFI and d.bootloader.esp_mountpoint == "/boot/efi"
    (disk,) = d.disks
    assert disk.disk_id.lower() == plan.disks[0].disk_id
    assert [(p.start, p.size, p.partuuid.lower()) for p in d.partitions] == [
        (p.start, p.size, p.uuid) for p in plan.disks[0].partitions
    ]
    by_uuid = {f.uuid.lower(): f for f in d.filesystems}
    for fs in plan.filesystems:
        assert by_uuid[fs.uuid.lower()].type is fs.fstype
    assert d.backup is not None
    check_backup_set(restored.set_dir, d.backup)
    entries = {e.path: e for e in read_manifest(restored.set_dir / "MANIFEST")}
    esp_files = {path.lower() for path, e in entries.items() if e.fs == by_uuid[plan.mounts[1].uuid.lower()].key}
    assert {"/boot/efi/efi/boot/bootx64.efi", "/boot/efi/efi/debian/grubx64.efi"} <= esp_files  # read by mtools
    assert "/usr/sbin/grub-install" in entries and "/usr/lib/grub/i386-pc/boot.img" in entries


def test_the_restore_reinstalled_grub_from_the_restored_system_in_a_chroot(restored: Restored) -> None:
    assert "ASR: restore complete" in restored.serial and "ASR: error:" not in restored.serial
    outcomes = rehearse.read_step_outcomes(restored.restore_log)
    assert outcomes[CHROOT_BIOS] == "done"
    assert outcomes[CHROOT_EFI_NVRAM] == "done"  # the rescue system booted under UEFI
    assert outcomes[CHROOT_EFI_REMOVABLE] == "done"
    assert outcomes[UPDATE_GRUB] == "done"
    assert outcomes[RESCUE_GRUB].startswith("skipped")  # the restored system has its own grub-install
    assert outcomes["mount efivarfs into /target"] == "done"
    # the NVRAM boot entry the restored system's efibootmgr wrote, read from the OVMF variable store
    loader = "\\efi\\debian\\grubx64.efi".encode("utf-16-le")  # bytes.lower(): the ASCII letters of UTF-16LE
    assert loader in restored.ovmf_vars.lower()
    assert loader not in OVMF_VARS.read_bytes().lower()  # the store it started from


def test_restored_ids_equal_the_capture(restored: Restored) -> None:
    d = restored.descriptor
    table = json.loads(run(["sfdisk", "--json", restored.target]).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["id"].lower() == d.disks[0].disk_id.lower()
    # the 1.5x disk: the resize solver grew the root and kept the swap's size (it moved after the root)
    placed = solve_disk(d, d.disks[0], os.path.getsize(restored.target))
    got = [(p["start"], p["size"], p["type"].lower(), p["uuid"].lower()) for p in table["partitions"]]
    assert got == [(placed.of(p.number).start, placed.of(p.number).size, p.type.lower(), p.partuuid.lower())
                   for p in d.partitions]
    kinds = {p.key: (placed.of(p.number).size, p.size) for p in d.partitions}
    root, swap = (next(f.partition for f in d.filesystems if pred(f)) for pred in (
        lambda f: f.key == d.root_mount.filesystem, lambda f: f.type is FsType.SWAP))
    assert kinds[root][0] > kinds[root][1] and kinds[swap][0] == kinds[swap][1]
    starts = {p.key: placed.of(p.number).start for p in d.partitions}
    for fs in d.filesystems:
        probe = run(["blkid", "-p", "-O", str(starts[fs.partition] * 512), "-o", "export", restored.target]).stdout
        tags = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        assert (tags["TYPE"], tags["UUID"].lower()) == (fs.type.value, fs.uuid.lower()), fs
        assert tags.get("LABEL", "") == fs.label, fs


def test_the_restored_grub_cfg_names_the_root_by_uuid(restored: Restored) -> None:
    """update-grub ran in the chroot with /dev/disk/by-uuid linked (the rescue system has no udev): the kernel
    command line names the root by UUID, not by the rescue system's device name, which another bus would change."""
    plan = restored.machine.plan
    offset = plan.disks[0].partitions[plan.root.partition - 1].start * 512
    cfg = run(["debugfs", "-R", "cat /boot/grub/grub.cfg", f"{restored.target}?offset={offset}"]).stdout
    assert f"root=UUID={plan.root.uuid} " in cfg
    assert "root=/dev/" not in cfg


@pytest.mark.parametrize("firmware", [VMFirmware.BIOS, VMFirmware.UEFI])
def test_restored_debian_boots_to_its_login_and_passes_its_check(restored: Restored, firmware: VMFirmware) -> None:
    """Under UEFI with a fresh variable store: the restored system's own GRUB through \\EFI\\BOOT\\BOOTX64.EFI."""
    plan = restored.machine.plan
    spec = VMSpec(disks=(restored.target,), firmware=firmware, memory="1G", accel=find_accel(),
                  name=f"asr-restored-{firmware}")  # fmt: skip
    log = ARTIFACTS / f"restored-{firmware}.serial.log"
    with QemuVM(spec, workdir=ARTIFACTS / f"boot-{firmware}", log=log) as vm:
        found = check_login(vm)
        seconds = round(vm.elapsed(), 1)
    _record(f"boot-{firmware}", {"login_and_check_seconds": seconds, "line": found.line})
    assert found.state == "running", found.line
    assert (found.root_source, found.root_fstype, found.root_uuid) == ("/dev/vda3", "ext4", plan.root.uuid)
    assert found.esp_fstype == FsType.VFAT.value
    assert found.swap_uuid == plan.swap.uuid
    assert found.hostname == plan.spec.hostname
    assert found.firmware == firmware.value
    assert tuple(sorted(found.mounts)) == expected_mounts(plan)  # every fstab filesystem mounted, by its UUID


# GRUB of the captured system, left out of the set: its modules and tools, its configuration (update-grub would
# write a new one), /boot/grub.  The rescue system's GRUB then installs the removable path (its fallback), with
# no grub.cfg to load: the restored system cannot come up, and the rehearsal must say so with the serial excerpt.
NO_GRUB = ("/boot/grub", "/usr/lib/grub", "/usr/sbin/grub-*", "/usr/sbin/update-grub*", "/usr/bin/grub-*")


def test_a_set_without_its_grub_fails_the_rehearsal_with_the_serial_excerpt(machine: DebianImage) -> None:
    work = ARTIFACTS / "no-grub"
    shutil.rmtree(work, ignore_errors=True)
    _image, set_dir = rehearse.capture_disk_image(machine.disks[0], machine.plan.root.partition, machine.hostname,
                                                  "uefi", work / "capture", backup_mib=BACKUP_MIB,
                                                  excludes=NO_GRUB)  # fmt: skip
    (work / "capture" / "backup.img").unlink()
    paths = [e.path for e in read_manifest(set_dir / "MANIFEST")]
    assert "/usr/bin/ls" in paths or "/bin/ls" in paths
    assert not [p for p in paths if p.startswith(("/boot/grub/", "/usr/lib/grub/", "/usr/sbin/grub-"))]
    report = rehearse.rehearse(set_dir, firmware="uefi", expect=r"root@[a-z0-9-]+:~# ", workdir=work / "rehearse",
                               boot_timeout=90.0, memory="768M", keep=True, cpus=2)  # fmt: skip
    _record("no-grub", {p.name: p.seconds for p in report.phases})
    root_offset = machine.plan.disks[0].partitions[machine.plan.root.partition - 1].start * 512
    outcomes = rehearse.read_step_outcomes(read_restore_log(Path(report.scratch_disks[0]), root_offset))
    for disk in report.scratch_disks:
        Path(disk).unlink()
    assert outcomes[RESCUE_GRUB] == "done"  # the fallback ran
    assert outcomes[CHROOT_EFI_REMOVABLE].startswith("skipped") and outcomes[UPDATE_GRUB].startswith("skipped")
    assert not report.recoverable
    (boot,) = report.boots
    assert not boot.booted and "no sign of a running system" in boot.matched
    assert "grub>" in boot.excerpt  # GRUB without its configuration, on the serial console
    assert boot.excerpt in report.verdict  # the serial excerpt is in the verdict
