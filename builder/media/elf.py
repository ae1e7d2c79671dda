"""Shared libraries of the rescue tree: never listed, they are the DT_NEEDED closure of every ELF in the tree,
resolved against the package set (pyelftools); a missing one is a :class:`MissingLibraryError`."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from builder.media.tree import (
    Entry,
    EntryKind,
    Group,
    PackageFiles,
    RescueTree,
    TreeBuilder,
    canonical_path,
)
from recovery_env.errors import InputError

LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib")


class MissingLibraryError(InputError):
    """ELF files of the tree need shared libraries that no package of the set provides."""


@dataclass(frozen=True)
class ElfDeps:
    """What the dynamic loader needs to run an executable or shared object."""

    needed: tuple[str, ...]  # DT_NEEDED sonames
    interpreter: str  # PT_INTERP path ("" for shared libraries and static programs)


def read_elf_deps(data: bytes) -> ElfDeps | None:
    """The dynamic dependencies of an executable or shared object; None for anything else (kernel or GRUB
    modules, which are relocatable objects, and non-ELF data)."""
    if data[:4] != b"\x7fELF":
        return None
    elf = ELFFile(io.BytesIO(data))
    if elf.header["e_type"] not in ("ET_EXEC", "ET_DYN"):
        return None
    interpreter = ""
    for segment in elf.iter_segments():
        if isinstance(segment, InterpSegment):
            interpreter = segment.get_interp_name()
    dynamic = elf.get_section_by_name(".dynamic")
    needed: tuple[str, ...] = ()
    if isinstance(dynamic, DynamicSection):
        needed = tuple(str(tag.needed) for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED")  # type: ignore[attr-defined]
    return ElfDeps(needed=needed, interpreter=interpreter)


def find_library_index(files: PackageFiles) -> dict[str, tuple[str, str]]:
    """soname → (package, canonical path) over every library directory of the package set."""
    index: dict[str, tuple[str, str]] = {}
    for package in files.pkgs.names:
        if package.startswith(("linux-image", "grub-", "isolinux", "syslinux")):
            continue
        for path in files.members(package):
            directory, _, name = path.rpartition("/")
            if directory in LIB_DIRS and ".so" in name:
                index.setdefault(name, (package, path))
    return index


def add_library_closure(tree: TreeBuilder, files: PackageFiles) -> list[str]:
    """Add every library (and dynamic loader) the ELF files of the tree need, transitively.

    Returns the sonames added; MissingLibraryError lists every soname no package of the set provides.
    """
    index = find_library_index(files)
    loaders = {
        path: package
        for package in files.pkgs.names
        if package == "libc6"
        for path in files.members(package)
        if path.rpartition("/")[2].startswith("ld-linux")
    }
    added: list[str] = []
    checked: set[str] = set()
    while True:
        missing: dict[str, list[str]] = {}
        todo = [(p, e) for p, e in sorted(tree.entries.items()) if e.kind is EntryKind.FILE and p not in checked]
        if not todo:
            break
        for path, entry in todo:
            checked.add(path)
            deps = read_elf_deps(entry.data)
            if deps is None:
                continue
            if deps.interpreter:
                interp = canonical_path(deps.interpreter)
                if interp in loaders:
                    if not tree.has(interp):
                        files.copy(tree, loaders[interp], interp, Group.LIBRARIES)
                else:
                    missing.setdefault(deps.interpreter, []).append(path)
            for soname in deps.needed:
                if any(tree.has(f"{d}/{soname}") for d in LIB_DIRS):
                    continue
                if soname not in index:
                    missing.setdefault(soname, []).append(path)
                    continue
                package, lib_path = index[soname]
                files.copy(tree, package, lib_path, Group.LIBRARIES)
                added.append(soname)
        if missing:
            listing = "; ".join(f"{s} (needed by {', '.join(sorted(set(b)))})" for s, b in sorted(missing.items()))
            raise MissingLibraryError(
                f"no package of the set provides {listing}; add the library package to builder/media/packages.py "
                "PACKAGES and update the lock"
            )
    return added


def check_elf_closure(tree: RescueTree) -> list[str]:
    """Problems: loaders and DT_NEEDED entries of ELF files in the tree that the tree does not satisfy."""
    problems = []
    for path, entry in tree.entries.items():
        if entry.kind is not EntryKind.FILE:
            continue
        deps = read_elf_deps(entry.data)
        if deps is None:
            continue
        if deps.interpreter and resolve_in_tree(tree, deps.interpreter) is None:
            problems.append(f"{path}: loader {deps.interpreter} not found")
        for soname in deps.needed:
            if not any(resolve_in_tree(tree, f"{d}/{soname}") for d in LIB_DIRS):
                problems.append(f"{path}: {soname} not found")
    return problems


def resolve_in_tree(tree: RescueTree, path: str, depth: int = 0) -> Entry | None:
    """The entry at ``path`` after following symlinks (merged-/usr aware); None if dangling."""
    path = canonical_path(os.path.normpath(path).lstrip("/"))
    entry = tree.entries.get(path)
    if entry is None or entry.kind is not EntryKind.SYMLINK or depth > 16:
        return entry
    base = path.rpartition("/")[0]
    target = entry.target if entry.target.startswith("/") else f"{base}/{entry.target}"
    return resolve_in_tree(tree, target, depth + 1)
