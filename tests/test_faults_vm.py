"""Faults a restore must survive (issue 10; the table is docs/FAULTS.md), each proved in QEMU.

- A power cut in the middle of the extraction (QEMU killed with SIGKILL): booting the media again restores and
  verifies; no other attached disk changed (SHA-256 of the backup medium, an extra disk, the floppy and the ISO
  before the first boot and after each).
- A read-only backup medium and a read-only floppy (QEMU ``readonly=on``: the guest sees write-protected disks):
  the restore works and nothing tries to write them (the second boot of the power-cut scenario).
- The backup medium pulled out during the extraction (QMP ``device_del`` of its virtio disk): a named error, no
  "restore complete"; unattended powers off, interactive offers R, and R after plugging it back in resumes.

The source is the test machine of builder/vm/machine.py with a ballast of random bytes in its root, so that the
extraction lasts seconds under TCG (the plain machine's takes about one) and a fault lands inside it for sure.
Serial logs are kept under tests/artifacts/faults/.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import test_restore_vm
from test_restore_vm import (
    BOOT_TIMEOUT,
    RUN_TIMEOUT,
    STEP_TIMEOUT,
    TARGET_MIB,
    Source,
    _need_root,
    assert_lines,
    capture_machine,
    make_disk,
    rescue_spec,
    restored_log,
    sha256,
)

from builder.build import build_media
from builder.vm import machine as test_machine
from builder.vm.qemu import QemuVM, VMSpec, qemu_argv
from builder.vm.rehearse import AGENT_FAILED, EXIT_TIMEOUT, read_rescue_verdict, run_rescue
from recovery_env.model.descriptor import Firmware as DescFirmware
from recovery_env.run import run

pytestmark = [pytest.mark.vm, pytest.mark.root]
workdir = test_restore_vm.workdir  # the fixture: a fresh folder per test under this module's ARTIFACTS

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts" / "faults"
BALLAST_MIB = 40  # incompressible: the extraction of / lasts a few seconds under TCG
TARGET, BACKUP, EXTRA = 0, 1, 2  # the VM's disks, in order (vda, vdb, vdc)
ROOT_EXTRACTION = r"ASR: \[(\d+)/\d+\] restore / from fs\d\.tar\.zst"
# What the kernel or a tool says when something writes to a write-protected disk or a read-only mount
WRITE_REFUSED = r"(?i)read-only file system|write-protected|write protect|EROFS|I/O error|Permission denied"


def add_ballast(image: Path, offset: int, mib: int) -> None:
    """Write /var/ballast.bin (``mib`` MiB of seeded random bytes) into the ext4 filesystem at ``offset``."""
    data = image.parent / "ballast.bin"
    data.write_bytes(random.Random("asr-faults").randbytes(mib << 20))
    try:
        run(["debugfs", "-w", "-R", f"write {data} /var/ballast.bin", f"{image}?offset={offset}"])
    finally:
        data.unlink()
    listing = run(["debugfs", "-R", "ls -l /var", f"{image}?offset={offset}"]).stdout
    assert "ballast.bin" in listing, listing


@pytest.fixture(scope="module")
def src() -> Source:
    """The test machine (GPT, BIOS) with its ballast, captured onto an ext4 backup image; unattended media."""
    _need_root()
    work = ARTIFACTS / "source"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = test_machine.MachineSpec(layout=test_machine.Layout.GPT, size_mib=256, hostname="asr-faults",
                                    marker="faults-1", seed="faults")  # fmt: skip
    machine = test_machine.make_machine_image(work / "machine.img", spec, test_machine.read_machine_inputs())
    root = next(p for p in machine.partitions if p.role is test_machine.PartRole.ROOT)
    add_ballast(machine.path, root.offset, BALLAST_MIB)
    captured = capture_machine(machine, DescFirmware.BIOS, work)
    media = build_media(work / "media", descriptor=captured.sif, unattended=True, timeout=600)
    return Source(captured, media)


def fault_spec(src: Source, target: Path, extra: Path, *, read_only_backup: bool, append: str = "",
               workdir: Path | None = None) -> VMSpec:  # fmt: skip
    """The rescue media (floppy read-only, as always) with target, backup medium and an extra disk: vda, vdb,
    vdc, virtio (hot-unpluggable); the backup medium write-protected if asked."""
    backup = src.captured.backup_image
    spec = rescue_spec(src, (target, backup, extra), append=append, workdir=workdir)
    return replace(spec, read_only_disks=frozenset({backup}) if read_only_backup else frozenset())


def other_media(src: Source, extra: Path) -> dict[str, Path]:
    """Every attached image that is not the restore's target."""
    return {"backup medium": src.captured.backup_image, "extra disk": extra, "floppy": src.media.floppy,
            "ISO": src.media.iso}  # fmt: skip


def hashes(images: Mapping[str, Path]) -> dict[str, str]:
    return {what: sha256(path) for what, path in images.items()}


def restored_problems(src: Source, disk: Path) -> list[str]:
    """How the restored disk differs from the machine as built (table, partitions, filesystems); [] if not."""
    facts = test_machine.read_disk_facts(disk)
    return test_machine.check_restored_disk(src.captured.machine, facts, last_grows=True)


def check_no_success(serial: str) -> None:
    """No partial "success": no restore-complete line, no restart announced, the verdict a failure."""
    assert "ASR: restore complete" not in serial
    assert not re.search(r"Your computer will (restart|power off) in", serial)
    assert not read_rescue_verdict(serial).ok


# ------------------------------------------------------------------------------------------------ power cut


@dataclass(frozen=True)
class PowerCut:
    spec: VMSpec  # the second boot's
    cut_serial: str  # the first boot, until the plug was pulled
    cut_at: str  # the last progress line before it
    serial: str  # the second boot
    target: Path
    target_changed_by_cut: bool
    hashes_before: dict[str, str]
    hashes_after_cut: dict[str, str]
    hashes_after: dict[str, str]


@pytest.fixture(scope="module")
def power_cut(src: Source) -> PowerCut:
    """Boot 1 (unattended, backup medium writable): SIGKILL to QEMU at the first progress line of the extraction
    of /.  Boot 2 (unattended, backup medium and floppy read-only): the restore runs to its end."""
    work = ARTIFACTS / "power-cut"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    target = make_disk(work / "target.img", TARGET_MIB, seed="target")
    extra = make_disk(work / "extra.img", 64, seed="extra")
    others = other_media(src, extra)
    before, target_before = hashes(others), sha256(target)
    with QemuVM(fault_spec(src, target, extra, read_only_backup=False), workdir=work / "cut") as vm:
        vm.wait_serial(r"ASR: agent \S+ started", BOOT_TIMEOUT)
        vm.wait_serial(ROOT_EXTRACTION, RUN_TIMEOUT)
        at = vm.wait_serial(r"ASR: progress: restore / from [^\n]*", STEP_TIMEOUT).group(0)
        vm.power_cut()
        cut_serial = vm.serial_text
    after_cut, target_cut = hashes(others), sha256(target)
    spec = fault_spec(src, target, extra, read_only_backup=True)
    serial = run_rescue(spec, work / "again", "reboot")
    return PowerCut(spec, cut_serial, at, serial, target, target_cut != target_before, before, after_cut,
                    hashes(others))  # fmt: skip


def test_power_cut_mid_extraction_then_the_restore_completes_and_nothing_else_changed(
    src: Source, power_cut: PowerCut
) -> None:
    pc = power_cut
    step = int(re.findall(ROOT_EXTRACTION, pc.cut_serial)[-1])
    # the plug was pulled inside the extraction: not finished, no later step begun
    assert not re.search(r"100%", pc.cut_at), pc.cut_at
    assert f"ASR: [{step + 1}/" not in pc.cut_serial
    check_no_success(pc.cut_serial)
    assert pc.target_changed_by_cut  # the first boot did write: the second starts from a half-restored disk
    entries = src.captured.descriptor.backup.file_count if src.captured.descriptor.backup else 0
    assert_lines(
        pc.serial,
        r"ASR: backup set verified: 2 archive\(s\)",
        r"ASR: plan: \d+ steps; disks to erase: /dev/vda <- disk1",
        ROOT_EXTRACTION,
        rf"ASR: manifest: {entries} entries, 0 differences",
        r"ASR: restore complete",
        r"ASR: exit 20 \(reboot\)",
    )
    assert "ASR: error:" not in pc.serial
    assert restored_problems(src, pc.target) == []
    assert pc.hashes_after_cut == pc.hashes_before
    assert pc.hashes_after == pc.hashes_before


def test_read_only_backup_medium_and_floppy_restore_and_are_never_written(src: Source, power_cut: PowerCut) -> None:
    pc = power_cut
    backup = src.captured.backup_image
    argv = qemu_argv(pc.spec, serial="mon:stdio", qmp=None)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert any(f"readonly=on,file={backup}" in d for d in drives), drives
    assert any(d.startswith("if=floppy") and f"readonly=on,file={src.media.floppy}" in d for d in drives), drives
    assert_lines(
        pc.serial,
        r"ASR: floppy read: ASR\.SIF",
        r"ASR: backup set found: \S+ on /dev/vdb",
        r"ASR: never a target: /dev/fd0 \(the ASR floppy\)",
        r"ASR: never a target: /dev/vdb \(holds /run/asr/backup\)",
        r"ASR: restore complete",
    )
    assert not re.search(WRITE_REFUSED, pc.serial), re.search(WRITE_REFUSED, pc.serial)
    log = restored_log(pc.target, src.captured.machine)  # the agent's log of the run, in the restored system
    assert "ASR: backup set verified" in log and not re.search(WRITE_REFUSED, log)
    assert pc.hashes_after == pc.hashes_before


# ------------------------------------------------------------------------------------------------ medium pulled


def test_backup_medium_pulled_mid_restore_unattended_stops_with_a_named_error(src: Source, workdir: Path) -> None:
    target = make_disk(workdir / "target.img", TARGET_MIB, seed="target")
    extra = make_disk(workdir / "extra.img", 64, seed="extra")
    others = other_media(src, extra)
    before = hashes(others)
    with QemuVM(fault_spec(src, target, extra, read_only_backup=False), workdir=workdir) as vm:
        vm.wait_serial(r"ASR: agent \S+ started", BOOT_TIMEOUT)
        vm.wait_serial(r"ASR: backup set found: \S+ on /dev/vdb", RUN_TIMEOUT)
        vm.wait_serial(ROOT_EXTRACTION, RUN_TIMEOUT)
        vm.wait_serial(r"ASR: progress: restore / from", STEP_TIMEOUT)
        vm.unplug_disk(BACKUP)
        end = vm.wait_serial(rf"ASR: exit \d+ \([^)]+\)|{AGENT_FAILED}", RUN_TIMEOUT)
        vm.wait_exit(EXIT_TIMEOUT)
        serial = vm.serial_text
    assert end.group(0) == "ASR: exit 21 (power off)"
    assert_lines(
        serial,
        r"ASR: error: BackupMediaLostError: the backup medium /dev/vdb \(holding /run/asr/backup/asr/asr-faults\) "
        r"disappeared during step (\d+) \(restore / from fs\d\.tar\.zst\); the disks are partly restored\. "
        r"Attach the backup medium again and retry: the restore resumes at step \1\.",
        r"ASR: unattended: stopping here",
    )
    check_no_success(serial)
    assert hashes(others) == before


def test_backup_medium_pulled_then_plugged_back_in_retry_completes(src: Source, workdir: Path) -> None:
    """Interactive: F2, any key, Enter, C; the medium pulled during the extraction: the named error with R=Retry;
    it is plugged back in (read-only this time) and R resumes the restore, which completes and verifies."""
    target = make_disk(workdir / "target.img", TARGET_MIB, seed="target")
    extra = make_disk(workdir / "extra.img", 64, seed="extra")
    backup = src.captured.backup_image
    before = hashes(other_media(src, extra))
    spec = fault_spec(src, target, extra, read_only_backup=False, append="asr.unattended=0 asr.timeout=600",
                      workdir=workdir)  # fmt: skip
    entries = src.captured.descriptor.backup.file_count if src.captured.descriptor.backup else 0
    with QemuVM(spec, workdir=workdir) as vm:
        vm.wait_serial(r"Press F2 to run Automated System Recovery \(ASR\)", BOOT_TIMEOUT)
        vm.send_keys("f2")
        vm.wait_serial(r"Press any key when ready", STEP_TIMEOUT)
        vm.send_keys("space")
        vm.wait_serial(r"ENTER=Continue +F3=Quit", STEP_TIMEOUT)
        vm.send_keys("enter")
        vm.wait_serial(r"(C=Continue|N=Next page) +", RUN_TIMEOUT)
        vm.send_keys("n", "n", "n")  # a plan longer than the screen: C is accepted once its last page was shown
        vm.wait_serial(r"C=Continue +F3=Quit", STEP_TIMEOUT)
        vm.send_keys("c")
        vm.wait_serial(ROOT_EXTRACTION, RUN_TIMEOUT)
        vm.wait_serial(r"ASR: progress: restore / from", STEP_TIMEOUT)
        vm.unplug_disk(BACKUP)
        vm.wait_serial(r"ASR: error: BackupMediaLostError: the backup medium /dev/vdb ", RUN_TIMEOUT)
        vm.wait_serial(r"R=Retry +F3=Quit", STEP_TIMEOUT)
        vm.screendump(workdir / "medium-lost.png")
        check_no_success(vm.serial_text)
        vm.plug_disk(BACKUP, backup, read_only=True)
        for _attempt in range(5):  # the guest may take a moment to see the disk again: R again if it has not yet
            vm.send_keys("r")
            m = vm.wait_serial(r"ASR: backup set verified|R=Retry +F3=Quit", RUN_TIMEOUT)
            if m.group(0).startswith("ASR:"):
                break
        vm.wait_serial(r"ASR: resuming the restore at step \d+", STEP_TIMEOUT)
        vm.wait_serial(rf"ASR: manifest: {entries} entries, 0 differences", RUN_TIMEOUT)
        vm.wait_serial(r"ASR: restore complete", RUN_TIMEOUT)
        vm.wait_serial(r"Your computer will restart in \d+ seconds", STEP_TIMEOUT)
        vm.send_keys("enter")
        vm.wait_serial(r"ASR: exit 20 \(reboot\)", STEP_TIMEOUT)
        vm.wait_exit(EXIT_TIMEOUT)
        serial = vm.serial_text
    assert serial.count("ASR: error: BackupMediaLostError") == 1
    assert restored_problems(src, target) == []
    assert hashes(other_media(src, extra)) == before
