"""`asr build`: the media build pipeline, a readable ordered list of named steps over one context.

    read_descriptor → (read_backup_set) → fetch_packages → make_rescue_env → make_boot_loaders
    → render_boot_configs → make_esp → make_iso → check_budget → make_floppy

``--embed-backup DIR`` (read_backup_set) puts the descriptor's backup set on the ISO under /asr/backup/, checked
against the descriptor's sizes and SHA-256 first; the size budget counts the rescue part only.

Everything is validated before anything is written: a bad descriptor or a blown budget leaves ``out/`` as it was.
The ISO and the floppy are written to temporary names and renamed into place only when both are complete.
With the same inputs and ``SOURCE_DATE_EPOCH`` two builds give byte-identical images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

from builder.media import bootloader
from builder.media.fatimage import make_esp, make_floppy
from builder.media.initramfs import DEFAULT_EPOCH, check_budget, make_rescue_env
from builder.media.iso import make_iso
from builder.media.packages import (
    LOCK_PATH,
    PackageSet,
    cache_dir,
    fetch_packages,
    packages_record,
    read_lock,
    render_lock,
)
from builder.media.python import HOST_PYTHON_PACKAGES
from builder.vm.sample import sample_descriptor, sample_inventory
from recovery_env.errors import BackupSetError, DescriptorMissingError, InputError
from recovery_env.model.descriptor import Descriptor, DeviceInventory
from recovery_env.model.manifest import sha256_file
from recovery_env.model.sif import parse_asr_sif, parse_asrpnp_sif
from recovery_env.model.sif_render import render_asr_sif, render_asrpnp_sif
from recovery_env.probe.media import EMBEDDED_DIR
from recovery_env.restore.verify import check_backup_set
from recovery_env.text import json_text

log = logging.getLogger("asr.build")

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Everything the rescue environment is made from, besides the build parameters: a change to any file here
#: makes the cached kernel + initramfs stale.
RESCUE_INPUTS: tuple[str, ...] = ("builder", "recovery_env", "templates")  # and the package set really used
#: Compressed initramfs segments by content, beside rescue/ in the cache root.
SEGMENT_CACHE = "initramfs"
#: How many rescue environments and compressed initramfs segments the cache keeps (the most recently used).
KEEP_RESCUE = 6
KEEP_SEGMENTS = 60

ISO_NAME = "asr.iso"
FLOPPY_NAME = "asr-floppy.img"
#: Beside the media: the package set the build really used (a lock: ``asr build --lock`` reproduces the build).
PACKAGES_RECORD_NAME = "asr-packages.json"
VOLUME_ID = "ASR_RECOVERY"
FLOPPY_LABEL = "ASR DISK"
DEFAULT_BUDGET_MB = 40.0
MB = 1_000_000


@dataclass(frozen=True)
class Descriptors:
    """The two texts that go on the floppy, and what they say."""

    asr_sif: str
    asrpnp_sif: str
    descriptor: Descriptor
    inventory: DeviceInventory
    source: str  # where they came from, for the report


@dataclass(frozen=True)
class StepTime:
    name: str
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    iso: Path
    floppy: Path
    packages_record: Path
    moved_packages: tuple[dict[str, str], ...]  # pins the archive no longer offered, and what replaced them
    iso_size: int
    floppy_size: int
    iso_sha256: str
    floppy_sha256: str
    initramfs_size: int
    initramfs_raw_size: int
    kernel_version: str
    breakdown: dict[str, int]
    rescue_cached: bool
    compressed_segments: tuple[str, ...]  # initramfs segments compressed by this build (not from a cache)
    steps: tuple[StepTime, ...]
    descriptor_source: str
    hostname: str
    epoch: int

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["iso"] = str(self.iso)
        data["floppy"] = str(self.floppy)
        data["packages_record"] = str(self.packages_record)
        data["moved_packages"] = list(self.moved_packages)
        data["seconds"] = round(self.seconds, 3)
        data["steps"] = [{"name": s.name, "seconds": round(s.seconds, 3)} for s in self.steps]
        return data


@dataclass
class BuildContext:
    """What the steps share.  Filled in step by step; the result is read off it at the end."""

    out: Path
    epoch: int
    options: bootloader.BootConfig
    budget_bytes: int
    cache: Path | None = None
    descriptor_path: Path | None = None
    progress: Callable[[str], None] | None = None
    steps: list[StepTime] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.progress:
            self.progress(f"[{len(self.steps) + 1}] {name} ...")
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.steps.append(StepTime(name, took))
        log.info("%-20s %6.2f s", name, took)
        if self.progress:
            self.progress(f"    {name}: {took:.2f} s")


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` if set (reproducible builds), else the project's fixed default."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return DEFAULT_EPOCH
    try:
        epoch = int(value)
    except ValueError:
        raise InputError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds") from None
    if epoch < 315532800:  # FAT dates start in 1980
        raise InputError(f"SOURCE_DATE_EPOCH={epoch} is before 1980-01-01, the earliest date FAT can store")
    return epoch


def read_descriptor(path: Path | None) -> Descriptors:
    """The ASR.SIF to put on the floppy (validated), and the ASRPNP.SIF beside it.

    Without a path: the embedded sample system.  With a path to ASR.SIF (or to a directory holding it), the
    ASRPNP.SIF of the same directory is taken when present; without one, the floppy gets an empty inventory
    for the descriptor's host.
    """
    if path is None:
        d, inv = sample_descriptor(), sample_inventory()
        return Descriptors(render_asr_sif(d), render_asrpnp_sif(inv), d, inv, "embedded sample")
    sif = path / "ASR.SIF" if path.is_dir() else path
    if not sif.is_file():
        raise DescriptorMissingError(f"{sif}: no such descriptor file")
    text = sif.read_text(encoding="utf-8")
    descriptor = parse_asr_sif(text, file=str(sif))
    pnp = sif.with_name("ASRPNP.SIF")
    if pnp.is_file():
        pnp_text = pnp.read_text(encoding="utf-8")
        inventory = parse_asrpnp_sif(pnp_text, file=str(pnp))
    else:
        inventory = DeviceInventory(hostname=descriptor.system.hostname)
        pnp_text = render_asrpnp_sif(inventory)
    return Descriptors(text, pnp_text, descriptor, inventory, str(sif))


@dataclass(frozen=True)
class RescueImage:
    """What the media need of the rescue environment: kernel, compressed initramfs, and its size facts."""

    kernel: bytes
    initramfs: bytes
    kernel_version: str
    raw_size: int
    breakdown: dict[str, int]
    cached: bool = False
    compressed_segments: tuple[str, ...] = ()  # made now (the others came from the segment cache)


def rescue_cache_key(
    pkgs: PackageSet, *, epoch: int, agent_override: bytes | None, optional_modules: tuple[str, ...]
) -> str:
    """A digest of every input of the rescue environment: the sources and templates of asr, the package set
    really used (which pins every .deb by SHA-256) and the build parameters."""
    h = hashlib.sha256(render_lock(pkgs.lock).encode())
    for top in RESCUE_INPUTS:
        base = REPO_ROOT / top
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file() and p.suffix != ".pyc")
        for f in files:
            h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    params = {"epoch": epoch, "optional_modules": list(optional_modules),
              "host_python_packages": {p: version(p) for p in HOST_PYTHON_PACKAGES}}  # shipped from site-packages
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(hashlib.sha256(agent_override).digest() if agent_override is not None else b"agent")
    return h.hexdigest()


def read_cached_rescue(directory: Path) -> RescueImage | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        return RescueImage(
            kernel=(directory / "vmlinuz").read_bytes(),
            initramfs=(directory / "initrd.img").read_bytes(),
            kernel_version=str(meta["kernel_version"]),
            raw_size=int(meta["raw_size"]),
            breakdown={str(k): int(v) for k, v in meta["breakdown"].items()},
            cached=True,
        )
    except (OSError, ValueError, KeyError):
        return None


def write_cached_rescue(directory: Path, image: RescueImage) -> None:
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vmlinuz").write_bytes(image.kernel)
    (tmp / "initrd.img").write_bytes(image.initramfs)
    meta = {"kernel_version": image.kernel_version, "raw_size": image.raw_size, "breakdown": image.breakdown}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    try:
        tmp.rename(directory)
    except OSError:  # another build wrote it first: theirs is the same
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def make_rescue_image(
    pkgs: PackageSet,
    *,
    epoch: int,
    agent_override: bytes | None,
    optional_modules: tuple[str, ...],
    cache_root: Path | None,
) -> RescueImage:
    """The rescue environment, from the cache when every input is unchanged (``cache_root`` None: no cache).

    When it must be made, the initramfs segments whose cpio bytes are unchanged come from
    ``<cache_root>/initramfs`` (an edit of the agent recompresses the agent's segment only)."""
    slot = None
    if cache_root is not None:
        key = rescue_cache_key(pkgs, epoch=epoch, agent_override=agent_override, optional_modules=optional_modules)
        slot = cache_root / "rescue" / key
        hit = read_cached_rescue(slot)
        if hit is not None:
            log.info("rescue environment from the cache: %s", slot)
            _touch(slot)
            return hit
    env = make_rescue_env(
        pkgs,
        epoch=epoch,
        agent_override=agent_override,
        optional_modules=optional_modules,
        segment_cache=cache_root / SEGMENT_CACHE if cache_root is not None else None,
    )
    compressed = tuple(s.name for s in env.segments if not s.cached)
    image = RescueImage(env.kernel, env.initramfs, env.kernel_version, env.raw_size, dict(env.breakdown),
                        compressed_segments=compressed)  # fmt: skip
    if slot is not None and cache_root is not None:
        write_cached_rescue(slot, image)
        prune_cache(cache_root / "rescue", KEEP_RESCUE)
        prune_cache(cache_root / SEGMENT_CACHE, KEEP_SEGMENTS)
    return image


def plan_prune(entries: Iterable[tuple[str, float]], keep: int) -> list[str]:
    """Which cache entries to remove: all but the ``keep`` most recently used ((name, mtime) pairs; names break
    ties, so the plan is the same whatever order the directory lists them in)."""
    ordered = sorted(entries, key=lambda e: (-e[1], e[0]))
    return sorted(name for name, _ in ordered[max(keep, 0):])


def prune_cache(directory: Path, keep: int) -> list[str]:
    """Remove all but the ``keep`` most recently used entries of a cache directory (files or directories; a
    use touches them); the names removed.  Temporary entries of builds still running are left alone."""
    try:
        entries = [(p.name, p.stat().st_mtime) for p in directory.iterdir() if ".tmp" not in p.name]
    except OSError:
        return []
    gone = plan_prune(entries, keep)
    for name in gone:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if gone:
        log.info("cache %s: removed %d least recently used entries", directory, len(gone))
    return gone


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _budget_contributors(env: RescueImage, esp: bytes, loaders: bootloader.BootLoaders) -> dict[str, int]:
    """What the ISO is made of, for the budget error: the initramfs share per group is scaled from raw to
    compressed so that the parts add up to what is on the medium."""
    raw = {k: v for k, v in env.breakdown.items() if k != "kernel"}
    total_raw = sum(raw.values()) or 1
    parts = {f"initramfs: {k}": round(v * len(env.initramfs) / total_raw) for k, v in raw.items()}
    parts["kernel"] = len(env.kernel)
    parts["EFI system partition (GRUB)"] = len(esp)
    parts["ISOLINUX"] = len(loaders.isolinux_bin) + len(loaders.ldlinux_c32)
    return parts


def build_media(
    out: Path = Path("out"),
    *,
    descriptor: Path | None = None,
    cache: Path | None = None,
    epoch: int | None = None,
    timeout: int = 8,
    unattended: bool = False,
    dryrun: bool = False,
    append: tuple[str, ...] = (),
    budget_mb: float | None = None,
    agent_override: bytes | None = None,
    use_cache: bool | None = None,
    embed_backup: Path | None = None,
    progress: Callable[[str], None] | None = None,
    lock: Path | None = None,
    locked: bool | None = None,
) -> BuildResult:
    """Build ``out/asr.iso`` and ``out/asr-floppy.img``.  See the module docstring for the steps.

    The rescue environment (kernel + initramfs) is taken from ``<cache>/rescue/<digest of every input>`` when
    it was built before; ``use_cache=False`` (or ``ASR_NO_CACHE=1``) always builds it afresh.

    ``embed_backup``: the directory of the descriptor's backup set, put on the ISO under /asr/backup/ (checked
    against the descriptor's sizes and SHA-256 first); the size budget applies to the rescue part only.

    ``lock``: the package lock (default packages.lock; an ``asr-packages.json`` of an earlier build is one too).
    Pins the archive no longer offers are replaced by the current versions and named (``moved_packages``, a
    warning, the progress lines) unless ``locked`` (default: ``ASR_LOCKED``), which makes them an error.  The
    set really used is written beside the media (``asr-packages.json``).
    """
    if use_cache is None:
        use_cache = os.environ.get("ASR_NO_CACHE") != "1"
    ctx = BuildContext(
        out=out,
        epoch=source_date_epoch() if epoch is None else epoch,
        options=bootloader.BootConfig(timeout=timeout, unattended=unattended, dryrun=dryrun, append=append),
        budget_bytes=int((DEFAULT_BUDGET_MB if budget_mb is None else budget_mb) * MB),
        cache=cache,
        descriptor_path=descriptor,
        progress=progress,
    )
    if ctx.budget_bytes <= 0:
        raise InputError(f"--budget-mb {budget_mb}: the budget must be positive")

    with ctx.step("read_descriptor"):
        desc = read_descriptor(ctx.descriptor_path)
    embedded: dict[str, bytes] = {}
    if embed_backup is not None:
        with ctx.step("read_backup_set"):
            embedded = read_backup_set(embed_backup, desc.descriptor)
    with ctx.step("fetch_packages"):
        lock_path = lock if lock is not None else LOCK_PATH
        pkgs: PackageSet = fetch_packages(cache_dir(ctx.cache), read_lock(lock_path), locked=locked,
                                          lock_path=lock_path)  # fmt: skip
        for m in pkgs.moved:
            if ctx.progress:
                ctx.progress(f"    moved in the archive since {lock_path.name}: {m.describe()} "
                             "(SHA-256 checked against apt's index)")  # fmt: skip
    with ctx.step("make_rescue_env"):
        env = make_rescue_image(
            pkgs,
            epoch=ctx.epoch,
            agent_override=agent_override,
            optional_modules=desc.inventory.modules(),
            cache_root=cache_dir(ctx.cache).parent if use_cache else None,
        )
    with ctx.step("make_boot_loaders"):
        loaders = bootloader.make_boot_loaders(pkgs.deb)
    with ctx.step("render_boot_configs"):
        isolinux_cfg = bootloader.render_isolinux_cfg(ctx.options)
        grub_cfg = bootloader.render_grub_cfg(ctx.options)
    with ctx.step("make_esp"):
        esp = make_esp({bootloader.ESP_LOADER_PATH: loaders.grub_efi}, epoch=ctx.epoch)
    with ctx.step("check_budget"):
        # The ISO holds these plus a few hundred KiB of file system structures; check before writing anything.
        check_budget(_budget_contributors(env, esp, loaders), ctx.budget_bytes, what="the recovery ISO")
    with ctx.step("make_floppy"):
        floppy = make_floppy(
            {"ASR.SIF": desc.asr_sif.encode("utf-8"), "ASRPNP.SIF": desc.asrpnp_sif.encode("utf-8")},
            label=FLOPPY_LABEL,
            epoch=ctx.epoch,
        )

    out.mkdir(parents=True, exist_ok=True)
    iso_path, floppy_path, record_path = out / ISO_NAME, out / FLOPPY_NAME, out / PACKAGES_RECORD_NAME
    iso_tmp, floppy_tmp = out / (ISO_NAME + ".part"), out / (FLOPPY_NAME + ".part")
    try:
        with ctx.step("make_iso"):
            make_iso(
                iso_tmp,
                kernel=env.kernel,
                initramfs=env.initramfs,
                isolinux_bin=loaders.isolinux_bin,
                ldlinux_c32=loaders.ldlinux_c32,
                isolinux_cfg=isolinux_cfg,
                grub_cfg=grub_cfg,
                esp_image=esp,
                volume_id=VOLUME_ID,
                epoch=ctx.epoch,
                extra_files=embedded,
            )
            size = iso_tmp.stat().st_size - sum(len(d) for d in embedded.values())  # the rescue part
            if size > ctx.budget_bytes:
                contributors = _budget_contributors(env, esp, loaders)
                contributors["ISO 9660 structures"] = size - sum(contributors.values())
                check_budget(contributors, ctx.budget_bytes, what="the recovery ISO")
        floppy_tmp.write_bytes(floppy)
        record_path.write_text(json.dumps(packages_record(pkgs, lock_path), indent=1) + "\n")
        iso_tmp.replace(iso_path)
        floppy_tmp.replace(floppy_path)
    finally:
        iso_tmp.unlink(missing_ok=True)
        floppy_tmp.unlink(missing_ok=True)

    return BuildResult(
        iso=iso_path,
        floppy=floppy_path,
        packages_record=record_path,
        moved_packages=tuple(m.to_json() for m in pkgs.moved),
        iso_size=iso_path.stat().st_size,
        floppy_size=floppy_path.stat().st_size,
        iso_sha256=sha256_file(iso_path),
        floppy_sha256=sha256_file(floppy_path),
        initramfs_size=len(env.initramfs),
        initramfs_raw_size=env.raw_size,
        kernel_version=env.kernel_version,
        breakdown=dict(env.breakdown),
        rescue_cached=env.cached,
        compressed_segments=env.compressed_segments,
        steps=tuple(ctx.steps),
        descriptor_source=desc.source,
        hostname=desc.descriptor.system.hostname,
        epoch=ctx.epoch,
    )


def read_backup_set(directory: Path, descriptor: Descriptor) -> dict[str, bytes]:
    """The files of the descriptor's backup set in ``directory`` (the archives and the MANIFEST, checked against
    the recorded sizes and SHA-256), keyed by their path on the ISO (/asr/backup/...)."""
    backup = descriptor.backup
    if backup is None:
        raise InputError(f"--embed-backup {directory}: the descriptor records no backup set to embed")
    if not directory.is_dir():
        raise BackupSetError(f"--embed-backup {directory}: not a directory")
    check_backup_set(directory, backup)
    names = [backup.manifest, *(a.file for a in backup.archives)]
    return {f"{EMBEDDED_DIR}/{name}": (directory / name).read_bytes() for name in names}


def _human(n: int) -> str:
    return f"{n / MB:.1f} MB"


def cli_build(args: argparse.Namespace) -> int:
    def progress(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    result = build_media(
        args.out,
        descriptor=args.descriptor,
        cache=args.cache,
        budget_mb=args.budget_mb,
        embed_backup=getattr(args, "embed_backup", None),
        progress=progress,
        lock=args.lock,
        locked=True if args.locked else None,
    )
    if args.json:
        print(json_text(result.to_json(), sort_keys=True))
        return 0
    print(f"ISO:    {result.iso}  {_human(result.iso_size)}  sha256 {result.iso_sha256}")
    print(f"floppy: {result.floppy}  {result.floppy_size} bytes  sha256 {result.floppy_sha256}")
    print(
        f"kernel {result.kernel_version}; initramfs {_human(result.initramfs_size)} "
        f"({_human(result.initramfs_raw_size)} raw); descriptor: {result.descriptor_source} "
        f"(host {result.hostname})"
    )
    for m in result.moved_packages:
        print(f"moved:  {m['name']} {m['old_version']} -> {m['new_name']} {m['new_version']} "
              f"(not in the archive any more; SHA-256 checked against apt's index)")
    print(f"packages: {result.packages_record}")
    print(f"built in {result.seconds:.2f} s")
    return 0
