"""`asr demo` (`make demo`): the rehearsal of a real Debian 12 installation (:func:`run_rehearsal_demo`): the
machine of builder/vm/debian.py (layout 1: GPT, BIOS boot + ESP + ext4 root + swap; made once, then cached under
``~/.cache/asr/machines``), captured on this host with `asr backup` (builder.vm.rehearse.capture_disk_image),
rehearsed with the default verdict (media built for the capture, unattended restore onto a scratch disk in QEMU,
the restored disk booted alone until the restored system's own check line and its login prompt), each phase's
time and the verdict printed.  Needs root (debootstrap, loop devices): :class:`DemoNeedsRootError` otherwise.

:func:`run_sample_rehearsal`: the same with the small embedded sample machine (builder/vm/machine.py, busybox
init, judged by its own verdict line); the benchmark's rehearsal row uses it.

`asr demo --f2` (:func:`run_demo`): build the media of the embedded sample system, boot them headless in QEMU (BIOS, ISO
as a CD, the ASR floppy in drive A:), press F2 as a real keyboard key, confirm the floppy prompt, show the
summary the agent read from the floppy, take two screenshots, power the VM off.  Every step is learnt from the
guest's serial console, not from a timer."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.build import BuildResult, build_media
from builder.vm.debian import DebianSpec, machines_dir, make_debian_image
from builder.vm.qemu import F2_PROMPT, BootMedium, DiskBus, QemuVM, VMError, VMFirmware, VMSpec, find_accel
from builder.vm.rehearse import SIGN_OF_LIFE, RehearsalReport, boot_lines, capture_disk_image, rehearse
from recovery_env.errors import NotRootError

OUT = Path("out")
BOOT_TIMEOUT = 240.0  # seconds to the F2 prompt under TCG (measured: well under a minute)
STEP_TIMEOUT = 90.0


@dataclass(frozen=True)
class DemoResult:
    iso: Path
    floppy: Path
    boot_screen: Path
    summary_screen: Path
    serial_log: Path
    summary: tuple[str, ...]
    build_seconds: float
    boot_to_prompt_seconds: float
    exit_code: int


def read_summary_lines(serial_text: str) -> tuple[str, ...]:
    """The summary as the agent logged it on serial: the ``ASR:   ...`` lines after ``ASR: summary:``."""
    start = serial_text.rfind("ASR: summary:")
    if start < 0:
        return ()
    return tuple(m.group(1) for m in re.finditer(r"^ASR:   (.*)$", serial_text[start:], re.MULTILINE))


def run_demo(out: Path = OUT, *, say: bool = True, media: BuildResult | None = None) -> DemoResult:
    """Build (unless ``media`` is given: tests reuse their build) and boot; screenshots go to ``out``."""

    def note(text: str) -> None:
        if say:
            print(text, flush=True)

    started = time.monotonic()
    if media is None:
        note("asr demo: building the recovery media of the embedded sample system ...")
        media = build_media(out, progress=(lambda line: note("  " + line)) if say else None)
    build_seconds = time.monotonic() - started
    note(f"asr demo: built {media.iso} and {media.floppy} in {build_seconds:.1f} s")
    out.mkdir(parents=True, exist_ok=True)

    spec = VMSpec(iso=media.iso, medium=BootMedium.CDROM, firmware=VMFirmware.BIOS, floppy=media.floppy,
                  accel=find_accel())  # fmt: skip
    workdir = out / "demo-vm"
    boot_png, summary_png = out / "boot-screen.png", out / "summary-screen.png"
    note(f"asr demo: booting QEMU headless (BIOS, ISO as CD, floppy in A:, {spec.accel.value}) ...")
    with QemuVM(spec, workdir=workdir) as vm:
        vm.wait_serial(F2_PROMPT, BOOT_TIMEOUT)
        to_prompt = vm.elapsed()
        note(f"asr demo: the F2 prompt is on the screen after {to_prompt:.1f} s; pressing F2")
        time.sleep(0.3)  # the VGA console paints a moment after the serial one
        vm.screendump(boot_png)
        vm.send_keys("f2")
        m = vm.wait_serial(r"ASR: (F2 pressed|no F2: main menu)", STEP_TIMEOUT)
        if m.group(1).startswith("no F2"):  # the prompt ran out first: the menu's 1 is the same path
            vm.send_keys("1")
        vm.wait_serial(r"Press any key when ready", STEP_TIMEOUT)
        note("asr demo: the floppy prompt is shown; pressing Enter")
        vm.send_keys("enter")
        m = vm.wait_serial(r"ASR: (summary: [^\n]*|error: [^\n]*)", STEP_TIMEOUT)
        if m.group(1).startswith("error"):
            raise VMError(f"the agent could not read the floppy: {m.group(1)}", vm.serial_text[-4000:])
        vm.wait_serial(r"ENTER=Continue +F3=Quit", STEP_TIMEOUT)
        summary = read_summary_lines(vm.serial_text)
        time.sleep(0.3)
        vm.screendump(summary_png)
        note(f"asr demo: {m.group(1)}")
        for line in summary:
            note("    " + line)
        note("asr demo: F3 (main menu), 4 (power off)")
        vm.send_keys("f3")
        vm.wait_serial(r"ASR: state: menu", STEP_TIMEOUT)
        vm.send_keys("4")
        vm.wait_serial(r"ASR: exit 21", STEP_TIMEOUT)
        code = vm.wait_exit(STEP_TIMEOUT)
        serial_log = vm.log_path
    return DemoResult(media.iso, media.floppy, boot_png.resolve(), summary_png.resolve(), serial_log,
                      summary, build_seconds, to_prompt, code)  # fmt: skip


def make_sample_set(work: Path, note: Callable[[str], None] = lambda line: None) -> Path:
    """The sample machine (GPT, 256 MiB) built in ``work`` and captured with `asr backup`: its set directory."""
    from builder.vm.machine import Layout, MachineSpec, PartRole, make_machine_image, read_machine_inputs

    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    note("asr demo: building the sample machine's disk (GPT, 256 MiB: BIOS boot, ESP, root) ...")
    machine = make_machine_image(work / "machine.img", MachineSpec(layout=Layout.GPT), read_machine_inputs())
    note(f"asr demo: {machine.path} built in {time.monotonic() - started:.1f} s; capturing it with `asr backup`")
    root_no = next(p.number for p in machine.partitions if p.role is PartRole.ROOT)
    _backup_img, set_dir = capture_disk_image(machine.path, root_no, machine.plan.spec.hostname, "bios",
                                              work / "capture")  # fmt: skip
    (work / "capture" / "backup.img").unlink(missing_ok=True)  # rehearse makes its own backup medium
    return set_dir


class DemoNeedsRootError(NotRootError):
    """`asr demo` run without root (or without loop devices): the Debian machine and its capture need them."""


def _check_root(what: str) -> None:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        raise DemoNeedsRootError(f"asr demo {what}: run it as root with loop devices (sudo make demo), or run "
                                 "`asr demo --f2` for the F2 tour without root")  # fmt: skip


def run_sample_rehearsal(out: Path = OUT, *, say: bool = True) -> RehearsalReport:
    """The sample machine (GPT, 256 MiB) built, captured and rehearsed under ``out/sample-rehearsal`` (judged by
    its own verdict line: it has no systemd for the rehearsal check)."""
    def note(text: str) -> None:
        if say:
            print(text, flush=True)

    _check_root("captures the sample machine through a loop device")
    work = (out / "sample-rehearsal").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    set_dir = make_sample_set(work, note)
    note(f"asr demo: backup set in {set_dir}; rehearsing its recovery")
    report = rehearse(set_dir, firmware="bios", workdir=work / "rehearse", expect=SIGN_OF_LIFE,
                      progress=(lambda line: note("asr rehearse: " + line)))  # fmt: skip
    note(f"asr demo: {report.verdict.splitlines()[0]} ({time.monotonic() - started:.0f} s in all)")
    note(f"asr demo: report: {report.report_md}")
    return report


DEMO_BACKUP_MIB = 1024  # the capture's backup image (sparse): the set of a ~700 MB system, zstd
DEMO_RESCUE_MEMORY = "768M"
# two virtual CPUs: under TCG each is a host thread, so the restore's decompressor and tar, and the restored
# system's boot, use both cores of a 2-core host
DEMO_CPUS = 2
DEMO_RESTORE_TIMEOUT = 1800.0  # ~700 MB restored: 118 s on a quiet machine (2 CPUs), 340-730 s seen under contention


@dataclass(frozen=True)
class DemoRun:
    report: RehearsalReport
    phases: tuple[tuple[str, float], ...]  # every phase of the demo, in order, with its seconds
    machine_cached: bool
    seconds: float


def render_demo_summary(run: DemoRun) -> list[str]:
    """The demo's last lines: each phase and its time, what the restored system said, the verdict.  Pure."""
    width = max([len("total"), *(len(name) for name, _ in run.phases)])
    lines = ["phases:"]
    lines += [f"  {name:<{width}}  {seconds:7.1f} s" for name, seconds in run.phases]
    lines.append(f"  {'total':<{width}}  {run.seconds:7.1f} s")
    lines += boot_lines(run.report)
    lines.append(f"verdict: {run.report.verdict.splitlines()[0]} in {run.seconds:.0f} s "
                 f"({'machine cached' if run.machine_cached else 'machine built now'})")  # fmt: skip
    lines.append(f"report: {run.report.report_md}")
    return lines


def run_rehearsal_demo(out: Path = OUT, *, say: bool = True, spec: DebianSpec | None = None) -> DemoRun:
    """The real Debian machine (``spec``: a DebianSpec, default layout 1) from the cache or built, captured on
    this host and rehearsed under ``out/demo``; each phase timed."""
    def note(text: str) -> None:
        if say:
            print(text, flush=True)

    _check_root("builds a real Debian installation (debootstrap) and captures it through a loop device")
    spec = spec if spec is not None else DebianSpec()
    work = (out / "demo").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    phases: list[tuple[str, float]] = []
    note(f"asr demo: the Debian 12 machine ({spec.layout}, {spec.disk_mib} MiB), from {machines_dir()} or made "
         "now (debootstrap and a QEMU guest: minutes, once) ...")  # fmt: skip
    t0 = time.monotonic()
    machine = make_debian_image(spec)
    cached = "guest" not in machine.build_seconds  # the guest ran: the image was made now
    phases.append((f"Debian machine ({'cached' if cached else 'built'})", time.monotonic() - t0))
    note(f"asr demo: {machine.disks[0]} ({'cached' if cached else 'built'}) in {phases[-1][1]:.1f} s")
    note("asr demo: capturing it with `asr backup` (root loop-mounted read-only, the ESP read with mtools) ...")
    t0 = time.monotonic()
    backup_img, set_dir = capture_disk_image(machine.disks[0], machine.plan.root.partition, machine.hostname, "bios",
                                             work / "capture", backup_mib=DEMO_BACKUP_MIB)  # fmt: skip
    backup_img.unlink()  # rehearse makes its own backup medium from the set
    phases.append(("capture (asr backup)", time.monotonic() - t0))
    note(f"asr demo: backup set in {set_dir} ({phases[-1][1]:.1f} s); rehearsing its recovery")
    # the machine was installed on a virtio disk (its kernel command line names /dev/vda3): booted the same way
    report = rehearse(set_dir, firmware="bios", workdir=work / "rehearse", memory=DEMO_RESCUE_MEMORY,
                      boot_disk_bus=DiskBus.VIRTIO, restore_timeout=DEMO_RESTORE_TIMEOUT, cpus=DEMO_CPUS,
                      progress=(lambda line: note("asr rehearse: " + line)))  # fmt: skip
    phases += [(p.name, p.seconds) for p in report.phases]
    run = DemoRun(report, tuple((n, round(s, 1)) for n, s in phases), cached, round(time.monotonic() - started, 1))
    for line in render_demo_summary(run):
        note(f"asr demo: {line}")
    return run


def cli_demo(args: argparse.Namespace) -> int:
    if not getattr(args, "f2", False):
        run = run_rehearsal_demo(OUT)
        return 0 if run.report.recoverable else 1
    r = run_demo(OUT)
    print()
    print("asr demo: done.")
    print(f"  recovery ISO:        {r.iso}")
    print(f"  ASR floppy:          {r.floppy}")
    print(f"  boot screen (F2):    {r.boot_screen}")
    print(f"  summary screen:      {r.summary_screen}")
    print(f"  serial console log:  {r.serial_log}")
    print(f"  build took {r.build_seconds:.1f} s; boot to the F2 prompt took {r.boot_to_prompt_seconds:.1f} s "
          f"(QEMU {find_accel().value}); the VM powered off (QEMU exit {r.exit_code})")  # fmt: skip
    return 0 if r.exit_code == 0 else 1
