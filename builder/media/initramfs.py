"""The initramfs: /init, reproducible cpio "newc" archives written without root, zstd compression, budget.

``make_rescue_env`` is the entry point of the build pipeline: package set in, kernel + compressed initramfs
out, with the size breakdown the budget check and the build report use.

The initramfs is a series of segments, each a whole cpio archive in its own zstd frame, concatenated: the kernel
unpacks them one after the other into the same root (Documentation/driver-api/early-userspace/buffer-format).
The first segment holds every directory, so that the files of the later ones always find their parents; then
one segment per :class:`~builder.media.tree.Group` (kernel modules, python, libraries, ...).  Segments are
compressed in parallel (zstandard releases the GIL) and, with a cache directory, kept by the digest of their
cpio bytes: an edit of the agent recompresses the agent's segment only.  The bytes depend on the tree alone
(not on the cache, the thread count or the order the segments finish in).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zstandard

from builder.media.packages import PackageSet, read_deb, write_atomic
from builder.media.python import AGENT_DIR, AGENT_PACKAGE, PYTHON
from builder.media.rootfs import make_rootfs
from builder.media.tree import EntryKind, Group, RescueTree
from recovery_env.agent.states import ExitCode
from recovery_env.errors import BudgetError, InternalError
from recovery_env.templating import render

log = logging.getLogger("asr.initramfs")

#: SOURCE_DATE_EPOCH default: 2024-01-01 00:00:00 UTC.
DEFAULT_EPOCH = 1704067200
ZSTD_LEVEL = 19
CPIO_MAGIC = b"070701"
CPIO_TRAILER = "TRAILER!!!"
#: The zstd library's version: part of the segment cache key (another version may compress differently).
ZSTD_VERSION = ".".join(str(n) for n in zstandard.ZSTD_VERSION)


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
        exit_actions=[(int(code), code.action) for code in ExitCode],
    )


# ------------------------------------------------------------------------------------------------------- cpio


def _cpio_header(
    name: str, ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int]
) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name.encode()) + 1, 0)
    return CPIO_MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def make_cpio(tree: RescueTree, mtime: int, paths: Iterable[str] | None = None, first_ino: int = 1) -> bytes:
    """A cpio "newc" archive of ``tree`` (or of its ``paths``): entries sorted by path components (parents
    first), owned by root, every mtime ``mtime``, inode numbers ``first_ino``, +1, +2... in archive order:
    byte-identical for the same tree."""
    if not 0 <= mtime < 2**32:
        raise InternalError(f"cpio mtime out of range: {mtime}")
    out = bytearray()
    chosen = tree.entries if paths is None else paths
    ordered = sorted((p for p in chosen if p), key=lambda p: p.split("/"))
    if first_ino + len(ordered) >= 2**32:
        raise InternalError(f"cpio inode numbers out of range: {first_ino} + {len(ordered)}")
    for ino, path in enumerate(ordered, start=first_ino):
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


# --------------------------------------------------------------------------------------------------- segments

#: The directory segment, unpacked first.
DIRS_SEGMENT = "directories"
#: Inode numbers of segment i start at i * SEGMENT_INO_STRIDE + 1: unique over the whole initramfs, and a
#: segment's bytes do not depend on how many entries the others have.
SEGMENT_INO_STRIDE = 1 << 20


@dataclass(frozen=True)
class SegmentPlan:
    """One cpio archive of the initramfs: its name, its place (inode numbers) and the paths it holds."""

    name: str
    index: int
    paths: tuple[str, ...]

    @property
    def first_ino(self) -> int:
        return self.index * SEGMENT_INO_STRIDE + 1


def plan_segments(tree: RescueTree) -> tuple[SegmentPlan, ...]:
    """Every directory first, then the other entries by group (in :class:`Group` order); empty ones dropped."""
    order = [DIRS_SEGMENT, *(g.value for g in Group)]
    paths: dict[str, list[str]] = {name: [] for name in order}
    for path, entry in tree.entries.items():
        if path:
            paths[DIRS_SEGMENT if entry.kind is EntryKind.DIR else entry.group.value].append(path)
    plans = tuple(SegmentPlan(name, i, tuple(paths[name])) for i, name in enumerate(order) if paths[name])
    if any(len(p.paths) >= SEGMENT_INO_STRIDE for p in plans):
        raise InternalError(f"an initramfs segment has {SEGMENT_INO_STRIDE} entries or more")
    return plans


@dataclass(frozen=True)
class Segment:
    name: str
    raw_size: int  # cpio bytes
    size: int  # zstd frame bytes
    cached: bool  # the frame came from the segment cache
    seconds: float  # compression time (0 when cached)


class SegmentCache:
    """Compressed segments by the SHA-256 of their cpio bytes, the level and the zstd version.

    A cached frame is used only after it decompressed to exactly those cpio bytes: a damaged cache file costs a
    recompression, never a broken initramfs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, cpio: bytes, level: int) -> Path:
        digest = hashlib.sha256(cpio).hexdigest()
        return self.directory / f"{digest}-zstd{level}-{ZSTD_VERSION}.zst"

    def get(self, cpio: bytes, level: int) -> bytes | None:
        where = self.path(cpio, level)
        try:
            frame = where.read_bytes()
            if zstandard.ZstdDecompressor().decompress(frame) == cpio:
                os.utime(where)  # recently used: kept when the cache is pruned (builder.build.prune_cache)
                return frame
        except (OSError, zstandard.ZstdError):
            pass
        if where.exists():
            log.warning("%s: damaged cached initramfs segment; compressing it again", where)
        return None

    def put(self, cpio: bytes, level: int, frame: bytes) -> None:
        where = self.path(cpio, level)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(where, frame)
        except OSError as exc:
            log.warning("cannot keep an initramfs segment in %s: %s", self.directory, exc)


def compress_segments(
    cpios: Sequence[tuple[str, bytes]],
    *,
    level: int = ZSTD_LEVEL,
    cache: SegmentCache | None = None,
    threads: int | None = None,
) -> tuple[bytes, tuple[Segment, ...]]:
    """Each cpio archive in its own zstd frame (from ``cache`` when there; the others compressed ``threads``
    at a time, largest first), concatenated in the given order."""
    frames: dict[int, bytes] = {}
    cached: set[int] = set()
    for i, (_, cpio) in enumerate(cpios):
        hit = cache.get(cpio, level) if cache is not None else None
        if hit is not None:
            frames[i] = hit
            cached.add(i)
    todo = sorted((i for i in range(len(cpios)) if i not in frames), key=lambda i: -len(cpios[i][1]))
    seconds: dict[int, float] = {}

    def compress(i: int) -> tuple[int, bytes, float]:
        started = time.monotonic()
        frame = compress_zstd(cpios[i][1], level)
        return i, frame, time.monotonic() - started

    workers = max(1, min(len(todo), threads or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, frame, took in pool.map(compress, todo):
            frames[i], seconds[i] = frame, took
            if cache is not None:
                cache.put(cpios[i][1], level, frame)
    segments = tuple(
        Segment(name, len(cpio), len(frames[i]), i in cached, seconds.get(i, 0.0))
        for i, (name, cpio) in enumerate(cpios)
    )
    return b"".join(frames[i] for i in range(len(cpios))), segments


def read_segments(initramfs: bytes) -> list[bytes]:
    """The cpio archive of each zstd frame of an initramfs, in order (for inspection and tests: GNU cpio stops
    reading at the first archive's trailer)."""
    out = []
    rest = initramfs
    while rest:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        try:
            out.append(decompressor.decompress(rest))
        except zstandard.ZstdError as exc:
            raise InternalError(f"initramfs segment {len(out) + 1}: not a zstd frame: {exc}") from None
        if not decompressor.eof:
            raise InternalError(f"initramfs segment {len(out)}: truncated zstd frame")
        rest = decompressor.unused_data
    return out


def make_segment_cpios(tree: RescueTree, mtime: int) -> list[tuple[str, bytes]]:
    """The cpio archive of each planned segment, in unpacking order."""
    return [(p.name, make_cpio(tree, mtime, p.paths, p.first_ino)) for p in plan_segments(tree)]


def make_initramfs(tree: RescueTree, mtime: int = DEFAULT_EPOCH, cache: SegmentCache | None = None) -> bytes:
    """The compressed initramfs the kernel unpacks: one zstd frame per segment (the Debian kernel has
    CONFIG_RD_ZSTD and takes concatenated archives)."""
    initramfs, _ = compress_segments(make_segment_cpios(tree, mtime), cache=cache)
    return initramfs


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
    initramfs: bytes  # zstd-compressed cpio segments, concatenated
    kernel_version: str
    breakdown: dict[str, int]  # uncompressed bytes per contributor (the kernel included)
    raw_size: int  # uncompressed initramfs (cpio) bytes
    modules: tuple[str, ...]  # load order
    step_times: dict[str, float]
    pkgs: PackageSet
    tree: RescueTree  # what the initramfs holds (for inspection and tests)
    segments: tuple[Segment, ...] = ()  # in unpacking order

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
    segment_cache: Path | None = None,
) -> RescueEnv:
    """Assemble the rescue tree from ``pkgs``, render /init, write and compress the initramfs.

    ``agent_override`` replaces ``recovery_env/__main__.py`` (source bytes) — for tests that boot the
    environment with a self-check instead of the agent.  ``epoch`` is every file's mtime (SOURCE_DATE_EPOCH).
    ``segment_cache``: a directory of compressed segments (see :class:`SegmentCache`); None compresses all.
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
        cpios = make_segment_cpios(tree, epoch)
    with _step("compress zstd", times):
        cache = SegmentCache(segment_cache) if segment_cache is not None else None
        compressed, segments = compress_segments(cpios, cache=cache)
    breakdown = {"kernel": len(first.kernel), **size_breakdown(tree)}
    raw_size = sum(len(cpio) for _, cpio in cpios)
    log.info(
        "initramfs: %s raw, %s zstd-%d in %d segments (compressed: %s); kernel %s", _mib(raw_size),
        _mib(len(compressed)), ZSTD_LEVEL, len(segments),
        ", ".join(s.name for s in segments if not s.cached) or "none, all from the cache", _mib(len(first.kernel)),
    )
    return RescueEnv(
        kernel=first.kernel,
        initramfs=compressed,
        kernel_version=first.kernel_version,
        breakdown=breakdown,
        raw_size=raw_size,
        modules=tuple(m.name for m in (*first.modules, *first.late_modules)),
        step_times=times,
        pkgs=pkgs,
        tree=tree,
        segments=segments,
    )
