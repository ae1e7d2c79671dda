"""`make bench` / `python -m bench`: every measurement of issue 6, in order, then docs/BENCHMARKS.md.

Each section returns figures (data); the report is rendered from them.  A section that cannot run on this
machine (or whose feature does not exist yet) yields figures that say why instead of failing the bench.

    python -m bench [--quick] [--only SECTION,...] [-n N] [--data-mb MiB] [--out docs/BENCHMARKS.md]

Environment: ASR_BENCH_DATA_MB (data set size, MiB; default 1024), ASR_ACCEL (kvm|tcg), ASR_CACHE.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import logging
import os
import platform
import pstats
import re
import resource
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import dataset, guest, peers, rear
from bench.model import (
    GOAL_BUILD_WARM,
    GOAL_F2_TCG,
    GOAL_ISO_SIZE,
    GOAL_ISO_VS_XORRISO,
    GOAL_MEMORY,
    GOAL_THROUGHPUT,
    Better,
    Summary,
    Unit,
    bisect_min,
    throughput,
)
from bench.report import (
    Comparison,
    Figure,
    Machine,
    Profile,
    Report,
    plan_breakdown,
    plan_conditions,
    render_ratio_lines,
    render_report,
    summarize_steps,
    top_profile_entries,
)
from builder.build import FLOPPY_LABEL, VOLUME_ID, build_media, make_rescue_image, read_descriptor, source_date_epoch
from builder.media import bootloader
from builder.media.fatimage import make_esp, make_floppy
from builder.media.iso import make_iso
from builder.media.packages import cache_dir, fetch_packages, read_deb
from builder.vm.qemu import F2_PROMPT, Accel, QemuVM, VMError, VMFirmware, VMSpec, find_accel, read_boot_files
from recovery_env.capture.archive import make_backup_set, plan_archives
from recovery_env.errors import AsrError
from recovery_env.run import run

log = logging.getLogger("asr.bench")
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "BENCHMARKS.md"
ROW_SECTIONS = ("Media build", "Sizes", "Boot", "Memory", "Capture", "Restore", "Rehearsal", "Relax-and-Recover")
PEER_SECTIONS = ("Relax-and-Recover",)
SECTIONS = ("build", "iso", "floppy", "initramfs", "boot", "capture", "restore", "rehearsal", "memory", "rear")
PY = "python -m bench"
BOOT_MARKS: tuple[tuple[str, str], ...] = (  # what the boot prints on serial, in order
    ("boot loader", r"ISOLINUX \d|Loading /\S+ \.\.\."),  # isolinux's banner; grub.cfg's echo
    ("init started", r"asr: init started"),
    ("agent started", r"asr: starting the agent"),
    ("F2 prompt", F2_PROMPT),
)


@dataclass(frozen=True)
class Settings:
    builds: int = 3  # cold-rescue builds (each ~40-60 s)
    warm: int = 5  # fully cached builds
    micro: int = 7  # ISO / floppy step runs (each well under a second)
    initramfs: int = 2  # peer find | cpio | zstd -19 runs
    boots: int = 3  # per firmware
    captures: int = 3
    guest_rounds: int = 1  # of each method, ABBA
    data_mib: int = dataset.DEFAULT_SIZE_MIB
    memory_range: tuple[int, int, int] = (64, 1024, 32)  # lo, hi, step (MiB)
    boot_timeout: float = 90.0
    rear_boots: int = 1
    sections: tuple[str, ...] = SECTIONS
    out: Path = DOC
    quick: bool = False

    def describe(self) -> dict[str, str]:
        return {
            "mode": "--quick (development run: n=1, small data set; not the published figures)" if self.quick
            else "full",
            "runs (N)": f"cold builds {self.builds}, cached builds {self.warm}, ISO/floppy steps {self.micro}, "
            f"peer initramfs {self.initramfs}, boots {self.boots} per firmware, captures {self.captures}, "
            f"guest restore rounds {self.guest_rounds} per method",
            "data set": f"{self.data_mib} MiB (ASR_BENCH_DATA_MB), {int(dataset.LARGE_SHARE * 100)} % in "
            f"{dataset.LARGE_FILES} large files, the rest in files of {dataset.SMALL_MIN} B – "
            f"{dataset.SMALL_MAX // 1024} KiB",
            "memory search": f"{self.memory_range[0]}–{self.memory_range[1]} MiB in steps of {self.memory_range[2]}",
        }


@dataclass
class Bench:
    """What the sections share and produce."""

    settings: Settings
    work: Path
    figures: list[Figure] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    steps: dict[str, Summary] = field(default_factory=dict)
    steps_title: str = ""
    initramfs_steps: dict[str, Summary] = field(default_factory=dict)
    breakdown: dict[str, int] = field(default_factory=dict)
    initramfs_size: int = 0
    boot_marks: dict[str, dict[str, Summary]] = field(default_factory=dict)
    iso: Path | None = None
    floppy: Path | None = None
    ours_cpio_zstd: list[float] = field(default_factory=list)
    capture_archive: Path | None = None
    capture_sha256: str = ""
    data: dataset.DataSet | None = None
    cache_root: Path = field(default_factory=lambda: cache_dir().parent)  # rescue cache of the build section
    min_memory: int | None = None
    sample_set: Path | None = None  # the sample machine's backup set (rehearsal section)

    def say(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    """An error in one line, for a table cell (VM errors carry the serial console's tail)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------------ media build


@contextmanager
def capture_initramfs_steps() -> Iterator[list[tuple[str, float]]]:
    """The sub-steps make_rescue_env logs on "asr.initramfs" ("%-18s %6.2f s", name, seconds)."""
    found: list[tuple[str, float]] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg == "%-18s %6.2f s" and isinstance(record.args, tuple) and len(record.args) == 2:
                name, seconds = record.args
                found.append((str(name), float(seconds)))  # type: ignore[arg-type]

    logger = logging.getLogger("asr.initramfs")
    handler, level, propagate = Handler(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # collected, not printed
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def measure_build(b: Bench) -> None:
    """Four states of the caches, each with its own figure (all after the downloads: those are never timed):
    empty (the first build: .deb extraction, .pyc compilation and every initramfs segment), warm package cache
    (extraction and .pyc caches warm; rescue and segment caches empty), after an edit of the agent (the rescue
    cache is stale; the unchanged segments come from the segment cache), and everything cached."""
    s = b.settings
    fetch_packages(cache_dir())  # warm package cache: downloads (once) are not part of any figure
    out = b.work / "media"
    empty_totals = []
    for i in range(s.builds):
        b.say(f"media build {i + 1}/{s.builds}, empty cache (extraction, compilation, compression) ...")
        root = b.work / f"empty-{i}"
        (root / "debs").mkdir(parents=True)
        for deb in cache_dir().resolve().glob("*.deb"):  # the downloads, but no extraction or .pyc cache
            (root / "debs" / deb.name).symlink_to(deb)
        r = build_media(out, cache=root / "debs", use_cache=True)
        if r.rescue_cached or not r.compressed_segments:
            raise AsrError("a build with an empty cache found something in it")
        empty_totals.append(r.seconds)
        b.say(f"  {r.seconds:.2f} s")
        shutil.rmtree(root)  # the extraction cache of the kernel package alone is 400 MB
    cold_runs, cold_totals, inner = [], [], []
    for i in range(s.builds):
        b.say(f"media build {i + 1}/{s.builds}, warm package cache, empty rescue and segment caches ...")
        b.cache_root = make_private_cache(b.work / f"cache-{i}")
        with capture_initramfs_steps() as substeps:
            r = build_media(out, cache=b.cache_root / "debs", use_cache=True)
        if r.rescue_cached:
            raise AsrError("a cold build found its rescue environment in a fresh cache")
        cold_runs.append([(st.name, st.seconds) for st in r.steps])
        cold_totals.append(r.seconds)
        inner.append(list(substeps))
        b.say(f"  {r.seconds:.2f} s")
    edit_totals, recompressed = [], set[str]()
    agent_main = (REPO / "recovery_env" / "__main__.py").read_bytes()
    for i in range(s.builds):
        b.say(f"media build {i + 1}/{s.builds} after an edit of the agent ...")
        edited = agent_main + f"\n# an edit of the agent ({b.work.name}, {i})\n".encode()
        r = build_media(out, cache=b.cache_root / "debs", use_cache=True, agent_override=edited)
        if r.rescue_cached:
            raise AsrError("a build after an edit of the agent took the rescue environment from the cache")
        edit_totals.append(r.seconds)
        recompressed.update(r.compressed_segments)
        b.say(f"  {r.seconds:.2f} s, compressed: {', '.join(r.compressed_segments)}")
    warm_runs, warm_totals = [], []
    build_media(out, cache=b.cache_root / "debs", use_cache=True)  # fills the rescue cache if -n 0 (unmeasured)
    for _ in range(s.warm):
        r = build_media(out, cache=b.cache_root / "debs", use_cache=True)
        if not r.rescue_cached:
            raise AsrError("a cached build did not take the rescue environment from the cache")
        warm_runs.append([(st.name, st.seconds) for st in r.steps])
        warm_totals.append(r.seconds)
    b.iso, b.floppy = r.iso, r.floppy
    b.steps = summarize_steps(cold_runs) if cold_runs else summarize_steps(warm_runs)
    b.steps_title = (f"Warm package cache (.debs extracted, .pyc compiled), empty rescue and initramfs segment "
                     f"caches (a fresh ASR_CACHE whose debs/ is the warm package cache), n={len(cold_runs)}."
                     if cold_runs else f"Fully cached, n={len(warm_runs)}.")  # fmt: skip
    if inner and all(inner):
        b.initramfs_steps = summarize_steps(inner)
        b.ours_cpio_zstd = [sum(t for n, t in run if n in ("write cpio", "compress zstd")) for run in inner]
    cmd = f"{PY} --only build -n {s.builds}"
    if empty_totals:
        b.figures.append(Figure("Media build", "ISO + floppy, empty cache (the first build after the downloads: "
                                ".deb extraction, .pyc compilation, every initramfs segment compressed)",
                                Unit.SECONDS, Summary.of(empty_totals), None, cmd))  # fmt: skip
    if cold_totals:
        b.figures.append(Figure("Media build", "ISO + floppy, warm package cache, empty rescue and segment caches "
                                f"(every initramfs segment compressed, {os.cpu_count()} threads)",
                                Unit.SECONDS, Summary.of(cold_totals), GOAL_BUILD_WARM, cmd))  # fmt: skip
    if edit_totals:
        edit = (f"ISO + floppy after an edit of the agent (rescue cache stale; segments compressed: "
                f"{', '.join(sorted(recompressed))}; the others from the segment cache)")
        b.figures.append(Figure("Media build", edit, Unit.SECONDS, Summary.of(edit_totals), GOAL_BUILD_WARM, cmd))
    b.figures.append(Figure("Media build", "ISO + floppy, everything cached (rescue env from ~/.cache/asr/rescue)",
                            Unit.SECONDS, Summary.of(warm_totals), GOAL_BUILD_WARM, cmd))  # fmt: skip
    b.breakdown, b.initramfs_size = dict(r.breakdown), r.initramfs_size
    sizes = [
        ("ISO", r.iso_size, GOAL_ISO_SIZE), ("initramfs, zstd-19", r.initramfs_size, None),
        ("initramfs, raw cpio", r.initramfs_raw_size, None), ("kernel", r.breakdown.get("kernel", 0), None),
        ("floppy image", r.floppy_size, None),
    ]  # fmt: skip
    for name, size, goal in sizes:
        b.figures.append(Figure("Sizes", name, Unit.BYTES, Summary.of([size]), goal, "asr build --json"))
    if cold_totals and not GOAL_BUILD_WARM.better.passes(Summary.of(cold_totals).median, GOAL_BUILD_WARM.limit):
        b.say("profiling make_rescue_env (build goal missed) ...")
        b.profiles.append(profile_rescue_env())


def make_private_cache(root: Path) -> Path:
    """A cache root whose debs/ is the (warm) package cache and whose rescue/ starts empty."""
    root.mkdir(parents=True)
    (root / "debs").symlink_to(cache_dir().resolve(), target_is_directory=True)
    return root


def profile_rescue_env() -> Profile:
    pkgs = fetch_packages(cache_dir())
    desc = read_descriptor(None)
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    make_rescue_image(pkgs, epoch=source_date_epoch(), agent_override=None,
                      optional_modules=desc.inventory.modules(), cache_root=None)  # fmt: skip
    prof.disable()
    total = time.perf_counter() - started
    stats = pstats.Stats(prof)
    entries = top_profile_entries(stats.stats, 15, strip=str(REPO) + "/")  # type: ignore[attr-defined]
    return Profile("make_rescue_env (cold rescue cache): the step that misses “build ≤ 3 s warm”", total, entries,
                   f"{PY} --only build  (profiles when the goal is missed)")  # fmt: skip


@dataclass(frozen=True)
class MediaInputs:
    kernel: bytes
    initramfs: bytes
    loaders: bootloader.BootLoaders
    isolinux_cfg: str
    grub_cfg: str
    esp: bytes
    asr_sif: bytes
    asrpnp_sif: bytes
    epoch: int


def read_media_inputs(cache_root: Path) -> MediaInputs:
    """What build_media gives make_iso and make_floppy, the rescue environment from the cache."""
    pkgs = fetch_packages(cache_dir())
    desc = read_descriptor(None)
    epoch = source_date_epoch()
    env = make_rescue_image(pkgs, epoch=epoch, agent_override=None, optional_modules=desc.inventory.modules(),
                            cache_root=cache_root)  # fmt: skip
    loaders = bootloader.make_boot_loaders(pkgs.deb)
    options = bootloader.BootConfig()
    esp = make_esp({bootloader.ESP_LOADER_PATH: loaders.grub_efi}, epoch=epoch)
    return MediaInputs(env.kernel, env.initramfs, loaders, bootloader.render_isolinux_cfg(options),
                       bootloader.render_grub_cfg(options), esp, desc.asr_sif.encode(), desc.asrpnp_sif.encode(),
                       epoch)  # fmt: skip


def write_iso_tree(root: Path, m: MediaInputs, layout: bootloader.MediaLayout = bootloader.MEDIA_LAYOUT) -> None:
    """The files make_iso puts on the ISO, as a directory for xorriso."""
    from builder.media.iso import render_disk_info

    info = render_disk_info(VOLUME_ID, m.epoch).encode()
    files = {
        layout.kernel: m.kernel, layout.initrd: m.initramfs, layout.isolinux_bin: m.loaders.isolinux_bin,
        layout.ldlinux_c32: m.loaders.ldlinux_c32, layout.isolinux_cfg: m.isolinux_cfg.encode(),
        layout.grub_cfg: m.grub_cfg.encode(), layout.esp: m.esp, layout.marker: info, "/.disk/info": info,
    }  # fmt: skip
    for path, data in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def measure_iso(b: Bench) -> None:
    s = b.settings
    m = read_media_inputs(b.cache_root)
    tree, out = b.work / "iso-tree", b.work / "iso-out"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    out.mkdir(exist_ok=True)
    write_iso_tree(tree, m)
    members = read_deb(fetch_packages(cache_dir()).deb(peers.ISOHDPFX[0]), (peers.ISOHDPFX[1],))
    isohdpfx = b.work / "isohdpfx.bin"
    isohdpfx.write_bytes(members[peers.ISOHDPFX[1]].data)
    argv = peers.plan_xorriso_argv(tree, out / "xorriso.iso", volume_id=VOLUME_ID, isohdpfx=isohdpfx)

    def ours() -> None:
        make_iso(out / "asr.iso", kernel=m.kernel, initramfs=m.initramfs, isolinux_bin=m.loaders.isolinux_bin,
                 ldlinux_c32=m.loaders.ldlinux_c32, isolinux_cfg=m.isolinux_cfg, grub_cfg=m.grub_cfg,
                 esp_image=m.esp, volume_id=VOLUME_ID, epoch=m.epoch)  # fmt: skip

    def peer() -> None:
        (out / "xorriso.iso").unlink(missing_ok=True)
        run(argv)

    t_ours, t_peer = [], []
    for _ in range(s.micro):  # alternate, so that drifts hit both
        t_ours.append(timed(ours))
        t_peer.append(timed(peer))
    sizes = f"asr {(out / 'asr.iso').stat().st_size} bytes, xorriso {(out / 'xorriso.iso').stat().st_size} bytes"
    b.comparisons.append(Comparison("Media build", "ISO step (make_iso, pycdlib) vs xorriso -as mkisofs",
                                    Unit.SECONDS, Better.LOWER, Summary.of(t_ours), Summary.of(t_peer),
                                    GOAL_ISO_VS_XORRISO, shlex.join(argv)))  # fmt: skip
    b.notes.append(f"ISO step, same files and boot setup: {sizes}.")


def measure_floppy(b: Bench) -> None:
    s = b.settings
    desc = read_descriptor(None)
    epoch = source_date_epoch()
    files = {"ASR.SIF": desc.asr_sif.encode(), "ASRPNP.SIF": desc.asrpnp_sif.encode()}
    d = b.work / "floppy"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    image = d / "mtools.img"
    plan = peers.plan_mtools_floppy(image, [d / n for n in files], label=FLOPPY_LABEL)

    def peer() -> None:
        image.unlink(missing_ok=True)
        for argv in plan:
            run(argv)

    t_ours, t_peer = [], []
    for _ in range(s.micro):
        t_ours.append(timed(lambda: make_floppy(files, label=FLOPPY_LABEL, epoch=epoch)))
        t_peer.append(timed(peer))
    b.comparisons.append(Comparison("Media build", "floppy step (make_floppy, pyfatfs) vs mformat + mcopy",
                                    Unit.SECONDS, Better.LOWER, Summary.of(t_ours), Summary.of(t_peer), None,
                                    " && ".join(shlex.join(a) for a in plan)))  # fmt: skip


def measure_initramfs(b: Bench) -> None:
    """asr's initramfs step (write the segments' cpio archives, compress them: both cores, as many threads as
    CPUs) against ``find | cpio | zstd -19 -T0`` over the same tree (zstd's own threads, also all CPUs)."""
    from builder.media.initramfs import ZSTD_LEVEL, read_segments

    s = b.settings
    threads = os.cpu_count() or 1
    name = f"initramfs step (write cpio + compress zstd-{ZSTD_LEVEL}, segments in parallel on {threads} threads) " \
           f"vs find | cpio | zstd -{ZSTD_LEVEL} -T0"  # fmt: skip
    if b.iso is None:
        return b.comparisons.append(Comparison("Media build", name, Unit.SECONDS, Better.LOWER,
                                               note="needs the build section"))  # fmt: skip
    root, out = b.work / "initramfs-tree", b.work / "initramfs-peer.zst"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    _kernel, initrd, _ = read_boot_files(b.iso, b.work)
    segments = read_segments(initrd.read_bytes())
    for cpio in segments:  # GNU cpio stops at an archive's trailer: one run per segment, in unpacking order
        run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=cpio, cwd=root)
    pipeline = peers.plan_cpio_zstd(root, out, threads=0)
    t_peer = [timed(lambda: run(pipeline.argv)) for _ in range(s.initramfs)]
    ours = Summary.of(b.ours_cpio_zstd) if b.ours_cpio_zstd else None
    b.comparisons.append(Comparison(
        "Media build", name, Unit.SECONDS, Better.LOWER, ours, Summary.of(t_peer), None, pipeline.text,
        "" if ours else "asr's side needs cold builds (-n ≥ 1)"))  # fmt: skip
    b.notes.append(f"initramfs: asr's {len(segments)} zstd-{ZSTD_LEVEL} frames (one per segment) {b.initramfs_size} "
                   f"bytes, the peer's single stream {out.stat().st_size} bytes (same tree, same level; both cpio "
                   "archives sorted and root-owned).")  # fmt: skip


# ------------------------------------------------------------------------------------------------------- boot


def boot_once(iso: Path, floppy: Path | None, firmware: VMFirmware, memory: str, timeout: float,
              log: Path | None = None) -> dict[str, float]:  # fmt: skip
    """Seconds from QEMU start to each boot mark on serial, each stamped when its line arrives (a mark that
    never shows is left out); VMError if the F2 prompt does not come within ``timeout``."""
    spec = VMSpec(iso=iso, floppy=floppy, firmware=firmware, memory=memory, accel=find_accel(), name="asr-bench")
    marks: dict[str, float] = {}
    with QemuVM(spec, log=log) as vm:
        while "F2 prompt" not in marks:
            waiting = [(name, pattern) for name, pattern in BOOT_MARKS if name not in marks]
            anyof = "|".join(f"(?:{pattern})" for _, pattern in waiting)
            vm.wait_serial(anyof, timeout=max(timeout - vm.elapsed(), 0.5))  # VMError when F2 does not come
            now, text = vm.elapsed(), vm.serial_text
            marks.update({name: now for name, pattern in waiting if re.search(pattern, text)})
            vm.mark()
    return dict(sorted(marks.items(), key=lambda kv: kv[1]))


def accel_label() -> str:
    a = find_accel()
    return "KVM" if a is Accel.KVM else "TCG"


def measure_boot(b: Bench) -> None:
    s = b.settings
    if b.iso is None:
        b.figures.append(Figure("Boot", "QEMU start → F2 prompt", Unit.SECONDS, note="needs the build section"))
        return
    label = accel_label()
    for firmware in (VMFirmware.BIOS, VMFirmware.UEFI):
        runs: list[dict[str, float]] = []
        for i in range(s.boots):
            b.say(f"boot {firmware.value.upper()} CD {i + 1}/{s.boots} ...")
            runs.append(boot_once(b.iso, b.floppy, firmware, "512M", s.boot_timeout,
                                  b.work / f"boot-{firmware.value}-{i}.log"))  # fmt: skip
        f2 = Summary.of([r["F2 prompt"] for r in runs])
        goal = GOAL_F2_TCG if label == "TCG" else None
        b.figures.append(Figure("Boot", f"QEMU start → F2 prompt, {firmware.value.upper()} CD, {label}, 512 MiB",
                                Unit.SECONDS, f2, goal, f"{PY} --only build,boot -n 0 (or: asr boot"
                                f"{' --uefi' if firmware is VMFirmware.UEFI else ''} out/asr.iso)"))  # fmt: skip
        names = [n for n, _ in BOOT_MARKS if all(n in r for r in runs)]
        b.boot_marks[f"{firmware.value.upper()} CD ({label})"] = {n: Summary.of([r[n] for r in runs]) for n in names}


def measure_memory(b: Bench) -> None:
    """The smallest -m (in steps) booting to the F2 prompt (bisection, BIOS CD), then proven by a whole restore
    of the sample machine (`asr rehearse --memory`) at that size, stepping up until a restore completes."""
    s = b.settings
    what = "smallest -m booting to the F2 prompt and completing a restore"
    if b.iso is None:
        b.figures.append(Figure("Memory", what, Unit.MIB_RAM, note="needs the build section"))
        return
    lo, hi, step = s.memory_range
    tried: dict[int, bool] = {}
    if any(fw.startswith("BIOS") for fw in b.boot_marks) and lo <= 512 <= hi and 512 % step == 0:
        tried[512] = True  # the boot section's BIOS CD boots ran with -m 512M
    while True:
        nxt, answer = bisect_min(lo, hi, step, tried)
        if nxt is None:
            break
        b.say(f"memory: boot with -m {nxt}M ...")
        try:
            boot_once(b.iso, b.floppy, VMFirmware.BIOS, f"{nxt}M", s.boot_timeout, b.work / f"mem-{nxt}.log")
            tried[nxt] = True
        except VMError:
            tried[nxt] = False
    tried_text = ", ".join(f"{k} {'ok' if v else 'no'}" for k, v in sorted(tried.items()))
    cmd = f"{PY} --only build,memory -n 0"
    if answer is None:
        b.figures.append(Figure("Memory", f"{what} (BIOS CD; tried {tried_text})", Unit.MIB_RAM,
                                Summary.of([float(hi)]), GOAL_MEMORY, cmd,
                                note=f"no boot even with {hi} MiB"))  # fmt: skip
        return
    restored: dict[int, str] = {}
    found = None
    if os.geteuid() != 0:
        b.notes.append("Memory: the restore at the smallest size was not tried (needs root to capture the sample).")
        found = answer
    else:
        from builder.vm.demo import make_sample_set
        from builder.vm.rehearse import SIGN_OF_LIFE, rehearse

        set_dir = b.sample_set or make_sample_set(b.work / "memory-sample")
        for m in range(answer, hi + 1, step):
            b.say(f"memory: restore of the sample with -m {m}M ...")
            try:
                report = rehearse(set_dir, firmware="bios", workdir=b.work / f"memory-rehearse-{m}", memory=f"{m}M",
                                  expect=SIGN_OF_LIFE)
                ok, verdict = report.recoverable, report.verdict.splitlines()[0]
            except AsrError as e:
                ok, verdict = False, f"failed: {first_line(e)}"
            restored[m] = "ok" if ok else verdict
            if ok:
                found = m
                break
            if len(restored) >= 3:
                break
    restore_text = ", ".join(f"{k} {v}" for k, v in restored.items()) or "not tried"
    name = (f"{what} (BIOS CD, step {step} MiB; boot to F2 tried {tried_text}; whole restore of the sample "
            f"(asr rehearse --memory) tried {restore_text})")
    if found is None:
        b.figures.append(Figure("Memory", name, Unit.MIB_RAM, Summary.of([float(hi)]), GOAL_MEMORY, cmd,
                                note="no restore completed at the sizes tried"))  # fmt: skip
        return
    b.min_memory = found
    b.figures.append(Figure("Memory", name, Unit.MIB_RAM, Summary.of([float(found)]), GOAL_MEMORY,
                            f"{cmd}; asr rehearse SET --firmware bios --memory {found}M"))  # fmt: skip


# -------------------------------------------------------------------------------------------- capture, restore


def prepare_dataset(b: Bench) -> tuple[Path, dataset.DataSet]:
    root = b.work / "dataset"
    plan = dataset.plan_dataset(b.settings.data_mib * dataset.MiB)
    if not root.exists():
        b.say(f"writing the data set ({b.settings.data_mib} MiB, {len(plan.files)} files) ...")
        dataset.make_dataset(root, plan)
    b.data = plan
    return root, plan


def measure_capture(b: Bench) -> None:
    s = b.settings
    root, plan = prepare_dataset(b)
    run(["sync"])
    dest_root = b.work / "capture"
    t_ours, t_peer = [], []
    cpu_py, cpu_tools, cpu_peer = [], [], []  # core-seconds (user + sys): asr's Python, asr's tar + zstd, the peer
    peer_cmd = peers.plan_tar_zstd(root, dest_root / "plain.tar.zst")
    for i in range(s.captures):
        shutil.rmtree(dest_root, ignore_errors=True)
        dest = dest_root / "set"
        dest.mkdir(parents=True)
        jobs = plan_archives([("fs1", "/", str(root), plan.total)])
        b.say(f"capture {i + 1}/{s.captures}: asr ...")
        before = read_cpu()
        t_ours.append(timed(lambda dest=dest, jobs=jobs: make_backup_set(jobs, dest)))  # type: ignore[misc]
        after = read_cpu()
        cpu_py.append(after[0] - before[0])
        cpu_tools.append(after[1] - before[1])
        b.say(f"capture {i + 1}/{s.captures}: tar | zstd -T0 ...")
        t_peer.append(timed(lambda: run(peer_cmd.argv)))
        cpu_peer.append(read_cpu()[1] - after[1])
        (dest_root / "plain.tar.zst").unlink()
    py, tools, other = Summary.of(cpu_py).median, Summary.of(cpu_tools).median, Summary.of(cpu_peer).median
    archived = (dest_root / "set" / "fs1.tar.zst").stat().st_size
    sha_rate = read_sha256_rate()
    hashing = (plan.total + archived) / sha_rate
    cores = os.cpu_count() or 1
    b.notes.append(
        f"Capture CPU time (user + sys, median of {len(cpu_py)}): asr {py + tools:.2f} core-s (tar + zstd "
        f"{tools:.2f}, Python {py:.2f}: parsing the tar stream, SHA-256 of every file's content and of the archive, "
        f"moving the bytes), the peer {other:.2f} core-s; with {cores} cores asr's capture cannot take less than "
        f"{(py + tools) / cores:.2f} s, the peer took {Summary.of(t_peer).median:.2f} s (median).  The two SHA-256 "
        f"passes alone (hashlib here: {sha_rate / dataset.MiB:.0f} MiB/s; {plan.total >> 20} MiB of contents for "
        f"the MANIFEST, {archived >> 20} MiB of archive for the descriptor) cost {hashing:.2f} core-s: on top of the "
        f"peer's CPU time they alone bring the ratio down to about {other / (other + hashing):.0%} when the peer "
        "already keeps the cores busy.")  # fmt: skip
    archive = dest_root / "set" / "fs1.tar.zst"
    kept = b.work / "fs1.tar.zst"
    archive.replace(kept)
    from recovery_env.model.manifest import sha256_file

    b.capture_archive, b.capture_sha256 = kept, sha256_file(kept)
    ours = Summary.of([throughput(plan.total, t) for t in t_ours])
    peer = Summary.of([throughput(plan.total, t) for t in t_peer])
    capture = Comparison(
        "Capture", f"capture throughput (make_backup_set: tar | zstd -T0 -3 with MANIFEST + SHA-256) vs tar -c | "
        f"zstd -T0, {plan.total >> 20} MiB, {len(plan.files)} files, page cache warm", Unit.MIB_PER_S, Better.HIGHER,
        ours, peer, GOAL_THROUGHPUT, peer_cmd.text)  # fmt: skip
    b.comparisons.append(capture)
    ratio = capture.ratio
    if ratio is not None and not GOAL_THROUGHPUT.check(ratio.value).passed:
        b.say("profiling the capture's tar stream parser (throughput goal missed) ...")
        b.profiles.append(profile_capture_parser(root))


def read_sha256_rate(nbytes: int = 128 * dataset.MiB) -> float:
    """Bytes per second hashlib's SHA-256 hashes on this machine (one thread)."""
    import hashlib

    data = bytes(nbytes)
    started = time.perf_counter()
    hashlib.sha256(data).digest()
    return nbytes / (time.perf_counter() - started)


def read_cpu() -> tuple[float, float]:
    """(this process, its waited-for children): user + sys seconds so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def profile_capture_parser(root: Path) -> Profile:
    """cProfile of what the capture does in Python besides moving bytes: parsing the tar stream into MANIFEST
    entries with SHA-256 of every file (iter_tar_entries; in the capture it runs in a thread of its own, where
    cProfile would not see it, so here it reads the same tar stream from a file)."""
    from recovery_env.capture.archive import iter_tar_entries
    from recovery_env.model.manifest import TAR_ATTR_OPTIONS

    tar = root.with_name("profile.tar")
    run(["tar", "--create", f"--file={tar}", *TAR_ATTR_OPTIONS, f"--directory={root}", "."])
    prof = cProfile.Profile()
    started = time.perf_counter()
    try:
        with open(tar, "rb") as stream:
            prof.enable()
            count = 0
            for _ in iter_tar_entries(stream, "fs1", "/"):
                count += 1
            prof.disable()
    finally:
        tar.unlink()
    total = time.perf_counter() - started
    entries = top_profile_entries(pstats.Stats(prof).stats, 15, strip=str(REPO) + "/")  # type: ignore[attr-defined]
    return Profile(f"capture: the tar stream parser (MANIFEST + SHA-256 of {count} entries), the Python side of "
                   "“capture ≥ 90 % of plain tar”", total, entries, f"{PY} --only capture")  # fmt: skip


def measure_restore(b: Bench) -> None:
    s = b.settings
    name = "restore throughput in the guest (agent's extract_archive vs tar -x --zstd), fresh ext4 on virtio"
    if b.capture_archive is None or b.data is None:
        b.comparisons.append(Comparison("Restore", name, Unit.MIB_PER_S, Better.HIGHER, goal=GOAL_THROUGHPUT,
                                        note="needs the capture section"))  # fmt: skip
        return
    b.say("building the bench media (agent override; cached after the first time) ...")
    # the default cache: this rescue environment stays cached from one bench run to the next
    media = build_media(b.work / "bench-media", agent_override=guest.read_guest_agent())
    rounds = guest.plan_rounds(s.guest_rounds)
    src, scratch = b.work / "guest-src.img", b.work / "guest-scratch.img"
    src.unlink(missing_ok=True)
    guest.make_source_disk(src, b.capture_archive, b.capture_sha256, rounds, b.work / "guest-staging")
    guest.make_scratch_disk(scratch, int(b.data.total * 1.5) + 256 * dataset.MiB)
    b.say(f"restore in the guest: {' '.join(rounds)} ...")
    timeout = 600.0 + len(rounds) * b.data.total / dataset.MiB * 2.0  # TCG: allow 0.5 MiB/s
    serial = guest.run_guest_restore(media.iso, src, scratch, memory="512M", timeout=timeout,
                                     serial_log=b.work / "guest-restore.log")  # fmt: skip
    verdict = guest.parse_verdict(serial, expect_files=len(b.data.files), expect_bytes=b.data.total)
    ours = Summary.of([throughput(b.data.total, t) for t in verdict.seconds(guest.Method.AGENT)])
    peer = Summary.of([throughput(b.data.total, t) for t in verdict.seconds(guest.Method.PLAIN)])
    b.comparisons.append(Comparison("Restore", f"{name}, {accel_label()}, 512 MiB", Unit.MIB_PER_S, Better.HIGHER,
                                    ours, peer, GOAL_THROUGHPUT,
                                    "tar -x --zstd -f fs1.tar.zst -C /mnt (in the guest; "
                                    f"{PY} --only capture,restore)"))  # fmt: skip
    b.notes.append("Restore rounds in the guest: the full restore flow (partitioning, mkfs, boot loader) is timed by "
                   "the rehearsal row; this row times the extraction alone, the part that scales with the data.")


def measure_rehearsal(b: Bench) -> None:
    """A whole rehearsal of the sample machine: build its disk, capture it, build the media, restore it in QEMU
    and boot the restored disk (BIOS).  One run: it is minutes long and its parts are timed elsewhere.  (`make
    demo` rehearses the real Debian machine; the README says what its phases take.)"""
    from builder.vm.demo import run_sample_rehearsal

    title, what = "Rehearsal", "whole rehearsal of the sample machine (`asr rehearse`)"
    if os.geteuid() != 0:
        b.figures.append(Figure(title, what, Unit.SECONDS, note="needs root (loop devices to capture the sample)"))
        return
    started = time.monotonic()
    try:
        report = run_sample_rehearsal(b.work / "rehearsal", say=False)
    except AsrError as e:
        b.figures.append(Figure(title, what, Unit.SECONDS, note=f"failed: {first_line(e)}"))
        return
    seconds = time.monotonic() - started
    verdict = report.verdict.splitlines()[0]
    if not verdict.startswith("verified recoverable"):
        b.figures.append(Figure(title, what, Unit.SECONDS, note=f"verdict: {verdict}"))
        return
    b.sample_set = Path(report.set_dir)
    b.figures.append(Figure(title, what, Unit.SECONDS, Summary.of([seconds]), None,
                            "builder.vm.demo.run_sample_rehearsal"))


def measure_rear(b: Bench) -> None:
    s = b.settings
    section = "Relax-and-Recover"
    blocker = rear.find_blocker()
    if blocker is not None and os.geteuid() == 0 and not s.quick:
        b.say("installing Relax-and-Recover for the comparison ...")
        try:
            rear.install_rear(REPO)
            blocker = rear.find_blocker()
        except AsrError as e:
            blocker = f"could not install it: {first_line(e)}"
    if blocker is not None:
        b.figures.append(Figure(section, "rear mkrescue", Unit.SECONDS, note=f"cannot run here: {blocker}"))
        return
    setup = rear.make_setup(b.work / "rear")
    b.say("rear mkrescue ...")
    try:
        seconds = rear.make_rescue(setup)
    except AsrError as e:
        b.figures.append(Figure(section, "rear mkrescue", Unit.SECONDS, note=f"failed: {first_line(e)}"))
        return
    conf = f"rear -c DIR mkrescue, DIR/local.conf from templates/bench-rear.conf.j2 ({PY} --only rear)"
    b.figures.append(Figure(section, "rear mkrescue (warm: packages installed)", Unit.SECONDS,
                            Summary.of([seconds]), GOAL_BUILD_WARM, conf))  # fmt: skip
    b.figures.append(Figure(section, "ReaR ISO", Unit.BYTES, Summary.of([setup.iso.stat().st_size]), GOAL_ISO_SIZE,
                            conf))  # fmt: skip
    boots = []
    for i in range(s.rear_boots):
        b.say(f"ReaR boot {i + 1}/{s.rear_boots} ...")
        try:
            boots.append(rear.boot_to_login(setup.iso, memory="1024M", timeout=300,
                                            serial_log=b.work / f"rear-boot-{i}.log"))  # fmt: skip
        except AsrError as e:
            b.figures.append(Figure(section, "QEMU start → rescue login (BIOS CD, 1024 MiB)", Unit.SECONDS,
                                    note=f"failed: {first_line(e)}"))  # fmt: skip
            return
    b.figures.append(Figure(section, f"QEMU start → rescue login on serial (BIOS CD, {accel_label()}, 1024 MiB; "
                            "menu skipped with Enter)", Unit.SECONDS, Summary.of(boots), GOAL_F2_TCG,
                            f"qemu-system-x86_64 -accel tcg -m 1024M -cdrom {setup.iso.name} -serial ... "
                            f"({PY} --only rear)"))  # fmt: skip
    b.notes.append("ReaR boots with 1024 MiB: the platform notes measured that it needs at least 768 MiB; asr's "
                   "boots use 512 MiB.")


# ------------------------------------------------------------------------------------------------------ report


def read_machine(conditions: str, load: str) -> Machine:
    cpu = "unknown"
    mem = 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    accel = find_accel()
    accel_text = "KVM" if accel is Accel.KVM else "TCG (no usable KVM: /dev/kvm missing or without vmx/svm)"
    return Machine(os.cpu_count() or 0, mem, cpu, dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                   platform.release(), accel_text, load, conditions)  # fmt: skip


def read_cpu_busy() -> float:
    """CPU-seconds the whole machine has spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def read_own_cpu() -> float:
    """CPU-seconds used by this process and its waited-for children (QEMU, tar, zstd, rear, ...)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


MEASURES: dict[str, Callable[[Bench], None]] = {
    "build": measure_build, "iso": measure_iso, "floppy": measure_floppy, "initramfs": measure_initramfs,
    "boot": measure_boot, "memory": measure_memory, "capture": measure_capture, "restore": measure_restore,
    "rehearsal": measure_rehearsal, "rear": measure_rear,
}  # fmt: skip


def run_bench(settings: Settings, conditions: str) -> Report:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    busy0, own0, wall0 = read_cpu_busy(), read_own_cpu(), time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="asr-bench-"))
    b = Bench(settings, work)
    section_times: list[tuple[str, float]] = []
    try:
        for name in SECTIONS:
            if name not in settings.sections:
                continue
            started = time.monotonic()
            try:
                MEASURES[name](b)
            except AsrError as e:  # one section failing does not lose the others
                b.say(f"section {name} failed: {e}")
                b.notes.append(f"Section {name} failed: {type(e).__name__}: {str(e).splitlines()[0]}")
                log.debug("%s", traceback.format_exc())
            section_times.append((name, time.monotonic() - started))
            b.say(f"section {name}: {section_times[-1][1]:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    measured = plan_conditions(os.cpu_count() or 1, time.monotonic() - wall0, read_cpu_busy() - busy0,
                               read_own_cpu() - own0)  # fmt: skip
    machine = read_machine(f"{conditions}; {measured}" if conditions else measured, load)
    here = str(work)  # commands name the bench's temporary directory as $WORK
    figures = tuple(replace(f, command=f.command.replace(here, "$WORK")) for f in b.figures)
    comparisons = tuple(replace(c, command=c.command.replace(here, "$WORK")) for c in b.comparisons)
    return Report(machine, figures, comparisons, b.steps, b.steps_title, b.initramfs_steps,
                  plan_breakdown(b.breakdown, b.initramfs_size) if b.breakdown else (), tuple(b.profiles),
                  b.boot_marks, settings.describe(), tuple(n.replace(here, "$WORK") for n in b.notes),
                  ROW_SECTIONS, PEER_SECTIONS, tuple(section_times))  # fmt: skip


def parse_args(argv: list[str] | None) -> tuple[Settings, str]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="n=1 everywhere, 64 MiB data set, no ReaR install")
    p.add_argument("--only", default="", help=f"comma-separated sections of: {','.join(SECTIONS)}")
    p.add_argument("-n", type=int, default=None, help="cold media builds (and boots, captures) to run")
    p.add_argument("--data-mb", type=int, default=None, help="data set size in MiB (else ASR_BENCH_DATA_MB)")
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--conditions", default="", help="a note on the conditions, for the report (the bench also "
                   "measures how much CPU other processes used)")
    args = p.parse_args(argv)
    s = Settings(data_mib=dataset.read_size_mib(), out=args.out)
    if args.quick:
        s = replace(s, builds=1, warm=2, micro=3, initramfs=1, boots=1, captures=1, guest_rounds=1,
                    data_mib=64, memory_range=(64, 1024, 64), quick=True)  # fmt: skip
    if args.n is not None:
        s = replace(s, builds=args.n, boots=max(args.n, 1), captures=max(args.n, 1))
    if args.data_mb is not None:
        s = replace(s, data_mib=args.data_mb)
    if args.only:
        wanted = tuple(x.strip() for x in args.only.split(",") if x.strip())
        unknown = [x for x in wanted if x not in SECTIONS]
        if unknown:
            p.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        s = replace(s, sections=wanted)
    return s, args.conditions


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        settings, conditions = parse_args(argv)
        report = run_bench(settings, conditions)
    except AsrError as e:
        print(f"bench: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e.exit_code, int) else 1
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(render_report(report))
    for line in render_ratio_lines(report.comparisons):
        print(line)
    for f in report.figures:
        verdict = f" [{f.goal.text}: {f.goal.check(f.summary.median).text}]" if f.goal and f.summary else ""
        print(f"{f.section}: {f.name}: {f.value}{verdict}")
    print(f"bench: wrote {settings.out}")
    return 0
