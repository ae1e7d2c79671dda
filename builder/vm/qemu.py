"""The QEMU launcher: `asr boot`, the demo and the VM tests start the media through this module.

:func:`qemu_argv` is pure: a :class:`VMSpec` in, the command line out (tested by comparing it).  :class:`QemuVM`
runs it through :func:`recovery_env.run.start`, the subprocess choke point's entry for long-running processes
(same checks, log line and test guard as every short command).  The guest's serial console comes through a pair of FIFOs
(``-chardev pipe``), read by a thread into a log that :meth:`QemuVM.wait_serial` matches with escape sequences
stripped; keys go in as real keyboard keys (QMP ``send-key``) or as serial bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

from recovery_env.errors import AsrError, InputError, ToolMissingError
from recovery_env.run import start

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class VMError(AsrError):
    """The virtual machine did not do what was expected.  Carries the tail of the serial log."""

    exit_code = 5

    def __init__(self, message: str, serial_tail: str = "") -> None:
        self.serial_tail = serial_tail
        tail = "\n  | ".join(serial_tail.rstrip().splitlines()[-25:])
        super().__init__(message + (f"\n  last serial console lines:\n  | {tail}" if tail else ""))


class SerialTimeout(VMError):
    """The expected text did not appear on the serial console in time."""


class VMExited(VMError):
    """QEMU ended while we still waited for the guest."""


class VMFirmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"

    def argv(self, vars_copy: Path | None) -> list[str]:
        if self is VMFirmware.BIOS:
            return []
        if vars_copy is None:
            raise InputError("UEFI boot needs a writable copy of the OVMF variable store")
        return [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]  # fmt: skip


class Accel(StrEnum):
    TCG = "tcg"
    KVM = "kvm"


class DiskBus(StrEnum):
    VIRTIO = "virtio"
    IDE = "ide"

    @property
    def device(self) -> str:
        return {"virtio": "virtio-blk-pci", "ide": "ide-hd"}[self.value]


class BootMedium(StrEnum):
    """How the ISO is attached: as a CD-ROM (El Torito) or as a hard disk (isohybrid, like a USB stick)."""

    CDROM = "cdrom"
    DISK = "disk"


@dataclass(frozen=True)
class VMSpec:
    iso: Path | None = None
    medium: BootMedium = BootMedium.CDROM
    firmware: VMFirmware = VMFirmware.BIOS
    floppy: Path | None = None  # None: the floppy drive is there but empty
    floppy_writable: bool = False  # the offline capture writes ASR.SIF onto the floppy
    disks: tuple[Path, ...] = ()
    disk_bus: DiskBus = DiskBus.VIRTIO
    read_only_disks: frozenset[Path] = frozenset()  # of ``disks``: attached write-protected (QEMU readonly=on)
    memory: str = "512M"
    cpus: int = 1  # virtual CPUs; under TCG each is a host thread of its own (QEMU's multi-threaded TCG)
    accel: Accel = Accel.TCG
    headless: bool = True
    kernel: Path | None = None  # direct kernel boot (the ISO stays attached)
    initrd: Path | None = None
    append: str = ""
    name: str = "asr"


def disk_device_id(n: int) -> str:
    """The QEMU device id of ``VMSpec.disks[n]`` (what QMP ``device_del`` names to unplug it)."""
    return f"vdisk{n}"


def check_spec(spec: VMSpec) -> None:
    """Refuse a spec whose files are missing, naming the file: nothing is started."""
    files = [("ISO", spec.iso), ("floppy image", spec.floppy), ("kernel", spec.kernel), ("initrd", spec.initrd)]
    files += [("disk image", d) for d in spec.disks]
    for what, path in files:
        if path is not None and not path.is_file():
            raise InputError(f"{what} {path} does not exist (build the media first with `asr build`)")
    if spec.iso is None and spec.kernel is None and not spec.disks:
        raise InputError("nothing to boot: give an ISO, a kernel or a disk")
    stray = spec.read_only_disks - set(spec.disks)
    if stray:
        raise InputError(f"read-only disk {sorted(stray)[0]} is not one of the VM's disks")
    if not re.fullmatch(r"\d+[MG]?", spec.memory):
        raise InputError(f"memory {spec.memory!r}: expected a size like 512M or 1G")
    if not 1 <= spec.cpus <= 64:
        raise InputError(f"cpus {spec.cpus}: expected 1 to 64")


def qemu_argv(
    spec: VMSpec,
    *,
    serial: str,
    qmp: Path | None,
    vars_copy: Path | None = None,
    chardevs: Sequence[str] = (),
) -> list[str]:
    """The QEMU command line for ``spec``.  ``serial`` is a -serial target (``chardev:ser0``, ``mon:stdio``);
    ``chardevs`` are -chardev definitions it may name.  Pure."""
    argv = [QEMU]
    for chardev in chardevs:
        argv += ["-chardev", chardev]
    argv += ["-name", spec.name, "-machine", "pc", "-accel", spec.accel.value, "-m", spec.memory]
    argv += ["-smp", str(spec.cpus)] if spec.cpus > 1 else []
    argv += ["-no-reboot", "-rtc", "base=utc", "-device", "virtio-rng-pci"]
    argv += spec.firmware.argv(vars_copy)
    if spec.headless:
        argv += ["-display", "none"]
    if spec.iso is not None:
        boot = ",bootindex=0" if spec.kernel is None else ""  # a direct kernel boot takes boot index 0 itself
        if spec.medium is BootMedium.CDROM:
            argv += ["-drive", f"if=none,id=cd0,format=raw,media=cdrom,readonly=on,file={spec.iso}",
                     "-device", f"ide-cd,drive=cd0{boot}"]  # fmt: skip
        else:  # snapshot: the guest may write to "its USB stick" without changing the file
            argv += ["-drive", f"if=none,id=usb0,format=raw,snapshot=on,file={spec.iso}",
                     "-device", f"ide-hd,drive=usb0{boot}"]  # fmt: skip
    if spec.floppy is not None:
        ro = "" if spec.floppy_writable else "readonly=on,"
        argv += ["-drive", f"if=floppy,index=0,format=raw,{ro}file={spec.floppy}"]
    else:
        argv += ["-drive", "if=floppy,index=0"]
    for n, disk in enumerate(spec.disks):
        ro = "readonly=on," if disk in spec.read_only_disks else ""
        argv += ["-drive", f"if=none,id=disk{n},format=raw,{ro}file={disk}",
                 "-device", f"{spec.disk_bus.device},drive=disk{n},id={disk_device_id(n)}"]  # fmt: skip
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        if spec.append:
            argv += ["-append", spec.append]
    if qmp is not None:
        argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    argv += ["-serial", serial, "-parallel", "none"]
    if serial != "mon:stdio":
        argv += ["-monitor", "none"]
    return argv


@cache
def find_accel() -> Accel:
    """KVM only where it really works: ASR_ACCEL=kvm|tcg decides; else /dev/kvm must open and the CPU must
    show vmx or svm (a PVM /dev/kvm without them fails in the firmware: see the platform notes)."""
    forced = os.environ.get("ASR_ACCEL", "").lower()
    if forced:
        try:
            return Accel(forced)
        except ValueError:
            raise InputError(f"ASR_ACCEL={forced!r}: expected kvm or tcg") from None
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return Accel.TCG
    return Accel.KVM if {"vmx", "svm"} & set(flags) else Accel.TCG


_ANSI = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|O.|[^\[\]()O])")


def strip_ansi(data: bytes) -> str:
    """Serial output as text: escape sequences and carriage returns removed."""
    return _ANSI.sub(b"", data).replace(b"\r", b"").decode("utf-8", errors="replace")


# Keys by name for send_keys: our names → QMP qcodes (one key or a combination)
QCODES: dict[str, tuple[str, ...]] = {
    "f1": ("f1",), "f2": ("f2",), "f3": ("f3",), "enter": ("ret",), "esc": ("esc",), "space": ("spc",),
    **{str(n): (str(n),) for n in range(10)},
    **{c: (c,) for c in "abcdefghijklmnopqrstuvwxyz"},
}  # fmt: skip


class QemuVM:
    """A running QEMU.  Context manager: QEMU is killed (and its files removed) on exit."""

    def __init__(self, spec: VMSpec, *, workdir: Path | None = None, log: Path | None = None) -> None:
        check_spec(spec)
        if shutil.which(QEMU) is None:
            raise ToolMissingError(QEMU, "apt-get install qemu-system-x86")
        self.spec = spec
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="asr-vm-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = log or self.workdir / "serial.log"
        self.qmp_path = self.workdir / "qmp.sock"
        self._fifo = self.workdir / "serial"
        self._raw = bytearray()
        self._lock = threading.Lock()
        self._cursor = 0  # wait_serial looks at text after the last match
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: Any = None
        self._serial_in: int | None = None
        self._reader: threading.Thread | None = None
        self.started_at = 0.0
        self.argv: list[str] = []

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> QemuVM:
        vars_copy = None
        if self.spec.firmware is VMFirmware.UEFI:
            vars_copy = self.workdir / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
        for suffix in (".in", ".out"):
            p = Path(f"{self._fifo}{suffix}")
            if p.exists():
                p.unlink()
            os.mkfifo(p)
        if self.qmp_path.exists():
            self.qmp_path.unlink()
        self.argv = qemu_argv(self.spec, serial="chardev:ser0", qmp=self.qmp_path, vars_copy=vars_copy,
                              chardevs=[f"pipe,id=ser0,path={self._fifo}"])  # fmt: skip
        # QEMU opens both FIFOs O_RDWR, so neither side blocks on open
        self._stderr = open(self.workdir / "qemu.stderr", "wb")  # closed in close()
        self.started_at = time.monotonic()
        self._proc = start(self.argv, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr)
        out_fd = os.open(f"{self._fifo}.out", os.O_RDONLY | os.O_NONBLOCK)
        self._serial_in = os.open(f"{self._fifo}.in", os.O_RDWR)
        self._reader = threading.Thread(target=self._read_serial, args=(out_fd,), daemon=True)
        self._reader.start()
        self._connect_qmp()
        return self

    def _connect_qmp(self, timeout: float = 15.0) -> None:
        import logging

        from qemu.qmp.legacy import QEMUMonitorProtocol

        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # failures are reported once, by us

        deadline = time.monotonic() + timeout
        while not self.qmp_path.exists():
            self._check_running("while waiting for its QMP socket")
            if time.monotonic() > deadline:
                raise VMError(f"QEMU did not open its QMP socket {self.qmp_path} within {timeout:g} s")
            time.sleep(0.05)
        qmp = QEMUMonitorProtocol(str(self.qmp_path))
        try:
            qmp.connect(negotiate=True)
        except Exception as e:  # QEMU refused its command line and quit: say why, once
            if self._proc is not None:
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            self._check_running("while its QMP connection was set up")
            raise VMError(f"cannot talk to QEMU over QMP ({self.qmp_path}): {e}{self._stderr_tail()}") from None
        qmp.settimeout(30.0)
        self._qmp = qmp

    def _read_serial(self, fd: int) -> None:
        import select

        with open(self.log_path, "ab") as log:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if data:
                        with self._lock:
                            self._raw += data
                        log.write(data)
                        log.flush()
                        continue
                if self._proc is None or self._proc.poll() is not None:
                    break
        os.close(fd)

    def __enter__(self) -> QemuVM:
        return self.start() if self._proc is None else self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Kill QEMU if it still runs; close our ends; remove the work directory if it is ours."""
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:  # the monitor may already be gone with QEMU
                pass
            self._qmp = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if self._serial_in is not None:
            os.close(self._serial_in)
            self._serial_in = None
        if hasattr(self, "_stderr"):
            self._stderr.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def _check_running(self, doing: str) -> None:
        if self._proc is None:
            raise VMError("QEMU was not started")
        code = self._proc.poll()
        if code is not None:
            if self._reader is not None:
                self._reader.join(5)
            raise VMExited(f"QEMU exited with code {code} {doing}{self._stderr_tail()}", self.serial_text[-4000:])

    def _stderr_tail(self) -> str:
        try:
            text = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"; QEMU said: {text[-800:]}" if text else ""

    # -- serial console -----------------------------------------------------------------------------------
    @property
    def serial_raw(self) -> bytes:
        with self._lock:
            return bytes(self._raw)

    @property
    def serial_text(self) -> str:
        return strip_ansi(self.serial_raw)

    def mark(self) -> None:
        """Later waits only look at serial output from now on."""
        self._cursor = len(self.serial_text)

    def wait_serial(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears on the serial console after the previous match (or mark)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_text
            m = regex.search(text, self._cursor)
            if m is not None:
                self._cursor = m.end()
                return m
            if self._proc is not None and self._proc.poll() is not None:
                self._check_running(f"while waiting for {pattern!r} on the serial console")
            if time.monotonic() > deadline:
                raise SerialTimeout(f"{pattern!r} did not appear on the serial console within {timeout:g} s",
                                    text[-4000:])  # fmt: skip
            time.sleep(0.1)

    def send_serial(self, data: bytes) -> None:
        """Bytes typed on the serial terminal (e.g. b"\\x1bOQ", what xterm sends for F2)."""
        if self._serial_in is None:
            raise VMError("QEMU was not started")
        os.write(self._serial_in, data)

    # -- QMP ------------------------------------------------------------------------------------------------
    def qmp(self, command: str, **args: object) -> Any:
        self._check_running(f"before QMP {command}")
        if self._qmp is None:
            raise VMError("no QMP connection")
        return self._qmp.cmd(command, **args)

    def send_keys(self, *keys: str, hold_ms: int = 100) -> None:
        """Press keys on the VM's keyboard, one after the other: names of :data:`QCODES` ("f2", "enter", "4")."""
        for key in keys:
            codes = QCODES.get(key.lower())
            if codes is None:
                raise InputError(f"unknown key {key!r}: known keys are {', '.join(QCODES)}")
            self.qmp("send-key", keys=[{"type": "qcode", "data": c} for c in codes], **{"hold-time": hold_ms})
            time.sleep(hold_ms / 1000 + 0.05)

    def screendump(self, png: Path) -> Path:
        """A PNG of the VGA screen (QEMU writes the file; the path must be absolute for it)."""
        png = png.resolve()
        png.parent.mkdir(parents=True, exist_ok=True)
        self.qmp("screendump", filename=str(png), format="png")
        return png

    def change_floppy(self, image: Path) -> None:
        """Insert a floppy image into drive A: (as a person would)."""
        self.qmp("blockdev-change-medium", device="floppy0", filename=str(image.resolve()), format="raw",
                 **{"read-only-mode": "read-only"})  # fmt: skip

    def unplug_disk(self, n: int, timeout: float = 120.0) -> None:
        """Pull ``spec.disks[n]`` out of the running machine (QMP ``device_del``: a PCI hot-unplug the guest
        acknowledges); returns once QEMU reports the device deleted.  Only virtio disks can be unplugged."""
        if self.spec.disk_bus is not DiskBus.VIRTIO:
            raise InputError(f"{self.spec.disk_bus.value} disks cannot be hot-unplugged; use virtio")
        device = disk_device_id(n)
        self.qmp("device_del", id=device)
        deadline = time.monotonic() + timeout
        while True:
            event = self._qmp.pull_event(wait=max(deadline - time.monotonic(), 0.1))
            if event and event.get("event") == "DEVICE_DELETED" and event.get("data", {}).get("device") == device:
                return
            if time.monotonic() > deadline:
                raise VMError(f"the guest did not release disk {device} within {timeout:g} s", self.serial_text[-4000:])

    def plug_disk(self, n: int, image: Path, *, read_only: bool = False) -> None:
        """Attach ``image`` as a virtio disk again after :meth:`unplug_disk` (a new drive node, the same device
        id): as a person plugs the backup disk back in."""
        node = f"replug{n}-{int(time.monotonic() * 1000)}"
        self.qmp("blockdev-add", driver="raw", **{"node-name": node, "read-only": read_only},
                 file={"driver": "file", "filename": str(image.resolve()), "read-only": read_only})  # fmt: skip
        self.qmp("device_add", driver=DiskBus.VIRTIO.device, drive=node, id=disk_device_id(n))

    def power_cut(self) -> int:
        """Pull the plug: SIGKILL to QEMU (nothing flushed, no shutdown); QEMU's exit status."""
        if self._proc is None:
            raise VMError("QEMU was not started")
        self._proc.kill()
        code = self._proc.wait(30)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def eject_floppy(self) -> None:
        self.qmp("eject", device="floppy0", force=True)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for QEMU to end (the guest powered off or rebooted with -no-reboot); its exit code."""
        if self._proc is None:
            raise VMError("QEMU was not started")
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VMError(f"QEMU did not exit within {timeout:g} s", self.serial_text[-4000:]) from None
        if self._reader is not None:
            self._reader.join(5)
        return code

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at


# -- `asr boot` ---------------------------------------------------------------------------------------------------


def read_boot_files(iso: Path, workdir: Path) -> tuple[Path, Path, str]:
    """Kernel, initrd and the default kernel command line of an ASR ISO, copied out for a direct kernel boot
    (used when `asr boot --append` adds options)."""
    import pycdlib

    from builder.media.bootloader import MEDIA_LAYOUT

    cd = pycdlib.PyCdlib()
    cd.open(str(iso))
    try:
        paths = {"kernel": MEDIA_LAYOUT.kernel, "initrd": MEDIA_LAYOUT.initrd, "cfg": MEDIA_LAYOUT.isolinux_cfg}
        out: dict[str, Path] = {}
        for what, rr_path in paths.items():
            target = workdir / Path(rr_path).name
            try:
                with open(target, "wb") as f:
                    cd.get_file_from_iso_fp(f, rr_path=rr_path)
            except pycdlib.pycdlibexception.PyCdlibException as e:
                raise InputError(f"{iso}: no {rr_path} ({e}); is it an ASR ISO?") from None
            out[what] = target
    finally:
        cd.close()
    cfg = out["cfg"].read_text(errors="replace")
    m = re.search(r"^\s*append\s+(.*)$", cfg, re.MULTILINE)
    return out["kernel"], out["initrd"], m.group(1).strip() if m else ""


@contextmanager
def _raw_stdin() -> Iterator[bool]:
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


CTRL_RIGHT_BRACKET = b"\x1d"
F2_PROMPT = r"Press F2 to run Automated System Recovery \(ASR\)"


def make_spec(args: argparse.Namespace, workdir: Path) -> VMSpec:
    floppy: Path | None = None
    if not args.no_floppy:
        floppy = args.floppy or Path(args.iso).with_name("asr-floppy.img")
        if args.floppy is None and not floppy.is_file():
            floppy = None  # no floppy built next to the ISO: an empty drive
    spec = VMSpec(
        iso=Path(args.iso),
        medium=BootMedium.DISK if args.iso_as_disk else BootMedium.CDROM,
        firmware=VMFirmware.UEFI if args.uefi else VMFirmware.BIOS,
        floppy=floppy,
        disks=tuple(Path(d) for d in args.disk),
        memory=args.memory,
        accel=find_accel(),
        headless=args.headless,
    )
    check_spec(spec)
    if args.append:
        kernel, initrd, default = read_boot_files(Path(args.iso), workdir)
        spec = replace(spec, kernel=kernel, initrd=initrd, append=f"{default} {args.append}".strip())
    return spec


def cli_boot(args: argparse.Namespace) -> int:
    """`asr boot`: start the media; the serial console is this terminal (Ctrl-] stops the VM)."""
    workdir = Path(tempfile.mkdtemp(prefix="asr-boot-"))
    try:
        spec = make_spec(args, workdir)
        print(f"asr boot: {spec.firmware.value.upper()}, ISO as {spec.medium.value}, "
              f"floppy {spec.floppy or 'drive empty'}, accel {spec.accel.value}; Ctrl-] stops the VM",
              file=sys.stderr)  # fmt: skip
        with QemuVM(spec, workdir=workdir) as vm, _raw_stdin() as interactive:
            return _relay(vm, args.screenshot, interactive)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _relay(vm: QemuVM, screenshot: Path | None, interactive: bool) -> int:
    """Serial console <-> this terminal until QEMU ends; a screenshot when the F2 prompt first shows.

    Standard input goes to the serial port (a terminal in raw mode, or a pipe); at its end the VM runs on
    until it powers off.  Ctrl-] stops the VM."""
    import select

    del interactive  # raw mode or not, the bytes are the same
    shown = 0
    want_shot = screenshot is not None
    stdin: int | None = sys.stdin.fileno()
    out = sys.stdout.buffer
    while vm.returncode is None:
        raw = vm.serial_raw
        if len(raw) > shown:
            out.write(raw[shown:])
            out.flush()
            shown = len(raw)
        if want_shot and screenshot is not None and re.search(F2_PROMPT, vm.serial_text):
            time.sleep(0.5)  # let the VGA console finish painting
            path = vm.screendump(screenshot)
            print(f"\r\nasr boot: screenshot of the F2 prompt saved as {path} ({vm.elapsed():.1f} s)\r",
                  file=sys.stderr)  # fmt: skip
            want_shot = False
        if stdin is None:
            time.sleep(0.1)
            continue
        if not select.select([stdin], [], [], 0.1)[0]:
            continue
        data = os.read(stdin, 1024)
        if not data:
            stdin = None  # end of input: keep showing the console until the VM ends
            continue
        if CTRL_RIGHT_BRACKET in data:
            print("\r\nasr boot: stopping the VM\r", file=sys.stderr)
            return 0
        vm.send_serial(data)
    raw = vm.serial_raw
    out.write(raw[shown:])
    out.flush()
    return vm.wait_exit(10)
