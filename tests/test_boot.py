"""Acceptance 2–5 of the media issue: the built ISO and floppy boot in QEMU (BIOS and UEFI, as a CD and as a
hard disk) to the "Press F2" screen, and F2 reads the floppy.  The verdict comes from the guest's serial console.

One session-scoped build is shared.  Serial logs and screendumps are kept under tests/artifacts/boot/.
"""

from __future__ import annotations

import os
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.build import BuildResult, build_media
from builder.media.fatimage import make_floppy
from builder.vm.qemu import F2_PROMPT, BootMedium, QemuVM, VMFirmware, VMSpec, find_accel, strip_ansi
from recovery_env.model.sif import parse_asr_sif, reseal
from recovery_env.run import run_bytes

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts" / "boot"
PROMPT_SECONDS = 600  # asr.timeout for these media: tests press keys under TCG, never racing the countdown
BOOT_TIMEOUT = 180.0
STEP_TIMEOUT = 60.0
FLOPPY_PROMPT = r"Press any key when ready"


@pytest.fixture(scope="session")
def media() -> BuildResult:
    (ARTIFACTS / "boot-times.txt").unlink(missing_ok=True)
    return build_media(ARTIFACTS / "media", timeout=PROMPT_SECONDS)


@pytest.fixture(scope="session")
def sample_sif(media: BuildResult) -> str:
    """ASR.SIF as it is on the built floppy, read with mtools (an independent FAT reader)."""
    return run_bytes(["mtype", "-i", str(media.floppy), "::ASR.SIF"]).decode("utf-8")


def boot(name: str, **spec: object) -> QemuVM:
    workdir = ARTIFACTS / name
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.png"):
        old.unlink()
    return QemuVM(VMSpec(accel=find_accel(), **spec), workdir=workdir)  # type: ignore[arg-type]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def record(name: str, seconds: float) -> None:
    with open(ARTIFACTS / "boot-times.txt", "a") as f:
        f.write(f"{name}: F2 prompt after {seconds:.1f} s\n")


def reach_f2(vm: QemuVM, name: str) -> float:
    vm.wait_serial(F2_PROMPT, BOOT_TIMEOUT)
    took = vm.elapsed()
    record(name, took)
    return took


def read_summary(vm: QemuVM, media: BuildResult, sif: str) -> None:
    m = vm.wait_serial(r"ASR: floppy read: ASR\.SIF \((\d+) bytes\), ASRPNP\.SIF \((\d+) bytes\) from /dev/fd0",
                       STEP_TIMEOUT)  # fmt: skip
    assert int(m.group(1)) == len(sif.encode("utf-8"))
    d = parse_asr_sif(sif)
    vm.wait_serial(rf"ASR: summary: host={media.hostname} disks={len(d.disks)} partitions={len(d.partitions)} "
                   rf"filesystems={len(d.filesystems)}", STEP_TIMEOUT)  # fmt: skip
    vm.wait_serial(rf"System: +{media.hostname}", STEP_TIMEOUT)  # the screen itself, not only the log line
    vm.wait_serial(r"ENTER=Continue +F3=Quit", STEP_TIMEOUT)


def quit_and_power_off(vm: QemuVM, *, serial: bool = False) -> None:
    if serial:
        vm.send_serial(b"\x1bOR")
    else:
        vm.send_keys("f3")
    vm.wait_serial(r"ASR: state: menu", STEP_TIMEOUT)
    if serial:
        vm.send_serial(b"4")
    else:
        vm.send_keys("4")
    vm.wait_serial(r"ASR: exit 21 \(power off\)", STEP_TIMEOUT)
    assert vm.wait_exit(STEP_TIMEOUT) == 0


# -- 2. BIOS, ISO as CD + floppy --------------------------------------------------------------------------------


def test_bios_cd_f2_key_reads_the_floppy_summary_and_screenshots(media: BuildResult, sample_sif: str) -> None:
    with boot("bios-cd-keyboard", iso=media.iso, floppy=media.floppy) as vm:
        reach_f2(vm, "BIOS, ISO as CD")
        time.sleep(0.5)
        prompt_png = vm.screendump(ARTIFACTS / "bios-cd-keyboard" / "f2-prompt.png")
        vm.send_keys("f2")  # a real keyboard key: arrives on tty1 as ESC [ [ B
        vm.wait_serial(r"ASR: F2 pressed \(on tty1\)", STEP_TIMEOUT)
        vm.wait_serial(r"Please insert the disk labeled\s+Automated System Recovery Disk\s+into the floppy drive "
                       r"\(A:\)\.\s+" + FLOPPY_PROMPT, STEP_TIMEOUT)  # fmt: skip
        vm.send_keys("enter")
        read_summary(vm, media, sample_sif)
        time.sleep(0.5)
        summary_png = vm.screendump(ARTIFACTS / "bios-cd-keyboard" / "summary.png")
        width, height = png_size(prompt_png)
        assert png_size(summary_png) == (width, height) and width >= 640 and height >= 400
        assert prompt_png.read_bytes() != summary_png.read_bytes()
        quit_and_power_off(vm)  # F3 from the summary (ENTER goes on to the restore: the restore issue's tests)
    assert "Traceback" not in vm.serial_text


def test_bios_cd_f2_as_serial_bytes(media: BuildResult, sample_sif: str) -> None:
    with boot("bios-cd-serial", iso=media.iso, floppy=media.floppy) as vm:
        reach_f2(vm, "BIOS, ISO as CD (serial F2)")
        vm.send_serial(b"\x1bOQ")  # what xterm, vt100, screen and tmux send for F2
        vm.wait_serial(r"ASR: F2 pressed \(on ttyS0\)", STEP_TIMEOUT)
        vm.wait_serial(FLOPPY_PROMPT, STEP_TIMEOUT)
        vm.send_serial(b"\r")
        read_summary(vm, media, sample_sif)
        quit_and_power_off(vm, serial=True)


# -- 3. UEFI, ISO as CD; 4. the ISO as a hard disk ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("firmware", "medium"),
    [(VMFirmware.UEFI, BootMedium.CDROM), (VMFirmware.BIOS, BootMedium.DISK), (VMFirmware.UEFI, BootMedium.DISK)],
    ids=["uefi-cd", "bios-disk", "uefi-disk"],
)
def test_reaches_the_f2_prompt(media: BuildResult, firmware: VMFirmware, medium: BootMedium) -> None:
    name = f"{firmware.value}-{medium.value}"
    with boot(name, iso=media.iso, floppy=media.floppy, firmware=firmware, medium=medium) as vm:
        reach_f2(vm, f"{firmware.value.upper()}, ISO as {medium.value}")
        vm.screendump(ARTIFACTS / name / "f2-prompt.png")
        # the agent is alive and answers: F2 from serial gets the floppy prompt
        vm.send_serial(b"\x1b[12~")  # rxvt's F2
        vm.wait_serial(r"ASR: F2 pressed \(on ttyS0\)", STEP_TIMEOUT)
        vm.wait_serial(FLOPPY_PROMPT, STEP_TIMEOUT)


# -- 5. negative paths ----------------------------------------------------------------------------------------------


def test_no_floppy_inserted_then_insert_and_retry(media: BuildResult, sample_sif: str) -> None:
    with boot("no-floppy", iso=media.iso, floppy=None) as vm:
        reach_f2(vm, "BIOS, ISO as CD, empty floppy drive")
        vm.send_keys("f2")
        vm.wait_serial(FLOPPY_PROMPT, STEP_TIMEOUT)
        vm.send_keys("enter")
        vm.wait_serial(r"ASR: error: no-disk-in-drive: no disk in the floppy drive /dev/fd0", STEP_TIMEOUT)
        vm.wait_serial(r"There is no disk in the floppy drive \(A:\)\.", STEP_TIMEOUT)
        vm.wait_serial(r"Press any key to try again, or F3 to quit to the main menu\.", STEP_TIMEOUT)
        vm.screendump(ARTIFACTS / "no-floppy" / "no-disk-error.png")
        vm.change_floppy(media.floppy)  # a person puts the disk in
        vm.send_keys("enter")
        vm.wait_serial(r"ASR: retry", STEP_TIMEOUT)
        read_summary(vm, media, sample_sif)
        quit_and_power_off(vm)


@pytest.fixture(scope="session")
def invalid_floppy(sample_sif: str) -> tuple[Path, int]:
    """A floppy whose ASR.SIF has a bad value on one line (re-sealed, as after a careless edit)."""
    lines = sample_sif.splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if line.startswith("disk=") and " start=" in line)
    start = lines[n].split(" start=")[1].split()[0]
    lines[n] = lines[n].replace(f" start={start} ", f" start={start}x ")
    image = ARTIFACTS / "invalid-floppy.img"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(make_floppy({"ASR.SIF": reseal("".join(lines)).encode()}, label="ASR DISK", epoch=0))
    return image, n + 1


def test_invalid_asr_sif_names_the_line(media: BuildResult, invalid_floppy: tuple[Path, int]) -> None:
    image, line = invalid_floppy
    with boot("invalid-sif", iso=media.iso, floppy=image) as vm:
        reach_f2(vm, "BIOS, ISO as CD, invalid ASR.SIF")
        vm.send_keys("f2")
        vm.wait_serial(FLOPPY_PROMPT, STEP_TIMEOUT)
        vm.send_keys("enter")
        m = vm.wait_serial(r"ASR: error: asr-sif-invalid: ASR\.SIF line (\d+), \[PARTITIONS\] record 1[^\n]*start",
                           STEP_TIMEOUT)  # fmt: skip
        assert int(m.group(1)) == line
        vm.wait_serial(r"The ASR files on the floppy are not valid\.", STEP_TIMEOUT)
        vm.screendump(ARTIFACTS / "invalid-sif" / "invalid-sif-error.png")
        quit_and_power_off(vm)
    assert "Traceback" not in vm.serial_text


# -- `asr boot` ---------------------------------------------------------------------------------------------------


def test_asr_boot_cli_screenshot_append_and_serial_on_stdio(media: BuildResult) -> None:
    """`asr boot --headless --screenshot --append`: the serial console is the command's stdin/stdout; the
    --append options reach the agent (direct kernel boot of the ISO's kernel with the ISO's command line)."""
    shot = ARTIFACTS / "asr-boot-cli" / "f2-prompt.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "builder.cli", "boot", "--headless", "--iso", str(media.iso),
            "--floppy", str(media.floppy), "--screenshot", str(shot),
            "--append", "asr.timeout=3 asr.bogus=1"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    stdout_fd = proc.stdout.fileno()
    out = b""

    def until(pattern: str, timeout: float) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while not re.search(pattern, strip_ansi(out)):
            assert time.monotonic() < deadline, f"{pattern!r} not seen; serial:\n{strip_ansi(out)[-3000:]}"
            if select.select([stdout_fd], [], [], 0.2)[0]:
                out += os.read(stdout_fd, 65536)

    try:
        until(r"ASR: agent \S+ started \(timeout=3 ", BOOT_TIMEOUT)  # --append reached the agent
        until(r"ASR: warning: unknown boot option 'asr\.bogus=1'", STEP_TIMEOUT)
        until(r"ASR: no F2: main menu", STEP_TIMEOUT)  # the 3 s ran out
        proc.stdin.write(b"4")  # typed on the serial console: power off
        proc.stdin.flush()
        until(r"ASR: exit 21 \(power off\)", STEP_TIMEOUT)
        assert proc.wait(STEP_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert f"screenshot of the F2 prompt saved as {shot}" in err
    assert png_size(shot)[0] >= 640


def test_demo_flow(media: BuildResult, tmp_path: Path) -> None:
    """`asr demo` past its build step: F2 by key, Enter at the floppy prompt, summary, screenshots, power off."""
    from builder.vm.demo import run_demo

    r = run_demo(tmp_path, say=False, media=media)
    assert r.exit_code == 0
    assert r.summary[0].startswith(f"System:      {media.hostname}, ")
    assert any(line.startswith("Backup set:") for line in r.summary)
    assert png_size(r.boot_screen) == png_size(r.summary_screen)
    assert r.boot_screen.read_bytes() != r.summary_screen.read_bytes()
    assert "ASR: exit 21 (power off)" in strip_ansi(r.serial_log.read_bytes())
    record("demo (BIOS, ISO as CD)", r.boot_to_prompt_seconds)
