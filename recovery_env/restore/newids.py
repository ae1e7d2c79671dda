"""New ids for a restore that must coexist with the original (``asr.new_ids=1``, ``asr rehearse --new-ids``).

A restore keeps every id by default: disk GUIDs and MBR signatures, partition GUIDs, filesystem UUIDs, so that
/etc/fstab, ``resume=``, GRUB's ``root=UUID=`` and the initramfs find what they name.  A copy that must live beside
the original (a clone on the same SAN or hypervisor, a test restore attached to the original machine) needs ids of
its own, or the two systems mount each other's filesystems.  With new ids:

1. :func:`derive_new_ids` gives every disk, partition and filesystem of the restored disks a new id (derived
   from a salt, so one salt always gives the same ids: the planner stays pure and its tests deterministic; the
   agent draws the salt from ``os.urandom``);
2. :func:`apply_new_ids` gives the descriptor those ids: the plan then writes them (sfdisk ``label-id`` and
   ``uuid``, ``mkfs -U``), checks them (``blkid -p``) and links ``/dev/disk/by-uuid`` to them;
3. after the MANIFEST comparison, :data:`ID_FILES` of the restored system are rewritten, each old id replaced by
   its new one (:func:`replace_ids`): fstab, crypttab, the initramfs' resume device, GRUB's defaults, the kernel
   command line of systemd-boot; then the restored system's own ``update-initramfs`` rebuilds its initramfs (the
   resume device is inside it) and ``update-grub`` writes ``root=UUID=`` with the new root.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recovery_env.model.descriptor import Descriptor, FsType, TableType

#: Files of the restored system that may name a filesystem, partition or disk by its id (absolute in the restored
#: system; a missing one is left alone).  /boot/grub/grub.cfg is rewritten by update-grub afterwards where the
#: system has it, and here for one that has not.
ID_FILES = (
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/initramfs-tools/conf.d/resume",
    "/etc/default/grub",
    "/etc/kernel/cmdline",
    "/etc/mdadm/mdadm.conf",
    "/boot/grub/grub.cfg",
)
#: Directories whose ``*.cfg`` files are rewritten too (GRUB's defaults drop-ins).
ID_DIRECTORIES = ("/etc/default/grub.d",)
#: The line a restore with new ids logs per changed id (the harness reads them from the rescue serial).
NEW_ID_PREFIX = "ASR-NEW-ID"
_NEW_ID_LINE = re.compile(NEW_ID_PREFIX + r" (disk|partition|filesystem) (\S+) (\S+) -> (\S+)")


@dataclass(frozen=True)
class IdChange:
    kind: str  # "disk", "partition", "filesystem"
    key: str  # disk1, disk1p2, fs3
    old: str
    new: str

    @property
    def line(self) -> str:
        return f"{NEW_ID_PREFIX} {self.kind} {self.key} {self.old} -> {self.new}"


@dataclass(frozen=True)
class NewIds:
    changes: tuple[IdChange, ...]

    def of(self, kind: str) -> dict[str, IdChange]:
        return {c.key: c for c in self.changes if c.kind == kind}

    @property
    def replacements(self) -> tuple[tuple[str, str], ...]:
        """(old, new) text of every id that files may name, longest first (an MBR partition's id contains its
        disk's signature)."""
        pairs = {(c.old, c.new) for c in self.changes if c.old}
        return tuple(sorted(pairs, key=lambda p: (-len(p[0]), p[0])))


def _digest(salt: str, *what: object) -> bytes:
    return hashlib.sha256("/".join((salt, *map(str, what))).encode()).digest()


def _uuid(salt: str, *what: object) -> str:
    return str(uuid.UUID(bytes=_digest(salt, *what)[:16], version=4))


def _hex32(salt: str, *what: object) -> str:
    value = int.from_bytes(_digest(salt, *what)[:4], "big") or 1  # an MBR signature of 0 means "none"
    return f"{value:08x}"


def derive_new_ids(descriptor: Descriptor, salt: str, disks: Iterable[str] | None = None) -> NewIds:
    """A new id for every disk of ``disks`` (default: the critical ones, which the restore re-creates), each of
    their partitions and each filesystem on them, in the formats the tools write: a GPT GUID and a filesystem UUID
    in lower case, an MBR signature ``0x1234abcd`` and its partitions' ``1234abcd-NN``, a FAT volume id
    ``ABCD-1234``.  Ids the capture did not record stay unrecorded.  Pure and deterministic in ``salt``."""
    keys = set(disks) if disks is not None else {d.key for d in descriptor.disks if d.critical}
    changes: list[IdChange] = []
    tables = {d.key: d.table for d in descriptor.disks}
    signatures: dict[str, str] = {}
    for d in descriptor.disks:
        if d.key not in keys or not d.disk_id:
            continue
        if d.table is TableType.MBR:
            signatures[d.key] = _hex32(salt, "disk", d.key)
            new = "0x" + signatures[d.key]
        else:
            new = _uuid(salt, "disk", d.key)
        changes.append(IdChange("disk", d.key, d.disk_id, new))
    parts = [p for p in descriptor.partitions if p.disk in keys]
    for p in parts:
        if not p.partuuid:
            continue
        if tables[p.disk] is TableType.MBR:
            new = f"{signatures.get(p.disk, _hex32(salt, 'disk', p.disk))}-{p.number:02x}"
        else:
            new = _uuid(salt, "partition", p.key)
        changes.append(IdChange("partition", p.key, p.partuuid, new))
    on_disks = {p.key for p in parts}
    for fs in descriptor.filesystems:
        if fs.partition not in on_disks or not fs.uuid:
            continue
        if fs.type is FsType.VFAT:
            h = _hex32(salt, "filesystem", fs.key).upper()
            new = f"{h[:4]}-{h[4:]}"
        else:
            new = _uuid(salt, "filesystem", fs.key)
        changes.append(IdChange("filesystem", fs.key, fs.uuid, new))
    return NewIds(tuple(changes))


def apply_new_ids(descriptor: Descriptor, ids: NewIds) -> Descriptor:
    """The descriptor with ``ids`` in place of the recorded ones (everything else as it was)."""
    disks, parts, fss = ids.of("disk"), ids.of("partition"), ids.of("filesystem")
    return dataclasses.replace(
        descriptor,
        disks=tuple(dataclasses.replace(d, disk_id=disks[d.key].new) if d.key in disks else d
                    for d in descriptor.disks),
        partitions=tuple(dataclasses.replace(p, partuuid=parts[p.key].new) if p.key in parts else p
                         for p in descriptor.partitions),
        filesystems=tuple(dataclasses.replace(f, uuid=fss[f.key].new) if f.key in fss else f
                          for f in descriptor.filesystems),
    )  # fmt: skip


def replace_ids(text: str, replacements: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """``text`` with each old id replaced by its new one (case-insensitive: a GUID may be written in either case;
    only whole ids, not a part of a longer hex word), and how many were replaced."""
    if not replacements:
        return text, 0
    table = {old.lower(): new for old, new in replacements}
    pattern = re.compile(
        r"(?<![0-9A-Za-z-])(" + "|".join(re.escape(old) for old, _ in replacements) + r")(?![0-9A-Za-z-])",
        re.IGNORECASE,
    )
    count = 0

    def swap(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return table[m.group(1).lower()]

    return pattern.sub(swap, text), count


def parse_new_id_lines(text: str) -> NewIds:
    """The id changes a restore logged (:attr:`IdChange.line`), e.g. from the rescue system's serial console."""
    seen: dict[tuple[str, str], IdChange] = {}
    for m in _NEW_ID_LINE.finditer(text):
        seen[(m.group(1), m.group(2))] = IdChange(m.group(1), m.group(2), m.group(3), m.group(4))
    return NewIds(tuple(seen.values()))
