"""The agent on the host: boot options, screens, and the whole state machine run as `python -m recovery_env` on
two real pseudo-terminals (tty1 and ttyS0 stand-ins), with a real directory of files standing in for /dev/fd0
(reading the floppy device itself is tested in QEMU: tests/test_boot.py)."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.vm.qemu import strip_ansi
from recovery_env.agent.cmdline import BootOptions, Mode, parse_cmdline, read_cmdline
from recovery_env.agent.console import Consoles, ConsoleSpec
from recovery_env.agent.floppy import read_floppy
from recovery_env.agent.screens import HEIGHT, WIDTH, Screen, render_screen, render_summary, summary_log_line
from recovery_env.errors import DescriptorMissingError, NoFloppyDriveError, NotFatError
from recovery_env.model.descriptor import (
    GPT_ESP,
    Archive,
    BackupSet,
    Bootloader,
    BootloaderKind,
    Compression,
    Descriptor,
    Device,
    DeviceInventory,
    Disk,
    Filesystem,
    Firmware,
    FsType,
    Mount,
    PartFlag,
    Partition,
    SystemInfo,
    TableType,
)
from recovery_env.model.sif import reseal
from recovery_env.model.sif_render import render_asr_sif, render_asrpnp_sif

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30

# -- a sample system -------------------------------------------------------------------------------------------


def sample_descriptor(hostname: str = "sample-host") -> Descriptor:
    disk = Disk(key="disk1", size_bytes=4 * GIB, logical_sector_size=512, physical_sector_size=512,
                table=TableType.GPT, disk_id="3f1a5c2e-8d4b-4e6f-9a7c-0b1d2e3f4a5b", critical=True,
                device="/dev/sda", model="QEMU HARDDISK")  # fmt: skip
    linux = "0fc63daf-8483-4772-8e79-3d69d8477de4"
    swap = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
    parts = (
        Partition(
            "disk1",
            1,
            2048,
            1048576,
            GPT_ESP,
            partuuid="11111111-2222-4333-8444-555555555551",
            name="EFI",
            flags=(PartFlag.ESP,),
        ),
        Partition("disk1", 2, 1050624, 6291456, linux, partuuid="11111111-2222-4333-8444-555555555552", name="root"),
        Partition("disk1", 3, 7342080, 1044480, swap, partuuid="11111111-2222-4333-8444-555555555553", name="swap"),
    )
    fss = (
        Filesystem("fs1", "disk1p1", FsType.VFAT, uuid="ABCD-1234", label="EFI", fat_size=32),
        Filesystem("fs2", "disk1p2", FsType.EXT4, uuid="aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", label="root"),
        Filesystem("fs3", "disk1p3", FsType.SWAP, uuid="aaaaaaaa-bbbb-4ccc-8ddd-ffffffffffff", backup=False),
    )
    mounts = (
        Mount("/", "fs2", passno=1),
        Mount("/boot/efi", "fs1", options="umask=0077", passno=2),
        Mount("swap", "fs3", options="sw"),
    )
    system = SystemInfo(hostname=hostname, machine_id="0123456789abcdef0123456789abcdef", architecture="x86_64",
                        firmware=Firmware.UEFI, kernel="6.1.0-56-amd64", os_release="Debian GNU/Linux 12 (bookworm)",
                        captured_at="2026-11-26T01:00:00Z", tool_version="asr 0.1.0")  # fmt: skip
    backup = BackupSet(media_label="ASRBACKUP", media_uuid="", path="/asr/sample-host", compression=Compression.ZSTD,
                       manifest="MANIFEST", manifest_sha256="a" * 64, file_count=1234,
                       archives=(Archive("fs1", "fs1.tar.zst", 1000, "b" * 64, 10),
                                 Archive("fs2", "fs2.tar.zst", 500000, "c" * 64, 1224)))  # fmt: skip
    loader = Bootloader(BootloaderKind.GRUB_EFI, disk="disk1", esp_mountpoint="/boot/efi", efi_directory="debian")
    return Descriptor(system, (disk,), parts, fss, mounts, loader, backup)


def sample_inventory() -> DeviceInventory:
    return DeviceInventory("sample-host", (Device("pci", "0000:00:01.1", "8086", "7010", "0x010180",
                                                  driver="ata_piix", modules=("ata_piix",)),))  # fmt: skip


@pytest.fixture(scope="module")
def asr_sif() -> str:
    return render_asr_sif(sample_descriptor())


@pytest.fixture
def floppy_dir(tmp_path: Path, asr_sif: str) -> Path:
    d = tmp_path / "floppy"
    d.mkdir()
    (d / "ASR.SIF").write_text(asr_sif)
    (d / "ASRPNP.SIF").write_text(render_asrpnp_sif(sample_inventory()))
    return d


def broken_sif(text: str) -> tuple[str, int]:
    """The sample ASR.SIF with a bad partition start, re-sealed (a deliberate but wrong edit); the line number."""
    lines = text.splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if line.startswith("disk=disk1 number=2 "))
    lines[n] = lines[n].replace("start=1050624", "start=10x50624")
    return reseal("".join(lines)), n + 1


# -- boot options ----------------------------------------------------------------------------------------------


def test_cmdline_defaults_and_values() -> None:
    assert parse_cmdline("BOOT_IMAGE=/live/vmlinuz console=ttyS0 quiet") == BootOptions()
    o = parse_cmdline("console=tty0 asr.timeout=30 asr.unattended=1 asr.dryrun=yes asr.poweroff=on "
                      "asr.mode=menu asr.floppy=/dev/sdb")  # fmt: skip
    assert o == BootOptions(timeout=30, unattended=True, dryrun=True, poweroff=True, mode=Mode.MENU,
                            floppy="/dev/sdb")  # fmt: skip
    assert parse_cmdline("asr.unattended asr.timeout=5 asr.timeout=0").timeout == 0  # later words win
    assert parse_cmdline("asr.unattended").unattended is True
    assert parse_cmdline("asr.dryrun=0").dryrun is False


def test_cmdline_unknown_and_bad_values_are_warnings_not_crashes() -> None:
    o = parse_cmdline("asr.colour=blue asr.timeout=soon asr.unattended=maybe asr.mode=fast asr.floppy=fd0")
    assert (o.timeout, o.unattended, o.mode, o.floppy) == (8, False, Mode.ASK, "/dev/fd0")
    assert len(o.warnings) == 5
    assert "unknown boot option 'asr.colour=blue'" in o.warnings[0]
    assert "asr.timeout=soon: expected a whole number of seconds" in o.warnings[1]
    assert "asr.mode=fast: expected one of ask, menu, shell" in o.warnings[3]
    assert "timeout" in parse_cmdline("asr.timeout=99999").warnings[0]


def test_read_cmdline_file(tmp_path: Path) -> None:
    f = tmp_path / "cmdline"
    f.write_text("console=ttyS0,115200 asr.timeout=3\n")
    assert read_cmdline(str(f)).timeout == 3
    missing = read_cmdline(str(tmp_path / "none"))
    assert missing.timeout == 8 and "cannot read" in missing.warnings[0]


# -- screens ---------------------------------------------------------------------------------------------------


def test_summary_lines() -> None:
    lines = render_summary(sample_descriptor(), sample_inventory())
    text = "\n".join(lines)
    assert lines[0] == "System:      sample-host, Debian GNU/Linux 12 (bookworm)"
    assert lines[1] == "             x86_64, UEFI firmware, kernel 6.1.0-56-amd64"
    assert all(len(line) <= WIDTH - 4 for line in lines)  # fits the screen body
    assert "disk1       4.0 GiB  GPT   critical  (was /dev/sda, QEMU HARDDISK)" in text
    assert "disk1p1     512 MiB  EFI System  [esp]" in text
    assert re.search(r"disk1p2 +3\.0 GiB +Linux filesystem", text)
    assert re.search(r"disk1p2 +ext4 +root +aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee +/$", text, re.M)
    assert re.search(r"disk1p1 +vfat +EFI +ABCD-1234 +/boot/efi$", text, re.M)
    assert re.search(r"disk1p3 +swap +- +\S+ +swap$", text, re.M)
    assert "Backup set:  /asr/sample-host on ASRBACKUP\n             2 archives, 1234 files, zstd" in text
    assert "Boot loader: grub-efi on disk1" in text
    assert "Devices:     1 in ASRPNP.SIF, 1 drivers" in text
    assert summary_log_line(sample_descriptor()) == "summary: host=sample-host disks=1 partitions=3 filesystems=3"


def test_screen_fits_a_serial_terminal_and_reads_as_lines() -> None:
    body = tuple(f"line {i} " + "x" * 100 for i in range(40))
    out = render_screen(Screen(body, "ENTER=Continue   F3=Quit"))
    assert "\x1b[0;37;44m" in out and "\x1b[2J" in out  # white on blue, cleared
    rows = [int(r) for r in re.findall(r"\x1b\[(\d+);1H", out)]
    assert max(rows) == HEIGHT
    lines = strip_ansi(out.encode()).split("\n")
    assert lines[0].strip() == "Automated System Recovery"
    assert all(len(line) <= WIDTH - 1 for line in lines)  # never wraps
    assert "more lines (the serial console has them all)" in lines[-2]
    assert lines[-1].strip() == "ENTER=Continue   F3=Quit"


# -- reading the floppy directory / device -------------------------------------------------------------------


def test_read_floppy_directory(floppy_dir: Path, asr_sif: str) -> None:
    c = read_floppy(str(floppy_dir))
    assert c.asr_sif.data == asr_sif.encode()
    assert c.asrpnp_sif is not None and c.files == ("ASR.SIF", "ASRPNP.SIF")


def test_read_floppy_named_errors(tmp_path: Path) -> None:
    with pytest.raises(NoFloppyDriveError, match=r"no floppy drive: .*/fd9 does not exist"):
        read_floppy(str(tmp_path / "fd9"))
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 1_474_560)
    with pytest.raises(NotFatError, match=r"blank\.img is not a FAT disk \(no boot sector signature 55 AA"):
        read_floppy(str(blank))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.TXT").write_text("hello")
    with pytest.raises(DescriptorMissingError, match=r"ASR\.SIF is missing .*\(files on it: README\.TXT\)"):
        read_floppy(str(empty))


# -- the agent, end to end on two pseudo-terminals ----------------------------------------------------------------


class AgentRun:
    """`python -m recovery_env` on two ptys; the test reads each screen and types on either terminal."""

    def __init__(self, tmp: Path, cmdline: str, floppy: str) -> None:
        self.vga_master, vga_slave = os.openpty()
        self.serial_master, serial_slave = os.openpty()
        self.log = tmp / "agent.log"
        self.resume = tmp / "resume"
        (tmp / "cmdline").write_text(cmdline + "\n")
        self.argv = [sys.executable, "-m", "recovery_env", "--tty", os.ttyname(vga_slave),
                     "--serial", os.ttyname(serial_slave), "--cmdline", str(tmp / "cmdline"), "--floppy", floppy,
                     "--log", str(self.log), "--resume", str(self.resume)]  # fmt: skip
        self._slaves = (vga_slave, serial_slave)
        self.out = {"vga": b"", "serial": b""}
        self.cursor = {"vga": 0, "serial": 0}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentRun:
        self.out = {"vga": b"", "serial": b""}
        self.cursor = {"vga": 0, "serial": 0}
        env = dict(os.environ, PYTHONHASHSEED="0")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        return self

    def pump(self, wait: float) -> None:
        masters = {self.vga_master: "vga", self.serial_master: "serial"}
        ready, _, _ = select.select(list(masters), [], [], wait)
        for fd in ready:
            try:
                self.out[masters[fd]] += os.read(fd, 65536)
            except OSError:
                pass

    def text(self, console: str) -> str:
        return strip_ansi(self.out[console])

    def expect(self, pattern: str, console: str = "serial", timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(self.text(console), self.cursor[console])
            if m is not None:
                self.cursor[console] = m.end()
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on {console} within {timeout} s; it shows:\n"
                                     + self.text(console)[-3000:])  # fmt: skip
            self.pump(0.1)

    def type(self, console: str, data: bytes) -> None:
        os.write(self.vga_master if console == "vga" else self.serial_master, data)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.1)
        code = self.proc.wait(1)
        self.pump(0.1)
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.vga_master, self.serial_master, *self._slaves):
            os.close(fd)


@pytest.fixture
def agent(tmp_path: Path, floppy_dir: Path, request: pytest.FixtureRequest) -> Iterator[AgentRun]:
    cmdline = getattr(request, "param", "console=tty0 console=ttyS0,115200 asr.timeout=30")
    runtime = Path("/run/asr")  # the agent's runtime directory: made by a run on the host, it must not stay
    existed = runtime.exists()  # (its presence makes the next runs wait for /init's modules-loaded flag)
    run = AgentRun(tmp_path, cmdline, str(floppy_dir))
    yield run
    run.close()
    if not existed and runtime.is_dir() and not os.path.ismount(runtime / "backup"):
        shutil.rmtree(runtime, ignore_errors=True)


F2 = {"linux": b"\x1b[[B", "xterm": b"\x1bOQ", "rxvt": b"\x1b[12~"}
F3 = {"linux": b"\x1b[[C", "xterm": b"\x1bOR", "rxvt": b"\x1b[13~"}


@pytest.mark.parametrize(("console", "terminal"), [("vga", "linux"), ("serial", "xterm"), ("serial", "rxvt")])
def test_f2_floppy_summary_restore_missing_backup_menu_power_off(agent: AgentRun, console: str, terminal: str) -> None:
    agent.start()
    agent.expect(r"Press F2 to run Automated System Recovery \(ASR\)\.\.\.", "vga")
    agent.expect(r"Press F2 to run Automated System Recovery \(ASR\)\.\.\.", "serial")
    agent.type(console, F2[terminal])
    agent.expect(r"ASR: F2 pressed")
    agent.expect(r"Please insert the disk labeled", "vga")
    agent.expect(r"Automated System Recovery Disk\s+into the floppy drive \(A:\)\.\s+Press any key when ready\.")
    agent.type(console, b"\r")
    agent.expect(r"ASR: floppy read: ASR\.SIF \((\d+) bytes\), ASRPNP\.SIF \(\d+ bytes\)")
    agent.expect(r"ASR: summary: host=sample-host disks=1 partitions=3 filesystems=3")
    for where in ("vga", "serial"):
        agent.expect(r"System: +sample-host", where)
        agent.expect(r"disk1 +4\.0 GiB +GPT", where)
        agent.expect(r"Backup set: +/asr/sample-host", where)
        agent.expect(r"ENTER=Continue +F3=Quit", where)
    agent.type(console, b"\r")
    agent.expect(r"ASR: state: find-backup")  # the restore: this host has no ASRBACKUP medium
    agent.expect(
        r"ASR: error: BackupMediaMissingError: the backup medium is not attached: the descriptor names "
        r"the filesystem with (UUID \S+ or )?label 'ASRBACKUP'"
    )
    agent.expect(r"R=Retry +F3=Quit", "vga")
    agent.type(console, F3[terminal])
    agent.expect(r"Automated System Recovery main menu", "vga")
    agent.type(console, b"4")
    assert agent.wait() == 21
    agent.expect(r"ASR: exit 21 \(power off\)")
    assert "ASR: menu: choice 4" in agent.log.read_text()


def test_screens_fill_each_terminal_size(agent: AgentRun) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(agent.vga_master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))  # a framebuffer console
    agent.start()
    agent.expect("Press F2", "vga")
    agent.expect("Press F2", "serial")
    agent.pump(0.5)
    assert "\x1b[50;1H\x1b[0;30;47m Press F2" in agent.out["vga"].decode()  # status on the last row
    assert "\x1b[24;1H\x1b[0;30;47m Press F2" in agent.out["serial"].decode()  # a serial line: 24 x 80
    vga_rows = strip_ansi(agent.out["vga"]).split("\n")
    assert any(len(row) == 159 and row.startswith(" Automated System Recovery") for row in vga_rows)
    agent.type("vga", b"\r")  # Enter skips the countdown to the menu
    agent.expect("ASR: state: menu")
    agent.type("vga", b"4")
    assert agent.wait() == 21


@pytest.mark.parametrize("agent", ["console=ttyS0 asr.timeout=1"], indirect=True)
def test_timeout_menu_shell_then_back_to_the_menu(agent: AgentRun) -> None:
    agent.start()
    agent.expect(r"ASR: no F2: main menu")
    agent.expect(r"(?s)1\.\s+Restore this computer.*2\.\s+Rescue shell.*3\.\s+Reboot.*4\.\s+Power off", "vga")
    agent.type("vga", b"2")
    assert agent.wait() == 22
    assert agent.resume.exists()
    agent.start()  # /init runs the agent again after the shell: straight to the menu
    agent.expect(r"ASR: state: menu")
    agent.type("serial", b"3")
    assert agent.wait() == 20
    assert "Press F2" not in agent.text("serial")
    assert not agent.resume.exists()


@pytest.mark.parametrize("agent", ["console=ttyS0 asr.unattended=1 asr.bogus=1"], indirect=True)
def test_unattended_reads_the_floppy_and_powers_off(agent: AgentRun) -> None:
    agent.start()
    agent.expect(r"ASR: warning: unknown boot option 'asr\.bogus=1'")
    agent.expect(r"ASR: unattended: F2 assumed")
    agent.expect(r"ASR: summary: host=sample-host disks=1 partitions=3 filesystems=3")
    assert agent.wait() == 21


def test_missing_sif_then_retry_after_the_disk_is_fixed(agent: AgentRun, floppy_dir: Path) -> None:
    sif = (floppy_dir / "ASR.SIF").read_text()
    (floppy_dir / "ASR.SIF").unlink()
    agent.start()
    agent.expect("Press F2")
    agent.type("serial", F2["xterm"])
    agent.expect("Press any key when ready")
    agent.type("vga", b" ")
    agent.expect(r"ASR: error: asr-sif-missing: ASR\.SIF is missing on the disk in \S+ \(files on it: ASRPNP\.SIF\)")
    agent.expect(r"has no ASR\.SIF file", "vga")
    agent.expect(r"Press any key to try again, or F3 to quit to the main menu", "vga")
    (floppy_dir / "ASR.SIF").write_text(sif)
    agent.type("vga", b"x")
    agent.expect(r"ASR: retry")
    agent.expect(r"ASR: summary: host=sample-host")
    agent.type("serial", F3["xterm"])
    agent.expect(r"ASR: state: menu")
    agent.type("serial", b"4")
    assert agent.wait() == 21


def test_invalid_sif_names_the_line(agent: AgentRun, floppy_dir: Path, asr_sif: str) -> None:
    text, line = broken_sif(asr_sif)
    (floppy_dir / "ASR.SIF").write_text(text)
    agent.start()
    agent.expect("Press F2")
    agent.type("vga", F2["linux"])
    agent.expect("Press any key when ready")
    agent.type("vga", b"\r")
    m = agent.expect(r"ASR: error: asr-sif-invalid: (ASR\.SIF line (\d+)[^\n]*)")
    assert int(m.group(2)) == line
    assert "[PARTITIONS] record 2" in m.group(1) and "start" in m.group(1)
    agent.expect(rf"ASR\.SIF line {line}", "vga")
    agent.type("vga", F3["linux"])
    agent.expect(r"main menu", "vga")
    agent.type("vga", b"4")
    assert agent.wait() == 21
    assert "Traceback" not in agent.text("serial")


def test_no_floppy_drive_and_not_fat(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 4096)
    for floppy, kind, text in (
        (str(tmp_path / "fd0"), "no-floppy-drive", "No floppy drive was found"),
        (str(blank), "not-fat", "The disk in drive A: is not an ASR floppy: it has no FAT file system"),
    ):
        run = AgentRun(tmp_path, "asr.timeout=30", floppy)
        try:
            run.start()
            run.expect("Press F2")
            run.type("serial", F2["xterm"])
            run.expect("Press any key when ready")
            run.type("serial", b"\r")
            run.expect(rf"ASR: error: {kind}: ")
            run.expect(text, "vga")
            run.type("serial", b"\r")  # retry: the same error again, not a crash
            run.expect(r"ASR: retry")
            run.expect(rf"ASR: error: {kind}: ")
            run.type("serial", F3["xterm"])
            run.expect("ASR: state: menu")
            run.type("serial", b"3")
            assert run.wait() == 20
        finally:
            run.close()


def test_crash_report_is_one_line_on_screen_and_the_traceback_in_the_log(tmp_path: Path) -> None:
    from recovery_env.__main__ import report_crash

    vga_m, vga_s = os.openpty()
    ser_m, ser_s = os.openpty()
    consoles = Consoles.open([ConsoleSpec(os.ttyname(vga_s)), ConsoleSpec(os.ttyname(ser_s), serial=True)])
    log = tmp_path / "run" / "asr-agent.log"
    try:
        table: dict[str, int] = {}
        try:
            table["missing"]  # a real exception with a real traceback
        except KeyError as e:
            report_crash(consoles, e, str(log))
        time.sleep(0.1)
        vga = os.read(vga_m, 65536).decode()
        serial = os.read(ser_m, 65536).decode()
    finally:
        consoles.close()
        for fd in (vga_m, vga_s, ser_m, ser_s):
            os.close(fd)
    assert f"ASR: internal error: KeyError: 'missing' (details in {log})" in vga
    assert "Traceback" not in vga
    assert "Traceback (most recent call last)" in serial
    assert "Traceback (most recent call last)" in log.read_text()


def test_agent_imports_with_the_standard_library_only() -> None:
    """The initramfs has no site-packages: -I -S gives the bare interpreter; list the stdlib modules it needs."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import recovery_env.__main__, recovery_env.agent.states; "
            "[__import__(m) for m in recovery_env.agent.states.TOOLBOX_MODULES]; "  # what the handlers import later
            "print(' '.join(sorted(m for m in sys.modules if not m.startswith('recovery_env'))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    modules = set(out.split())
    assert not modules & {"jinja2", "pycdlib", "pyfatfs", "builder", "qemu"}


def test_the_f2_prompt_needs_none_of_the_restore_modules() -> None:
    """The prompt shows before the descriptor model, the planner and the executor are imported (a background
    thread imports them while it waits): they take about two seconds under TCG."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import recovery_env.__main__, recovery_env.agent.states; "
            "print(' '.join(sorted(sys.modules)))")  # fmt: skip
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    from recovery_env.agent.states import TOOLBOX_MODULES

    assert not set(out.split()) & {*TOOLBOX_MODULES, "tarfile", "subprocess", "hashlib"}


@pytest.mark.parametrize(
    "agent", ["console=tty0 console=ttyS0,115200 asr.mode=menu asr.backup=UUID=00000000-dead-beef-0000-0000000000a5"],
    indirect=True,
)
def test_menu_capture_without_its_backup_medium_names_the_error_and_returns_to_the_menu(agent: AgentRun) -> None:
    """Menu choice 5 runs the offline capture (recovery_env.capture.flow); asr.backup names a medium that no machine
    has, so it stops at its first check, before any disk is mounted, and the agent goes back to the menu."""
    agent.start()
    agent.expect(r"5\.  Capture this computer to a backup medium", "vga")
    agent.expect(r"ASR: menu: 1=restore 2=shell 3=reboot 4=power off 5=capture")
    agent.type("serial", b"5")
    agent.expect(r"ASR: capture: backup medium UUID=00000000-dead-beef-0000-0000000000a5, floppy ")
    agent.expect(r"ASR: capture failed: BackupMediaMissingError: no backup medium: no filesystem with UUID "
                 r"'00000000-dead-beef-0000-0000000000a5'", timeout=60)  # fmt: skip
    agent.expect(r"The capture failed \(BackupMediaMissingError\)", "vga")
    agent.expect(r"Any key=Main menu", "vga")
    agent.type("serial", b"x")
    agent.expect(r"ASR: state: menu")
    agent.type("serial", b"4")
    assert agent.wait() == 21
