"""The restore flow as functions the agent's states call: find and check the backup set, find and match the
target disks, plan, execute, write the run's log into the restored system.

Standard library only (this runs in the boot media).  Pure parts -- choosing the backup medium among the probed
filesystems (:func:`plan_backup_search`), finding the boot medium (:func:`find_boot_media`), the progress bar
(:func:`render_progress_bar`), the log file name -- are functions of data, tested on the host.  The thin readers
and doers (``read_*``, ``mount_*``, :func:`locate_backup`, :func:`find_targets`) gather facts with
:mod:`recovery_env.run` and the kernel's files.

Where the backup set comes from, in order:

1. the filesystem whose UUID (else label) the descriptor's [BACKUP] names, mounted read-only at
   ``/run/asr/backup``, the set at [BACKUP] path on it;
2. the boot medium itself (``asr build --embed-backup DIR`` puts the set at ``/asr/backup`` on the ISO), mounted
   read-only at ``/run/asr/media``;
3. when the descriptor names no medium at all, any filesystem holding [BACKUP] path with its MANIFEST.

Whatever is found is checked (:func:`recovery_env.restore.verify.check_backup_set`: every archive's size and SHA-256,
the MANIFEST's SHA-256) before any disk is touched.  The disks holding the boot medium and the backup medium are
never restore targets (:func:`recovery_env.probe.disks.find_media_disks`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from recovery_env.errors import BackupMediaMissingError, ToolError
from recovery_env.model.descriptor import BackupSet, Descriptor
from recovery_env.probe.disks import TargetDisk, find_disks, find_media_disks, parse_mountinfo
from recovery_env.probe.media import (
    BACKUP_MOUNT,
    EMBEDDED_DIR,
    MEDIA_FS_OPTIONS,
    MEDIA_MOUNT,
    MODULES_LOADED,
    BlockFs,
    Log,
    mount_boot_media,
    mount_readonly,
    read_block_filesystems,
    read_mounted,
    unmount,
    wait_for_file,
)
from recovery_env.restore.execute import Progress
from recovery_env.restore.inroot import write_in_root
from recovery_env.restore.match import DiskMatch, match_disks
from recovery_env.restore.newids import derive_new_ids
from recovery_env.restore.plan import RestorePlan, plan_restore
from recovery_env.restore.rehearsal import CheckFile, plan_check_sample, render_check_files
from recovery_env.restore.verify import check_backup_set, read_manifest
from recovery_env.run import run
from recovery_env.text import format_size

TARGET_ROOT = "/target"
RESCUE_GRUB_DIR = "/usr/lib/grub"
LOG_DIR = "var/log/asr"  # in the restored system


class BackupSource(StrEnum):
    """Where a backup set was found."""

    UUID = "uuid"
    LABEL = "label"
    EMBEDDED = "embedded"
    SEARCH = "search"

    @property
    def describe(self) -> str:
        return {
            "uuid": "the filesystem with the recorded UUID",
            "label": "the filesystem with the recorded label",
            "embedded": "the boot medium (embedded backup set)",
            "search": "a filesystem holding the recorded path",
        }[self.value]


@dataclass(frozen=True)
class Candidate:
    """A place to look for the backup set: mount ``fs`` at ``mountpoint``, the set is in ``subdir`` of it."""

    fs: BlockFs
    mountpoint: str
    subdir: str
    source: BackupSource

    @property
    def directory(self) -> str:
        return os.path.normpath(os.path.join(self.mountpoint, self.subdir.lstrip("/")))


@dataclass(frozen=True)
class BackupLocation:
    directory: str  # where the archives and the MANIFEST are
    device: str
    mountpoint: str
    source: BackupSource

    def describe(self) -> str:
        return f"{self.directory} on {self.device} ({self.source.describe})"


# ----------------------------------------------------------------------------------------------------- pure


def plan_backup_search(
    backup: BackupSet, filesystems: Sequence[BlockFs], boot_media: Sequence[BlockFs] = ()
) -> list[Candidate]:
    """Where to look for the backup set, best first (see the module docstring).  The boot medium is only a
    candidate for its embedded set; a filesystem is listed once."""
    out: list[Candidate] = []
    boot = {f.device for f in boot_media}
    seen: set[tuple[str, str]] = set()

    def add(fs: BlockFs, mountpoint: str, subdir: str, source: BackupSource) -> None:
        if (fs.device, subdir) not in seen:
            seen.add((fs.device, subdir))
            out.append(Candidate(fs, mountpoint, subdir, source))

    others = [f for f in filesystems if f.device not in boot and f.type in MEDIA_FS_OPTIONS]
    if backup.media_uuid:
        for f in others:
            if f.uuid.lower() == backup.media_uuid.lower():
                add(f, BACKUP_MOUNT, backup.path, BackupSource.UUID)
    if backup.media_label:
        for f in others:
            if f.label == backup.media_label:
                add(f, BACKUP_MOUNT, backup.path, BackupSource.LABEL)
    for f in boot_media:
        add(f, MEDIA_MOUNT, EMBEDDED_DIR, BackupSource.EMBEDDED)
    if not backup.media_uuid and not backup.media_label:
        for f in others:
            add(f, BACKUP_MOUNT, backup.path, BackupSource.SEARCH)
    return out


def describe_wanted(backup: BackupSet) -> str:
    """How the error names the medium it looked for."""
    named = [x for x in (f"UUID {backup.media_uuid}" if backup.media_uuid else "",
                         f"label {backup.media_label!r}" if backup.media_label else "") if x]
    return f"the filesystem with {' or '.join(named)}" if named else "a filesystem"


def render_progress_bar(p: Progress, width: int = 16) -> str:
    """``[####............]  25% 3.0 MiB of 12.0 MiB 1.5 MiB/s ETA 0:06``: with the step's mount point it fits
    the 80-column status row."""
    fill = int(p.fraction * width)
    eta = p.eta
    left = f" ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else ""
    return (f"[{'#' * fill}{'.' * (width - fill)}] {p.fraction:4.0%} {format_size(p.done)} of "
            f"{format_size(p.total)} {format_size(int(p.rate))}/s{left}")


def make_log_name(when: float) -> str:
    return time.strftime("restore-%Y%m%d-%H%M%S.log", time.gmtime(when))


# ----------------------------------------------------------------------------------------------------- doers


def locate_backup(backup: BackupSet, log: Log, *, modules_timeout: float = 60.0) -> BackupLocation:
    """Find and mount the backup medium; return where the set is.  BackupMediaMissingError when it is nowhere
    (naming what was looked for and what this machine has).  Nothing is written anywhere."""
    # /init makes /run/asr and touches the flag when the late modules (ext4, ...) are loaded; outside the boot
    # media (a test on a host) there is nothing to wait for
    if os.path.isdir(os.path.dirname(MODULES_LOADED)) and not wait_for_file(MODULES_LOADED, modules_timeout):
        log(f"warning: {MODULES_LOADED} did not appear within {modules_timeout:g} s; probing anyway")
    filesystems = read_block_filesystems()
    boot = mount_boot_media(filesystems, log)
    candidates = plan_backup_search(backup, filesystems, [boot] if boot else [])
    tried: list[str] = []
    for c in candidates:
        if c.source is not BackupSource.EMBEDDED:
            try:
                mount_readonly(c.fs, c.mountpoint)
            except ToolError as e:
                tried.append(f"{c.fs.describe()}: cannot mount it ({(e.stderr or str(e)).strip()})")
                continue
        manifest = os.path.join(c.directory, backup.manifest)
        if os.path.isfile(manifest):
            location = BackupLocation(c.directory, c.fs.device, c.mountpoint, c.source)
            log(f"backup set found: {location.describe()}")
            return location
        tried.append(f"{c.fs.describe()}: no {c.subdir.rstrip('/')}/{backup.manifest}")
        if c.source is not BackupSource.EMBEDDED:
            unmount(c.mountpoint)
    seen = "; ".join(f.describe() for f in filesystems) or "none"
    looked = ("; looked at: " + "; ".join(tried)) if tried else ""
    raise BackupMediaMissingError(
        f"the backup medium is not attached: the descriptor names {describe_wanted(backup)} holding "
        f"{backup.path}{looked}; filesystems on this machine: {seen}. Attach the backup disk and retry."
    )


def plan_leftover_unmounts(mountinfo: str, root: str = TARGET_ROOT) -> list[str]:
    """The mount points at or under ``root`` in /proc/self/mountinfo text, last mounted first (children before
    their parents): what an earlier attempt left mounted.  Pure."""
    root = os.path.normpath(root)
    points = [m.mountpoint for m in parse_mountinfo(mountinfo)]
    return [p for p in reversed(points) if p == root or p.startswith(root + "/")]


def release_target(log: Log, proc_root: Path = Path("/proc")) -> None:
    """Unmount what an earlier attempt of this session left mounted under the target root (a failed step, a lost
    backup medium, then F3 and a new restore): the new attempt starts by erasing those disks."""
    try:
        text = (proc_root / "self" / "mountinfo").read_text()
    except OSError:
        return
    for mountpoint in plan_leftover_unmounts(text):
        if run(["umount", mountpoint], check=False).returncode != 0:
            run(["umount", "-l", mountpoint], check=False)
        log(f"unmounted {mountpoint}, left mounted by an earlier attempt")


def release_backup(location: BackupLocation, log: Log) -> None:
    """Unmount the backup medium of an earlier attempt before it is looked for again: a filesystem whose disk was
    unplugged stays mounted on a dead device and would hide the medium plugged back in (lazily if it is busy)."""
    if read_mounted(location.mountpoint) is None:
        return
    if run(["umount", location.mountpoint], check=False).returncode != 0:
        run(["umount", "-l", location.mountpoint], check=False)
    log(f"backup medium released: {location.mountpoint} ({location.device})")


def verify_backup(location: BackupLocation, backup: BackupSet) -> None:
    """Every archive and the MANIFEST with their recorded size and SHA-256 (BackupSetError otherwise)."""
    check_backup_set(Path(location.directory), backup)


def find_targets(floppy: str = "", media: Sequence[str] = ()) -> tuple[list[TargetDisk], dict[str, str]]:
    """The disks of this machine and the ones that must never be written: those holding the boot medium, the
    backup medium (``media``: the devices the agent mounted, e.g. the backup set's; and whatever is mounted at
    /run/asr/media and /run/asr/backup) and the floppy."""
    exclude = find_media_disks([p for p in (MEDIA_MOUNT, BACKUP_MOUNT) if read_mounted(p) is not None],
                               devices=media)
    if floppy.startswith("/dev/"):
        exclude.setdefault(floppy, "the ASR floppy")
    return find_disks(), exclude


def make_match(
    descriptor: Descriptor,
    targets: Sequence[TargetDisk],
    exclude: Mapping[str, str],
    *,
    unattended: bool,
    pinned: Mapping[str, str] | None = None,
) -> DiskMatch:
    return match_disks(descriptor, targets, exclude=exclude, unattended=unattended, pinned=pinned)


def make_plan(descriptor: Descriptor, match: DiskMatch, location: BackupLocation, *,
              rehearsal: bool = False, new_ids_salt: str = "") -> RestorePlan:  # fmt: skip
    """The plan; for a rehearsal (``asr.rehearsal=1``) with the rehearsal check's files, its checksum sample read
    from the set's MANIFEST (recovery_env.restore.rehearsal); with ``new_ids_salt`` (``asr.new_ids=1``), new ids
    derived from it for everything the restore re-creates (recovery_env.restore.newids)."""
    check: tuple[CheckFile, ...] = ()
    if rehearsal and descriptor.backup is not None:
        entries = read_manifest(Path(location.directory) / descriptor.backup.manifest)
        check = render_check_files(descriptor, plan_check_sample(entries, descriptor))
    new_ids = derive_new_ids(descriptor, new_ids_salt) if new_ids_salt else None
    return plan_restore(descriptor, match, target_root=TARGET_ROOT, backup_dir=location.directory,
                        rescue_grub_dir=RESCUE_GRUB_DIR, rehearsal_check=check, new_ids=new_ids)


def write_run_log(plan: RestorePlan, agent_log: str, started: float) -> str:
    """Copy the agent's log of this run into the restored system's /var/log/asr/; return the file written.  The
    path is resolved inside the target root (symlinks of the restored files such as ``var -> /elsewhere`` never
    lead out of it: recovery_env.restore.inroot); TargetPathError when it cannot be."""
    path = os.path.join(plan.target_root, LOG_DIR, make_log_name(started))
    try:
        with open(agent_log, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        text = f"(the agent log {agent_log} could not be read: {e})\n"
    return write_in_root(plan.target_root, path, text, mode=0o600, create_dirs=True)
