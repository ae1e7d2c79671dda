"""The exception tree of asr, shared by builder/ (host) and recovery_env/ (boot media).

Three families, as a person acts on them differently:

- ``InputError``: what the user gave us is wrong (a descriptor, a flag, a budget).  Fix the input.
- ``MediaError``: a medium is missing, unreadable or damaged (floppy, backup set, ISO).  Fix or swap the medium.
- ``ToolError``: an external program failed; carries its argv, exit code and output.
- ``InternalError``: a bug in asr.

Every error's message says *what* and *where*; the CLI prints it once, without a traceback unless --debug.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


class AsrError(Exception):
    """Base of every error asr raises on purpose.  ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(AsrError):
    """Bad input from the user: a descriptor, a command-line flag, a setting."""

    exit_code = 2


class DescriptorError(InputError):
    """An ASR.SIF / ASRPNP.SIF that does not parse or validate.  The message names file, line, section, field."""

    def __init__(
        self,
        message: str,
        *,
        file: str = "ASR.SIF",
        line: int | None = None,
        section: str | None = None,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.section = section
        self.record = record
        self.field = field
        self.reason = message
        super().__init__(self.location() + ": " + message if self.location() else message)

    def location(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts[0] += f" line {self.line}"
        where = []
        if self.section is not None:
            where.append(f"[{self.section}]")
        if self.record is not None:
            where.append(f"record {self.record}")
        if where:
            parts.append(" ".join(where))
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)


class IntegrityError(DescriptorError):
    """The integrity line of a descriptor does not match its content: damaged or edited."""


class BudgetError(InputError):
    """The boot media would be larger than the size budget allows."""


class ImageFullError(InputError):
    """Files do not fit in a FAT image of the requested size (e.g. a descriptor too large for a floppy)."""


class MediaError(AsrError):
    """A medium is missing, unreadable or damaged."""

    exit_code = 3


class NoFloppyDriveError(MediaError):
    pass


class NoDiskInDriveError(MediaError):
    pass


class NotFatError(MediaError):
    pass


class DescriptorMissingError(MediaError):
    pass


class DamagedFatError(MediaError):
    """A FAT file system whose structures are damaged: a cluster chain that loops, or breaks (a free, bad, reserved
    or out-of-range cluster), a directory entry whose size the volume cannot hold.  Names the file and the fault."""


class BackupSetError(MediaError):
    """A backup set is missing, incomplete, or fails its checksums."""


class BackupMediaMissingError(MediaError):
    """The medium holding the backup set that the descriptor names is not attached (or holds no such set)."""


class TargetPathError(MediaError):
    """A path under the restore's target root does not resolve inside it as a step needs (a symlink loop, a file
    where a directory is needed, a mount point that resolves to the root itself).  Names the path and the symlink
    (the restored data came from the backup set: fix or exclude it there)."""

    def __init__(self, message: str, *, path: str = "", symlink: str = "") -> None:
        self.path = path
        self.symlink = symlink
        super().__init__(message)


class BackupMediaLostError(BackupMediaMissingError):
    """The backup medium went away during the restore (unplugged, a loose cable, a failing stick).  ``index``: the
    plan step that read it, where the restore resumes once the medium is back (the disks are partly restored)."""

    def __init__(self, device: str, holding: str, step: str, index: int) -> None:
        self.device = device
        self.step = step
        self.index = index
        super().__init__(
            f"the backup medium {device} (holding {holding}) disappeared during step {index + 1} ({step}); the "
            f"disks are partly restored. Attach the backup medium again and retry: the restore resumes at step "
            f"{index + 1}."
        )


class UnusableImageError(MediaError):
    """An image another machine cannot use as it is (`asr vbox`: a floppy not of 1,474,560 bytes, an ISO without
    an El Torito boot record or without an entry for the VM's firmware)."""


class CaptureRefused(InputError):
    """`asr backup` refuses to capture this machine (not root, destination on a system volume, LVM/MD/LUKS...)."""


class NotRootError(CaptureRefused):
    """Capture needs root: it reads every file and the disks' partition tables."""


class UnsupportedLayoutError(CaptureRefused):
    """The layout uses something capture does not handle yet (LVM, MD RAID, LUKS...).  Lists every offender."""

    def __init__(self, offenders: Sequence[tuple[str, str]]) -> None:
        self.offenders = list(offenders)
        lines = "".join(f"\n  {dev}: {what}" for dev, what in self.offenders)
        super().__init__(f"unsupported storage layout ({len(self.offenders)} device(s)); not captured:{lines}")


class LayoutError(CaptureRefused):
    """The layout cannot be recorded as it is (a system mount not on the captured disks, not mounted...)."""


class DestinationError(CaptureRefused):
    """The backup directory is unusable: on a volume that would be backed up or wiped at restore, or not empty."""


class InsufficientSpaceError(CaptureRefused):
    """The backup directory's filesystem has less free space than the backup is estimated to need."""


class ToolError(AsrError):
    """An external command failed.  Carries what is needed to report it once, with its command line."""

    exit_code = 4

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr or stdout).strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"command failed with exit code {returncode}: {shlex.join(self.argv)}{detail}")


class ToolMissingError(AsrError):
    exit_code = 4

    def __init__(self, tool: str, hint: str = "") -> None:
        self.tool = tool
        super().__init__(f"required tool {tool!r} is not installed" + (f" ({hint})" if hint else ""))


class InternalError(AsrError):
    """A bug in asr: please report it."""

    exit_code = 70


# --- restore: disk matching, plan checks, executor (recovery_env.restore.plan / recovery_env.restore.execute) ---


class DiskMatchError(InputError):
    """The disks of this machine cannot be matched to the descriptor's disks.  Nothing has been written."""


class TargetTooSmallError(DiskMatchError):
    """XP's rule: a replacement disk must be at least as large as the original disk."""


class DataDoesNotFitError(TargetTooSmallError):
    """The captured data of an original disk does not fit on a target disk, even with every partition at the least
    its data needs (the resize solver's refusal): the message names each item and how much is missing."""


class AmbiguousDiskMatchError(DiskMatchError):
    """Several disks fit an original disk equally well and nobody is there to pick (unattended)."""


class NoTargetDiskError(DiskMatchError):
    """No disk is left to restore an original disk onto (all excluded, read-only, or of another sector size)."""


class PlanError(InputError):
    """The descriptor cannot be turned into a restore plan (a value sfdisk or mkfs cannot express...)."""


class PlanViolationError(InternalError):
    """The executor was about to touch a device or path the confirmed plan does not name: refused."""


class UnconfirmedPlanError(PlanViolationError):
    """execute_plan was given a plan without the token its confirmation made (forged, stale, another plan's)."""


class StepFailed(AsrError):
    """A restore step failed.  Carries the step's name, command line and output so a UI can offer retry / shell /
    quit."""

    exit_code = 4

    def __init__(self, step: str, argv: Sequence[str], output: str, reason: str = "", index: int = -1) -> None:
        self.step = step
        self.index = index  # the step's position in the plan: retry with execute_plan(..., from_step=index)
        self.argv = list(argv)
        self.output = output
        self.reason = reason
        cmd = f": {shlex.join(self.argv)}" if self.argv else ""
        tail = output.strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        why = f" ({reason})" if reason else ""
        super().__init__(f"step {step!r} failed{why}{cmd}{detail}")
