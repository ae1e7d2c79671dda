"""The initramfs: /init, a reproducible cpio "newc" archive written without root, zstd compression, budget.

``make_rescue_env`` is the entry point of the build pipeline: package set in, kernel + compressed initramfs
out, with the size breakdown the budget check and the build report use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum

import zstandard

from builder.packages import PackageSet, read_deb
from builder.rootfs import AGENT_DIR, AGENT_PACKAGE, PYTHON, EntryKind, RescueTree, make_rootfs
from builder.templating import render
from recovery_env.errors import BudgetError, InternalError

log = logging.getLogger("asr.initramfs")

#: SOURCE_DATE_EPOCH default: 2024-01-01 00:00:00 UTC.
DEFAULT_EPOCH = 1704067200
ZSTD_LEVEL = 19
CPIO_MAGIC = b"070701"
CPIO_TRAILER = "TRAILER!!!"


class AgentExit(IntEnum):
    """Exit codes of ``python3.11 -m recovery_env`` and what /init does for them."""

    REBOOT = 20
    POWEROFF = 21
    SHELL = 22

    @property
    def action(self) -> str:
        return {AgentExit.REBOOT: "reboot", AgentExit.POWEROFF: "poweroff", AgentExit.SHELL: "shell"}[self]


# ----------------------------------------------------------------------------------------------------- /init


def render_init(module_paths: Sequence[str], late_module_paths: Sequence[str] = ()) -> str:
    """The /init shell script: mounts, module loading in ``module_paths`` order (then ``late_module_paths`` in
    the background), the agent loop."""
    return render(
        "init.j2",
        modules=list(module_paths),
        late_modules=list(late_module_paths),
        python="/" + PYTHON,
        pythonpath="/" + AGENT_DIR,
        agent_module=AGENT_PACKAGE,
        exit_actions=[(int(code), code.action) for code in AgentExit],
    )


# ------------------------------------------------------------------------------------------------------- cpio


def _cpio_header(
    name: str, ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int]
) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name.encode()) + 1, 0)
    return CPIO_MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def make_cpio(tree: RescueTree, mtime: int) -> bytes:
    """A cpio "newc" archive of ``tree``: entries sorted by path components (parents first), owned by root,
    every mtime ``mtime``, inode numbers 1, 2, 3... in archive order: byte-identical for the same tree."""
    if not 0 <= mtime < 2**32:
        raise InternalError(f"cpio mtime out of range: {mtime}")
    out = bytearray()
    paths = sorted((p for p in tree.entries if p), key=lambda p: p.split("/"))
    for ino, path in enumerate(paths, start=1):
        entry = tree.entries[path]
        data = entry.target.encode() if entry.kind is EntryKind.SYMLINK else entry.data
        mode = entry.kind.type_bits | entry.mode
        nlink = 2 if entry.kind is EntryKind.DIR else 1
        header = _cpio_header(path, ino, mode, nlink, mtime, len(data), entry.rdev)
        name = path.encode() + b"\0"
        out += header + name + _pad4(len(header) + len(name))
        out += data + _pad4(len(data))
    header = _cpio_header(CPIO_TRAILER, 0, 0, 1, 0, 0, (0, 0))
    name = CPIO_TRAILER.encode() + b"\0"
    out += header + name + _pad4(len(header) + len(name))
    return bytes(out)


def compress_zstd(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """One zstd frame with a checksum, single-threaded (the output depends on nothing but the input)."""
    compressor = zstandard.ZstdCompressor(level=level, threads=0, write_checksum=True, write_content_size=True)
    return bytes(compressor.compress(data))


def make_initramfs(tree: RescueTree, mtime: int = DEFAULT_EPOCH) -> bytes:
    """The compressed initramfs the kernel unpacks (zstd; the Debian kernel has CONFIG_RD_ZSTD)."""
    return compress_zstd(make_cpio(tree, mtime))


def size_breakdown(tree: RescueTree) -> dict[str, int]:
    """Uncompressed bytes per contributor (kernel modules, python, libraries, tools, grub, ...)."""
    return tree.size_breakdown()


# ----------------------------------------------------------------------------------------------------- budget


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def check_budget(contributors: Mapping[str, int], budget_bytes: int, *, what: str = "the boot media") -> None:
    """BudgetError if the contributors add up to more than ``budget_bytes``; its message lists the largest."""
    total = sum(contributors.values())
    if total <= budget_bytes:
        return
    largest = sorted(contributors.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
    listing = ", ".join(f"{name} {_mib(size)}" for name, size in largest)
    raise BudgetError(
        f"{what} would be {_mib(total)} ({total} bytes), over the budget of {_mib(budget_bytes)} "
        f"({budget_bytes} bytes) by {_mib(total - budget_bytes)}; largest contributors: {listing}"
    )


# ---------------------------------------------------------------------------------------------------- pipeline


@contextmanager
def _step(name: str, times: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    yield
    times[name] = time.monotonic() - started
    log.info("%-18s %6.2f s", name, times[name])


@dataclass(frozen=True)
class RescueEnv:
    kernel: bytes  # vmlinuz
    initramfs: bytes  # zstd-compressed cpio
    kernel_version: str
    breakdown: dict[str, int]  # uncompressed bytes per contributor (the kernel included)
    raw_size: int  # uncompressed initramfs (cpio) bytes
    modules: tuple[str, ...]  # load order
    step_times: dict[str, float]
    pkgs: PackageSet
    tree: RescueTree  # what the initramfs holds (for inspection and tests)

    def package_files(self, package: str, prefix: str) -> dict[str, bytes]:
        """Regular files of ``package`` under ``prefix`` (e.g. grub-efi-amd64-bin, usr/lib/grub/x86_64-efi/),
        by path relative to the prefix; for the media builders (isolinux.bin, ldlinux.c32, GRUB modules)."""
        members = read_deb(self.pkgs.deb(package), (prefix,))
        return {p[len(prefix) :].lstrip("/"): m.data for p, m in members.items() if m.kind == "file"}


def make_rescue_env(
    pkgs: PackageSet,
    *,
    epoch: int = DEFAULT_EPOCH,
    agent_override: bytes | None = None,
    extra_modules: tuple[str, ...] = (),
    optional_modules: tuple[str, ...] = (),
) -> RescueEnv:
    """Assemble the rescue tree from ``pkgs``, render /init, write and compress the initramfs.

    ``agent_override`` replaces ``recovery_env/__main__.py`` (source bytes) — for tests that boot the
    environment with a self-check instead of the agent.  ``epoch`` is every file's mtime (SOURCE_DATE_EPOCH).
    """
    times: dict[str, float] = {}
    with _step("assemble rootfs", times):
        first = make_rootfs(
            pkgs, agent_main=agent_override, extra_modules=extra_modules, optional_modules=optional_modules
        )
    with _step("render /init", times):
        init = render_init([m.path for m in first.modules], [m.path for m in first.late_modules])
        tree = first.tree.with_file("init", init.encode(), 0o755)
    with _step("write cpio", times):
        cpio = make_cpio(tree, epoch)
    with _step("compress zstd", times):
        compressed = compress_zstd(cpio)
    breakdown = {"kernel": len(first.kernel), **size_breakdown(tree)}
    log.info(
        "initramfs: %s raw, %s zstd-%d; kernel %s", _mib(len(cpio)), _mib(len(compressed)), ZSTD_LEVEL,
        _mib(len(first.kernel)),
    )
    return RescueEnv(
        kernel=first.kernel,
        initramfs=compressed,
        kernel_version=first.kernel_version,
        breakdown=breakdown,
        raw_size=len(cpio),
        modules=tuple(m.name for m in (*first.modules, *first.late_modules)),
        step_times=times,
        pkgs=pkgs,
        tree=tree,
    )
