"""`asr rehearse DIR`: prove that a backup set restores, before it is needed.

The whole recovery, on scratch disks, headless: build the media for the set's ASR.SIF (or take ``--iso`` and
``--floppy``), make sparse scratch disks of the descriptor's sizes (or ``--grow`` percent larger), put the backup
set on an ext4 image carrying the descriptor's media label and UUID, boot QEMU unattended with all of them, let
the agent restore, then boot the restored disks alone under BIOS and/or UEFI and wait for the restored system's
own account of itself.  Every verdict comes from the guest's serial console: the agent's ``ASR: ...`` lines, then
the restored system's own output.

The default verdict (no ``--expect``): the rescue media boot with ``asr.rehearsal=1``, so the agent installs the
rehearsal check into the restored system (recovery_env/restore/rehearsal.py: a transient systemd unit that waits
for ``systemctl is-system-running --wait`` and prints one ``ASR-REHEARSAL-CHECK ... end`` line on ttyS0, then
removes itself).  The restored system "came up" when that line shows systemd ``running``, the captured hostname,
every mount point of the descriptor with its UUID and type, its swaps, and every sampled file's SHA-256 as captured
(:func:`recovery_env.restore.rehearsal.judge_check` names what differs).  The time to the first ``login:`` prompt
on serial is reported beside it; a system with no getty on its serial console shows none: that is reported ("no
login prompt on serial") but does not fail the verdict, the check from inside being the stronger proof.
``--expect REGEX`` keeps the old meaning for systems without systemd: the first match of REGEX on serial.

Steps are pure planners (:func:`plan_scratch_disks`, :func:`plan_firmwares`, :func:`read_rescue_verdict`) and thin
executors (:func:`make_disk`, :func:`make_backup_medium`, :func:`run_rescue`, :func:`boot_restored`), reused by
tests/test_restore_vm.py.  The report goes to ``report.md`` (templates/rehearsal.md.j2) and ``report.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from builder.build import build_media
from builder.vm.qemu import DiskBus, QemuVM, SerialTimeout, VMError, VMFirmware, VMSpec, find_accel, read_boot_files
from recovery_env.capture.flow import SourceMount, plan_mount_options, plan_source_mounts
from recovery_env.errors import DescriptorError, InputError
from recovery_env.model.descriptor import Descriptor, Firmware
from recovery_env.model.sif import parse_asr_sif
from recovery_env.probe.layout import FstabEntry, parse_fstab, read_blkid
from recovery_env.probe.media import BlockFs
from recovery_env.restore.newids import apply_new_ids, parse_new_id_lines
from recovery_env.restore.rehearsal import LINE_PATTERN, CheckLine, judge_check, parse_check_line
from recovery_env.run import run
from recovery_env.templating import render
from recovery_env.text import json_text

MiB = 1 << 20
#: A sign of life for ``--expect`` on systems without systemd (the toy test machine's tests use it): a login
#: prompt, the kernel starting the real init, or the project's test machine's verdict line.
SIGN_OF_LIFE = r"login: ?$|Run /sbin/init[^\r\n]*|ASR-MACHINE-MARKER [^\r\n]* OK"
#: A getty's prompt on the serial console (agetty: "HOST login: ", with autologin "HOST login: root (automatic...").
LOGIN_PROMPT = r"\S+ login: "
LOGIN_GRACE = 30.0  # seconds a login prompt may come after the check line
#: What says it did not: failed checks of the test machine, a kernel panic, GRUB lacking its kernel or modules,
#: an initramfs without its root, systemd's emergency mode.
BOOT_FAILURE = (r"ASR-MACHINE-FAIL[^\r\n]*|Kernel panic[^\r\n]*|grub rescue>|error: file [`'][^']*' not found[^\r\n]*"
                r"|you need to load the kernel first|ALERT! [^\r\n]* does not exist[^\r\n]*"
                r"|You are in emergency mode[^\r\n]*")  # fmt: skip
RESCUE_BOOT_TIMEOUT = 180.0  # to "ASR: agent ... started" under TCG
RESCUE_RUN_TIMEOUT = 1500.0  # the whole unattended restore under TCG (test machine ~25-60 s; the ~700 MB Debian
# machine 124-161 s alone, 350-730 s with two QEMUs and other work sharing 2 cores)
RESTORED_BOOT_TIMEOUT = 300.0  # the restored system up (test machine ~10-20 s; Debian to its check ~40-90 s)
EXIT_TIMEOUT = 120.0
AGENT_FAILED = r"asr agent failed \(exit \d+\)"  # what /init (templates/init.j2) prints before its rescue shell
EXCERPT_LINES = 25


class FirmwareChoice(StrEnum):
    """``--firmware``: which firmware the restored disks are booted under."""

    AUTO = "auto"  # as the descriptor says
    BIOS = "bios"
    UEFI = "uefi"
    BOTH = "both"

    def firmwares(self, descriptor: Descriptor) -> tuple[VMFirmware, ...]:
        if self is FirmwareChoice.AUTO:
            return (VMFirmware(str(descriptor.system.firmware)),)
        if self is FirmwareChoice.BOTH:
            return (VMFirmware.BIOS, VMFirmware.UEFI)
        return (VMFirmware(self.value),)


# ------------------------------------------------------------------------------------------------ disks


def make_disk(path: Path, size_bytes: int, *, seed: str = "") -> Path:
    """A sparse disk image of ``size_bytes``; with a seed, 1 MiB of seeded bytes at its start, middle and end (so
    that any write to a table, a filesystem header or the backup GPT changes its hash)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_bytes)
        if seed:
            chunk = b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(MiB // 32))
            for offset in (0, size_bytes // 2 // MiB * MiB, size_bytes - MiB):
                f.seek(offset)
                f.write(chunk)
    return path


@dataclass(frozen=True)
class ScratchDisk:
    key: str  # the descriptor's disk key (disk1, ...)
    name: str  # file name in the work directory
    size_bytes: int


def plan_scratch_disks(descriptor: Descriptor, grow_percent: int = 0) -> tuple[ScratchDisk, ...]:
    """One scratch disk per critical disk of the descriptor: the same size, or ``grow_percent`` larger (rounded up
    to a whole MiB).  Pure."""
    if not 0 <= grow_percent <= 1000:
        raise InputError(f"--grow {grow_percent}: expected 0 to 1000 (percent)")
    out = []
    for d in descriptor.disks:
        if not d.critical:
            continue
        size = d.size_bytes if grow_percent == 0 else -(-d.size_bytes * (100 + grow_percent) // 100 // MiB) * MiB
        out.append(ScratchDisk(d.key, f"scratch-{d.key}.img", size))
    if not out:
        raise DescriptorError("the descriptor has no critical disk: nothing to restore")
    return tuple(out)


def _mke2fs_uuid(value: str) -> str | None:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        return None  # e.g. a FAT volume id: the label has to do


def make_backup_medium(set_dir: Path, descriptor: Descriptor, image: Path) -> Path:
    """An ext4 image holding ``set_dir`` at the descriptor's backup path, labelled and identified as the
    descriptor's backup medium (``mke2fs -d``: no loop device, no root needed)."""
    backup = descriptor.backup
    if backup is None:
        raise DescriptorError("the descriptor names no backup set ([BACKUP] section missing)")
    staging = image.parent / (image.name + ".d")
    shutil.rmtree(staging, ignore_errors=True)
    dest = staging / backup.path.strip("/")
    dest.mkdir(parents=True)
    total = 0
    for f in sorted(set_dir.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dest / f.name)
            total += f.stat().st_size
    size_kib = (total * 5 // 4 + 32 * MiB) // 1024
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(staging)]
    if backup.media_label:
        argv += ["-L", backup.media_label]
    uuid = _mke2fs_uuid(backup.media_uuid) if backup.media_uuid else None
    if uuid:
        argv += ["-U", uuid]
    image.unlink(missing_ok=True)
    try:
        run([*argv, str(image), f"{size_kib}k"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return image


BACKUP_LABEL = "ASRBACKUP"
#: What this host's kernel mounts (see the platform notes): vfat is not among them (the capture reads it with mtools).
HOST_MOUNTABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs")


def host_ro_options(vfstype: str) -> str:
    """Read-only mount options for a source on this host: the capture's own (ext* ``ro,noload``, xfs
    ``ro,norecovery``, btrfs ``ro,rescue=nologreplay``)."""
    return plan_mount_options(vfstype)


def plan_image_mounts(fstab: Sequence[FstabEntry], filesystems: Sequence[BlockFs], root: BlockFs,
                      root_dir: Path) -> tuple[SourceMount, ...]:  # fmt: skip
    """The read-only mounts below a disk image's root on this host, parents first: the fstab filesystems of the
    image's disks this kernel can mount (ext*, xfs, btrfs; a vfat ESP is left to the capture's mtools path), and
    the root btrfs's subvolumes that fstab mounts elsewhere (``subvol=``).  Pure."""
    out = {m.mountpoint: replace(m, options=host_ro_options(m.type))
           for m in plan_source_mounts(fstab, filesystems, root.device, str(root_dir))
           if m.type in HOST_MOUNTABLE}  # fmt: skip
    if root.type == "btrfs":
        names_root = {n.lower() for n in (f"UUID={root.uuid}", f"PARTUUID={root.partuuid}", root.device)}
        for e in fstab:
            subvol = [o for o in e.options.split(",") if o.startswith(("subvol=", "subvolid="))]
            if e.mountpoint in ("/", *out) or not e.mountpoint.startswith("/") or not subvol:
                continue
            if e.spec.lower() not in names_root:  # a subvolume of another btrfs (none of the test machines)
                continue
            directory = os.path.normpath(os.path.join(root_dir, e.mountpoint.lstrip("/")))
            options = f"{host_ro_options('btrfs')},{subvol[0]}"
            out[e.mountpoint] = SourceMount(root.device, "btrfs", e.mountpoint, directory, options)
    return tuple(sorted(out.values(), key=lambda m: (m.mountpoint.count("/"), m.mountpoint)))


def _probe_partitions(loop: str) -> list[BlockFs]:
    """The filesystems on the partitions ``partx -a`` made for ``loop`` (blkid -p on each)."""
    name = os.path.basename(loop)
    out = []
    for part in sorted(Path("/sys/class/block", name).glob(f"{name}p*"), key=lambda p: int(p.name[len(name) + 1:])):
        probe = read_blkid(f"/dev/{part.name}", strict=False)
        if probe.get("TYPE"):
            out.append(BlockFs(f"/dev/{part.name}", probe["TYPE"], probe.get("LABEL", ""), probe.get("UUID", ""),
                               probe.get("PART_ENTRY_UUID", "")))  # fmt: skip
    return out


@dataclass(frozen=True)
class MountedImages:
    root: Path  # where the root filesystem is mounted (the others below it)
    loops: tuple[str, ...]  # one read-only loop device per disk image, in order
    filesystems: tuple[BlockFs, ...]  # blkid -p of every partition on them


@contextmanager
def mount_disk_images(images: Path | Sequence[Path], root_partition: int, where: Path) -> Iterator[MountedImages]:
    """A machine's disk image(s) mounted read-only on this host: one read-only loop device + partx per disk, the
    root filesystem (partition ``root_partition`` of the first disk; :func:`host_ro_options`; a btrfs with its
    default subvolume) at ``where``, then below it the other filesystems its fstab lists that this kernel can mount
    (:func:`plan_image_mounts`: ext*, xfs, btrfs subvolumes; not vfat).  Everything is unmounted and detached
    again on exit.  Needs root and loop devices."""
    disks = (images,) if isinstance(images, Path) else tuple(images)
    where.mkdir(parents=True, exist_ok=True)
    loops: list[str] = []
    mounted: list[str] = []
    try:
        for image in disks:
            loops.append(run(["losetup", "-r", "-f", "--show", str(image)]).stdout.strip())
            run(["partx", "-a", loops[-1]])
        filesystems = tuple(fs for loop in loops for fs in _probe_partitions(loop))
        root = next((fs for fs in filesystems if fs.device == f"{loops[0]}p{root_partition}"), None)
        if root is None or root.type not in HOST_MOUNTABLE:
            raise InputError(f"{disks[0]} partition {root_partition}: no root filesystem this host can mount "
                             f"({root.type if root else 'nothing'} found)")  # fmt: skip
        run(["mount", "-t", root.type, "-o", host_ro_options(root.type), root.device, str(where)])
        mounted.append(str(where))
        fstab = parse_fstab((where / "etc" / "fstab").read_text(errors="surrogateescape"),
                            where=f"{disks[0]} partition {root_partition}: /etc/fstab")  # fmt: skip
        for m in plan_image_mounts(fstab, filesystems, root, where):
            run(["mount", "-t", m.type, "-o", m.options, m.device, m.directory])  # its mount point: in the image
            mounted.append(m.directory)
        yield MountedImages(where, tuple(loops), filesystems)
    finally:
        for directory in reversed(mounted):
            run(["umount", directory], check=False)
        for loop in reversed(loops):
            run(["partx", "-d", loop], check=False)
            run(["losetup", "-d", loop], check=False)


def capture_disk_image(disks: Path | Sequence[Path], root_partition: int, hostname: str, firmware: str,
                       work: Path, *, backup_mib: int = 384, excludes: tuple[str, ...] = (),
                       include_mounts: tuple[str, ...] = ()) -> tuple[Path, Path]:  # fmt: skip
    """`asr backup` of a machine's disk image(s) on this host: the images mounted read-only
    (:func:`mount_disk_images`: the root, then the other fstab filesystems this kernel mounts; a vfat ESP is read
    by the capture with mtools), an ext4 image labelled ASRBACKUP (``work/backup.img``) mounted as the
    destination; everything detached again.  ``excludes``: paths left out of the set (``asr backup --exclude``);
    ``include_mounts``: non-system mount points backed up too (``--include-mount``, e.g. /home).  Returns (backup
    image, a copy of the set in ``work/set``).  Needs root and loop devices."""
    from builder.capture import CaptureRequest, capture

    work.mkdir(parents=True, exist_ok=True)
    backup_image = make_disk(work / "backup.img", backup_mib * MiB)
    run(["mke2fs", "-q", "-t", "ext4", "-L", BACKUP_LABEL, str(backup_image)])
    backup_mnt = work / "backup"
    backup_mnt.mkdir(exist_ok=True)
    set_dir = work / "set"
    with mount_disk_images(disks, root_partition, work / "root") as source:
        run(["mount", "-t", "ext4", str(backup_image), str(backup_mnt)])
        try:
            dest = backup_mnt / "asr" / hostname
            capture(CaptureRequest(dest=dest, root=source.root, disks=source.loops, firmware=Firmware(firmware),
                                   excludes=excludes, include_mounts=include_mounts),
                    euid=os.geteuid())  # fmt: skip
            shutil.rmtree(set_dir, ignore_errors=True)
            shutil.copytree(dest, set_dir)
        finally:
            run(["umount", str(backup_mnt)], check=False)
    return backup_image, set_dir


# ------------------------------------------------------------------------------------------------ VMs


def make_rescue_spec(iso: Path, floppy: Path, disks: tuple[Path, ...], *, firmware: VMFirmware = VMFirmware.BIOS,
                     append: str = "", workdir: Path | None = None, memory: str = "512M",
                     cpus: int = 1) -> VMSpec:  # fmt: skip
    """The rescue media with the floppy and ``disks`` (virtio, in order: vda, vdb, ...), ``memory`` of RAM.
    ``append``: boot the ISO's own kernel and initrd directly with these options added (the ISO stays
    attached)."""
    if not append:
        return VMSpec(iso=iso, floppy=floppy, disks=disks, firmware=firmware, accel=find_accel(), memory=memory,
                      cpus=cpus)
    if workdir is None:
        raise InputError("a direct kernel boot needs a work directory for the ISO's kernel and initrd")
    workdir.mkdir(parents=True, exist_ok=True)
    kernel, initrd, default = read_boot_files(iso, workdir)
    return VMSpec(iso=iso, floppy=floppy, disks=disks, firmware=firmware, accel=find_accel(), kernel=kernel,
                  initrd=initrd, append=f"{default} {append}", memory=memory, cpus=cpus)  # fmt: skip


def run_rescue(spec: VMSpec, workdir: Path, expect_exit: str = r"[^)]+", *,
               timeout: float = RESCUE_RUN_TIMEOUT) -> str:  # fmt: skip
    """Boot the rescue media and let it run to its end (within ``timeout`` s); the serial text.  ``expect_exit``:
    the agent's exit line (``reboot`` or ``power off``) that must end the run (default: any)."""
    with QemuVM(spec, workdir=workdir) as vm:
        vm.wait_serial(r"ASR: agent \S+ started", RESCUE_BOOT_TIMEOUT)
        end = vm.wait_serial(rf"ASR: exit \d+ \({expect_exit}\)|{AGENT_FAILED}", timeout)
        if re.fullmatch(AGENT_FAILED, end.group(0)):  # /init gave a rescue shell: nothing more will come
            raise VMError(f"the agent failed: {end.group(0)}", vm.serial_text[-4000:])
        code = vm.wait_exit(EXIT_TIMEOUT)
        if code != 0:
            raise VMError(f"QEMU exited with code {code} after the agent's exit", vm.serial_text[-4000:])
        return vm.serial_text


@dataclass(frozen=True)
class BootEvidence:
    firmware: str
    booted: bool
    matched: str  # the line that decided (the check line or the expected sign, or the failure)
    seconds: float
    excerpt: str  # the last serial lines
    screenshot: str  # PNG of the restored system's screen ("" if QEMU was gone)
    serial_log: str
    login_seconds: float = -1.0  # to the first login prompt on serial (-1: none seen)
    check_seconds: float = -1.0  # to the restored system's check line (-1: none came)
    check: str = ""  # the restored system's ASR-REHEARSAL-CHECK line ("" with --expect, or none came)
    check_problems: tuple[str, ...] = ()  # what the check found different from the capture

    @property
    def login(self) -> str:
        """The login prompt, as the report says it."""
        if self.login_seconds >= 0:
            return f"login prompt on serial after {self.login_seconds:.1f} s"
        return "no login prompt on serial (no getty on the serial console?)"


def excerpt(text: str, lines: int = EXCERPT_LINES) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines()[-lines:])


def _screendump(vm: QemuVM, png: Path) -> str:
    if vm.returncode is not None:
        return ""
    try:
        return str(vm.screendump(png))
    except Exception:  # QMP gone with QEMU: no new picture, the serial log still tells
        return ""


def summarize_check(check: CheckLine, problems: tuple[str, ...]) -> str:
    """One line for the terminal and the report: what the restored system's check said."""
    if problems:
        return "check FAILED: " + "; ".join(problems)
    mounts = ", ".join(f"{mp} {fstype}" for mp, _uuid, fstype in check.mounts)
    return (f"check passed: systemd {check.state}, host {check.hostname}, mounts as captured ({mounts}), "
            f"{len(check.swaps)} swap(s), {check.sums_ok}/{check.sums_total} file checksums")  # fmt: skip


def boot_restored(disks: tuple[Path, ...], firmware: VMFirmware, workdir: Path, *, expect: str | None = None,
                  descriptor: Descriptor | None = None, timeout: float = RESTORED_BOOT_TIMEOUT,
                  memory: str = "512M", disk_bus: DiskBus = DiskBus.IDE, cpus: int = 1) -> BootEvidence:  # fmt: skip
    """Boot the restored disks alone (IDE unless ``disk_bus`` says otherwise; no boot entry in a fresh OVMF store:
    the removable path) until the restored system's check line (``expect`` None: judged against ``descriptor``, a
    login prompt on serial timed beside it) or ``expect`` or a sign of failure shows on the serial console, QEMU
    ends, or ``timeout`` passes."""
    if expect is None and descriptor is None:
        raise InputError("the rehearsal check is judged against a descriptor: give one (or an --expect pattern)")
    spec = VMSpec(disks=disks, disk_bus=disk_bus, firmware=firmware, accel=find_accel(), name="restored",
                  memory=memory, cpus=cpus)  # fmt: skip
    vmdir = workdir / f"boot-{firmware}"
    shot = (workdir / f"restored-{firmware}.png").resolve()
    ok_pattern = LINE_PATTERN if expect is None else expect
    login_pattern = LOGIN_PROMPT if expect is None else r"(?!x)x"  # --expect: only its own pattern counts
    started = time.monotonic()
    png = ""
    login_at = -1.0
    check_at = -1.0
    check_line = ""
    problems: tuple[str, ...] = ()
    with QemuVM(spec, workdir=vmdir) as vm:
        # a screen picture every few seconds, the last one kept: a system that powers off right after its sign
        # of life (the test machine) still leaves the screen it showed
        deadline = started + timeout
        while True:
            png = _screendump(vm, shot) or png
            now = time.monotonic()
            if check_at >= 0 and (login_at >= 0 or now > check_at + LOGIN_GRACE or now > deadline):
                check = parse_check_line(check_line)
                if check is None:  # LINE_PATTERN and the parser disagree: the line is malformed
                    booted, matched = False, f"the restored system's check line does not parse: {check_line!r}"
                else:
                    assert descriptor is not None
                    problems = judge_check(check, descriptor)
                    booted, matched = not problems, check_line
                break
            try:
                m = vm.wait_serial(rf"(?m)(?P<login>{login_pattern})|(?P<ok>{ok_pattern})|(?P<fail>{BOOT_FAILURE})",
                                   min(3.0, timeout))  # fmt: skip
            except SerialTimeout as e:
                if time.monotonic() < deadline or check_at >= 0:
                    continue
                what = "no check line from the restored system" if expect is None else "no sign of a running system"
                booted, matched = False, f"{what} within {timeout:g} s ({e.args[0]})"
                break
            except VMError as e:  # QEMU ended (panic=N with -no-reboot, a reset)
                booted, matched = False, str(e).splitlines()[0]
                break
            if m.group("login") is not None:
                login_at = login_at if login_at >= 0 else time.monotonic() - started
                continue
            if m.group("fail") is not None:
                booted, matched = False, m.group(0).strip()
                break
            if expect is not None:
                booted, matched = True, m.group(0).strip()
                break
            if check_at < 0:
                check_at, check_line = time.monotonic(), m.group(0).strip()
        time.sleep(0.5)  # the VGA console paints a moment after the serial one
        png = _screendump(vm, shot) or png
        seconds = time.monotonic() - started
        text = vm.serial_text
        log = vm.log_path
    return BootEvidence(str(firmware), booted, matched, round(seconds, 1), excerpt(text), png, str(log),
                        round(login_at, 1) if login_at >= 0 else -1.0,
                        round(check_at - started, 1) if check_at >= 0 else -1.0, check_line, problems)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the rehearsal


@dataclass(frozen=True)
class RescueVerdict:
    ok: bool
    cause: str  # "" when ok
    plan: tuple[str, ...]
    manifest: str  # the manifest verification line ("" if none)


def read_rescue_verdict(serial: str) -> RescueVerdict:
    """What the agent said on serial: its plan, the manifest verification, success or the first error.  Pure."""
    plan = tuple(m.group(1) for m in re.finditer(r"ASR: (plan:[^\r\n]*)", serial, re.MULTILINE))
    manifest_m = re.search(r"ASR: (manifest: \d+ entries, (\d+) differences)", serial, re.MULTILINE)
    manifest = manifest_m.group(1) if manifest_m else ""
    error = re.search(r"ASR: error: (\w+): ([^\r\n]*)", serial, re.MULTILINE)
    if error is not None:
        return RescueVerdict(False, f"the restore stopped: {error.group(1)}: {error.group(2).strip()}", plan, manifest)
    if manifest_m is not None and manifest_m.group(2) != "0":
        return RescueVerdict(False, f"the restored files differ from the backup: {manifest}", plan, manifest)
    if not re.search(r"ASR: restore complete", serial, re.MULTILINE):
        return RescueVerdict(False, 'the agent ended without "restore complete"', plan, manifest)
    return RescueVerdict(True, "", plan, manifest)


def read_step_outcomes(log: str) -> dict[str, str]:
    """Each step of the agent's log (``ASR: [i/n] NAME``, on serial or in the restored system's /var/log/asr/)
    → its outcome: ``skipped: ...``, ``failed (optional...)...``, ``FAILED: ...`` as logged, or ``done`` (the
    executor logs no outcome for a step that succeeded: the next step, or the log's end, follows it).  Pure."""
    out: dict[str, str] = {}
    current = ""
    for line in log.splitlines():
        m = re.match(r"ASR: \[\d+/\d+\] (.*)$", line)
        if m:
            if current:
                out.setdefault(current, "done")
            current = m.group(1)
            continue
        m = re.match(r"ASR: (?:  )?(skipped|failed|FAILED)(.*)$", line)
        if current and m:
            out.setdefault(current, m.group(1) + m.group(2))
    if current:
        out.setdefault(current, "done")
    return out


@dataclass(frozen=True)
class RehearsalPhase:
    name: str
    seconds: float
    ok: bool
    detail: str


@dataclass(frozen=True)
class RehearsalReport:
    set_dir: str
    hostname: str
    descriptor_firmware: str
    firmwares: tuple[str, ...]
    grow_percent: int
    expect: str  # "" = the restored system's own check (the default)
    verdict: str  # "verified recoverable" or "not recoverable: <why>"
    phases: tuple[RehearsalPhase, ...]
    plan: tuple[str, ...]
    manifest: str
    boots: tuple[BootEvidence, ...]
    rescue_log: str
    rescue_excerpt: str
    scratch_disks: tuple[str, ...]  # kept ones (with keep), else ()
    workdir: str
    report_md: str = ""
    report_json: str = ""

    @property
    def recoverable(self) -> bool:
        return self.verdict == VERIFIED

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["recoverable"] = self.recoverable
        return data


VERIFIED = "verified recoverable"


def read_set_descriptor(set_dir: Path) -> Descriptor:
    """ASR.SIF of the set (ASRPNP.SIF must be beside it), parsed and checked."""
    if not set_dir.is_dir():
        raise InputError(f"{set_dir}: not a directory (expected a backup set made by `asr backup`)")
    for name in ("ASR.SIF", "ASRPNP.SIF"):
        if not (set_dir / name).is_file():
            raise InputError(f"{set_dir}: no {name} (expected a backup set made by `asr backup`)")
    d = parse_asr_sif((set_dir / "ASR.SIF").read_text())
    if d.backup is None:
        raise DescriptorError(f"{set_dir / 'ASR.SIF'}: names no backup set ([BACKUP] section missing)")
    return d


class _Phases:
    def __init__(self, progress: Callable[[str], None]) -> None:
        self.done: list[RehearsalPhase] = []
        self.progress = progress

    @contextmanager
    def phase(self, name: str) -> Iterator[list[str]]:
        """Time a phase; the body appends its detail (first item) and may set ok by appending "FAILED"."""
        self.progress(f"{name} ...")
        note: list[str] = []
        started = time.monotonic()
        ok = True
        try:
            yield note
        except BaseException:
            ok = False
            raise
        finally:
            ok = ok and "FAILED" not in note
            detail = "; ".join(n for n in note if n != "FAILED")
            seconds = round(time.monotonic() - started, 1)
            self.done.append(RehearsalPhase(name, seconds, ok, detail))
            self.progress(
                f"{name}: {'done' if ok else 'FAILED'} in {seconds:.1f} s" + (f" ({detail})" if detail else "")
            )


def rehearse(
    set_dir: Path,
    *,
    iso: Path | None = None,
    floppy: Path | None = None,
    firmware: FirmwareChoice | str = FirmwareChoice.AUTO,
    grow_percent: int = 0,
    expect: str | None = None,
    keep: bool = False,
    workdir: Path = Path("out/rehearse"),
    progress: Callable[[str], None] | None = None,
    boot_timeout: float = RESTORED_BOOT_TIMEOUT,
    memory: str = "512M",
    boot_memory: str = "1G",
    boot_disk_bus: DiskBus = DiskBus.IDE,
    restore_timeout: float = RESCUE_RUN_TIMEOUT,
    new_ids: bool = False,
    cpus: int = 1,
) -> RehearsalReport:
    """Restore the backup set in ``set_dir`` onto scratch disks in QEMU (the rescue system with ``memory`` of
    RAM) and boot the result (``boot_memory``); the report (also written to ``workdir/report.md`` and
    ``workdir/report.json``).  ``expect`` None: the verdict is the restored system's own check (module
    docstring); else the first match of that pattern on serial.  ``new_ids``: the restore gives everything ids of
    its own (``asr.new_ids=1``); the restored system is judged by the ids the rescue system logged, each of which
    must differ from the capture.  ``cpus``: virtual CPUs of both VMs (each a host thread under TCG: the
    decompressor and tar of a restore run side by side).  Bad input raises before anything is built."""
    say = progress or (lambda line: None)
    choice = FirmwareChoice(firmware)
    if (iso is None) != (floppy is None):
        raise InputError("give both --iso and --floppy, or neither (then the media are built for the set)")
    for what, path in (("ISO", iso), ("floppy image", floppy)):
        if path is not None and not path.is_file():
            raise InputError(f"{what} {path} does not exist")
    if not re.fullmatch(r"\d+[MG]", memory):
        raise InputError(f"--memory {memory!r}: expected a size like 512M or 1G")
    if not 1 <= cpus <= 64:
        raise InputError(f"--cpus {cpus}: expected 1 to 64")
    if expect is not None:
        try:
            re.compile(expect)
        except re.error as e:
            raise InputError(f"--expect {expect!r}: not a regular expression ({e})") from None
    # the default verdict: the agent installs the rehearsal check (recovery_env/restore/rehearsal.py)
    rehearsal_option: tuple[str, ...] = ("asr.rehearsal=1",) if expect is None else ()
    rehearsal_option += ("asr.new_ids=1",) if new_ids else ()
    set_dir = set_dir.resolve()
    descriptor = read_set_descriptor(set_dir)
    scratch = plan_scratch_disks(descriptor, grow_percent)
    firmwares = choice.firmwares(descriptor)
    rescue_fw = VMFirmware(str(descriptor.system.firmware))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("report.md", "report.json"):
        (workdir / stale).unlink(missing_ok=True)
    phases = _Phases(say)
    cause = ""
    rescue = RescueVerdict(False, "", (), "")
    rescue_serial = ""
    boots: list[BootEvidence] = []
    disks: list[Path] = []
    judged = descriptor  # what the restored system's check is judged by (its new ids, with new_ids)
    try:
        with phases.phase("build media") as note:
            if iso is None or floppy is None:
                media = build_media(workdir / "media", descriptor=set_dir / "ASR.SIF", unattended=True,
                                    append=rehearsal_option, progress=lambda line: say("  " + line))  # fmt: skip
                iso, floppy, append = media.iso, media.floppy, ""
                note.append(f"{iso.name} {media.iso_size / MiB:.1f} MiB, {floppy.name}, unattended")
            else:
                # the given ISO's kernel, booted directly
                append = " ".join(("asr.unattended=1", "asr.poweroff=1", *rehearsal_option))
                note.append(f"given: {iso}, {floppy}; booted with {append}")
        with phases.phase("prepare disks") as note:
            for s in scratch:
                disks.append(make_disk(workdir / s.name, s.size_bytes))
            backup_img = make_backup_medium(set_dir, descriptor, workdir / "backup-medium.img")
            note.append(", ".join(f"{s.name} {s.size_bytes / MiB:.1f} MiB for {s.key}" for s in scratch)
                        + f"; backup medium {backup_img.stat().st_size / MiB:.0f} MiB")  # fmt: skip
        with phases.phase("restore") as note:
            spec = make_rescue_spec(iso, floppy, (*disks, backup_img), firmware=rescue_fw, append=append,
                                    workdir=workdir / "rescue-files", memory=memory, cpus=cpus)  # fmt: skip
            note.append(f"rescue VM with {memory} of RAM" + (f", {cpus} CPUs" if cpus > 1 else ""))
            try:
                rescue_serial = run_rescue(spec, workdir / "rescue", timeout=restore_timeout)
            except VMError as e:
                rescue_serial = e.serial_tail
                note.append("FAILED")
                cause = f"the rescue system did not finish: {str(e).splitlines()[0]}"
            rescue = read_rescue_verdict(rescue_serial)
            if not cause and not rescue.ok:
                cause = rescue.cause
            if new_ids and not cause:
                ids = parse_new_id_lines(rescue_serial)
                same = [c for c in ids.changes if c.old.lower() == c.new.lower()]
                if not ids.changes or same:
                    cause = ("the restore logged no new ids" if not ids.changes else
                             f"{same[0].kind} {same[0].key} kept its id {same[0].old} (asked: new ids)")
                judged = apply_new_ids(descriptor, ids)
                note.append(f"{len(ids.changes)} new ids")
            if cause:
                note.append("FAILED")
                note.append(cause)
            else:
                note.append(rescue.manifest)
        backup_img.unlink(missing_ok=True)
        if not cause:
            for fw in firmwares:
                with phases.phase(f"boot restored ({fw})") as note:
                    ev = boot_restored(tuple(disks), fw, workdir, expect=expect, descriptor=judged,
                                       timeout=boot_timeout, memory=boot_memory,
                                       disk_bus=boot_disk_bus, cpus=cpus)  # fmt: skip
                    boots.append(ev)
                    if expect is None:
                        note.append(ev.login)
                        check = parse_check_line(ev.check)
                        if check is not None:
                            note.append(f"check line after {ev.check_seconds:.1f} s: "
                                        f"{summarize_check(check, ev.check_problems)}")  # fmt: skip
                    if not ev.booted:
                        note.append("FAILED")
                        if ev.check_problems:
                            cause = cause or (f"the restored system under {fw} differs from the capture: "
                                              f"{'; '.join(ev.check_problems)}\n{ev.check}")  # fmt: skip
                        else:
                            note.append(ev.matched)
                            cause = cause or (f"the restored disk did not boot under {fw}: {ev.matched}\n"
                                              f"{ev.excerpt}")  # fmt: skip
                    elif expect is not None:
                        note.append(ev.matched)
    finally:
        if not keep:
            for d in disks:
                d.unlink(missing_ok=True)
            (workdir / "backup-medium.img").unlink(missing_ok=True)
    verdict = VERIFIED if not cause else f"not recoverable: {cause}"
    say(f"verdict: {verdict.splitlines()[0]}")
    report = RehearsalReport(
        set_dir=str(set_dir), hostname=descriptor.system.hostname, descriptor_firmware=str(descriptor.system.firmware),
        firmwares=tuple(str(f) for f in firmwares), grow_percent=grow_percent, expect=expect or "", verdict=verdict,
        phases=tuple(phases.done), plan=rescue.plan, manifest=rescue.manifest, boots=tuple(boots),
        rescue_log=str(workdir / "rescue" / "serial.log"), rescue_excerpt=excerpt(rescue_serial),
        scratch_disks=tuple(str(d) for d in disks) if keep else (), workdir=str(workdir),
        report_md=str(workdir / "report.md"), report_json=str(workdir / "report.json"),
    )  # fmt: skip
    write_report(report)
    return report


def boot_lines(report: RehearsalReport) -> list[str]:
    """Per boot of the restored disks: the time to the login prompt and the check's result (the terminal's
    summary; the report says the same)."""
    out = []
    for b in report.boots:
        check = parse_check_line(b.check)
        if check is not None:
            out.append(f"restored system under {b.firmware}: {b.login}; "
                       f"{summarize_check(check, b.check_problems)} (after {b.check_seconds:.1f} s)")  # fmt: skip
        elif not report.expect:
            out.append(f"restored system under {b.firmware}: {b.login}; no check line: {b.matched}")
    return out


def render_report(report: RehearsalReport) -> str:
    return render("rehearsal.md.j2", r=report, total=round(sum(p.seconds for p in report.phases), 1))


def write_report(report: RehearsalReport) -> None:
    Path(report.report_md).write_text(render_report(report))
    Path(report.report_json).write_text(json_text(report.to_json()) + "\n", encoding="utf-8")


def cli_rehearse(args: argparse.Namespace) -> int:
    def progress(line: str) -> None:
        print(f"asr rehearse: {line}", file=sys.stderr if args.json else sys.stdout, flush=True)

    workdir = args.workdir or Path("out") / "rehearse"
    report = rehearse(args.dir, iso=args.iso, floppy=args.floppy, firmware=args.firmware, grow_percent=args.grow,
                      expect=args.expect, keep=args.keep, workdir=workdir, progress=progress,
                      memory=args.memory, new_ids=args.new_ids, cpus=args.cpus)  # fmt: skip
    if args.json:
        print(json_text(report.to_json()))
    else:
        for line in boot_lines(report):
            print(f"asr rehearse: {line}")
        print(f"asr rehearse: {report.verdict}")
        print(f"asr rehearse: report: {report.report_md} and {report.report_json}")
    return 0 if report.recoverable else 1
