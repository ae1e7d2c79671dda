"""Issue 11, layouts 2, 3 and 5, restored: the real Debian 12 machine (builder/vm/debian.py) on

- ``mbr-bios`` (layout 2, XP-era): an MBR with an active ext4 /boot, an ext4 root and swap in a LOGICAL partition
  (5) inside an extended one, GRUB for BIOS only -- restored by the rescue media booted under BIOS;
- ``gpt-xfs-home`` (layout 3): GPT with an ESP, an XFS root, an ext4 /home holding a user's files (a non-system
  filesystem backed up too) and swap, GRUB for UEFI only -- restored by the rescue media booted under UEFI;
- ``two-disks`` (layout 5): disk 1 with an ESP, the ext4 root and swap, disk 2 with an ext4 /srv holding files,
  GRUB for UEFI only -- restored under UEFI onto two blank disks of other sizes: disk 1 1.5x larger, disk 2 0.7x
  the size of the original (its data fits: the resize solver shrinks /srv, recovery_env/restore/resize.py);

each captured on this host by ``asr backup`` (builder.vm.rehearse.capture_disk_image: the root and /boot or /home
loop-mounted read-only, the ESP read with mtools), restored unattended onto blank disks (1.5x larger), then booted
from them alone under the layout's firmware to its serial autologin, where a check runs inside.

What is asserted comes from the guests and from independent tools: the agent's restore log on the restored root
(the chroot GRUB path: the restored system's own grub-install and update-grub; the rescue system's GRUB skipped),
sfdisk/blkid on the restored image against the descriptor (disk id, partition ids, types and starts of the
partitions before the last one, every filesystem's type, UUID and label; all within the target), and the
``ASR-CHECK`` line of the restored system (systemd state, every fstab filesystem mounted by its UUID, swap, the
data files' digest).  Which partition grew is not asserted (the resize policy is another helper's work).

One restore and one boot per layout; artifacts under tests/artifacts/real-layouts/<layout>/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.build import build_media
from builder.vm import rehearse
from builder.vm.debian import (
    DATA_MOUNTS,
    DebianImage,
    DebianLayout,
    DebianSpec,
    check_login,
    expected_mounts,
    make_debian_image,
)
from builder.vm.qemu import QemuVM, VMFirmware, VMSpec, find_accel
from recovery_env.model.descriptor import BootloaderKind, Descriptor, FsType, PartFlag, TableType
from recovery_env.model.sif import parse_asr_sif
from recovery_env.restore.verify import read_manifest
from recovery_env.run import run

pytestmark = [pytest.mark.vm, pytest.mark.root]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "real-layouts"
MiB = 1 << 20
BACKUP_MIB = 1024
#: The firmware the rescue media boot under for each layout (the one the layout boots under).
RESCUE_FIRMWARE = {DebianLayout.MBR_BIOS: VMFirmware.BIOS, DebianLayout.GPT_XFS_HOME: VMFirmware.UEFI,
                   DebianLayout.TWO_DISKS: VMFirmware.UEFI}
#: The blank target disks, as a fraction of each original disk's size: one 1.5x larger, and for layout 5 a second
#: disk 0.7x the size of the original /srv disk (its data fits: the resize solver shrinks /srv).
TARGET_SIZES = {DebianLayout.TWO_DISKS: (1.5, 0.7)}
CHROOT_BIOS = "install grub for BIOS on /dev/vda (chroot, the restored system's grub-install)"
RESCUE_BIOS = "install grub for BIOS on /dev/vda (rescue system's grub)"
CHROOT_EFI_NVRAM = "install grub for UEFI into /boot/efi (chroot, \\EFI\\debian and an NVRAM entry)"
CHROOT_EFI_REMOVABLE = "install grub for UEFI into /boot/efi (chroot, \\EFI\\BOOT\\BOOTX64.EFI)"
RESCUE_EFI = "install grub for UEFI into /boot/efi (rescue system's grub, \\EFI\\BOOT\\BOOTX64.EFI)"
UPDATE_GRUB = "rewrite the grub configuration (chroot, update-grub)"


@dataclass(frozen=True)
class Restored:
    """One layout captured and restored: what the tests read."""

    work: Path  # tests/artifacts/real-layouts/<layout>
    machine: DebianImage
    descriptor: Descriptor  # the capture's ASR.SIF
    set_dir: Path
    targets: tuple[Path, ...]  # the restored disks
    serial: str  # the rescue run's serial console
    restore_log: str  # /var/log/asr/restore-*.log of the restored system
    home_files: dict[str, str]  # the data files read back from the restored disk (host mount), path → text


def _record(work: Path, what: str, data: object) -> None:
    (work / f"timings-{what}.json").write_text(json.dumps(data, indent=1))


@pytest.fixture(scope="module", params=list(RESCUE_FIRMWARE), ids=str)
def restored(request: pytest.FixtureRequest) -> Restored:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices (debootstrap, the capture's loop mounts)")
    layout: DebianLayout = request.param
    work = ARTIFACTS / layout.value
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.monotonic()
    machine = make_debian_image(DebianSpec(layout=layout))
    plan, firmware = machine.plan, RESCUE_FIRMWARE[layout]
    t1 = time.monotonic()
    data_mounts = tuple(m for m in DATA_MOUNTS if plan.mount(m))  # a user's /home: backed up too (--include-mount)
    backup_image, set_dir = rehearse.capture_disk_image(machine.disks, plan.root.partition, machine.hostname,
                                                         firmware.value, work / "capture", backup_mib=BACKUP_MIB,
                                                         include_mounts=data_mounts)  # fmt: skip
    t2 = time.monotonic()
    media = build_media(work / "media", descriptor=set_dir / "ASR.SIF", unattended=True, timeout=600)
    t3 = time.monotonic()
    factors = TARGET_SIZES.get(layout, (1.5,))
    targets = tuple(rehearse.make_disk(work / f"target{i}.img", int(d.size_mib * f) * MiB)
                    for i, (d, f) in enumerate(zip(plan.disks, factors, strict=True)))  # fmt: skip
    spec = rehearse.make_rescue_spec(media.iso, media.floppy, (*targets, backup_image), firmware=firmware,
                                     memory="768M", cpus=2)  # fmt: skip
    serial = rehearse.run_rescue(spec, work / "rescue", "reboot")
    t4 = time.monotonic()
    (work / "rescue.serial.log").write_text(serial)
    _record(work, "restore", {"machine": round(t1 - t0, 1), "capture": round(t2 - t1, 1),
                              "media": round(t3 - t2, 1), "rescue_run": round(t4 - t3, 1)})  # fmt: skip
    backup_image.unlink()
    descriptor = parse_asr_sif((set_dir / "ASR.SIF").read_text())
    # the restored disk read on this host: the restore log on its root, the user's files on its /home or /boot
    with rehearse.mount_disk_images(targets, plan.root.partition, work / "inspect") as m:
        logs = sorted((m.root / "var" / "log" / "asr").glob("restore-*.log"))
        assert len(logs) == 1, f"restore logs in /var/log/asr: {logs}"
        log = logs[0].read_text(errors="replace")
        files = {p: (m.root / p.lstrip("/")).read_text() for p, _ in plan.data_files
                 if (m.root / p.lstrip("/")).is_file()}  # fmt: skip
    return Restored(work, machine, descriptor, set_dir, targets, serial, log, files)


def test_the_capture_records_the_layout(restored: Restored) -> None:
    d, plan = restored.descriptor, restored.machine.plan
    assert [x.disk_id.lower() for x in d.disks] == [x.disk_id for x in plan.disks]
    assert all(x.critical for x in d.disks)  # layout 5: the /srv disk holds a backed-up filesystem
    disk = d.disks[0]
    layout = plan.spec.layout
    if layout is DebianLayout.MBR_BIOS:
        assert disk.table is TableType.MBR and disk.disk_id.lower() == plan.disks[0].disk_id
        assert d.bootloader.kind is BootloaderKind.GRUB_BIOS
    else:
        assert disk.table is TableType.GPT and disk.disk_id.lower() == plan.disks[0].disk_id
        assert d.bootloader.kind is BootloaderKind.GRUB_EFI and d.bootloader.esp_mountpoint == "/boot/efi"
    want = [(p.start, p.size) for x in plan.disks for p in x.partitions]
    # the extended partition and the logical one too
    assert [(p.start, p.size) for x in d.disks for p in d.partitions_of(x.key)] == want
    if layout is DebianLayout.MBR_BIOS:
        assert [PartFlag.BOOT in p.flags for p in d.partitions] == [True, False, False, False]  # /boot is active
    by_uuid = {f.uuid.lower(): f for f in d.filesystems}
    for fs in plan.formats:
        assert by_uuid[fs.uuid.lower()].type is fs.fstype, fs
    entries = {e.path for e in read_manifest(restored.set_dir / "MANIFEST")}
    assert {p for p, _ in plan.data_files} <= entries  # the user's files on /home were backed up (--include-mount)
    assert "/usr/sbin/grub-install" in entries
    if layout is DebianLayout.MBR_BIOS:  # /boot is its own filesystem: the kernel and grub.cfg are on it
        assert {"/boot/grub/grub.cfg", f"/boot/vmlinuz-{restored.machine.kernel_version}"} <= entries


def test_the_restore_reinstalled_grub_from_the_restored_system_in_a_chroot(restored: Restored) -> None:
    assert "ASR: restore complete" in restored.serial and "ASR: error:" not in restored.serial
    outcomes = rehearse.read_step_outcomes(restored.restore_log)
    assert outcomes[UPDATE_GRUB] == "done"
    if "bios" in restored.machine.plan.firmwares:
        assert outcomes[CHROOT_BIOS] == "done" and outcomes[RESCUE_BIOS].startswith("skipped")
        assert CHROOT_EFI_REMOVABLE not in outcomes  # no ESP: no UEFI loader
    else:
        assert outcomes[CHROOT_EFI_NVRAM] == "done"  # the rescue system booted under UEFI
        assert outcomes[CHROOT_EFI_REMOVABLE] == "done" and outcomes[RESCUE_EFI].startswith("skipped")
        assert CHROOT_BIOS not in outcomes  # no BIOS boot partition: no i386-pc loader


def test_restored_ids_equal_the_capture_and_fit_the_target_disks(restored: Restored) -> None:
    d = restored.descriptor
    blkid_of = {}
    for disk, target in zip(d.disks, restored.targets, strict=True):
        parts = d.partitions_of(disk.key)
        table = json.loads(run(["sfdisk", "--json", target]).stdout)["partitiontable"]
        assert table["id"].lower() == disk.disk_id.lower()
        got = table["partitions"]
        # the same partitions, numbered as captured (layout 2: 1, 2, the extended 3 and the logical 5)
        assert [int(p["node"].removeprefix(str(target))) for p in got] == [p.number for p in parts]
        end = target.stat().st_size // 512
        for mine, theirs in zip(parts, got, strict=True):
            if table["label"] == "gpt":
                assert (theirs["type"].lower(), theirs["uuid"].lower()) == (mine.type.lower(), mine.partuuid.lower())
            else:
                assert theirs["type"].zfill(2) == mine.type.lower().zfill(2)
                assert theirs.get("bootable", False) == (PartFlag.BOOT in mine.flags)  # /boot stays active
            assert theirs["start"] + theirs["size"] <= end
        assert got[0]["start"] == parts[0].start  # the first partition never moves
        if target.stat().st_size < disk.size_bytes:  # layout 5's 0.7x disk: its /srv shrank to fit
            assert got[-1]["size"] < parts[-1].size
        for p in got:
            probe = run(["blkid", "-p", "-O", str(p["start"] * 512), "-o", "export", target], check=False).stdout
            tags = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
            if tags.get("UUID"):
                blkid_of[tags["UUID"].lower()] = tags
    for fs in d.filesystems:
        tags = blkid_of[fs.uuid.lower()]
        assert (tags["TYPE"], tags.get("LABEL", "")) == (fs.type.value, fs.label), fs
    assert restored.home_files == dict(restored.machine.plan.data_files)  # read on this host from the restored disks


def test_restored_machine_boots_to_its_login_and_passes_its_check(restored: Restored) -> None:
    plan = restored.machine.plan
    (firmware,) = plan.firmwares
    spec = VMSpec(disks=restored.targets, firmware=VMFirmware(firmware), memory="1G", accel=find_accel(),
                  name=f"asr-restored-{plan.spec.layout}")  # fmt: skip
    with QemuVM(spec, workdir=restored.work / "boot", log=restored.work / f"restored-{firmware}.serial.log") as vm:
        found = check_login(vm)
        seconds = round(vm.elapsed(), 1)
    _record(restored.work, f"boot-{firmware}", {"login_and_check_seconds": seconds, "line": found.line})
    assert found.state == "running", found.line
    assert (found.root_fstype, found.root_uuid) == (plan.root.fstype.value, plan.root.uuid)
    assert found.root_source == f"/dev/vda{plan.root.partition}"
    assert found.esp_fstype == (FsType.VFAT.value if plan.esp else "none")
    assert found.swap_uuid == plan.swap.uuid  # the logical partition's swap on layout 2
    assert found.firmware == firmware and found.hostname == plan.spec.hostname
    assert tuple(sorted(found.mounts)) == expected_mounts(plan)  # every fstab filesystem, by its UUID and type
    assert found.data == plan.data_digest  # /home's files, as the restored system itself reads them
    shutil.rmtree(restored.work / "boot", ignore_errors=True)
