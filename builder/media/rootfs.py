"""The rescue root file system, assembled from the Debian package set without root (:func:`make_rootfs`).

What goes in is driven by the tables here: busybox applets, the restore tools, data files and directories, base
directories, files, symlinks and device nodes.  The parts live beside it: the in-memory tree and the view of the
packages (:mod:`builder.media.tree`), the shared-library closure of every ELF (:mod:`builder.media.elf`), the
Python interpreter, its trimmed stdlib and the agent as ``.pyc`` (:mod:`builder.media.python`), the kernel modules
(:mod:`builder.media.modules`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from builder.media.elf import add_library_closure
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
    PackageSet,
    read_deb,
)
from builder.media.python import add_python
from builder.media.tree import (
    DataTree,
    Group,
    MissingFileError,
    PackageFiles,
    RescueTree,
    TreeBuilder,
    canonical_path,
)

log = logging.getLogger("asr.rootfs")


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


DATA: tuple[DataTree, ...] = (
    DataTree("e2fsprogs", "etc/mke2fs.conf", Group.TOOLS),
    # grub-install copies a platform's whole directory; it runs grub-bios-setup from the i386-pc one
    DataTree("grub-pc-bin", "usr/lib/grub/i386-pc/", Group.GRUB),
    DataTree(
        "grub-efi-amd64-bin", "usr/lib/grub/x86_64-efi/", Group.GRUB, exclude=("usr/lib/grub/x86_64-efi/monolithic/",)
    ),
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
