"""The restore executor: runs a confirmed :class:`~recovery_env.restore.plan.RestorePlan`, step by step, and
nothing else.

Every step is named and logged; every command goes through :mod:`recovery_env.run`.  Defence in depth: before
the first step (and again before each one) every device and path a step names is checked against the plan's own
disk set and target root (:func:`check_plan`), the confirmation token must be the plan's, and each target disk
must still be the disk the plan was made for (same size).  What was written is read back: the partition table
with ``sfdisk --json`` (disk id, PARTUUIDs, types, names, attributes, starts and sizes), each new filesystem with
``blkid -p`` (type, UUID, label).  Archives stream through ``decompress | tar`` with progress (bytes of the
archive file read, rate, ETA); their SHA-256 was checked before any disk was touched (check_backup_set).

A failed step raises :class:`~recovery_env.errors.StepFailed` with its name, argv, output and index, so that a UI
can offer retry (``execute_plan(..., from_step=e.index)``), a rescue shell, or quit.
"""

from __future__ import annotations

import hmac
import os
import re
import shlex
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from recovery_env.errors import (
    AsrError,
    BackupMediaLostError,
    PlanViolationError,
    StepFailed,
    TargetPathError,
    ToolError,
    ToolMissingError,
    UnconfirmedPlanError,
)
from recovery_env.model.descriptor import TableType
from recovery_env.probe.layout import SfdiskTable, parse_sfdisk_json, read_blkid
from recovery_env.restore.inroot import read_in_root, resolve_in_root, write_in_root
from recovery_env.restore.newids import replace_ids
from recovery_env.restore.plan import (
    BY_UUID_DIR,
    CheckFilesystem,
    CheckManifest,
    CheckTable,
    DiskPlan,
    EditFstab,
    Extract,
    FilesystemPlan,
    FstabChange,
    LinkByUuid,
    MakeDir,
    Phase,
    ReplaceIds,
    RestorePlan,
    RunStep,
    Step,
    WaitPartitions,
    WriteFiles,
)
from recovery_env.restore.verify import verify_manifest
from recovery_env.run import run, run_feed
from recovery_env.text import format_size

# Programs that write to the device named by their last argument: that argument must be a device of the plan.
DEVICE_WRITERS = frozenset(
    {"wipefs", "sfdisk", "partx", "mke2fs", "mkfs.xfs", "mkfs.btrfs", "mkfs.vfat", "mkswap", "grub-install"}
)

PROGRESS_INTERVAL = 0.5  # seconds between progress reports of one extraction
STEP_TIME_SHOWN = 1.0  # a step that takes this long or longer logs its time (where a restore spends it)


@dataclass(frozen=True)
class Progress:
    """Where an extraction stands: bytes of the archive file fed to ``decompress | tar`` out of its size."""

    step: str
    done: int
    total: int
    elapsed: float  # seconds since the step started

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total > 0 else 1.0

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; None before there is a rate."""
        if self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def render(self) -> str:
        """``restore /: 45% 12.0 MiB of 26.0 MiB, 3.1 MiB/s, 0:05 left``."""
        eta = self.eta
        left = f", {int(eta) // 60}:{int(eta) % 60:02d} left" if eta is not None else ""
        return (
            f"{self.step}: {self.fraction:4.0%} {format_size(self.done)} of {format_size(self.total)}, "
            f"{format_size(int(self.rate))}/s{left}"
        )


class Outcome(StrEnum):
    DONE = "done"
    SKIPPED = "skipped"
    FAILED_OPTIONAL = "failed (optional, the restore goes on)"


@dataclass(frozen=True)
class StepResult:
    index: int
    name: str
    phase: Phase
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ExecutionReport:
    results: tuple[StepResult, ...]
    differences: tuple[str, ...] = ()  # MANIFEST differences found after the restore (none expected)
    manifest_checked: bool = False


Log = Callable[[str], None]
OnProgress = Callable[[Progress], None]


# ------------------------------------------------------------------------------------------------ checks (pure)


def _under(root: str, path: str) -> bool:
    p = os.path.normpath(path)
    return p == root or p.startswith(root.rstrip("/") + "/")


# Device nodes a command may name without reaching a disk: the kernel's sources and sinks of bytes, terminals.
# Every other /dev path must be a disk or partition of the plan, or a link that resolves to one.
HARMLESS_DEVICES = frozenset({
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/console", "/dev/stdin",
    "/dev/stdout", "/dev/stderr", "/dev/ptmx", "/dev/kmsg",
})
HARMLESS_DEVICE_DIRS = ("/dev/fd/", "/dev/pts/", "/dev/shm/")
SHELLS = frozenset({"sh", "bash", "dash", "ash", "busybox"})
_CHARS = r"[^\s'\"`;|&<>(){}=,$\\]"  # what a path in a command line can be made of
_START = r"(?<![\w.~/+-])"  # a path starts a word, or follows "=", ">", a quote...
_DEV_PATH = re.compile(_START + r"/dev(?:/" + _CHARS + r"*)?(?!" + _CHARS + ")")
_SYS_PATH = re.compile(_START + r"/sys/" + _CHARS + "*")
_MAJMIN = re.compile(r"(?<![\w:.])(\d+):(\d+)(?![\w:.])")


def _command_words(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every word to look at: argv's own words, and the shell words of a ``sh -c SCRIPT`` (quotes removed, so
    ``/de""v/sdb`` is seen as ``/dev/sdb``); and the problems found reading them."""
    words, problems = list(argv), []
    for i, w in enumerate(argv[:-2]):
        if os.path.basename(w) in SHELLS and argv[i + 1] == "-c":
            try:
                words += shlex.split(argv[i + 2], comments=True)
            except ValueError as e:
                problems.append(f"its shell command cannot be read to check it ({e})")
    return words, problems


def _block_name_of(majmin: str, fs_root: str) -> str | None:
    """The block device ``MAJ:MIN`` is on this machine (sda1), None when there is none."""
    try:
        real = resolve_in_root(fs_root, f"{fs_root.rstrip('/')}/sys/dev/block/{majmin}")
    except (OSError, TargetPathError):
        return None
    return os.path.basename(real) if os.path.exists(real) else None


def find_foreign_devices(argv: Sequence[str], allowed: Collection[str], *, fs_root: str = "/") -> list[str]:
    """What a command names that is (or may be) a block device outside ``allowed``, one line each ([] when
    nothing).  The one device guard of every step, post-restore commands included.  Looked at: every word and,
    for ``sh -c SCRIPT``, the script's shell words; in each, every ``/dev/...`` path (also after ``of=``,
    ``--device=``, ``>``), resolved on this machine (``/dev/disk/by-id/...`` must lead to a device of the plan);
    ``/sys/block/NAME``, ``/sys/class/block/NAME``, ``/sys/devices/.../block/NAME[/PART]``,
    ``/sys/dev/block/MAJ:MIN`` and a ``MAJ:MIN`` word of a block device of this machine; ``mknod ... b``.  A
    command that builds a device name at run time (variables, command substitution) is not seen through.
    ``fs_root``: where /dev and /sys are (tests give a directory)."""
    words, problems = _command_words(argv)
    ok = set(allowed)

    def device_ok(name: str) -> bool:
        return f"/dev/{name}" in ok

    for word in words:
        for m in _DEV_PATH.finditer(word):
            path = os.path.normpath(m.group(0))
            if path == "/dev" or path in ok or path in HARMLESS_DEVICES or path.startswith(HARMLESS_DEVICE_DIRS):
                continue
            try:
                real = resolve_in_root(fs_root, f"{fs_root.rstrip('/')}{path}")[len(fs_root.rstrip("/")):]
            except (OSError, TargetPathError):
                real = path
            if real in ok:
                continue
            via = f" (a link to {real})" if real != path else ""
            problems.append(f"names {path}{via}, which is not a disk or partition of the plan")
        for m in _SYS_PATH.finditer(word):
            parts = m.group(0).split("/")
            for i, part in enumerate(parts[:-1]):
                if part != "block":
                    continue
                name = parts[i + 1]
                if _MAJMIN.fullmatch(name):
                    name = _block_name_of(name, fs_root) or name
                sub = parts[i + 2] if i + 2 < len(parts) and parts[i + 2].startswith(name) else ""
                for n in (name, sub):
                    if n and not device_ok(n):
                        problems.append(f"names {m.group(0)} (block device {n}), which is not in the plan")
        for m in _MAJMIN.finditer(word):
            dev = _block_name_of(m.group(0), fs_root)
            if dev is not None and not device_ok(dev):
                problems.append(f"names {m.group(0)}, the block device {dev} of this machine, not in the plan")
    names = [os.path.basename(w) for w in words]
    if "mknod" in names and "b" in words[names.index("mknod"):]:
        problems.append("makes a block device node (mknod ... b)")
    return list(dict.fromkeys(problems))


_UUID_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")  # a link name of /dev/disk/by-uuid: no "/", no ".."


def check_step(step: Step, plan: RestorePlan) -> None:
    """Refuse a step that names a device outside the plan's disks, or a path outside its target root."""
    allowed = plan.devices
    root = plan.target_root

    def refuse(what: str) -> PlanViolationError:
        return PlanViolationError(f"step {step.name!r}: {what}; refused (the plan covers {', '.join(sorted(allowed))})")

    match step:
        case RunStep(argv=argv, writes=writes):
            if not argv:
                raise refuse("empty command")
            for w in writes:
                if w not in allowed:
                    raise refuse(f"writes to {w}, which is not a disk or partition of the plan")
            for problem in find_foreign_devices(argv, allowed):
                raise refuse(problem)
            tool = os.path.basename(argv[0])
            if tool == "chroot" and (len(argv) < 3 or os.path.normpath(argv[1]) != root):
                raise refuse(f"chroot into {argv[1] if len(argv) > 1 else '?'} instead of {root}")
            inner = argv[2:] if tool == "chroot" else argv
            writer = os.path.basename(inner[0]) if inner else ""
            efi_grub = writer == "grub-install" and inner[-1].startswith("-")  # x86_64-efi: no device argument
            if writer in DEVICE_WRITERS and not efi_grub:
                last = inner[-1]
                if last not in allowed or (writer != "partx" and last not in writes):
                    raise refuse(f"{inner[0]} aimed at {last}, which is not a device this step may write")
            if tool in ("mount", "umount") and not _under(root, argv[-1]):
                raise refuse(f"{tool} on {argv[-1]}, outside the target root {root}")
        case WaitPartitions(disk=disk, partitions=parts):
            for d in (disk, *parts):
                if d not in allowed:
                    raise refuse(f"waits for {d}, which is not in the plan")
        case CheckTable(disk=dp):
            if dp.device not in allowed:
                raise refuse(f"checks {dp.device}, which is not in the plan")
        case CheckFilesystem(filesystem=fs):
            if fs.device not in allowed:
                raise refuse(f"checks {fs.device}, which is not in the plan")
        case MakeDir(path=path) | EditFstab(path=path):
            if not _under(root, path):
                raise refuse(f"{path} is outside the target root {root}")
        case LinkByUuid(links=links, directory=directory):
            if directory != BY_UUID_DIR:
                raise refuse(f"links in {directory} instead of {BY_UUID_DIR}")
            for uuid, device in links:
                if device not in allowed:
                    raise refuse(f"links {uuid} to {device}, which is not a filesystem of the plan")
                if not _UUID_NAME.fullmatch(uuid):
                    raise refuse(f"link name {uuid!r} is not a filesystem UUID")
        case ReplaceIds(files=files, directories=dirs):
            for path in (*files, *dirs):
                if not _under(root, path) or os.path.normpath(path) == root:
                    raise refuse(f"rewrites {path}, outside the target root {root}")
        case WriteFiles(files=files):
            for path, _text, _mode in files:
                if not _under(root, path) or os.path.normpath(path) == root:
                    raise refuse(f"writes {path}, outside the target root {root}")
        case Extract(extraction=e):
            if not _under(root, e.directory):
                raise refuse(f"extracts into {e.directory}, outside the target root {root}")
            for argv in e.pipeline:
                for problem in find_foreign_devices(argv, ()):
                    raise refuse(f"the extraction pipeline {problem}")
        case CheckManifest(root=r):
            if os.path.normpath(r) != root:
                raise refuse(f"verifies {r} instead of {root}")


def check_plan(plan: RestorePlan) -> None:
    """Check every step of the plan (see :func:`check_step`) before any of them runs."""
    if os.path.normpath(plan.target_root) in ("/", ""):
        raise PlanViolationError("the plan's target root is /: refused")
    for step in plan.steps():
        check_step(step, plan)


def _norm_id(table: TableType, value: str) -> str:
    v = value.lower()
    return v if table is TableType.GPT or v.startswith("0x") else "0x" + v


def _norm_type(table: TableType, value: str) -> str:
    """sfdisk --json prints MBR ids without a leading zero ("5"); the descriptor writes two digits ("05")."""
    v = value.lower()
    if table is TableType.MBR:
        try:
            return f"{int(v, 16):02x}"
        except ValueError:
            return v
    return v


def check_table(disk: DiskPlan, table: SfdiskTable) -> list[str]:
    """What differs between the planned table and the one read back with ``sfdisk --json`` ([] when none)."""
    problems: list[str] = []
    if table.label is not disk.table:
        return [f"{disk.device}: label {table.label.value}, planned {disk.table.value}"]
    if _norm_id(disk.table, table.id) != _norm_id(disk.table, disk.disk_id):
        problems.append(f"{disk.device}: disk id {table.id}, planned {disk.disk_id}")
    got = {p.number: p for p in table.partitions}
    for p in disk.partitions:
        q = got.pop(p.number, None)
        if q is None:
            problems.append(f"{p.device}: missing")
            continue
        checks: list[tuple[str, object, object]] = [
            ("start", q.start, p.start),
            ("size", q.size, p.size),
            ("type", _norm_type(disk.table, q.type), _norm_type(disk.table, p.type)),
        ]
        if disk.table is TableType.GPT:
            checks += [
                ("PARTUUID", q.uuid.lower(), p.partuuid.lower() or q.uuid.lower()),
                ("name", q.name, p.name),
                ("attributes", q.attributes, p.attributes),
            ]
        else:
            checks.append(("bootable", q.bootable, p.bootable))
        problems += [f"{p.device}: {what} {a}, planned {b}" for what, a, b in checks if a != b]
    problems += [f"partition {n}: not planned" for n in sorted(got)]
    return problems


def check_filesystem(fs: FilesystemPlan, probe: Mapping[str, str]) -> list[str]:
    """What differs between a planned filesystem and its ``blkid -p`` probe ([] when none)."""
    problems = []
    fstype = probe.get("TYPE", "")
    if fstype != fs.type.value:
        problems.append(f"{fs.device}: type {fstype or 'none'}, planned {fs.type.value}")
    if fs.uuid and probe.get("UUID", "").lower() != fs.uuid.lower():
        problems.append(f"{fs.device}: UUID {probe.get('UUID', '') or 'none'}, planned {fs.uuid}")
    if probe.get("LABEL", "") != fs.label:
        problems.append(f"{fs.device}: label {probe.get('LABEL', '')!r}, planned {fs.label!r}")
    return problems


_FSTAB_LINE = re.compile(r"^(\s*)(\S+)(\s+)(\S+)(.*)$", re.DOTALL)


def rewrite_fstab(text: str, changes: Sequence[FstabChange]) -> str:
    """/etc/fstab with each change's first field replaced on the line of its mount point (comments, spacing and
    every other line kept)."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _FSTAB_LINE.match(line)
        if m and not m.group(2).startswith("#"):
            spec, mountpoint = m.group(2), m.group(4)
            for c in changes:
                on_it = mountpoint == c.mountpoint or (c.mountpoint == "swap" and mountpoint in ("swap", "none"))
                if on_it and spec == c.old:
                    line = f"{m.group(1)}{c.new}{m.group(3)}{mountpoint}{m.group(5)}"
                    break
        out.append(line)
    return "".join(out)


# ------------------------------------------------------------------------------------------------ execution


def check_targets_unchanged(plan: RestorePlan, sys_root: Path = Path("/sys")) -> None:
    """Each target disk is still there with the size the plan was made for (not swapped since the plan)."""
    for d in plan.disks:
        size_file = sys_root / "class" / "block" / d.target.name / "size"
        try:
            size = int(size_file.read_text()) * 512
        except (OSError, ValueError) as e:
            raise PlanViolationError(f"{d.device}: gone since the plan was made ({size_file}: {e})") from e
        if size != d.target.size_bytes:
            raise PlanViolationError(
                f"{d.device}: {size} bytes now, {d.target.size_bytes} when the plan was made; refused"
            )


# ------------------------------------------------------------------------------------------------ confirmation

_confirm_key: bytes = b""  # made at the first confirmation of this process, never stored or shown


def _sign(plan: RestorePlan) -> str:
    return hmac.new(_confirm_key, plan.digest.encode(), "sha256").hexdigest()


def confirm_plan(plan: RestorePlan) -> str:
    """The confirmation token of ``plan``: called only where a person pressed C at the plan screen (or unattended
    mode accepted the plan).  An HMAC of the plan's digest (every step and every line the plan screen showed) with
    a key this process made at its first confirmation: nothing can compute it from the plan alone, and it fits
    this plan only (another plan, an edited one, a token of an earlier boot are refused by :func:`execute_plan`)."""
    global _confirm_key
    if not _confirm_key:
        _confirm_key = os.urandom(32)
    return _sign(plan)


def check_confirmation(plan: RestorePlan, token: str) -> None:
    """UnconfirmedPlanError unless ``token`` is what :func:`confirm_plan` made for this very plan."""
    if not _confirm_key or not hmac.compare_digest(token.encode(), _sign(plan).encode()):
        raise UnconfirmedPlanError(
            f"the plan {plan.digest[:16]} was not confirmed (its confirmation token is not the one the plan screen "
            "made for it); nothing written"
        )


def is_present(device: str, sys_root: Path = Path("/sys")) -> bool:
    """Whether the block device (a disk or a partition) is still attached and has a medium: an unplugged disk
    leaves /sys/class/block, an ejected CD keeps its drive with size 0."""
    try:
        return int((sys_root / "class" / "block" / os.path.basename(device) / "size").read_text()) > 0
    except (OSError, ValueError):
        return False


def check_backup_medium(device: str, plan: RestorePlan, step: Step, index: int, sys_root: Path) -> None:
    """BackupMediaLostError if ``step`` reads the backup set (an extraction, the MANIFEST comparison) and its
    medium ``device`` is gone ("" = not watched)."""
    if device and isinstance(step, Extract | CheckManifest) and not is_present(device, sys_root):
        raise BackupMediaLostError(device, plan.backup_dir, step.name, index)


def execute_plan(
    plan: RestorePlan,
    *,
    log: Log,
    progress: OnProgress,
    confirm_token: str,
    phases: Collection[Phase] = tuple(Phase),
    from_step: int = 0,
    sys_root: Path = Path("/sys"),
    backup_device: str = "",
) -> ExecutionReport:
    """Run the plan's steps in order (only those of ``phases``, from index ``from_step``).  Raise StepFailed on
    the first failing step that is not optional; PlanViolationError before anything runs if the plan names a
    device or path it must not; UnconfirmedPlanError unless ``confirm_token`` is :func:`confirm_plan`'s token
    for this plan.

    ``backup_device`` (the block device holding the backup set): it must be there before and after every step
    that reads the set, else BackupMediaLostError naming the step -- whatever the step's own outcome, since reads
    after the medium went may have failed or come from the page cache, not from the checked medium."""
    check_confirmation(plan, confirm_token)
    check_plan(plan)
    steps = plan.steps()
    if Phase.PARTITION in phases or Phase.FORMAT in phases:
        check_targets_unchanged(plan, sys_root)
    results: list[StepResult] = []
    differences: tuple[str, ...] = ()
    manifest_checked = False
    for i, step in enumerate(steps):
        if i < from_step or step.phase not in phases:
            continue
        check_step(step, plan)
        check_backup_medium(backup_device, plan, step, i, sys_root)
        log(f"[{i + 1}/{len(steps)}] {step.name}")
        t0 = time.monotonic()
        try:
            outcome, detail = _run_step(step, plan.target_root, log=log, progress=progress)
        except StepFailed as e:
            e.index = i
            log(f"FAILED: {e}")
            check_backup_medium(backup_device, plan, step, i, sys_root)  # a failure of the medium, not the step
            raise
        except TargetPathError as e:
            log(f"FAILED: {e}")
            raise StepFailed(step.name, (), str(e), "a path does not resolve inside the target root", i) from e
        check_backup_medium(backup_device, plan, step, i, sys_root)
        if isinstance(step, CheckManifest):  # one per btrfs top level, one for the rest
            manifest_checked = True
            differences += tuple(detail.splitlines()) if detail else ()
        if outcome is not Outcome.DONE:
            log(f"  {outcome.value}{': ' + detail if detail else ''}")
        seconds = time.monotonic() - t0
        if seconds >= STEP_TIME_SHOWN:
            log(f"  took {seconds:.1f} s")
        results.append(StepResult(i, step.name, step.phase, outcome, detail, seconds))
    return ExecutionReport(tuple(results), differences, manifest_checked)


def _in_root(word: str, root: str) -> str:
    """An argv word (or the value of ``--opt=VALUE``) naming a path below the target root, resolved inside it."""
    opt, eq, value = word.partition("=") if word.startswith("-") else ("", "", word)
    if not eq:
        value = word
    if not value.startswith("/") or os.path.normpath(value) == root or not _under(root, value):
        return word
    resolved = resolve_in_root(root, value)
    return f"{opt}={resolved}" if eq else resolved


def _exists_in_root(path: str, root: str) -> bool:
    if not _under(root, path) or os.path.normpath(path) == root:
        return os.path.lexists(path)
    try:
        return os.path.lexists(resolve_in_root(root, path))
    except TargetPathError:
        return False


# What grub-install (the rescue system's, run outside the restored system) writes below its --boot-directory.
GRUB_WRITES = ("grub", "grub/i386-pc", "grub/x86_64-efi", "grub/fonts", "grub/locale", "grub/grubenv",
               "grub/grub.cfg")


def check_no_links(root: str, directory: str, below: Sequence[str]) -> None:
    """A tool that runs outside the restored system and writes ``below`` a (resolved) ``directory`` follows the
    restored files' symlinks there as the rescue system sees them: refuse (TargetPathError) any that leads it out
    of the root (an absolute link, a ``..`` chain past the root)."""
    for sub in below:
        lexical = os.path.join(directory, sub)
        followed = os.path.realpath(lexical)  # where a tool of the rescue system ends up
        if not _under(os.path.realpath(root), followed):
            raise TargetPathError(
                f"{lexical} leads to {followed} for a tool of the rescue system, outside the target root {root} (a "
                "symlink in the restored files); refused",
                path=lexical,
            )


def resolve_step(step: Step, root: str, log: Log) -> Step:
    """The step as it runs: every path below the target root (mount points, ``tar --directory``, grub's
    directories, the paths a step's condition looks at) resolved inside the root, whatever symlinks the restored
    files hold (recovery_env.restore.inroot); the paths a step's condition looks at are resolved when it runs
    (:func:`_exists_in_root`).  A mount point of another filesystem that resolves to the root itself is
    refused (TargetPathError): it would hide the restored system."""

    def words(argv: Sequence[str]) -> tuple[str, ...]:
        out = tuple(_in_root(w, root) for w in argv)
        for before, after in zip(argv, out, strict=True):
            if before != after:
                log(f"  {before} resolves to {after} (symlinks in the restored files, resolved inside {root})")
        return out

    match step:
        case RunStep(argv=argv):
            new = words(argv)
            if os.path.basename(argv[0]) == "mount" and os.path.normpath(argv[-1]) != root and new[-1] == root:
                raise TargetPathError(
                    f"step {step.name!r}: the mount point {argv[-1]} resolves to the target root {root} itself "
                    "(a symlink in the restored files); refused",
                    path=argv[-1],
                )
            if os.path.basename(argv[0]) == "grub-install":
                for w in new:
                    if w.startswith("--boot-directory="):
                        check_no_links(root, w.split("=", 1)[1], GRUB_WRITES)
            return replace(step, argv=new)
        case Extract(extraction=e):
            return replace(step, extraction=replace(e, directory=_in_root(e.directory, root),
                                                    tar_argv=words(e.tar_argv)))
    return step


def _fail(step: Step, argv: Sequence[str], output: str, reason: str) -> StepFailed:
    return StepFailed(step.name, argv, output, reason)


def _run_step(step: Step, root: str, *, log: Log, progress: OnProgress) -> tuple[Outcome, str]:
    """Run one step; every path under the target root ``root`` is resolved inside it first (resolve_step), once
    the step's conditions say it runs at all (a skipped step's paths need not exist: efivars under a BIOS boot)."""
    if isinstance(step, RunStep | WriteFiles) and (skipped := _skip_reason(step, root)):
        return Outcome.SKIPPED, skipped
    step = resolve_step(step, root, log)
    match step:
        case RunStep():
            return _run_command(step, root, log)
        case WaitPartitions():
            _wait_partitions(step)
        case CheckTable(disk=dp):
            argv = ["sfdisk", "--json", dp.device]
            out = _run_checked(step, argv)
            try:
                problems = check_table(dp, parse_sfdisk_json(out, f"sfdisk --json {dp.device}"))
            except AsrError as e:
                raise _fail(step, argv, out, str(e)) from e
            if problems:
                raise _fail(step, argv, "\n".join(problems), "the table on the disk differs from the plan")
            log(f"  {dp.device}: {dp.table.value} {dp.disk_id}, {len(dp.partitions)} partition(s) as planned")
        case CheckFilesystem(filesystem=fs):
            argv = ["blkid", "-p", "-o", "export", fs.device]  # what read_blkid runs, for the report
            try:
                found = read_blkid(fs.device)
            except ToolMissingError as e:
                raise _fail(step, argv, str(e), "tool missing") from e
            except ToolError as e:
                raise _fail(step, argv, e.stdout + e.stderr, "blkid failed") from e
            problems = check_filesystem(fs, found)
            if problems:
                seen = "".join(f"{k}={v}\n" for k, v in found.items())
                raise _fail(step, argv, seen + "\n".join(problems), "not what mkfs was asked")
        case MakeDir(path=path):
            try:
                made = resolve_in_root(root, path, create=True)
            except OSError as e:
                raise _fail(step, [], str(e), f"cannot make {path}") from e
            if made != os.path.normpath(path):
                log(f"  {path} resolves to {made} (symlinks in the restored files, resolved inside {root})")
        case Extract(extraction=e):
            _extract(step, e.archive, e.pipeline, e.size, progress)
        case EditFstab(path=path, changes=changes):
            try:
                write_in_root(root, path, rewrite_fstab(read_in_root(root, path), changes))
            except (OSError, TargetPathError) as err:
                raise _fail(step, [], str(err), f"cannot rewrite {path}") from err
            for c in changes:
                log(f"  {c.mountpoint}: {c.old} -> {c.new}")
        case CheckManifest(root=root, manifest=manifest, filesystems=only, skip=skip):
            try:
                diffs = verify_manifest(Path(root), Path(manifest), filesystems=only, skip=skip)
            except AsrError as err:
                raise _fail(step, [], str(err), "cannot read the MANIFEST") from err
            log(f"  {len(diffs)} difference(s)")
            for d in diffs[:50]:
                log(f"    {d}")
            return Outcome.DONE, "\n".join(str(d) for d in diffs)
        case LinkByUuid(links=links, directory=directory):
            try:
                os.makedirs(directory, exist_ok=True)
                for uuid, device in links:
                    link = os.path.join(directory, uuid)
                    if os.path.lexists(link):
                        os.unlink(link)
                    os.symlink(os.path.relpath(device, directory), link)  # ../../vda3, as udev writes it
                    log(f"  {link} -> {device}")
            except OSError as err:
                raise _fail(step, [], str(err), f"cannot link in {directory}") from err
        case ReplaceIds():
            _replace_ids(step, root, log)
        case WriteFiles(files=files):
            for path, text, mode in files:
                try:
                    written = write_in_root(root, path, text, mode=mode, create_dirs=True)
                except (OSError, TargetPathError) as err:
                    raise _fail(step, [], str(err), f"cannot write {path}") from err
                log(f"  wrote {written} ({len(text.encode())} bytes, mode {mode:04o})")
    return Outcome.DONE, ""


def _replace_ids(step: ReplaceIds, root: str, log: Log) -> None:
    """Each old id replaced by its new one in the step's files that exist (and the ``*.cfg`` of its directories)."""
    paths = [p for p in step.files if _exists_in_root(p, root)]
    for d in step.directories:
        if _exists_in_root(d, root):
            where = resolve_in_root(root, d)
            if os.path.isdir(where):
                paths += [os.path.join(d, n) for n in sorted(os.listdir(where)) if n.endswith(".cfg")]
    for path in paths:
        try:
            text, count = replace_ids(read_in_root(root, path), step.replacements)
            if count:
                write_in_root(root, path, text)
        except (OSError, TargetPathError) as err:
            raise _fail(step, [], str(err), f"cannot rewrite {path}") from err
        log(f"  {path}: {count} id(s) replaced")


def _run_checked(step: Step, argv: Sequence[str]) -> str:
    try:
        return run(argv).stdout
    except ToolError as e:
        raise _fail(step, e.argv, e.stdout + e.stderr, f"exit code {e.returncode}") from e
    except ToolMissingError as e:
        raise _fail(step, argv, str(e), "tool missing") from e


def _skip_reason(step: RunStep | WriteFiles, root: str) -> str:
    """Why the step's conditions skip it ("" when it runs)."""
    if step.only_if_any and not any(_exists_in_root(p, root) for p in step.only_if_any):
        return f"none of {', '.join(step.only_if_any)} exists"
    absent = [p for p in step.only_if_all if not _exists_in_root(p, root)]
    if absent:
        return f"{absent[0]} does not exist"
    present = [p for p in step.unless_any if _exists_in_root(p, root)]
    if present:
        return f"{present[0]} exists"
    return ""


def _run_command(step: RunStep, root: str, log: Log) -> tuple[Outcome, str]:
    if skipped := _skip_reason(step, root):
        return Outcome.SKIPPED, skipped
    try:
        proc = run(step.argv, input=step.input or None, check=False)
    except ToolMissingError as e:
        if step.optional:
            return Outcome.FAILED_OPTIONAL, str(e)
        raise _fail(step, step.argv, str(e), "tool missing") from e
    output = (proc.stdout + proc.stderr).strip()
    for line in output.splitlines()[-20:]:
        log(f"  | {line}")
    if proc.returncode != 0:
        if step.optional:
            return Outcome.FAILED_OPTIONAL, f"exit code {proc.returncode}"
        raise _fail(step, step.argv, output, f"exit code {proc.returncode}")
    return Outcome.DONE, ""


def _sysfs_extent(name: str) -> tuple[int, int] | None:
    try:
        base = Path("/sys/class/block") / name
        return int((base / "start").read_text()), int((base / "size").read_text())
    except (OSError, ValueError):
        return None


def _wait_partitions(step: WaitPartitions, poll: float = 0.1) -> None:
    """Poll (no udev here) until every partition is in /sys/class/block with its planned start and size, and has
    its /dev node."""
    deadline = time.monotonic() + step.timeout
    extents = step.extents or tuple((-1, -1) for _ in step.partitions)
    while True:
        wrong = []
        for dev, want in zip(step.partitions, extents, strict=True):
            got = _sysfs_extent(os.path.basename(dev))
            if got is None or not os.path.exists(dev):
                wrong.append(f"{dev}: missing")
            elif want != (-1, -1) and (got[0] != want[0] or -1 != want[1] != got[1]):
                wrong.append(f"{dev}: the kernel sees start {got[0]} size {got[1]}, planned {want[0]} {want[1]}")
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise _fail(step, [], "\n".join(wrong), f"partitions not as planned after {step.timeout:g} s")
        time.sleep(poll)


def _extract(step: Step, archive: str, pipeline: Sequence[Sequence[str]], total: int, progress: OnProgress) -> None:
    """The decompressor reads the archive file itself (no byte through Python); progress is how far it has read.
    The archive's SHA-256 was checked with the whole set (check_backup_set) before any disk was touched: it is
    not hashed a second time; a file whose size changed since is refused before anything is extracted."""
    t0 = time.monotonic()

    def on_progress(done: int) -> None:
        progress(Progress(step.name, done, total, time.monotonic() - t0))

    argv = [a for cmd in pipeline for a in ([*cmd, "|"])][:-1]
    try:
        size = os.stat(archive).st_size
        if size != total:
            raise _fail(step, argv, f"{size} bytes, expected {total}", "the archive changed since it was checked")
        run_feed(pipeline, Path(archive), on_progress=on_progress, interval=PROGRESS_INTERVAL)
    except OSError as e:
        raise _fail(step, argv, str(e), f"cannot read {archive}") from e
    except ToolError as e:
        raise _fail(step, e.argv, e.stdout + e.stderr, f"exit code {e.returncode}") from e
    except ToolMissingError as e:
        raise _fail(step, argv, str(e), "tool missing") from e
