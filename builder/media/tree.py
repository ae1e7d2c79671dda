"""The rescue tree in memory (:class:`RescueTree`, built with :class:`TreeBuilder`) and the view of the package set
it is filled from (:class:`PackageFiles`).  Paths are relative and merged-/usr (``bin``, ``sbin``, ``lib``,
``lib64`` are symlinks into ``usr``, as on a Debian 12 system); every entry belongs to a size :class:`Group`."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from builder.media.packages import (
    DebMember,
    MemberKind,
    PackageSet,
    read_deb,
)
from recovery_env.errors import InputError, InternalError

MERGED_DIRS = ("bin", "sbin", "lib", "lib64")


class Group(StrEnum):
    """What a path contributes to, for the size breakdown of the boot media."""

    BASE = "base"
    MODULES = "kernel modules"
    BUSYBOX = "busybox"
    PYTHON = "python"
    LIBRARIES = "libraries"
    TOOLS = "tools"
    GRUB = "grub"
    AGENT = "agent"


class EntryKind(StrEnum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"

    @property
    def type_bits(self) -> int:
        return {
            EntryKind.DIR: stat.S_IFDIR,
            EntryKind.FILE: stat.S_IFREG,
            EntryKind.SYMLINK: stat.S_IFLNK,
            EntryKind.CHAR: stat.S_IFCHR,
            EntryKind.BLOCK: stat.S_IFBLK,
        }[self]


@dataclass(frozen=True)
class Entry:
    """One path of the tree; everything is owned by root (uid 0, gid 0)."""

    kind: EntryKind
    mode: int  # permission bits only
    data: bytes = field(default=b"", repr=False)
    target: str = ""  # symlinks
    rdev: tuple[int, int] = (0, 0)  # device nodes: (major, minor)
    group: Group = Group.BASE

    @property
    def size(self) -> int:
        return len(self.target.encode()) if self.kind is EntryKind.SYMLINK else len(self.data)


class MissingFileError(InputError):
    """A table names a file or module that its package does not contain."""


def canonical_path(path: str) -> str:
    """``sbin/mke2fs`` → ``usr/sbin/mke2fs`` (merged /usr); no leading or trailing slash."""
    path = path.strip("/")
    head = path.split("/", 1)[0]
    return "usr/" + path if head in MERGED_DIRS else path


@dataclass(frozen=True)
class RescueTree:
    """The finished tree: relative path → entry.  Parents of every path are present."""

    entries: Mapping[str, Entry]

    @property
    def raw_size(self) -> int:
        return sum(e.size for e in self.entries.values())

    def with_file(self, path: str, data: bytes, mode: int = 0o644, group: Group = Group.BASE) -> RescueTree:
        """A copy with one more regular file (its parent directory must exist)."""
        if path.rpartition("/")[0] not in self.entries:
            raise InternalError(f"{path}: no parent directory in the rescue tree")
        entries = dict(self.entries)
        entries[path] = Entry(EntryKind.FILE, mode, data=data, group=group)
        return RescueTree(entries=dict(sorted(entries.items())))

    def size_breakdown(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for entry in self.entries.values():
            sizes[entry.group.value] = sizes.get(entry.group.value, 0) + entry.size
        return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


class TreeBuilder:
    """Collects entries; later additions of the same path must agree with earlier ones."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {"": Entry(EntryKind.DIR, 0o755)}

    def _put(self, path: str, entry: Entry) -> None:
        path = path.strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise InternalError(f"bad path for the rescue tree: {path!r}")
        parent = path.rpartition("/")[0]
        if parent not in self.entries:
            self.add_dir(parent)
        elif self.entries[parent].kind is not EntryKind.DIR:
            raise InternalError(f"{path}: parent {parent} is a {self.entries[parent].kind}, not a directory")
        old = self.entries.get(path)
        if old is not None and old != entry:
            if old.kind is EntryKind.DIR and entry.kind is EntryKind.DIR:
                return
            raise InternalError(f"{path}: added twice with different content ({old.kind}, {entry.kind})")
        self.entries[path] = entry

    def add_dir(self, path: str, mode: int = 0o755, group: Group = Group.BASE) -> None:
        if path.strip("/") and path.strip("/") not in self.entries:
            self._put(path, Entry(EntryKind.DIR, mode, group=group))

    def add_file(self, path: str, data: bytes, mode: int = 0o644, group: Group = Group.BASE) -> None:
        self._put(path, Entry(EntryKind.FILE, mode, data=data, group=group))

    def add_symlink(self, path: str, target: str, group: Group = Group.BASE) -> None:
        self._put(path, Entry(EntryKind.SYMLINK, 0o777, target=target, group=group))

    def add_char(self, path: str, major: int, minor: int, mode: int) -> None:
        self._put(path, Entry(EntryKind.CHAR, mode, rdev=(major, minor)))

    def has(self, path: str) -> bool:
        return path.strip("/") in self.entries

    def freeze(self) -> RescueTree:
        return RescueTree(entries=dict(sorted(self.entries.items())))


class PackageFiles:
    """Members of the package set, by canonical path, read lazily and memoised."""

    def __init__(self, pkgs: PackageSet) -> None:
        self.pkgs = pkgs
        self._members: dict[str, dict[str, DebMember]] = {}

    def members(self, package: str) -> dict[str, DebMember]:
        if package not in self._members:
            raw = read_deb(self.pkgs.deb(package))
            self._members[package] = {canonical_path(p): m for p, m in raw.items()}
        return self._members[package]

    def find(self, package: str, path: str) -> DebMember:
        member = self.members(package).get(canonical_path(path))
        if member is None:
            raise MissingFileError(f"package {package} has no {path}")
        return member

    def copy(self, tree: TreeBuilder, package: str, path: str, group: Group, depth: int = 0) -> None:
        """Add one member (following symlinks and hard links inside the package to their targets)."""
        member = self.find(package, path)
        where = canonical_path(member.path)
        if member.kind is MemberKind.FILE:
            tree.add_file(where, member.data, member.mode & 0o755, group)
        elif member.kind is MemberKind.DIR:
            tree.add_dir(where, member.mode & 0o755, group)
        elif member.kind in (MemberKind.SYMLINK, MemberKind.HARDLINK):
            if member.kind is MemberKind.HARDLINK:
                target_path = canonical_path(member.target)
                tree.add_symlink(where, "/" + target_path, group)
            else:
                tree.add_symlink(where, member.target, group)
                base = where.rpartition("/")[0]
                joined = member.target if member.target.startswith("/") else f"{base}/{member.target}"
                target_path = canonical_path(os.path.normpath(joined))
            if depth > 8:
                raise InternalError(f"{package}: symlink loop at {path}")
            if target_path in self.members(package) and not tree.has(target_path):
                self.copy(tree, package, target_path, group, depth + 1)
        else:
            raise InternalError(f"{package}: {path} is a {member.kind}; not supported in the rescue tree")

    def copy_tree(self, tree: TreeBuilder, spec: DataTree) -> int:
        prefix = canonical_path(spec.prefix) + ("/" if spec.prefix.endswith("/") else "")
        count = 0
        for path in sorted(self.members(spec.package)):
            if (path == prefix or path.startswith(prefix)) and not any(
                path.startswith(canonical_path(x) + "/") or path == canonical_path(x) for x in spec.exclude
            ):
                self.copy(tree, spec.package, path, spec.group)
                count += 1
        if count == 0:
            raise MissingFileError(f"package {spec.package} has nothing under {spec.prefix}")
        return count


@dataclass(frozen=True)
class DataTree:
    """Files of a package under ``prefix`` (a file or a directory), minus paths under ``exclude``."""

    package: str
    prefix: str
    group: Group
    exclude: tuple[str, ...] = ()
