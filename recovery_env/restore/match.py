"""Disk matching: which disk of this machine takes the place of each original disk.  Pure (no I/O).

:func:`match_disks` pairs each critical disk of the descriptor with a disk of this machine that *holds its data*
(same logical sector size, at least :func:`recovery_env.restore.resize.minimum_disk_bytes`: every partition at the
least its data needs), in this order, deterministic:

1. the user's choices (``pinned``);
2. identity: the same serial or WWN, then the same disk GUID / MBR signature;
3. size: the originals largest first, each onto the smallest free disk at least as large as it (nothing has to
   shrink); the others, least data first, onto the smallest free disk that holds their data (their growable
   partitions shrink, :mod:`recovery_env.restore.resize`); when that leaves one without a disk, the whole tier
   again by data need alone.

The disks holding the boot and the backup media (``exclude``) are never chosen.  An original whose data no free
disk holds is :class:`DataDoesNotFitError` (naming each partition's least size and how much is missing).  Several
equal candidates: :class:`AmbiguousDiskMatchError` when unattended, otherwise the result lists them
(:attr:`DiskMatch.pending`) so the UI lets the user pick and matches again with ``pinned``.  The plan screen says
which original each disk replaces and why (:attr:`MatchReason.describe`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from recovery_env.errors import (
    AmbiguousDiskMatchError,
    DataDoesNotFitError,
    DiskMatchError,
    InternalError,
    NoTargetDiskError,
)
from recovery_env.model.descriptor import (
    Descriptor,
    Disk,
)
from recovery_env.probe.disks import TargetDisk
from recovery_env.restore.resize import descriptor_minimum_bytes, solve_disk
from recovery_env.text import format_size


class MatchReason(StrEnum):
    """Why a disk of this machine was matched to an original disk, strongest first."""

    CHOSEN = "chosen"  # the user picked it
    SERIAL = "serial"
    WWN = "wwn"
    DISK_ID = "disk-id"
    SIZE = "size"
    DATA = "data"

    @property
    def describe(self) -> str:
        return {
            "chosen": "chosen by you",
            "serial": "same serial number",
            "wwn": "same World Wide Name",
            "disk-id": "same disk GUID / signature",
            "size": "the smallest free disk at least as large",
            "data": "no free disk is as large; the smallest that holds its data",
        }[self.value]


@dataclass(frozen=True)
class DiskChoice:
    """An original disk that several disks of this machine fit equally: the user picks one (interactive)."""

    disk: Disk
    candidates: tuple[TargetDisk, ...]  # every disk that fits, smallest first
    reason: MatchReason  # the tier at which they tied

    def describe(self) -> str:
        names = ", ".join(t.describe() for t in self.candidates)
        return f"{describe_disk(self.disk)} fits {len(self.candidates)} disks equally ({self.reason.describe}): {names}"


@dataclass(frozen=True)
class DiskMatch(Mapping[str, TargetDisk]):
    """The result of :func:`match_disks`: a mapping disk key → target disk, plus the disks still to be chosen."""

    assigned: tuple[tuple[str, TargetDisk, MatchReason], ...] = ()
    pending: tuple[DiskChoice, ...] = ()

    def __getitem__(self, key: str) -> TargetDisk:
        for k, t, _ in self.assigned:
            if k == key:
                return t
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _, _ in self.assigned)

    def __len__(self) -> int:
        return len(self.assigned)

    @property
    def complete(self) -> bool:
        return not self.pending

    def reason(self, key: str) -> MatchReason:
        for k, _, r in self.assigned:
            if k == key:
                return r
        raise KeyError(key)


def describe_disk(disk: Disk) -> str:
    """``disk1 (was /dev/sda, QEMU HARDDISK, 2.0 GiB)``."""
    parts = (f"was {disk.device}" if disk.device else "", disk.model, format_size(disk.size_bytes))
    what = ", ".join(x for x in parts if x)
    return f"{disk.key} ({what})"


def _norm_serial(s: str) -> str:
    return s.strip()


def _norm_wwn(s: str) -> str:
    t = s.strip().lower()
    for prefix in ("naa.", "eui.", "0x"):
        t = t.removeprefix(prefix)
    return t


def _fits(disk: Disk, target: TargetDisk, need: int) -> bool:
    """``target`` holds the data of ``disk`` (``need``: :func:`minimum_disk_bytes` of it)."""
    return target.logical_sector_size == disk.logical_sector_size and target.size_bytes >= need


def _identity(disk: Disk, target: TargetDisk) -> MatchReason | None:
    if disk.serial and _norm_serial(disk.serial) == _norm_serial(target.serial):
        return MatchReason.SERIAL
    if disk.wwn and _norm_wwn(disk.wwn) == _norm_wwn(target.wwn):
        return MatchReason.WWN
    if disk.disk_id and target.table is disk.table and disk.disk_id.lower() == target.disk_id.lower():
        return MatchReason.DISK_ID
    return None


def _exclusion_reasons(exclude: Collection[str]) -> dict[str, str]:
    """Excluded names → why (a Mapping gives reasons; a plain collection says "boot or backup medium")."""
    out: dict[str, str] = {}
    for x in exclude:
        why = exclude[x] if isinstance(exclude, Mapping) else "boot or backup medium"
        out[os.path.basename(x)] = str(why)
    return out


def no_target_error(
    descriptor: Descriptor, disk: Disk, targets: Sequence[TargetDisk], excluded: Mapping[str, str], taken: set[str]
) -> DiskMatchError:
    """The named error for an original disk nothing fits: its data does not fit on the largest free disk (the
    solver's DataDoesNotFitError, naming each partition's least size and what is missing) or nothing left at all."""
    free = [t for t in targets if t.name not in excluded and not t.read_only and t.name not in taken]
    same_sector = [t for t in free if t.logical_sector_size == disk.logical_sector_size]
    if same_sector:
        largest = max(same_sector, key=lambda t: (t.size_bytes, t.name))
        try:
            solve_disk(descriptor, disk, largest.size_bytes, target=largest.describe())
        except DataDoesNotFitError as e:
            others = [t.describe() for t in same_sector if t is not largest]
            return DataDoesNotFitError(str(e) + (f" (the other free disks are smaller: {', '.join(others)})"
                                                 if others else ""))
        raise InternalError(f"{describe_disk(disk)} fits {largest.describe()} but was not matched to it")
    notes = []
    for t in targets:
        if t.name in excluded:
            notes.append(f"{t.device} is excluded ({excluded[t.name]})")
        elif t.read_only:
            notes.append(f"{t.device} is read-only")
        elif t.name in taken:
            notes.append(f"{t.device} is already used for another disk")
        else:
            notes.append(
                f"{t.describe()} has {t.logical_sector_size}-byte sectors, "
                f"{disk.key} had {disk.logical_sector_size}-byte sectors"
            )
    detail = "; ".join(notes) if notes else "this machine shows no disks at all"
    return NoTargetDiskError(f"no disk to restore {describe_disk(disk)} onto: {detail}")


def match_disks(
    descriptor: Descriptor,
    targets: Sequence[TargetDisk],
    *,
    exclude: Collection[str] = (),
    unattended: bool,
    pinned: Mapping[str, str] | None = None,
) -> DiskMatch:
    """Match every critical disk of the descriptor to a disk of this machine.

    ``exclude``: names or /dev paths never chosen (the boot and backup media; a Mapping may say why).  ``pinned``:
    disk key → device name or path the user picked for it.  Raises DataDoesNotFitError / NoTargetDiskError when an
    original disk has no candidate, AmbiguousDiskMatchError on a tie when unattended."""
    excluded = _exclusion_reasons(exclude)
    usable = [t for t in targets if t.name not in excluded and not t.read_only]
    wanted = [d for d in descriptor.disks if d.critical]
    need = {d.key: descriptor_minimum_bytes(descriptor, d) for d in wanted}
    assigned: dict[str, tuple[TargetDisk, MatchReason]] = {}

    def taken() -> set[str]:
        return {t.name for t, _ in assigned.values()}

    def free_fitting(disk: Disk) -> list[TargetDisk]:
        return sorted((t for t in usable if t.name not in taken() and _fits(disk, t, need[disk.key])),
                      key=lambda t: t.size_bytes)

    # 0. the user's choices
    for key, dev in (pinned or {}).items():
        disk = next((d for d in wanted if d.key == key), None)
        if disk is None:
            raise DiskMatchError(f"cannot choose a disk for {key!r}: the descriptor has no critical disk of that name")
        name = os.path.basename(dev)
        target = next((t for t in usable if t.name == name), None)
        if target is None or name in taken():
            raise DiskMatchError(f"cannot use /dev/{name} for {describe_disk(disk)}: not a free disk of this machine")
        if not _fits(disk, target, need[disk.key]):
            raise no_target_error(descriptor, disk, [target], excluded, taken())
        assigned[key] = (target, MatchReason.CHOSEN)

    # 1. identity: serial / WWN, then disk GUID / signature
    for tier in ((MatchReason.SERIAL, MatchReason.WWN), (MatchReason.DISK_ID,)):
        for disk in wanted:
            if disk.key in assigned:
                continue
            hits = [t for t in free_fitting(disk) if _identity(disk, t) in tier]
            if len(hits) == 1:
                reason = _identity(disk, hits[0])
                assert reason is not None
                assigned[disk.key] = (hits[0], reason)
            elif len(hits) > 1 and unattended:
                raise AmbiguousDiskMatchError(
                    DiskChoice(disk, tuple(hits), tier[0]).describe() + "; unattended restore stops here"
                )

    # 2. size: (a) the originals largest first, each onto the smallest free disk at least as large (nothing
    # shrinks); (b) the others, by the space their data needs (least first), each onto the smallest free disk that
    # holds it.  When (a) took a disk (b) needed, the whole tier again by data need alone (which finds an
    # assignment whenever one exists).
    ties: list[tuple[Disk, MatchReason]] = []
    before = dict(assigned)

    def pick(disk: Disk, fitting: list[TargetDisk], reason: MatchReason) -> None:
        same_id = [t for t in fitting if _identity(disk, t) is not None]
        if len(same_id) > 1:  # an identity tie (interactive): the user picks among them
            ties.append((disk, MatchReason.DISK_ID))
            return
        smallest = [t for t in fitting if t.size_bytes == fitting[0].size_bytes]
        if len(smallest) == 1:
            assigned[disk.key] = (smallest[0], reason)
        elif unattended:
            raise AmbiguousDiskMatchError(
                DiskChoice(disk, tuple(smallest), reason).describe() + "; unattended restore stops here"
            )
        else:
            ties.append((disk, reason))

    def by_need(disks: list[Disk]) -> Disk | None:
        """The first disk left without a target (None: every one has one)."""
        for disk in sorted(disks, key=lambda d: (need[d.key], d.key)):
            fitting = free_fitting(disk)
            if not fitting:
                return disk
            as_large = [t for t in fitting if t.size_bytes >= disk.size_bytes]
            pick(disk, as_large if as_large and as_large[0] is fitting[0] else fitting,
                 MatchReason.SIZE if fitting[0].size_bytes >= disk.size_bytes else MatchReason.DATA)
        return None

    rest = [d for d in wanted if d.key not in assigned]
    deferred = []
    for disk in sorted(rest, key=lambda d: (-d.size_bytes, d.key)):
        as_large = [t for t in free_fitting(disk) if t.size_bytes >= disk.size_bytes]
        if as_large:
            pick(disk, as_large, MatchReason.SIZE)
        else:
            deferred.append(disk)
    unplaced = by_need(deferred)
    if unplaced is not None:
        first_taken = taken()  # the error names this attempt's disk left over, on the disks it left free
        assigned.clear()
        assigned.update(before)
        ties.clear()
        if by_need(rest) is not None:
            raise no_target_error(descriptor, unplaced, targets, excluded, first_taken)

    pending: list[DiskChoice] = []
    for disk, reason in ties:
        fitting = free_fitting(disk)
        if not fitting:
            raise no_target_error(descriptor, disk, targets, excluded, taken())
        fitting = [t for t in fitting if t.size_bytes >= disk.size_bytes] or fitting
        pending.append(DiskChoice(disk, tuple(fitting), reason))

    order = {d.key: i for i, d in enumerate(descriptor.disks)}
    return DiskMatch(
        assigned=tuple(sorted(((k, t, r) for k, (t, r) in assigned.items()), key=lambda x: order[x[0]])),
        pending=tuple(pending),
    )
