"""Acceptance of the restore issue, in QEMU: F2 → floppy → plan → re-create the disks → restore → boot loader →
the restored machine boots.  Verdicts come from the guest's serial console (the agent's ``ASR: ...`` lines, the
restored machine's own ``ASR-MACHINE-MARKER`` line) and from independent tools run on the disk images afterwards
(sfdisk, blkid, mtools, debugfs, sha256 of every byte).

The source: the test machine of builder/vm/machine.py (GPT and MBR), captured on this host by ``asr backup`` (its
root loop-mounted, its ESP read with mtools since this host's kernel has no vfat) onto an ext4 image labelled
ASRBACKUP that is then attached to the VM as a disk; the ISO and the floppy come from ``asr build --descriptor``
of that capture (unattended, so the main runs boot through the real ISO boot path; the option variations --
interactive, dry run -- boot the same ISO's kernel and initrd directly with extra kernel options).

One QEMU at a time; media and captures are shared for the session.  Serial logs and screen PNGs are kept under
tests/artifacts/restore/.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from builder.build import BuildResult, build_media
from builder.cli import main as asr_main
from builder.vm import rehearse
from builder.vm.machine import (
    LONG_NAME,
    Layout,
    MachineImage,
    MachineSpec,
    PartRole,
    check_restored_disk,
    check_restored_xattrs,
    make_machine_image,
    read_disk_facts,
    read_machine_inputs,
)
from builder.vm.qemu import QemuVM, VMFirmware, VMSpec
from recovery_env.model.descriptor import BootloaderKind, Command, Descriptor
from recovery_env.model.descriptor import Firmware as DescFirmware
from recovery_env.model.fileattrs import ACL_XATTRS, decode_posix_acl
from recovery_env.model.manifest import sha256_file
from recovery_env.model.sif import parse_asr_sif
from recovery_env.model.sif_render import render_asr_sif
from recovery_env.restore.plan import wrap_whole
from recovery_env.restore.verify import check_backup_set, read_manifest
from recovery_env.run import run, run_bytes

pytestmark = [pytest.mark.vm, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts" / "restore"
MiB = 1 << 20
MACHINE_MIB = 256
TARGET_MIB = 384  # 1.5 × the original
SMALL_MIB = 96  # under the least the sample's data needs (ESP 64 MiB + an ext4 root of at least 69 MiB)
BACKUP_LABEL = "ASRBACKUP"
# A critical post-restore command; with ``asrtest.failonce`` on the kernel command line its first run fails (the
# interactive test's failed step, then R = retry).
POST_COMMAND = Command(
    1,
    "if grep -q asrtest.failonce /proc/cmdline && ! test -e /root/.asr-retried; then touch /root/.asr-retried; "
    "echo simulated failure of the first attempt; exit 3; fi; "
    "echo post-restore ran on $(cat /etc/hostname) > /root/asr-post.txt",
    critical=True,
)
RUN_TIMEOUT = 420.0  # one rescue boot + restore under TCG (measured ~25-40 s; generous for a loaded machine)
STEP_TIMEOUT = 120.0
BOOT_TIMEOUT = 150.0


def _need_root() -> None:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices (the capture loop-mounts the machine's root)")


def sha256(path: Path) -> str:
    return sha256_file(path)


def make_disk(path: Path, size_mib: int, *, seed: str = "") -> Path:
    return rehearse.make_disk(path, size_mib * MiB, seed=seed)


# ------------------------------------------------------------------------------------------------ the sources


@dataclass(frozen=True)
class Captured:
    """A machine, its backup set on an ext4 image labelled ASRBACKUP, and the descriptor of that capture."""

    machine: MachineImage
    backup_image: Path  # the ext4 image holding /asr/<host>/ (attached to the VM as a disk)
    set_dir: Path  # a copy of the set on the host, for checks
    sif: Path  # ASR.SIF (ASRPNP.SIF beside it)
    descriptor: Descriptor


def capture_machine(machine: MachineImage, firmware: DescFirmware, work: Path) -> Captured:
    """`asr backup` of the machine image (builder.vm.rehearse.capture_disk_image: loop device + partx, root mounted
    read-only, an ext4 image labelled ASRBACKUP as the destination)."""
    root_no = next(p.number for p in machine.partitions if p.role is PartRole.ROOT)
    backup_image, set_dir = rehearse.capture_disk_image(machine.path, root_no, machine.plan.spec.hostname,
                                                         str(firmware), work, backup_mib=TARGET_MIB)  # fmt: skip
    sif_dir = work / "sif"
    sif_dir.mkdir(exist_ok=True)
    for name in ("ASR.SIF", "ASRPNP.SIF"):
        shutil.copyfile(set_dir / name, sif_dir / name)
    sif = sif_dir / "ASR.SIF"
    return Captured(machine, backup_image, set_dir, sif, parse_asr_sif(sif.read_text()))


@dataclass(frozen=True)
class Source:
    captured: Captured
    media: BuildResult  # ISO + floppy of `asr build --descriptor` (unattended)


@pytest.fixture(scope="session")
def machines(tmp_path_factory: pytest.TempPathFactory) -> dict[Layout, MachineImage]:
    _need_root()
    work = tmp_path_factory.mktemp("machines")
    inputs = read_machine_inputs()
    return {
        Layout.GPT: make_machine_image(work / "gpt.img", MachineSpec(layout=Layout.GPT, size_mib=MACHINE_MIB), inputs),
        Layout.MBR: make_machine_image(
            work / "mbr.img",
            MachineSpec(layout=Layout.MBR, size_mib=MACHINE_MIB, hostname="asr-mbr", marker="mbr-1", seed="mbr"),
            inputs,
        ),
    }


def _source(name: str, machine: MachineImage, firmware: DescFirmware, commands: tuple[Command, ...] = ()) -> Source:
    work = ARTIFACTS / "sources" / name
    shutil.rmtree(work, ignore_errors=True)
    captured = capture_machine(machine, firmware, work)
    if commands:  # post-restore commands, as an administrator adds them to ASR.SIF
        captured = replace(captured, descriptor=replace(captured.descriptor, commands=commands))
        captured.sif.write_text(render_asr_sif(captured.descriptor))
    media = build_media(work / "media", descriptor=captured.sif, unattended=True, timeout=600)
    return Source(captured, media)


@pytest.fixture(scope="session")
def gpt_bios(machines: dict[Layout, MachineImage]) -> Source:
    return _source("gpt-bios", machines[Layout.GPT], DescFirmware.BIOS)


@pytest.fixture(scope="session")
def gpt_uefi(machines: dict[Layout, MachineImage]) -> Source:
    return _source("gpt-uefi", machines[Layout.GPT], DescFirmware.UEFI)


@pytest.fixture(scope="session")
def mbr_bios(machines: dict[Layout, MachineImage]) -> Source:
    return _source("mbr-bios", machines[Layout.MBR], DescFirmware.BIOS, (POST_COMMAND,))


# ------------------------------------------------------------------------------------------------ VM helpers


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    # short: QEMU's QMP socket path must stay under 108 bytes
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name.removeprefix("test_"))[:20]
    path = getattr(request.module, "ARTIFACTS", ARTIFACTS) / name  # the test module's own artifacts folder
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path


def rescue_spec(src: Source, disks: tuple[Path, ...], *, firmware: VMFirmware = VMFirmware.BIOS,
                append: str = "", workdir: Path | None = None) -> VMSpec:  # fmt: skip
    """The rescue media with the capture's floppy and ``disks`` (virtio, in order: vda, vdb, ...).  ``append``:
    boot the ISO's own kernel and initrd directly with these options added (the ISO stays attached)."""
    return rehearse.make_rescue_spec(src.media.iso, src.media.floppy, disks, firmware=firmware, append=append,
                                     workdir=workdir)  # fmt: skip


def run_rescue(spec: VMSpec, workdir: Path, expect_exit: str) -> str:
    """Boot the rescue media and let it run to its end; the serial text.  ``expect_exit``: the agent's exit line
    (``reboot`` or ``power off``) that must end the run."""
    return rehearse.run_rescue(spec, workdir, expect_exit)


def boot_restored(disk: Path, firmware: VMFirmware, workdir: Path) -> str:
    """Boot the restored disk alone (IDE, no boot entry in a fresh OVMF store: the removable path); its verdict
    line (the machine's ASR-MACHINE-MARKER ... OK, or what stopped it)."""
    ev = rehearse.boot_restored((disk,), firmware, workdir, expect=r"ASR-MACHINE-MARKER[^\r\n]*",
                                timeout=BOOT_TIMEOUT)  # fmt: skip
    return ev.matched


def assert_lines(serial: str, *patterns: str) -> None:
    for p in patterns:
        assert re.search(p, serial), f"{p!r} not on the serial console; its end:\n" + serial[-3000:]


def debugfs_cat(disk: Path, offset: int, path: str) -> str:
    return run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={offset}"]).stdout


def restored_log(disk: Path, machine: MachineImage) -> str:
    root = next(p for p in machine.partitions if p.role is PartRole.ROOT)
    listing = run(["debugfs", "-R", "ls -l /var/log/asr", f"{disk}?offset={root.offset}"]).stdout
    names = re.findall(r"(restore-\d{8}-\d{6}\.log)", listing)
    assert len(names) == 1, listing
    return debugfs_cat(disk, root.offset, f"/var/log/asr/{names[0]}")


# ------------------------------------------------------------------------------------------------ 1. the source


def test_the_capture_archives_root_and_the_unmounted_esp(gpt_bios: Source) -> None:
    c = gpt_bios.captured
    d = c.descriptor
    assert d.backup is not None and d.backup.media_label == BACKUP_LABEL and d.backup.path == "/asr/asr-sample"
    assert d.bootloader.kind is BootloaderKind.GRUB_BIOS
    check_backup_set(c.set_dir, d.backup)
    entries = {e.path: e for e in read_manifest(c.set_dir / "MANIFEST")}
    esp_loader = entries["/boot/efi/EFI/BOOT/BOOTX64.EFI"]  # read from the vfat ESP by mtools
    assert (esp_loader.fs, esp_loader.mode, esp_loader.uid) == ("fs1", 0o700, 0)  # fstab: umask=0077
    esp = next(p for p in c.machine.partitions if p.role is PartRole.ESP)
    data = run_bytes(["mtype", "-i", f"{c.machine.path}@@{esp.offset}", "::/EFI/BOOT/BOOTX64.EFI"])
    assert (esp_loader.size, esp_loader.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert entries["/boot/efi"].mtime == 0  # a FAT root directory has no time of its own
    assert entries["/etc/asr-machine/marker"].fs == "fs2"
    # every extended attribute and ACL of the machine is in the MANIFEST (issue 15), the hard link's too
    for x in c.machine.plan.xattrs:
        e = entries["/" + x.path]
        if x.name in ACL_XATTRS:
            assert (e.acl or {})[ACL_XATTRS[x.name]] == decode_posix_acl(x.value, x.name), x
        else:
            assert e.xattrs[x.name] == hashlib.sha256(x.value).hexdigest(), x
    linked = entries["/" + c.machine.plan.hardlink.path]
    assert linked.xattrs == entries["/" + c.machine.plan.hardlink.target].xattrs != {}
    assert entries["/" + LONG_NAME].xattrs and entries["/srv/data/sparse.img"].sparse


# ------------------------------------------------------------------------------------------------ 2. BIOS


FOUND_ON_BACKUP_DISK = (r"ASR: backup set found: /run/asr/backup/asr/\S+ on /dev/vd\w+ \(the filesystem with the "
                        r"recorded UUID\)")  # fmt: skip
FOUND_ON_ISO = (r"ASR: backup set found: /run/asr/media/asr/backup on /dev/sr0 \(the boot medium \(embedded backup "
                r"set\)\)")  # fmt: skip


def check_restore(src: Source, serial: str, target: Path, found: str = FOUND_ON_BACKUP_DISK) -> None:
    machine = src.captured.machine
    entries = src.captured.descriptor.backup.file_count if src.captured.descriptor.backup else 0
    assert_lines(
        serial,
        r"ASR: unattended: summary shown, continuing with the restore",
        found,
        r"ASR: backup set verified: 2 archive\(s\)",
        r"ASR: plan: \d+ steps; disks to erase: /dev/vda <- disk1",
        r"ASR: unattended: plan confirmed",
        r"ASR: progress: restore / from fs\d\.tar\.zst: 100%",
        rf"ASR: manifest: {entries} entries, 0 differences",
        r"ASR: restore complete",
        r"Your computer will restart in \d+ seconds\.\.\.",
    )
    assert "ASR: error:" not in serial
    problems = check_restored_disk(machine, read_disk_facts(target), last_grows=True)
    assert problems == [], problems
    assert check_restored_xattrs(machine, target) == []  # debugfs on the restored disk: every xattr and ACL back
    log = restored_log(target, machine)
    assert "ASR: backup set verified" in log and "ASR: manifest:" in log


def test_unattended_bios_restore_onto_a_larger_disk_boots(gpt_bios: Source, workdir: Path) -> None:
    """Acceptance 2 (and 5: the backup disk has the target's size and is never chosen; an unrelated small disk is
    left byte-identical)."""
    target = make_disk(workdir / "target.img", TARGET_MIB)
    extra = make_disk(workdir / "extra.img", 64, seed="extra")
    backup_before, extra_before = sha256(gpt_bios.captured.backup_image), sha256(extra)
    serial = run_rescue(rescue_spec(gpt_bios, (target, gpt_bios.captured.backup_image, extra)), workdir, "reboot")
    check_restore(gpt_bios, serial, target)
    assert_lines(serial, r"ASR: never a target: /dev/vdb \(holds /run/asr/backup\)", r"ASR: exit 20 \(reboot\)",
                 r"install grub for BIOS on /dev/vda \(rescue system's grub\)")  # fmt: skip
    assert sha256(extra) == extra_before
    assert sha256(gpt_bios.captured.backup_image) == backup_before
    verdict = boot_restored(target, VMFirmware.BIOS, workdir)
    assert verdict == gpt_bios.captured.machine.expected_line(DescFirmware.BIOS)


def test_unattended_mbr_restore_boots(mbr_bios: Source, workdir: Path) -> None:
    target = make_disk(workdir / "target.img", TARGET_MIB)
    serial = run_rescue(rescue_spec(mbr_bios, (target, mbr_bios.captured.backup_image)), workdir, "reboot")
    check_restore(mbr_bios, serial, target)
    assert_lines(serial, r"ASR: \[\d+/\d+\] post-restore command 1: if grep")
    for line in wrap_whole(POST_COMMAND.command, "  1. (critical) ", "     "):
        assert f"ASR: plan:   {line}" in serial  # unattended mode logs every command in full before it runs
    root = next(p for p in mbr_bios.captured.machine.partitions if p.role is PartRole.ROOT)
    assert debugfs_cat(target, root.offset, "/root/asr-post.txt") == "post-restore ran on asr-mbr\n"
    verdict = boot_restored(target, VMFirmware.BIOS, workdir)
    assert verdict == mbr_bios.captured.machine.expected_line(DescFirmware.BIOS)


def test_embedded_backup_set_restores_without_a_backup_disk(gpt_bios: Source, workdir: Path) -> None:
    """`asr build --embed-backup DIR`: the set on the ISO (read back with xorriso), restored from the boot medium
    with no backup disk attached."""
    c = gpt_bios.captured
    assert asr_main(["build", "--descriptor", str(c.sif), "--embed-backup", str(c.set_dir), "--out",
                     str(workdir / "media")]) == 0  # fmt: skip
    iso = workdir / "media" / "asr.iso"
    got = workdir / "from-iso"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/asr/backup", str(got)])
    assert c.descriptor.backup is not None
    check_backup_set(got, c.descriptor.backup)  # every archive and the MANIFEST, byte for byte
    target = make_disk(workdir / "target.img", TARGET_MIB)
    media = replace(gpt_bios.media, iso=iso, floppy=workdir / "media" / "asr-floppy.img")
    spec = rescue_spec(Source(c, media), (target,), append="asr.unattended=1", workdir=workdir)
    serial = run_rescue(spec, workdir, "reboot")
    check_restore(gpt_bios, serial, target, found=FOUND_ON_ISO)


# ------------------------------------------------------------------------------------------------ 3. UEFI


def test_unattended_uefi_restore_boots_through_the_removable_path(gpt_uefi: Source, workdir: Path) -> None:
    target = make_disk(workdir / "target.img", TARGET_MIB)
    serial = run_rescue(rescue_spec(gpt_uefi, (target, gpt_uefi.captured.backup_image), firmware=VMFirmware.UEFI),
                        workdir, "reboot")  # fmt: skip
    check_restore(gpt_uefi, serial, target)
    assert_lines(serial, r"install grub for UEFI into /boot/efi \(rescue system's grub, \\EFI\\BOOT\\BOOTX64\.EFI\)")
    machine = gpt_uefi.captured.machine
    esp = next(p for p in machine.partitions if p.role is PartRole.ESP)
    restored = run(["mdir", "-b", "-/", "-i", f"{target}@@{esp.offset}", "::/EFI/BOOT"],
                   env={"MTOOLS_SKIP_CHECK": "1"}).stdout  # fmt: skip
    assert "BOOTX64.EFI" in restored.upper()
    verdict = boot_restored(target, VMFirmware.UEFI, workdir)
    assert verdict == machine.expected_line(DescFirmware.UEFI)


# ------------------------------------------------------------------------------------------------ 4. interactive


def test_interactive_f2_floppy_pick_a_disk_continue(mbr_bios: Source, workdir: Path) -> None:
    """F2 by keyboard, any key at the floppy prompt, Enter at the summary, the disk choice (two blank disks fit
    equally), C at the plan, R at a failed step (the post-restore command fails once); the screens are kept as
    PNGs."""
    src = mbr_bios
    first = make_disk(workdir / "disk-a.img", TARGET_MIB)
    second = make_disk(workdir / "disk-b.img", TARGET_MIB)
    second_before = sha256(second)
    spec = rescue_spec(src, (first, second, src.captured.backup_image),
                       append="asr.unattended=0 asr.timeout=600 asrtest.failonce", workdir=workdir)  # fmt: skip
    shots = workdir / "screens"
    with QemuVM(spec, workdir=workdir) as vm:
        vm.wait_serial(r"Press F2 to run Automated System Recovery \(ASR\)", BOOT_TIMEOUT)
        vm.screendump(shots / "1-f2-prompt.png")
        vm.send_keys("f2")
        vm.wait_serial(r"ASR: F2 pressed", STEP_TIMEOUT)
        vm.wait_serial(r"Press any key when ready", STEP_TIMEOUT)
        vm.screendump(shots / "2-insert-floppy.png")
        vm.send_keys("space")
        vm.wait_serial(r"ENTER=Continue +F3=Quit", STEP_TIMEOUT)
        vm.screendump(shots / "3-summary.png")
        vm.send_keys("enter")
        vm.wait_serial(r"ASR: backup set verified", STEP_TIMEOUT)
        vm.wait_serial(r"ASR: choose a disk: disk1 .* fits 2 disks equally", STEP_TIMEOUT)
        vm.wait_serial(r"1-2=Choose +F3=Quit", STEP_TIMEOUT)
        vm.screendump(shots / "4-choose-disk.png")
        vm.send_keys("1")
        vm.wait_serial(r"ASR: chosen: /dev/vda for disk1", STEP_TIMEOUT)
        vm.wait_serial(r"(C=Continue|N=Next page) +", STEP_TIMEOUT)
        vm.send_keys("n", "n", "n")  # a plan longer than the screen: C is accepted once its last page was shown
        vm.wait_serial(r"C=Continue +F3=Quit", STEP_TIMEOUT)
        vm.screendump(shots / "5-plan.png")
        vm.send_keys("c")
        vm.wait_serial(r"ASR: plan confirmed, token [0-9a-f]{16}", STEP_TIMEOUT)
        vm.wait_serial(r"ASR: \[\d+/\d+\] restore / from", RUN_TIMEOUT)
        vm.screendump(shots / "6-restoring.png")
        vm.wait_serial(r"ASR: error: StepFailed: post-restore command 1: .*: exit code 3", RUN_TIMEOUT)
        vm.wait_serial(r"simulated failure of the first attempt", STEP_TIMEOUT)  # the output, on the screen
        vm.wait_serial(r"R=Retry +S=Rescue shell +F3=Quit", STEP_TIMEOUT)
        vm.screendump(shots / "7-step-failed.png")
        vm.send_keys("r")
        vm.wait_serial(r"ASR: retry from step \d+", STEP_TIMEOUT)
        vm.wait_serial(r"ASR: restore complete", RUN_TIMEOUT)
        vm.wait_serial(r"Your computer will restart in \d+ seconds", STEP_TIMEOUT)
        vm.screendump(shots / "8-restart.png")
        vm.send_keys("enter")
        vm.wait_serial(r"ASR: exit 20 \(reboot\)", STEP_TIMEOUT)
        vm.wait_exit(STEP_TIMEOUT)
        serial = vm.serial_text
    assert serial.count("ASR: error:") == 1  # the one failed step, retried
    for png in sorted(shots.glob("*.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(shots.glob("*.png"))) == 8
    assert check_restored_disk(src.captured.machine, read_disk_facts(first), last_grows=True) == []
    assert sha256(second) == second_before  # the disk not chosen


# ------------------------------------------------------------------------------------------------ 5.-7. refusals


def test_a_smaller_target_is_refused_and_left_unchanged(gpt_bios: Source, workdir: Path) -> None:
    small = make_disk(workdir / "small.img", SMALL_MIB, seed="small")
    before = sha256(small)
    serial = run_rescue(rescue_spec(gpt_bios, (small, gpt_bios.captured.backup_image)), workdir, "power off")
    assert_lines(serial, r"ASR: backup set verified",
                 r"ASR: error: DataDoesNotFitError: the data of disk1 \(.*256\.0 MiB\) does not fit on /dev/vda "
                 r"\(.*96\.0 MiB\): .* missing; its partitions at the least their data needs: .*ESP")  # fmt: skip
    assert "ASR: plan:" not in serial
    assert sha256(small) == before


def test_a_tampered_archive_is_refused_before_any_write(gpt_bios: Source, workdir: Path) -> None:
    tampered = workdir / "backup-tampered.img"
    shutil.copyfile(gpt_bios.captured.backup_image, tampered)
    mnt = workdir / "mnt"
    mnt.mkdir()
    run(["mount", "-t", "ext4", str(tampered), str(mnt)])
    try:
        archive = next((mnt / "asr" / "asr-sample").glob("fs2.tar.zst"))
        with open(archive, "r+b") as f:
            f.seek(archive.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))
    finally:
        run(["umount", str(mnt)])
    target = make_disk(workdir / "target.img", TARGET_MIB, seed="target")
    before = sha256(target)
    serial = run_rescue(rescue_spec(gpt_bios, (target, tampered)), workdir, "power off")
    assert_lines(serial, r"ASR: backup set found",
                 r"ASR: error: BackupSetError: backup set /run/asr/backup/asr/asr-sample is damaged or incomplete: "
                 r"/ fs2\.tar\.zst: SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}")  # fmt: skip
    assert "ASR: plan:" not in serial and "backup set verified" not in serial
    assert sha256(target) == before


def test_a_missing_backup_medium_is_named(gpt_bios: Source, workdir: Path) -> None:
    target = make_disk(workdir / "target.img", TARGET_MIB, seed="target")
    before = sha256(target)
    serial = run_rescue(rescue_spec(gpt_bios, (target,)), workdir, "power off")
    assert_lines(serial, r"ASR: error: BackupMediaMissingError: the backup medium is not attached: the descriptor "
                         rf"names the filesystem with UUID \S+ or label '{BACKUP_LABEL}' holding /asr/asr-sample")
    assert sha256(target) == before


def make_btrfs_backup(src: Source, path: Path, size_mib: int) -> Path:
    """The capture's backup set on a btrfs image of ``size_mib`` labelled ASRBACKUP, at the recorded path
    (``mkfs.btrfs --rootdir``: no mount needed)."""
    backup = src.captured.descriptor.backup
    assert backup is not None
    root = path.parent / "btrfs-root"
    shutil.copytree(src.captured.set_dir, root / backup.path.lstrip("/"))
    make_disk(path, size_mib)
    run(["mkfs.btrfs", "-q", "-f", "-L", BACKUP_LABEL, "--rootdir", str(root), str(path)])
    shutil.rmtree(root)
    return path


def test_dry_run_shows_the_plan_and_writes_nothing(gpt_bios: Source, workdir: Path) -> None:
    """Also issue 10, finding 2: the backup medium is btrfs (an anonymous 0:NN device number in mountinfo) and has
    the target's size; its disk is never a target (before the fix it tied with the target)."""
    target = make_disk(workdir / "target.img", TARGET_MIB, seed="target")
    extra = make_disk(workdir / "extra.img", 64, seed="extra")
    backup = make_btrfs_backup(gpt_bios, workdir / "backup-btrfs.img", TARGET_MIB)
    disks = (target, backup, extra)
    before = [sha256(d) for d in disks]
    serial = run_rescue(rescue_spec(gpt_bios, disks, append="asr.dryrun=1", workdir=workdir), workdir, "power off")
    assert_lines(serial, r"ASR: agent .* dryrun=1",
                 r"ASR: backup set found: /run/asr/backup/asr/\S+ on /dev/vdb \(the filesystem with the recorded "
                 r"label\)",
                 r"ASR: never a target: /dev/vdb \(holds /run/asr/backup\)",
                 r"ASR: plan: \d+ steps; disks to erase: /dev/vda <- disk1",
                 r"ASR: plan: +/dev/vda \(.*384\.0 MiB\) +<- disk1", r"ASR: dry run: nothing written")  # fmt: skip
    assert "ASR: [1/" not in serial
    assert [sha256(d) for d in disks] == before
