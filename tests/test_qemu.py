"""The QEMU launcher: the command line (pure) and the running VM's plumbing (serial, QMP, screendump, exit)."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from builder.vm import qemu
from builder.vm.qemu import (
    OVMF_CODE,
    Accel,
    BootMedium,
    DiskBus,
    QemuVM,
    SerialTimeout,
    VMExited,
    VMFirmware,
    VMSpec,
    check_spec,
    disk_device_id,
    find_accel,
    qemu_argv,
    strip_ansi,
)
from recovery_env.errors import InputError


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("asr.iso", "asr-floppy.img", "disk1.img", "disk2.img"):
        p = tmp_path / name
        p.write_bytes(b"\0" * 512)
        out[name] = p
    return out


def test_bios_cd_with_floppy(files: dict[str, Path], tmp_path: Path) -> None:
    spec = VMSpec(iso=files["asr.iso"], floppy=files["asr-floppy.img"])
    argv = qemu_argv(spec, serial="chardev:ser0", qmp=tmp_path / "q.sock", chardevs=["pipe,id=ser0,path=/x"])
    assert argv[0] == "qemu-system-x86_64"
    assert option_values(argv, "-accel") == ["tcg"]
    assert option_values(argv, "-machine") == ["pc"]
    assert "-no-reboot" in argv
    assert option_values(argv, "-smp") == []  # one virtual CPU: QEMU's default
    assert option_values(qemu_argv(replace(spec, cpus=2), serial="mon:stdio", qmp=None), "-smp") == ["2"]
    assert option_values(argv, "-display") == ["none"]
    assert option_values(argv, "-chardev") == ["pipe,id=ser0,path=/x"]
    assert option_values(argv, "-serial") == ["chardev:ser0"]
    assert option_values(argv, "-qmp") == [f"unix:{tmp_path / 'q.sock'},server=on,wait=off"]
    devices = option_values(argv, "-device")
    assert "virtio-rng-pci" in devices
    assert "ide-cd,drive=cd0,bootindex=0" in devices
    drives = option_values(argv, "-drive")
    assert f"if=none,id=cd0,format=raw,media=cdrom,readonly=on,file={files['asr.iso']}" in drives
    assert f"if=floppy,index=0,format=raw,readonly=on,file={files['asr-floppy.img']}" in drives
    assert not any("pflash" in d for d in drives)


def test_uefi_uses_ovmf_code_and_a_vars_copy(files: dict[str, Path], tmp_path: Path) -> None:
    spec = VMSpec(iso=files["asr.iso"], firmware=VMFirmware.UEFI)
    vars_copy = tmp_path / "vars.fd"
    drives = option_values(qemu_argv(spec, serial="mon:stdio", qmp=None, vars_copy=vars_copy), "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}" in drives
    assert f"if=pflash,format=raw,unit=1,file={vars_copy}" in drives
    with pytest.raises(InputError, match="OVMF variable store"):
        qemu_argv(spec, serial="mon:stdio", qmp=None)


def test_iso_as_disk_empty_floppy_extra_disks(files: dict[str, Path]) -> None:
    spec = VMSpec(iso=files["asr.iso"], medium=BootMedium.DISK, disks=(files["disk1.img"], files["disk2.img"]),
                  disk_bus=DiskBus.IDE, headless=False, accel=Accel.KVM)  # fmt: skip
    argv = qemu_argv(spec, serial="mon:stdio", qmp=None)
    drives = option_values(argv, "-drive")
    assert f"if=none,id=usb0,format=raw,snapshot=on,file={files['asr.iso']}" in drives
    assert "if=floppy,index=0" in drives  # a drive with no disk in it
    assert f"if=none,id=disk1,format=raw,file={files['disk2.img']}" in drives
    devices = option_values(argv, "-device")
    assert "ide-hd,drive=usb0,bootindex=0" in devices
    assert ["ide-hd,drive=disk0,id=vdisk0", "ide-hd,drive=disk1,id=vdisk1"] == [
        d for d in devices if "drive=disk" in d
    ]
    assert "-display" not in argv
    assert "-monitor" not in argv  # mon:stdio multiplexes the monitor onto the terminal
    assert option_values(argv, "-accel") == ["kvm"]


def test_read_only_disks_are_write_protected_and_every_disk_has_an_id(files: dict[str, Path]) -> None:
    """The fault tests attach the backup medium read-only and unplug it by its device id (QMP device_del)."""
    disks = (files["disk1.img"], files["disk2.img"])
    spec = VMSpec(iso=files["asr.iso"], disks=disks, read_only_disks=frozenset({files["disk2.img"]}))
    argv = qemu_argv(spec, serial="mon:stdio", qmp=None)
    drives = option_values(argv, "-drive")
    assert f"if=none,id=disk0,format=raw,file={files['disk1.img']}" in drives
    assert f"if=none,id=disk1,format=raw,readonly=on,file={files['disk2.img']}" in drives
    devices = option_values(argv, "-device")
    assert [f"virtio-blk-pci,drive=disk{n},id={disk_device_id(n)}" for n in (0, 1)] == [
        d for d in devices if "drive=disk" in d
    ]
    with pytest.raises(InputError, match=r"read-only disk .*asr\.iso is not one of the VM's disks"):
        check_spec(VMSpec(iso=files["asr.iso"], disks=disks, read_only_disks=frozenset({files["asr.iso"]})))


def test_direct_kernel_boot(tmp_path: Path) -> None:
    spec = VMSpec(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img", append="console=ttyS0 asr.timeout=9")
    argv = qemu_argv(spec, serial="mon:stdio", qmp=None)
    assert option_values(argv, "-kernel") == [str(tmp_path / "vmlinuz")]
    assert option_values(argv, "-initrd") == [str(tmp_path / "initrd.img")]
    assert option_values(argv, "-append") == ["console=ttyS0 asr.timeout=9"]


def test_check_spec_names_the_missing_file(files: dict[str, Path], tmp_path: Path) -> None:
    check_spec(VMSpec(iso=files["asr.iso"], floppy=files["asr-floppy.img"]))
    with pytest.raises(InputError, match=r"floppy image .*nope\.img does not exist"):
        check_spec(VMSpec(iso=files["asr.iso"], floppy=tmp_path / "nope.img"))
    with pytest.raises(InputError, match="nothing to boot"):
        check_spec(VMSpec())
    with pytest.raises(InputError, match="memory"):
        check_spec(VMSpec(iso=files["asr.iso"], memory="lots"))
    with pytest.raises(InputError, match="cpus 65"):
        check_spec(VMSpec(iso=files["asr.iso"], cpus=65))
    with pytest.raises(InputError, match=r"ISO .*missing\.iso"):
        QemuVM(VMSpec(iso=tmp_path / "missing.iso"))


def test_find_accel_obeys_asr_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, want in (("tcg", Accel.TCG), ("kvm", Accel.KVM)):
        monkeypatch.setenv("ASR_ACCEL", value)
        find_accel.cache_clear()
        assert find_accel() is want
    monkeypatch.setenv("ASR_ACCEL", "xen")
    find_accel.cache_clear()
    with pytest.raises(InputError, match="ASR_ACCEL"):
        find_accel()
    monkeypatch.delenv("ASR_ACCEL")
    find_accel.cache_clear()
    flags = next((ln.split() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), [])
    if not {"vmx", "svm"} & set(flags):
        assert find_accel() is Accel.TCG  # this machine: /dev/kvm is there but cannot run firmware
    find_accel.cache_clear()


def test_strip_ansi() -> None:
    raw = b"\x1b[?25l\x1b[0;37;44m\x1b[2J\x1b[1;1H Automated\x1b[K\r\n\x1b(B\x1b]0;t\x07ok\x1bOQ\x1b7x"
    assert strip_ansi(raw) == " Automated\nokx"


def test_unknown_key_is_refused_before_anything_is_sent(files: dict[str, Path]) -> None:
    vm = QemuVM(VMSpec(iso=files["asr.iso"]))
    try:
        with pytest.raises(InputError, match="unknown key 'f13'"):
            vm.send_keys("f13")
    finally:
        vm.close()


# -- a real VM: the Debian kernel of the package lock, booted directly without an initramfs ------------------


@pytest.fixture(scope="session")
def debian_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builder.media.packages import fetch_packages, read_deb

    pkgs = fetch_packages()
    members = read_deb(pkgs.deb(pkgs.kernel_package), prefixes=["boot/"])
    vmlinuz = next(m for p, m in members.items() if p.startswith("boot/vmlinuz-"))
    out = tmp_path_factory.mktemp("kernel") / "vmlinuz"
    out.write_bytes(vmlinuz.data)
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.vm
def test_vm_serial_qmp_screendump_floppy_and_exit(debian_kernel: Path, tmp_path: Path) -> None:
    floppy = tmp_path / "other.img"
    floppy.write_bytes(b"\0" * 1_474_560)
    spec = VMSpec(kernel=debian_kernel, append="console=ttyS0 panic=-1 loglevel=7")
    with QemuVM(spec, workdir=tmp_path / "vm") as vm:
        m = vm.wait_serial(r"Linux version (\S+)", timeout=120)
        assert m.group(1).endswith("-amd64")
        png = vm.screendump(tmp_path / "screen.png")
        assert png_size(png) == (720, 400)  # VGA text mode
        floppy_info = next(b for b in vm.qmp("query-block") if b["device"] == "floppy0")
        assert "inserted" not in floppy_info  # the drive is empty
        vm.change_floppy(floppy)
        floppy_info = next(b for b in vm.qmp("query-block") if b["device"] == "floppy0")
        assert floppy_info["inserted"]["file"] == str(floppy.resolve())
        assert floppy_info["inserted"]["ro"] is True
        with pytest.raises(SerialTimeout, match="'NEVER-APPEARS' did not appear") as e:
            vm.wait_serial("NEVER-APPEARS", timeout=0.5)
        assert e.value.serial_tail.strip() and e.value.serial_tail in vm.serial_text  # it carries the log tail
        vm.wait_serial(r"Kernel panic - not syncing", timeout=120)
        assert vm.wait_exit(60) == 0  # panic=-1 reboots at once; -no-reboot turns that into QEMU's exit
        with pytest.raises(VMExited, match="QEMU exited with code 0"):
            vm.wait_serial("anything more", timeout=5)
        assert (tmp_path / "vm" / "serial.log").read_bytes() == vm.serial_raw


def test_qemu_starts_through_the_subprocess_choke_point() -> None:
    src = Path(qemu.__file__).read_text()
    assert "Popen(" not in src and "subprocess.run(" not in src and "check_output(" not in src
    assert "start(self.argv" in src  # recovery_env.run.start: the checks, the log line and the test guard
