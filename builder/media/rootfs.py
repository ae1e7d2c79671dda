"""The rescue root file system as an in-memory tree, assembled from the Debian package set without root.

Paths are relative and merged-/usr (``bin``, ``sbin``, ``lib``, ``lib64`` are symlinks into ``usr``, as on a
Debian 12 system).  What goes in is driven by tables: busybox applets, the restore tools, data files and
directories, the Python stdlib roots.  Shared libraries are never listed: they are the DT_NEEDED closure of
every ELF in the tree, resolved against the package set (a missing one → :class:`MissingLibraryError`).
Python modules are compiled to sourceless ``.pyc`` (hash-based, unchecked: reproducible) by the host's Python
3.11, whose bytecode magic must match the guest's.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from elftools.elf.segments import InterpSegment

from builder.media.modules import (
    WANTED_MODULES,
    KernelModule,
    canonical_name,
    find_unshipped_reason,
    plan_boot_modules,
    read_module_index,
)
from builder.media.packages import (
    DebMember,
    MemberKind,
    PackageSet,
    code_digest,
    compile_pyc_cached,
    read_control,
    read_deb,
    write_atomic,
)
from recovery_env.errors import InputError, InternalError
from recovery_env.run import run

log = logging.getLogger("asr.rootfs")
IMPORT_SCAN_CACHE = "imports.json"  # in the package cache: what each stdlib module imports, by source digest

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_SOURCE = REPO_ROOT / "recovery_env"
AGENT_PACKAGE = "recovery_env"
AGENT_DIR = "usr/lib/asr"  # PYTHONPATH in the guest
PYTHON = "usr/bin/python3.11"
PYTHON_LIB = "usr/lib/python3.11"
PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib")
EXT_SUFFIX = ".cpython-311-x86_64-linux-gnu.so"
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib")
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


class MissingLibraryError(InputError):
    """ELF files of the tree need shared libraries that no package of the set provides."""


class MissingFileError(InputError):
    """A table names a file or module that its package does not contain."""


class PythonMismatchError(InputError):
    """The host's Python cannot compile bytecode for the guest's Python."""


# ----------------------------------------------------------------------------------------------------- tables

#: Busybox applets linked in /usr/bin (names also provided by a real tool below are left to the real tool).
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ash", "mount", "umount", "insmod", "rmmod", "lsmod", "modprobe", "mdev", "poweroff", "reboot",
    "halt", "sleep", "cat", "ls", "cp", "mv", "rm", "mkdir", "rmdir", "mknod", "ln", "echo", "printf", "dmesg",
    "grep", "sed", "awk", "head", "tail", "less", "more", "vi", "ps", "kill", "sync", "chroot", "switch_root",
    "uname", "dd", "df", "du", "find", "xargs", "stty", "setsid", "cttyhack", "clear", "reset", "env", "free",
    "hexdump", "true", "false", "test", "[", "touch", "wc", "sort", "uniq", "tr", "cut", "date", "hostname",
    "ip", "ifconfig", "ping", "losetup", "md5sum", "sha256sum", "gzip", "gunzip", "zcat", "xz", "unxz", "cpio",
    "readlink", "realpath", "basename", "dirname", "chmod", "chown", "stat", "tee", "which", "id", "pwd", "seq",
    "yes", "expr", "mountpoint", "nproc", "fdisk", "lspci", "watch", "top", "pidof", "killall", "hwclock",
    "blkdiscard", "fsync", "truncate", "mktemp", "od", "diff", "cmp", "ln", "sha1sum", "tac", "rev",
)


@dataclass(frozen=True)
class Tool:
    """A real program of the rescue system: its name in {,/usr}/{bin,sbin} of ``package``."""

    name: str
    package: str
    group: Group = Group.TOOLS


TOOLS: tuple[Tool, ...] = (
    Tool("sfdisk", "fdisk"),
    Tool("wipefs", "util-linux"),
    Tool("blkid", "util-linux"),
    Tool("mkswap", "util-linux"),
    Tool("swaplabel", "util-linux"),
    Tool("lsblk", "util-linux"),
    Tool("blockdev", "util-linux"),
    Tool("findmnt", "util-linux"),
    Tool("partx", "util-linux"),
    Tool("mke2fs", "e2fsprogs"),
    Tool("mkfs.ext2", "e2fsprogs"),
    Tool("mkfs.ext3", "e2fsprogs"),
    Tool("mkfs.ext4", "e2fsprogs"),
    Tool("e2fsck", "e2fsprogs"),
    Tool("fsck.ext4", "e2fsprogs"),
    Tool("tune2fs", "e2fsprogs"),
    Tool("dumpe2fs", "e2fsprogs"),  # the offline capture reads ext* facts (recovery_env.probe.layout)
    Tool("e2label", "e2fsprogs"),
    Tool("resize2fs", "e2fsprogs"),
    Tool("mkfs.fat", "dosfstools"),
    Tool("mkfs.vfat", "dosfstools"),
    Tool("fsck.fat", "dosfstools"),
    Tool("fatlabel", "dosfstools"),
    Tool("mkfs.xfs", "xfsprogs"),
    Tool("xfs_admin", "xfsprogs"),
    Tool("mkfs.btrfs", "btrfs-progs"),
    Tool("btrfs", "btrfs-progs"),
    Tool("tar", "tar"),
    Tool("zstd", "zstd"),
    Tool("unzstd", "zstd"),
    # grub-install makes the core image, probes devices and writes grubenv itself (grub-probe, grub-editenv and
    # grub-mkimage would add 1.7 MB); it runs grub-bios-setup from the i386-pc directory below
    Tool("grub-install", "grub2-common", Group.GRUB),
)


@dataclass(frozen=True)
class DataTree:
    """Files of a package under ``prefix`` (a file or a directory), minus paths under ``exclude``."""

    package: str
    prefix: str
    group: Group
    exclude: tuple[str, ...] = ()


DATA: tuple[DataTree, ...] = (
    DataTree("e2fsprogs", "etc/mke2fs.conf", Group.TOOLS),
    # grub-install copies a platform's whole directory; it runs grub-bios-setup from the i386-pc one
    DataTree("grub-pc-bin", "usr/lib/grub/i386-pc/", Group.GRUB),
    DataTree(
        "grub-efi-amd64-bin", "usr/lib/grub/x86_64-efi/", Group.GRUB, exclude=("usr/lib/grub/x86_64-efi/monolithic/",)
    ),
)

#: Python modules the agent needs besides what ``recovery_env`` imports (found by reading its sources);
#: their import closure is added.  Extend freely: a name that does not exist in the guest stdlib is an error.
PYTHON_MODULES: tuple[str, ...] = (
    # interpreter start-up and ``-m``
    "site", "runpy", "encodings", "encodings.aliases", "encodings.utf_8", "encodings.ascii",
    "encodings.latin_1", "encodings.cp437", "encodings.idna",
    "encodings.utf_16_le",  # looked up by name (sif.py: GPT partition name length), invisible to import scanning
    "encodings.unicode_escape",  # looked up by name by jinja2's lexer (the offline capture renders ASR.SIF)
    # the agent's toolbox
    "os", "sys", "select", "termios", "tty", "fcntl", "struct", "json", "hashlib", "subprocess", "shlex",
    "dataclasses", "enum", "typing", "pathlib", "re", "time", "datetime", "logging", "textwrap", "io",
    "tarfile", "configparser", "errno", "signal", "stat", "shutil", "tempfile", "base64", "binascii", "zlib",
    "functools", "collections", "contextlib", "itertools", "argparse", "traceback", "glob", "fnmatch",
    "string", "copy", "locale", "uuid", "zipfile", "gzip", "lzma", "bz2", "platform",
)

#: Pure-Python packages copied from the host's environment (site-packages) into AGENT_DIR as .pyc: the offline
#: capture renders ASR.SIF/ASRPNP.SIF in the guest with the same jinja2 templates as `asr backup`.  Only ``.py``
#: files are shipped (markupsafe falls back to its pure-Python ``_native`` without the C speedups).
HOST_PYTHON_PACKAGES: tuple[str, ...] = ("jinja2", "markupsafe")

#: Templates shipped into AGENT_DIR/templates (recovery_env.templating looks beside its package directory).
SHIPPED_TEMPLATES: tuple[str, ...] = ("asr.sif.j2", "asrpnp.sif.j2")

#: Never shipped, even when something imports it lazily (GUI, tests, dev tools, TLS without libssl, ...).
PYTHON_EXCLUDED: tuple[str, ...] = (
    # GUI, tests, development and packaging tools
    "tkinter", "_tkinter", "turtle", "turtledemo", "idlelib", "test", "unittest", "doctest", "lib2to3",
    "distutils", "ensurepip", "venv", "pydoc", "pydoc_data", "pdb", "bdb", "cmd", "code", "codeop", "cProfile",
    "profile", "pstats", "trace", "timeit", "_pyio", "pickletools", "tabnanny", "py_compile", "compileall",
    "_ctypes_test", "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic", "_testimportmultiple",
    "_testmultiphase", "_xxtestfuzz", "xxlimited", "xxlimited_35", "_xxsubinterpreters",
    # need libraries the rescue system does not ship (libssl, libffi, libsqlite3, ncurses, readline, ...)
    "ssl", "_ssl", "_hashlib", "ctypes", "_ctypes", "sqlite3", "_sqlite3", "curses", "_curses",
    "_curses_panel", "dbm", "_dbm", "readline", "nis", "_crypt", "crypt", "_uuid",
    # network, mail, web, XML, async: not part of a restore from local media
    "http", "urllib.request", "urllib.response", "urllib.error", "urllib.robotparser", "xmlrpc",
    "email", "mailbox", "smtplib", "ftplib", "imaplib", "poplib", "nntplib",
    "webbrowser", "wsgiref", "socketserver", "asyncio", "_asyncio", "asynchat", "asyncore", "multiprocessing",
    "_multiprocessing", "_posixshmem", "concurrent", "xml", "pyexpat", "plistlib", "mimetypes",
    # multimedia, big optional codecs, time zones, decimal arithmetic
    "audioop", "ossaudiodev", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr",
    "_codecs_tw", "_multibytecodec", "zoneinfo", "_zoneinfo", "decimal", "_decimal", "_pydecimal", "fractions",
    "statistics", "importlib.metadata",
    # platform fallbacks that never run on Linux
    "_aix_support", "_osx_support", "_bootsubprocess", "nturl2path", "ntpath", "_winapi", "winreg", "msvcrt",
)

#: Modules that are compiled into the interpreter without a PyInit_ export of their own.
PYTHON_CORE_BUILTINS: tuple[str, ...] = (
    "sys", "builtins", "marshal", "_warnings", "_imp", "_io", "_frozen_importlib", "_frozen_importlib_external",
    "_thread", "_weakref", "posix",
)

#: Character devices present before devtmpfs is mounted (the kernel opens /dev/console for /init).
DEVICE_NODES: tuple[tuple[str, int, int, int], ...] = (
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
    ("dev/zero", 1, 5, 0o666),
    ("dev/tty", 5, 0, 0o666),
    ("dev/tty1", 4, 1, 0o620),
    ("dev/ttyS0", 4, 64, 0o660),
)

BASE_DIRS: tuple[str, ...] = (
    "proc", "sys", "dev", "run", "tmp", "mnt", "root", "etc", "var", "usr/bin", "usr/sbin", "usr/lib",
    "usr/lib64",
)

BASE_FILES: tuple[tuple[str, str], ...] = (
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/group", "root:x:0:\n"),
    ("etc/fstab", ""),
    ("etc/hostname", "asr\n"),
    ("etc/os-release", 'NAME="asr rescue"\nID=asr\nPRETTY_NAME="Automated System Recovery"\n'),
)

BASE_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
    ("etc/mtab", "/proc/self/mounts"),
    ("var/run", "/run"),
    ("var/tmp", "/tmp"),
    ("usr/bin/python3", "python3.11"),
)


# ------------------------------------------------------------------------------------------------------ tree


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


# --------------------------------------------------------------------------------------------- package view


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


# ------------------------------------------------------------------------------------------------- userland


def add_base(tree: TreeBuilder) -> None:
    for d in BASE_DIRS:
        tree.add_dir(d)
    tree.add_dir("tmp", 0o1777)
    for path, text in BASE_FILES:
        tree.add_file(path, text.encode())
    for path, target in BASE_SYMLINKS:
        tree.add_symlink(path, target)
    for path, major, minor, mode in DEVICE_NODES:
        tree.add_char(path, major, minor, mode)


def add_busybox(tree: TreeBuilder, files: PackageFiles, taken: Iterable[str]) -> None:
    files.copy(tree, "busybox-static", "bin/busybox", Group.BUSYBOX)
    skip = set(taken)
    for applet in dict.fromkeys(BUSYBOX_APPLETS):
        if applet not in skip:
            tree.add_symlink(f"usr/bin/{applet}", "busybox", Group.BUSYBOX)


def find_tool(files: PackageFiles, tool: Tool) -> str:
    for d in ("usr/sbin", "usr/bin"):
        if f"{d}/{tool.name}" in files.members(tool.package):
            return f"{d}/{tool.name}"
    raise MissingFileError(f"package {tool.package} has no program {tool.name} in /usr/bin or /usr/sbin")


def add_tools(tree: TreeBuilder, files: PackageFiles) -> None:
    for tool in TOOLS:
        files.copy(tree, tool.package, find_tool(files, tool), tool.group)
    for spec in DATA:
        files.copy_tree(tree, spec)


def add_modules(tree: TreeBuilder, modules: Iterable[KernelModule], kernel_members: Mapping[str, DebMember]) -> None:
    for module in modules:
        tree.add_file(canonical_path(module.path), kernel_members[module.path].data, 0o644, Group.MODULES)


# --------------------------------------------------------------------------------------------- ELF closure


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


# -------------------------------------------------------------------------------------------------- Python


@dataclass(frozen=True)
class PythonStdlib:
    sources: Mapping[str, tuple[str, bytes]]  # module → (path in tree, source bytes)
    extensions: Mapping[str, tuple[str, DebMember]]  # module → (path in tree, member)
    builtins: frozenset[str]


def read_python_stdlib(files: PackageFiles) -> PythonStdlib:
    sources: dict[str, tuple[str, bytes]] = {}
    extensions: dict[str, tuple[str, DebMember]] = {}
    root = PYTHON_LIB + "/"
    for package in PYTHON_PACKAGES[1:]:
        for path, member in files.members(package).items():
            if not path.startswith(root) or member.kind is not MemberKind.FILE:
                continue
            rel = path[len(root) :]
            if rel.startswith(("site-packages/", "dist-packages/")):
                continue
            if rel.startswith("lib-dynload/") and rel.endswith(EXT_SUFFIX):
                extensions[rel[len("lib-dynload/") : -len(EXT_SUFFIX)]] = (path, member)
            elif rel.endswith(".py"):
                dotted = rel[:-3].replace("/", ".").removesuffix(".__init__")
                sources[dotted] = (path, member.data)
    interp = files.find(PYTHON_PACKAGES[0], PYTHON)
    elf = ELFFile(io.BytesIO(interp.data))
    dynsym = elf.get_section_by_name(".dynsym")
    if not isinstance(dynsym, SymbolTableSection):
        raise MissingFileError(f"{PYTHON} of {PYTHON_PACKAGES[0]} has no dynamic symbol table")
    exported = {s.name[len("PyInit_") :] for s in dynsym.iter_symbols() if s.name.startswith("PyInit_")}
    return PythonStdlib(sources, extensions, frozenset(exported) | frozenset(PYTHON_CORE_BUILTINS))


def find_imports(source: bytes, module: str, is_package: bool, where: str) -> tuple[set[str], set[str]]:
    """What the import statements of ``source`` load, at any depth (lazy imports included).

    Returns (certain, possible): ``import a.b`` and ``from a.b import c`` certainly load ``a`` and ``a.b``;
    ``c`` is possibly the submodule ``a.b.c`` (or just a name defined in ``a.b``).
    """
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as exc:
        raise InternalError(f"{where}: cannot parse: {exc}") from None
    package = module if is_package else module.rpartition(".")[0]
    certain: set[str] = set()
    possible: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            certain.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            certain.add(origin)
            possible.update(f"{origin}.{alias.name}" for alias in node.names if alias.name != "*")
    return _with_parents(certain), possible


def find_toplevel_imports(source: bytes, module: str, is_package: bool, where: str) -> set[str]:
    """Modules imported unconditionally when ``source`` is imported: statements directly in the module body
    (not in functions, ``try`` or ``if``)."""
    body = ast.parse(source, filename=where).body
    top = ast.Module(body=[n for n in body if isinstance(n, ast.Import | ast.ImportFrom)], type_ignores=[])
    certain, _ = find_imports(ast.unparse(top).encode(), module, is_package, where)
    return certain


#: What the import statements of one module load: (certain, possible, top-level) as find_imports and
#: find_toplevel_imports say.
ImportFacts = tuple[frozenset[str], frozenset[str], frozenset[str]]
ImportScanner = Callable[[bytes, str, bool, str], ImportFacts]


def scan_imports(source: bytes, module: str, is_package: bool, where: str) -> ImportFacts:
    certain, possible = find_imports(source, module, is_package, where)
    return frozenset(certain), frozenset(possible), frozenset(find_toplevel_imports(source, module, is_package, where))


class ImportScanCache:
    """scan_imports with its results kept in one JSON file of the package cache, by the digest of each source:
    parsing ~480 stdlib modules with ast costs ~2 s of every cold build.  The file names the code of the
    scanners it was made with; a different scanner (an edit of this module) starts it afresh."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.version = hashlib.sha256(b"".join(code_digest(f) for f in (
            scan_imports, find_imports, find_toplevel_imports, _with_parents))).hexdigest()  # fmt: skip
        self.entries: dict[str, list[list[str]]] = {}
        self.changed = False
        if path is not None:
            try:
                data = json.loads(path.read_text())
                if data.get("version") == self.version and isinstance(data.get("entries"), dict):
                    self.entries = data["entries"]
            except (OSError, ValueError):
                pass

    def scan(self, source: bytes, module: str, is_package: bool, where: str) -> ImportFacts:
        key = f"{hashlib.sha256(source).hexdigest()}:{module}:{int(is_package)}"
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 3:
            return frozenset(hit[0]), frozenset(hit[1]), frozenset(hit[2])
        facts = scan_imports(source, module, is_package, where)
        self.entries[key] = [sorted(part) for part in facts]
        self.changed = True
        return facts

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {"version": self.version, "entries": self.entries}
            write_atomic(self.path, json.dumps(data, sort_keys=True).encode())
        except OSError as exc:
            log.debug("no import-scan cache in %s: %s", self.path, exc)


def _with_parents(names: Iterable[str]) -> set[str]:
    expanded: set[str] = set()
    for name in names:
        parts = name.split(".")
        expanded.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return expanded


def _excluded(name: str) -> bool:
    return any(name == x or name.startswith(x + ".") for x in PYTHON_EXCLUDED)


def plan_python_modules(stdlib: PythonStdlib, roots: Iterable[str], agent_imports: Iterable[str],
                        scan: ImportScanner = scan_imports) -> list[str]:  # fmt: skip
    """The stdlib modules to ship: the import closure of ``roots`` and the agent's imports, minus exclusions.
    ``scan`` tells what a module imports (scan_imports, or ImportScanCache.scan: the same answers, cached).

    A root (or an agent import) that is neither in the stdlib, an extension nor built in → MissingFileError.
    Names reached only through other modules' imports may be absent (platform-specific fallbacks).
    """
    required = list(dict.fromkeys([*roots, *agent_imports]))
    for name in required:
        if _excluded(name):
            raise InternalError(f"python module {name} is both required and excluded")
        if name not in stdlib.sources and name not in stdlib.extensions and name not in stdlib.builtins:
            raise MissingFileError(f"python module {name!r} is not in the guest's Python 3.11 stdlib")
    shipped: set[str] = set()
    todo = list(required)
    excluded_needs: list[str] = []
    while todo:
        name = todo.pop()
        if name in shipped or _excluded(name):
            continue
        if name in stdlib.sources:
            shipped.add(name)
            path, source = stdlib.sources[name]
            is_package = path.endswith("/__init__.py")
            certain, possible, toplevel = scan(source, name, is_package, path)
            todo.extend(certain | possible)
            excluded_needs.extend(f"{name} imports {n}" for n in toplevel if _excluded(n))
        elif name in stdlib.extensions:
            shipped.add(name)
    if excluded_needs:
        raise InternalError(
            "PYTHON_EXCLUDED removes modules that shipped modules import unconditionally: "
            + "; ".join(sorted(excluded_needs))
        )
    return sorted(shipped)


def local_packages() -> frozenset[str]:
    """Top-level packages shipped as Python code of their own (not from the guest's stdlib)."""
    return frozenset({AGENT_PACKAGE, *HOST_PYTHON_PACKAGES})


def find_agent_imports(sources: Mapping[str, bytes]) -> list[str]:
    """Stdlib modules the agent imports (the shipped packages excluded); ``sources``: module → source bytes."""
    local = local_packages()
    found: set[str] = set()
    for module, source in sources.items():
        certain, _ = find_imports(source, module, is_agent_package(module), f"{module}.py")
        for name in certain:
            if name.split(".")[0] not in local and name != "__future__":
                found.add(name)
    found.add("__future__")
    return sorted(found)


def find_library_imports(sources: Mapping[str, tuple[str, bytes]], stdlib: PythonStdlib) -> list[str]:
    """Stdlib modules the shipped host packages need.  ``sources``: module → (path, source).

    Their imports at the top of a module must exist in the guest's stdlib and not be excluded (MissingFileError,
    InternalError); imports inside functions or ``try`` (asyncio for async templates, the C speedups, ...) are
    shipped when the stdlib has them and they are not excluded, and left out otherwise."""
    local = local_packages()
    known = set(stdlib.sources) | set(stdlib.extensions) | set(stdlib.builtins)
    found: set[str] = set()
    for module, (path, source) in sources.items():
        is_package = path.endswith("/__init__.py")
        certain, _ = find_imports(source, module, is_package, path)
        for name in find_toplevel_imports(source, module, is_package, path):
            if name.split(".")[0] in local or name == "__future__":
                continue
            if _excluded(name):
                raise InternalError(f"{path} imports {name}, which PYTHON_EXCLUDED removes from the rescue system")
            if name not in known:
                raise MissingFileError(f"{path} imports {name}, which is not in the guest's Python 3.11 stdlib")
        found.update(n for n in certain if n.split(".")[0] not in local and n in known and not _excluded(n))
    return sorted(found)


def read_host_sources() -> dict[str, tuple[str, bytes]]:
    """The host packages (jinja2 and markupsafe for the SIF renderer): module → (path in the tree, source)."""
    out: dict[str, tuple[str, bytes]] = {}
    for package in HOST_PYTHON_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingFileError(f"python package {package} is not installed in the build's environment")
        base = Path(next(iter(spec.submodule_search_locations)))
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base.parent).as_posix()
            out[rel[:-3].replace("/", ".").removesuffix(".__init__")] = (f"{AGENT_DIR}/{rel}", f.read_bytes())
    return out


def add_templates(tree: TreeBuilder) -> None:
    for name in SHIPPED_TEMPLATES:
        tree.add_file(f"{AGENT_DIR}/templates/{name}", (REPO_ROOT / "templates" / name).read_bytes(), 0o644,
                      Group.AGENT)


def read_agent_sources(agent_main: bytes | None = None) -> dict[str, bytes]:
    """recovery_env's modules, subpackages included (module name → source); ``agent_main`` replaces
    ``recovery_env.__main__``."""
    sources = {}
    for path in sorted(AGENT_SOURCE.rglob("*.py")):
        parts = (AGENT_PACKAGE, *path.relative_to(AGENT_SOURCE).with_suffix("").parts)
        sources[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path.read_bytes()
    if agent_main is not None:
        sources[f"{AGENT_PACKAGE}.__main__"] = agent_main
    return sources


def is_agent_package(module: str) -> bool:
    """Whether a module of recovery_env is a package (a directory with ``__init__.py``)."""
    rel = module.split(".")[1:]
    return (AGENT_SOURCE.joinpath(*rel) / "__init__.py").is_file()


def check_python_compatible(files: PackageFiles) -> str:
    """The guest's Python version; PythonMismatchError unless the host's compiles bytecode for it.

    Bytecode magic numbers only change between feature releases (and their pre-releases), so a final host
    release with the guest's major.minor writes .pyc files the guest loads.
    """
    version = read_control(files.pkgs.deb(PYTHON_PACKAGES[0]))["Version"]
    match = re.match(r"(\d+)\.(\d+)\.", version)
    if match is None:
        raise PythonMismatchError(f"cannot read the guest Python version from {version!r}")
    guest = (int(match[1]), int(match[2]))
    if sys.version_info[:2] != guest or sys.version_info.releaselevel != "final":
        raise PythonMismatchError(
            f"the host's Python {sys.version.split()[0]} cannot compile bytecode for the guest's Python {version}"
            f" (magic {importlib.util.MAGIC_NUMBER.hex()}); run the build with Python {guest[0]}.{guest[1]}"
        )
    return version


def compile_pyc(sources: Mapping[str, bytes]) -> dict[str, bytes]:
    """Compile ``{path in tree ending in .py: source}`` to ``{path ending in .pyc: bytecode}``.

    Runs ``compileall`` in a child Python with PYTHONHASHSEED=0 so that the bytecode is reproducible (set
    and frozenset constants are ordered by hash); hash-based unchecked .pyc files carry no timestamps.

    The standard library and the SIF renderer (jinja2, markupsafe) are compiled as ``python -OO`` would: no
    docstrings, no asserts (nothing shipped reads ``__doc__`` or relies on an assert): 15 % fewer .pyc bytes.
    The agent's package keeps both: a dataclass without a docstring gets one made with inspect.signature when it
    is created, which costs the agent's ~70 frozen dataclasses 45 % more import time (valgrind instruction counts),
    and those imports run while the F2 prompt waits.  (A sourceless .pyc loads whatever the interpreter's -O.)
    """
    agent_dir = f"{AGENT_DIR}/{AGENT_PACKAGE}/"
    levels: dict[int, dict[str, bytes]] = {}
    for path, source in sources.items():
        levels.setdefault(0 if path.startswith(agent_dir) else 2, {})[path] = source
    out = {}
    for level, chosen in sorted(levels.items()):
        with tempfile.TemporaryDirectory(prefix="asr-pyc-") as tmp:
            root = Path(tmp)
            for path, source in chosen.items():
                dest = root / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(source)
            run(
                [
                    sys.executable, "-m", "compileall", "-q", "-b", "-j", "1", "-s", str(root), "-p", "/",
                    "-o", str(level), "--invalidation-mode", "unchecked-hash", str(root),
                ],
                env={"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "SOURCE_DATE_EPOCH": "0"},
            )
            for path in chosen:
                pyc = root / (path + "c")
                if not pyc.is_file():
                    raise InternalError(f"compileall wrote no {path}c")
                out[path + "c"] = pyc.read_bytes()
    return out


def add_python(tree: TreeBuilder, files: PackageFiles, agent_main: bytes | None) -> list[str]:
    """The interpreter, the stdlib closure as .pyc, its extensions, the agent as .pyc, and the SIF renderer
    (jinja2, markupsafe, recovery_env.model.sif_render and its templates) for the offline capture."""
    check_python_compatible(files)
    files.copy(tree, PYTHON_PACKAGES[0], PYTHON, Group.PYTHON)
    stdlib = read_python_stdlib(files)
    agent_sources = read_agent_sources(agent_main)
    host_sources = read_host_sources()
    needed = [*find_agent_imports(agent_sources), *find_library_imports(host_sources, stdlib)]
    scans = ImportScanCache(files.pkgs.cache / IMPORT_SCAN_CACHE)
    shipped = plan_python_modules(stdlib, PYTHON_MODULES, list(dict.fromkeys(needed)), scans.scan)
    scans.save()
    to_compile: dict[str, bytes] = {}
    groups: dict[str, Group] = {}
    for name in shipped:
        if name in stdlib.sources:
            path, source = stdlib.sources[name]
            to_compile[path] = source
            groups[path + "c"] = Group.PYTHON
        else:
            path, member = stdlib.extensions[name]
            tree.add_file(path, member.data, 0o644, Group.PYTHON)
    for module, source in agent_sources.items():
        rel = module.replace(".", "/") + ("/__init__.py" if is_agent_package(module) else ".py")
        path = f"{AGENT_DIR}/{rel}"
        to_compile[path] = source
        groups[path + "c"] = Group.AGENT
    for path, source in host_sources.values():
        to_compile[path] = source
        groups[path + "c"] = Group.AGENT
    add_templates(tree)
    for path, pyc in sorted(compile_pyc_cached(to_compile, files.pkgs.cache, compile_pyc).items()):
        tree.add_file(path, pyc, 0o644, groups[path])
    tree.add_dir(f"{PYTHON_LIB}/lib-dynload", group=Group.PYTHON)
    return shipped


# ------------------------------------------------------------------------------------------------ assembly


@dataclass(frozen=True)
class Rootfs:
    tree: RescueTree
    kernel: bytes
    kernel_version: str
    modules: tuple[KernelModule, ...]  # loaded by /init before the agent starts, in order
    late_modules: tuple[KernelModule, ...]  # loaded in the background, in order
    python_modules: tuple[str, ...]


def make_rootfs(
    pkgs: PackageSet,
    *,
    agent_main: bytes | None = None,
    extra_modules: Iterable[str] = (),
    optional_modules: Iterable[str] = (),
) -> Rootfs:
    """Assemble the rescue tree (without /init: see builder.media.initramfs).

    ``agent_main`` replaces ``recovery_env/__main__.py`` (tests); ``extra_modules``: more module names or
    aliases that must exist; ``optional_modules``: the drivers ASRPNP.SIF lists — one this kernel has neither as
    a module nor built in (a vendor's out-of-tree driver) is left out with a warning, not an error; display,
    sound, network and similar drivers the rescue system has no use for are left out (UNSHIPPED_DRIVER_DIRS).
    """
    files = PackageFiles(pkgs)
    kver = pkgs.kernel_version
    kernel_members = read_deb(pkgs.deb(pkgs.kernel_package), ("lib/modules/", "boot/vmlinuz"))
    vmlinuz = kernel_members.get(f"boot/vmlinuz-{kver}")
    if vmlinuz is None:
        raise MissingFileError(f"package {pkgs.kernel_package} has no boot/vmlinuz-{kver}")
    index = read_module_index(kernel_members, kver)
    optional = list(optional_modules)
    skipped = [m for m in optional if not index.find(m) and canonical_name(m) not in index.builtin]
    for name in skipped:
        log.warning("driver %s (from the device inventory) is not in kernel %s: left out", name, kver)
    for name in optional:
        reason = find_unshipped_reason(index, name) if name not in skipped else None
        if reason is not None:
            log.info("driver %s (from the device inventory) is %s: not needed by the rescue system", name, reason)
            skipped.append(name)
    wanted = [*WANTED_MODULES, *extra_modules, *(m for m in optional if m not in skipped)]
    early, late = plan_boot_modules(index, wanted)

    tree = TreeBuilder()
    add_base(tree)
    add_tools(tree, files)
    add_busybox(tree, files, {t.name for t in TOOLS})
    shipped = add_python(tree, files, agent_main)
    add_library_closure(tree, files)
    add_modules(tree, (*early, *late), kernel_members)
    return Rootfs(
        tree=tree.freeze(),
        kernel=vmlinuz.data,
        kernel_version=kver,
        modules=early,
        late_modules=late,
        python_modules=tuple(shipped),
    )
