"""The data set for the capture and restore figures: many small files plus a few large ones, generated
deterministically (same size and seed → same bytes) into a directory.

Contents mix incompressible blocks (slices of a seeded 64 MiB random pool, far larger than zstd's window, so
they do not repeat within it) and text-like blocks (slices of an 8 MiB pool of words from a fixed vocabulary),
about half and half, so zstd's speed and ratio are neither the best nor the worst case.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recovery_env.errors import InputError

MiB = 1 << 20
DEFAULT_SIZE_MIB = 1024
SIZE_ENV = "ASR_BENCH_DATA_MB"
LARGE_FILES = 4
LARGE_SHARE = 0.6  # of the total in the large files; the rest in small files
SMALL_MIN, SMALL_MAX = 512, 64 * 1024
FILES_PER_DIR = 200
BLOCK = 64 * 1024
RANDOM_POOL = 64 * MiB
TEXT_POOL = 8 * MiB
WORDS = (
    "the quick brown fox jumps over lazy dog recovery system disk partition volume backup restore kernel "
    "module floppy descriptor archive manifest boot loader grub isolinux initramfs python busybox zstd tar "
    "ext4 vfat xfs btrfs swap uuid label sector cylinder head track cluster inode journal superblock"
).split()


@dataclass(frozen=True)
class DataFile:
    path: str  # relative
    size: int
    seed: int


@dataclass(frozen=True)
class DataSet:
    files: tuple[DataFile, ...]
    seed: int

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def small_count(self) -> int:
        return sum(1 for f in self.files if f.path.startswith("small/"))


def read_size_mib(env: dict[str, str] | None = None) -> int:
    """The data set size from ASR_BENCH_DATA_MB (MiB), default 1024; InputError for a bad value."""
    value = (os.environ if env is None else env).get(SIZE_ENV, str(DEFAULT_SIZE_MIB))
    try:
        size = int(value)
    except ValueError:
        raise InputError(f"{SIZE_ENV}={value!r}: expected a whole number of MiB") from None
    if not 1 <= size <= 64 * 1024:
        raise InputError(f"{SIZE_ENV}={size}: expected 1 to 65536 MiB")
    return size


def plan_dataset(total: int, seed: int = 6) -> DataSet:
    """Files adding up to exactly ``total`` bytes: LARGE_FILES large ones holding LARGE_SHARE of it, the rest in
    small files of SMALL_MIN..SMALL_MAX bytes (log-uniform), FILES_PER_DIR per directory."""
    if total < LARGE_FILES * SMALL_MAX:
        raise InputError(f"data set of {total} bytes: at least {LARGE_FILES * SMALL_MAX} bytes are needed")
    rng = random.Random(seed)
    large_total = int(total * LARGE_SHARE)
    files: list[DataFile] = []
    for i in range(LARGE_FILES):
        size = large_total // LARGE_FILES + (large_total % LARGE_FILES if i == 0 else 0)
        files.append(DataFile(f"large/file{i}.bin", size, rng.getrandbits(32)))
    left = total - large_total
    n = 0
    while left > 0:
        size = min(left, int(math.exp(rng.uniform(math.log(SMALL_MIN), math.log(SMALL_MAX)))))
        files.append(DataFile(f"small/d{n // FILES_PER_DIR:04d}/f{n:06d}.dat", size, rng.getrandbits(32)))
        left -= size
        n += 1
    return DataSet(tuple(files), seed)


def iter_content(f: DataFile, pools: Pools) -> Iterator[bytes]:
    """The bytes of ``f`` in blocks: per block, a slice of the random or of the text pool, by the file's seed."""
    rng = random.Random(f.seed)
    left = f.size
    while left > 0:
        n = min(BLOCK, left)
        pool = pools.random if rng.random() < 0.5 else pools.text
        start = rng.randrange(0, len(pool) - n)
        yield pool[start : start + n]
        left -= n


@dataclass(frozen=True)
class Pools:
    random: bytes
    text: bytes


def make_pools(seed: int) -> Pools:
    rng = random.Random(seed)
    words = " ".join(rng.choices(WORDS, k=TEXT_POOL // 6)).encode()
    lines = b"\n".join(words[i : i + 72] for i in range(0, len(words), 72))
    return Pools(random=rng.randbytes(RANDOM_POOL), text=lines[:TEXT_POOL])


def make_dataset(root: Path, plan: DataSet) -> int:
    """Write ``plan`` under ``root`` (which must not exist yet); return the bytes written."""
    if root.exists():
        raise InputError(f"data set directory {root} exists already")
    pools = make_pools(plan.seed)
    written = 0
    for f in plan.files:
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            for chunk in iter_content(f, pools):
                out.write(chunk)
                written += len(chunk)
    return written
