"""Kernel modules of the rescue environment: index, dependency closure, load order.

The index is read from the kernel package itself: each module's ``.modinfo`` ELF section gives its hard
dependencies (``depends=``), soft dependencies (``softdep=pre: ... post: ...``, names or aliases such as
``crypto-crc32c``) and aliases (``alias=pci:v...``, used to resolve soft dependencies and PCI modaliases).
``modules.builtin`` names what is compiled into the kernel (nothing to load).
"""

from __future__ import annotations

import fnmatch
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from builder.media.packages import DebMember, MemberKind
from recovery_env.errors import InputError, InternalError

#: What the rescue environment loads at boot (issue 2), plus what later work needs (loop for images,
#: efivarfs for grub-install on UEFI, virtio_rng for early entropy under QEMU).
WANTED_MODULES: tuple[str, ...] = (
    # storage controllers and disks
    "floppy",
    "ata_piix",
    "ahci",
    "sd_mod",
    "sr_mod",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "nvme",
    "usb_storage",
    "uas",
    "xhci_pci",
    "xhci_hcd",
    "ehci_pci",
    "ehci_hcd",
    # USB keyboards: once xhci/ehci load, the firmware's legacy USB keyboard emulation stops
    "usbhid",
    "hid_generic",
    "loop",
    # file systems and character sets
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "ext4",
    "xfs",
    "btrfs",
    "efivarfs",
    # entropy
    "virtio_rng",
)


#: What /init loads before it starts the agent: nothing, since the agent's first screen (the F2 prompt) needs no
#: driver.  Everything else loads in the background at the lowest CPU priority while the prompt shows, in
#: WANTED_MODULES order (the floppy and its file system first); /init touches /run/asr/modules-loaded when done and
#: the agent waits for that before it reads the floppy or looks at disks.  Under TCG the whole set takes about
#: 4.5 s of CPU (xfs and btrfs alone 2.5 s), more than the rest of the way to the prompt.
EARLY_MODULES: frozenset[str] = frozenset()

#: Kernel tree directories whose drivers the rescue system leaves out even when the device inventory (ASRPNP.SIF)
#: lists them for a device of the machine: the rescue system shows text on the firmware's console and restores
#: from local media.
UNSHIPPED_DRIVER_DIRS: tuple[tuple[str, str], ...] = (
    ("kernel/drivers/gpu/", "a display driver (it would replace the text console by a slower framebuffer)"),
    ("kernel/drivers/video/", "a display driver"),
    ("kernel/sound/", "a sound driver"),
    ("kernel/drivers/media/", "a camera or TV driver"),
    ("kernel/drivers/i2c/", "an SMBus/I2C driver"),
    ("kernel/drivers/hwmon/", "a sensor driver"),
    ("kernel/drivers/net/", "a network driver (the rescue system configures no network)"),
    ("kernel/drivers/bluetooth/", "a Bluetooth driver"),
)


class UnknownModuleError(InputError):
    """A wanted kernel module (or alias) exists neither as a module nor built in."""


@dataclass(frozen=True)
class KernelModule:
    name: str  # canonical: dashes as underscores
    path: str  # inside the package and the rescue tree, e.g. lib/modules/KVER/kernel/fs/ext4/ext4.ko
    depends: tuple[str, ...]
    softdep_pre: tuple[str, ...]
    softdep_post: tuple[str, ...]
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class ModuleIndex:
    kernel_version: str
    modules: Mapping[str, KernelModule]
    builtin: frozenset[str]

    def find(self, wanted: str) -> tuple[str, ...]:
        """Module names providing ``wanted``: a module name, or an alias (glob patterns in the index match)."""
        name = canonical_name(wanted)
        if name in self.modules:
            return (name,)
        if name in self.builtin:
            return ()
        found = tuple(
            sorted(
                m.name
                for m in self.modules.values()
                if any(alias_matches(wanted, pattern) for pattern in m.aliases)
            )
        )
        return found


_GLOB = re.compile(r"[*?\[]")


def alias_matches(wanted: str, pattern: str) -> bool:
    """fnmatch of a module alias pattern, without compiling the pattern into a regex unless its literal head
    (the part before the first ``*``, ``?`` or ``[``) starts ``wanted``: the index has about 25,000 patterns and
    compiling all of them cost 2 s per build."""
    glob = _GLOB.search(pattern)
    if glob is None:
        return wanted == pattern
    return wanted.startswith(pattern[: glob.start()]) and fnmatch.fnmatchcase(wanted, pattern)


def canonical_name(name: str) -> str:
    return name.replace("-", "_")


def read_elf_section(blob: bytes, name: str) -> bytes | None:
    """The contents of section ``name`` of a 64-bit little-endian ELF file, or None.

    Kernel modules are ELF64 relocatable objects; reading only the section table keeps indexing the ~4000
    modules of a kernel package fast.
    """
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    if shoff == 0 or shstrndx >= shnum:
        return None

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        sh_name = struct.unpack_from("<I", blob, base)[0]
        sh_offset, sh_size = struct.unpack_from("<QQ", blob, base + 0x18)
        return sh_name, sh_offset, sh_size

    _, str_off, str_size = header(shstrndx)
    strtab = blob[str_off : str_off + str_size]
    wanted = name.encode()
    for i in range(shnum):
        sh_name, off, size = header(i)
        end = strtab.find(b"\0", sh_name)
        if strtab[sh_name:end] == wanted:
            return blob[off : off + size]
    return None


def _parse_modinfo(section: bytes) -> dict[str, list[str]]:
    info: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _parse_softdeps(values: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pre: list[str] = []
    post: list[str] = []
    for value in values:
        current = pre  # "softdep=gcm ccm" (no keyword) means pre
        for word in value.split():
            if word == "pre:":
                current = pre
            elif word == "post:":
                current = post
            else:
                current.append(word)
    return tuple(pre), tuple(post)


def read_module_index(members: Mapping[str, DebMember], kernel_version: str) -> ModuleIndex:
    """Index every module of a kernel package's members (paths as returned by ``read_deb``)."""
    root = f"lib/modules/{kernel_version}/"
    modules: dict[str, KernelModule] = {}
    builtin: set[str] = set()
    for path, member in members.items():
        if not path.startswith(root) or member.kind is not MemberKind.FILE:
            continue
        if path == root + "modules.builtin":
            for line in member.data.decode().splitlines():
                if line.strip():
                    builtin.add(canonical_name(line.rsplit("/", 1)[-1].removesuffix(".ko")))
        elif path.endswith(".ko"):
            section = read_elf_section(member.data, ".modinfo")
            if section is None:
                raise InternalError(f"{path}: kernel module without a .modinfo section")
            info = _parse_modinfo(section)
            name = canonical_name((info.get("name") or [path.rsplit("/", 1)[-1].removesuffix(".ko")])[0])
            depends = tuple(
                canonical_name(d) for v in info.get("depends", []) for d in v.split(",") if d.strip()
            )
            pre, post = _parse_softdeps(info.get("softdep", []))
            modules[name] = KernelModule(
                name=name,
                path=path,
                depends=depends,
                softdep_pre=pre,
                softdep_post=post,
                aliases=tuple(info.get("alias", [])),
            )
    if not modules:
        raise InternalError(f"no kernel modules under {root} in the kernel package")
    return ModuleIndex(kernel_version=kernel_version, modules=modules, builtin=frozenset(builtin))


def plan_module_closure(index: ModuleIndex, wanted: Iterable[str]) -> tuple[KernelModule, ...]:
    """The modules to load for ``wanted`` (names or aliases), dependencies first, in a stable order.

    Hard dependencies and ``softdep pre:`` modules come before a module, ``softdep post:`` ones after it.
    A soft dependency given as an alias pulls in every module providing it (e.g. ``crypto-crc32c`` →
    crc32c_generic and crc32c_intel; the latter only loads on CPUs with SSE4.2).  Built-in modules are
    skipped.  A wanted name nobody provides → UnknownModuleError; a soft dependency nobody provides is ignored,
    as modprobe does.
    """
    order: list[KernelModule] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in active:
            raise InternalError(f"kernel module dependency cycle: {' -> '.join([*active, name])}")
        module = index.modules[name]
        active.append(name)
        for soft in module.softdep_pre:
            for provider in index.find(soft):
                visit(provider)
        for dep in module.depends:
            if dep in index.modules:
                visit(dep)
            elif dep not in index.builtin:
                raise InternalError(f"{module.name} depends on {dep}, which is neither a module nor built in")
        active.pop()
        done.add(name)
        order.append(module)
        for soft in module.softdep_post:
            for provider in index.find(soft):
                visit(provider)

    for want in wanted:
        providers = index.find(want)
        if not providers and canonical_name(want) not in index.builtin:
            raise UnknownModuleError(
                f"kernel module {want!r} is neither a module nor built into {index.kernel_version}"
            )
        for provider in providers:
            visit(provider)
    return tuple(order)


_MODALIAS = re.compile(r"[a-z0-9]+:\S+")


def find_modules_for_modalias(index: ModuleIndex, modalias: str) -> tuple[str, ...]:
    """Modules whose aliases match a device modalias (``pci:v00008086d00002922sv...``), as modprobe does."""
    if not _MODALIAS.fullmatch(modalias):
        raise InputError(f"not a modalias: {modalias!r}")
    return index.find(modalias)


def find_unshipped_reason(index: ModuleIndex, name: str) -> str | None:
    """Why the rescue system leaves out the inventory's driver ``name`` (UNSHIPPED_DRIVER_DIRS), or None."""
    for provider in index.find(name):
        in_tree = index.modules[provider].path.split("/", 3)[-1]  # lib/modules/KVER/kernel/... -> kernel/...
        for directory, reason in UNSHIPPED_DRIVER_DIRS:
            if in_tree.startswith(directory):
                return reason
    return None


def plan_boot_modules(
    index: ModuleIndex, wanted: Iterable[str], early: frozenset[str] = EARLY_MODULES
) -> tuple[tuple[KernelModule, ...], tuple[KernelModule, ...]]:
    """(early, late): the closure of ``wanted`` split into what /init loads before the agent starts (the closure
    of the ``early`` names among ``wanted``) and what it loads in the background; each part is in load order and
    the late part never precedes what it depends on."""
    wanted = list(wanted)
    everything = plan_module_closure(index, wanted)
    early_names = {m.name for m in plan_module_closure(index, [w for w in wanted if canonical_name(w) in early])}
    first = tuple(m for m in everything if m.name in early_names)
    rest = tuple(m for m in everything if m.name not in early_names)
    return first, rest
