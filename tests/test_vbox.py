"""`asr vbox`: the VBoxManage script (command sequence, absolute quoted paths, `sh -n`), the VDIs made with
qemu-img (virtual size and content checked with `qemu-img info` / `qemu-img compare`), the El Torito reader
(cross-checked with xorriso's report), and the checks that refuse bad input before anything is written.

VirtualBox itself is not installable here (not in Debian main): the script is parsed and syntax-checked, and run
once with a stand-in VBoxManage that only records its arguments, which shows that the shell passes every
argument through intact.  The VM itself is not started by any test."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from builder.build import BuildResult, build_media
from builder.cli import main
from builder.media.fatimage import make_floppy
from builder.media.initramfs import DEFAULT_EPOCH
from builder.vm.sample import sample_descriptor
from builder.vm.vbox import (
    FLOPPY_BYTES,
    ElToritoPlatform,
    ImageInfo,
    VBoxFirmware,
    make_vbox,
    plan_vbox,
    prepare_vbox,
    read_el_torito,
    render_vbox_script,
)
from recovery_env.errors import DescriptorMissingError, InputError, InternalError, UnusableImageError
from recovery_env.model.descriptor import Bootloader, BootloaderKind, Descriptor, Firmware
from recovery_env.model.sif_render import render_asr_sif
from recovery_env.run import run

EPOCH = DEFAULT_EPOCH  # the same as test_build and test_boot: one rescue environment in the cache
MIB = 1024 * 1024
GIB = 1024 * MIB
D = sample_descriptor()


def uefi_descriptor() -> Descriptor:
    return dataclasses.replace(
        D,
        system=dataclasses.replace(D.system, firmware=Firmware.UEFI),
        bootloader=Bootloader(
            BootloaderKind.GRUB_EFI, disk="disk1", esp_mountpoint="/boot/efi", efi_directory="debian"
        ),
    )


def script_commands(text: str) -> list[list[str]]:
    """The VBoxManage command lines of a rendered script, split as sh would: comments and blank lines skipped;
    the first command must be ``set -eu``."""
    lines = [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == ["set", "-eu"]
    return lines[1:]


def shape(argv: list[str]) -> tuple[str, ...]:
    """A VBoxManage command reduced to what identifies it in the sequence."""
    assert argv[0] == "VBoxManage"
    sub = argv[1]
    if sub == "storagectl":
        return (
            sub,
            argv[argv.index("--name") + 1],
            argv[argv.index("--add") + 1],
            argv[argv.index("--controller") + 1],
        )
    if sub == "storageattach":
        return (sub, argv[argv.index("--storagectl") + 1], argv[argv.index("--type") + 1])
    return (sub,)


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def image_info(path: Path) -> dict[str, object]:
    info: dict[str, object] = json.loads(run(["qemu-img", "info", "--output=json", str(path)]).stdout)
    return info


# --- the pure planner and the template ---------------------------------------------------------------------------


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")


def test_script_command_sequence_and_paths(tmp_path: Path, no_subprocess: None) -> None:
    out = tmp_path / "vm dir's"  # a space and a quote: the script must quote them
    iso, floppy = tmp_path / "media" / "asr.iso", tmp_path / "media" / "asr floppy.img"
    plan = plan_vbox("asr-vm", iso=iso, floppy=floppy, out=out, descriptor=D)
    cmds = script_commands(render_vbox_script(plan))
    assert cmds == plan.argvs
    assert [shape(c) for c in cmds] == [
        ("createvm",),
        ("modifyvm",),
        ("modifyvm",),
        ("modifyvm",),
        ("storagectl", "Floppy", "floppy", "I82078"),
        ("storageattach", "Floppy", "fdd"),
        ("storagectl", "IDE", "ide", "PIIX4"),
        ("storageattach", "IDE", "dvddrive"),
        ("storagectl", "SATA", "sata", "IntelAhci"),
        ("storageattach", "SATA", "hdd"),
        ("startvm",),
    ]
    create, machine, serial, boot, _, fdd, _, dvd, sata, hdd, start = cmds
    assert create == ["VBoxManage", "createvm", "--name", "asr-vm", "--register"]
    assert (value(machine, "--memory"), value(machine, "--ostype"), value(machine, "--firmware")) == (
        "1024",
        "Linux_64",
        "bios",
    )
    assert serial[2:] == ["asr-vm", "--uart1", "0x3F8", "4", "--uartmode1", "file", str(out / "asr-vm-serial.log")]
    assert (value(boot, "--boot1"), value(boot, "--boot2")) == ("dvd", "disk")
    assert value(fdd, "--medium") == str(floppy)
    assert value(dvd, "--medium") == str(iso)
    assert value(sata, "--portcount") == "1"
    assert (value(hdd, "--port"), value(hdd, "--medium")) == ("0", str(out / "asr-vm-disk1.vdi"))
    assert start == ["VBoxManage", "startvm", "asr-vm", "--type", "headless"]
    for argv in cmds:
        for arg in argv:
            if "/" in arg:
                assert Path(arg).is_absolute(), arg
    assert plan.disks[0].argv == ("qemu-img", "create", "-q", "-f", "vdi", str(out / "asr-vm-disk1.vdi"), str(2 * GIB))


def test_script_is_valid_posix_sh(tmp_path: Path) -> None:
    plan = plan_vbox("asr-vm", iso=tmp_path / "a $b.iso", floppy=tmp_path / "f`x`.img", out=tmp_path, descriptor=D)
    script = tmp_path / "s.sh"
    text = render_vbox_script(plan)
    script.write_text(text)
    run(["sh", "-n", str(script)])
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -eu\n" in text
    assert [value(c, "--medium") for c in script_commands(text) if c[1] == "storageattach"][:2] == [
        str(tmp_path / "f`x`.img"),
        str(tmp_path / "a $b.iso"),
    ]


def test_firmware_from_descriptor_and_flag(tmp_path: Path, no_subprocess: None) -> None:
    def firmware(desc: Descriptor, flag: Firmware | None) -> tuple[VBoxFirmware, str]:
        plan = plan_vbox("v", iso=tmp_path / "i", floppy=tmp_path / "f", out=tmp_path, descriptor=desc, firmware=flag)
        modify = next(c for c in plan.argvs if c[1] == "modifyvm" and "--firmware" in c)
        assert value(modify, "--firmware") == plan.firmware.value
        return plan.firmware, plan.firmware_reason

    assert firmware(D, None) == (VBoxFirmware.BIOS, "the descriptor's [SYSTEM] firmware is bios")
    assert firmware(uefi_descriptor(), None) == (VBoxFirmware.EFI, "the descriptor's [SYSTEM] firmware is uefi")
    assert firmware(D, Firmware.UEFI) == (VBoxFirmware.EFI, "--firmware uefi")
    assert firmware(uefi_descriptor(), Firmware.BIOS) == (VBoxFirmware.BIOS, "--firmware bios")


def test_disks_given_are_converted_in_order(tmp_path: Path, no_subprocess: None) -> None:
    images = [ImageInfo(tmp_path / "target.raw", "raw", 3 * GIB), ImageInfo(tmp_path / "backup.qcow2", "qcow2", 1001)]
    plan = plan_vbox("v", iso=tmp_path / "i", floppy=tmp_path / "f", out=tmp_path / "o", descriptor=D, disks=images)
    assert [(c.key, c.target, c.size_bytes) for c in plan.disks] == [
        ("disk1", tmp_path / "o" / "v-disk1.vdi", 3 * GIB),
        ("disk2", tmp_path / "o" / "v-disk2.vdi", 1024),  # VDI sizes are whole 512-byte sectors
    ]
    assert plan.disks[1].argv == (
        "qemu-img",
        "convert",
        "-q",
        "-f",
        "qcow2",
        "-O",
        "vdi",
        str(tmp_path / "backup.qcow2"),
        str(tmp_path / "o" / "v-disk2.vdi"),
    )
    hdds = [c for c in plan.argvs if c[1] == "storageattach" and value(c, "--type") == "hdd"]
    assert [(value(c, "--port"), value(c, "--medium")) for c in hdds] == [
        ("0", str(tmp_path / "o" / "v-disk1.vdi")),
        ("1", str(tmp_path / "o" / "v-disk2.vdi")),
    ]
    sata = next(c for c in plan.argvs if c[1] == "storagectl" and value(c, "--add") == "sata")
    assert value(sata, "--portcount") == "2"


def test_planner_wants_absolute_paths(no_subprocess: None) -> None:
    with pytest.raises(InternalError, match="absolute"):
        plan_vbox("v", iso=Path("out/asr.iso"), floppy=Path("/f"), out=Path("/o"), descriptor=D)


def test_4k_descriptor_disk_warns(tmp_path: Path, no_subprocess: None) -> None:
    d4k = dataclasses.replace(
        D, disks=(dataclasses.replace(D.disks[0], logical_sector_size=4096, physical_sector_size=4096),)
    )
    plan = plan_vbox("v", iso=tmp_path / "i", floppy=tmp_path / "f", out=tmp_path, descriptor=d4k)
    assert len(plan.warnings) == 1 and "4096-byte sectors" in plan.warnings[0]
    assert f"# WARNING: {plan.warnings[0]}" in render_vbox_script(plan)


# --- real media, real qemu-img ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build_media(tmp_path_factory.mktemp("vbox-media"), epoch=EPOCH)


def _vbox(media: BuildResult, out: Path, *extra: str) -> int:
    return main(["vbox", "asr-vm", "--iso", str(media.iso), "--floppy", str(media.floppy), "--out", str(out), *extra])


@pytest.mark.image
def test_media_meet_virtualbox_needs(media: BuildResult) -> None:
    assert media.floppy.stat().st_size == FLOPPY_BYTES
    el_torito = read_el_torito(media.iso)
    assert el_torito.bootable == (ElToritoPlatform.X86, ElToritoPlatform.EFI)
    report = run(["xorriso", "-indev", str(media.iso), "-report_el_torito", "plain"]).stdout
    assert f"El Torito catalog  : {el_torito.catalog_sector} " in report
    assert [line.split()[6] for line in report.splitlines() if line.startswith("El Torito boot img :")] == [
        "BIOS",
        "UEFI",
    ]


@pytest.mark.image
def test_vbox_blank_target_from_the_floppys_descriptor(
    media: BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vm"
    assert _vbox(media, out) == 0
    script = out / "asr-vm-vbox.sh"
    assert f"script: {script}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["asr-vm-disk1.vdi", "asr-vm-vbox.sh"]
    assert script.stat().st_mode & stat.S_IXUSR
    run(["sh", "-n", str(script)])
    cmds = script_commands(script.read_text())
    assert value(cmds[1], "--firmware") == "bios"  # the sample's [SYSTEM] firmware
    media_args = [value(c, "--medium") for c in cmds if c[1] == "storageattach"]
    assert media_args == [str(media.floppy.resolve()), str(media.iso.resolve()), str(out / "asr-vm-disk1.vdi")]
    info = image_info(out / "asr-vm-disk1.vdi")
    assert (info["format"], info["virtual-size"]) == ("vdi", D.disks[0].size_bytes)
    assert isinstance(info["actual-size"], int) and info["actual-size"] < MIB  # sparse


@pytest.mark.image
def test_vbox_converts_a_raw_image(media: BuildResult, tmp_path: Path) -> None:
    raw = tmp_path / "machine.raw"
    size = 10 * MIB + 3 * 512  # not a whole number of MiB
    with raw.open("wb") as f:
        f.truncate(size)
        for offset in (0, 5 * MIB + 17, size - 512):
            f.seek(offset)
            f.write(os.urandom(512))
    out = tmp_path / "vm"
    assert _vbox(media, out, "--disk", str(raw), "--firmware", "uefi") == 0
    vdi = out / "asr-vm-disk1.vdi"
    info = image_info(vdi)
    assert (info["format"], info["virtual-size"]) == ("vdi", size)
    run(["qemu-img", "compare", "-f", "raw", "-F", "vdi", str(raw), str(vdi)])  # same content, byte for byte
    cmds = script_commands((out / "asr-vm-vbox.sh").read_text())
    assert value(cmds[1], "--firmware") == "efi"
    assert [value(c, "--medium") for c in cmds if c[1] == "storageattach"][-1] == str(vdi)


@pytest.mark.image
def test_vbox_uefi_descriptor(media: BuildResult, tmp_path: Path) -> None:
    sif = tmp_path / "ASR.SIF"
    sif.write_text(render_asr_sif(uefi_descriptor()), encoding="utf-8")
    plan = make_vbox(prepare_vbox("asr-uefi", iso=media.iso, floppy=media.floppy, out=tmp_path / "o", descriptor=sif))
    assert plan.firmware is VBoxFirmware.EFI
    assert value(script_commands(plan.script.read_text())[1], "--firmware") == "efi"


@pytest.mark.image
def test_script_runs_every_command_with_its_arguments_intact(media: BuildResult, tmp_path: Path) -> None:
    """The script run by sh, with a stand-in VBoxManage that records its argv (VirtualBox is not installed)."""
    weird = tmp_path / "it's a $dir"
    weird.mkdir()
    iso, floppy = weird / "asr.iso", weird / "asr floppy.img"
    iso.symlink_to(media.iso)
    floppy.symlink_to(media.floppy)
    plan = make_vbox(prepare_vbox("asr-vm", iso=iso, floppy=floppy, out=weird / "out"))
    bindir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bindir.mkdir()
    recorder = bindir / "VBoxManage"
    recorder.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    recorder.chmod(0o755)
    run(["sh", str(plan.script)], env={"PATH": f"{bindir}:{os.environ['PATH']}"}, cwd="/")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [["VBoxManage", *c] for c in calls] == plan.argvs
    assert value(calls[5], "--medium") == str(floppy)


# --- bad input: a named error, a non-zero exit, nothing written ---------------------------------------------------


@pytest.mark.image
def test_floppy_of_the_wrong_size(media: BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "720k.img"
    small.write_bytes(media.floppy.read_bytes()[: FLOPPY_BYTES // 2])
    out = tmp_path / "vm"
    assert main(["vbox", "v", "--iso", str(media.iso), "--floppy", str(small), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert f"floppy image {small} is 737,280 bytes" in err and "exactly 1,474,560 bytes" in err
    assert not out.exists()


def _xorriso_iso(tmp_path: Path, name: str, *boot: str) -> Path:
    tree = tmp_path / f"{name}-tree"
    tree.mkdir()
    (tree / "boot.img").write_bytes(b"\xeb\xfe" + bytes(2046))
    (tree / "efi.img").write_bytes(bytes(1474560))
    iso = tmp_path / f"{name}.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), *boot, str(tree)])
    return iso


@pytest.mark.image
def test_el_torito_reader_agrees_with_xorriso(tmp_path: Path) -> None:
    cases = {
        "bios": (["-b", "boot.img", "-no-emul-boot", "-boot-load-size", "4"], (ElToritoPlatform.X86,)),
        "efi": (["-e", "efi.img", "-no-emul-boot"], (ElToritoPlatform.EFI,)),
        "both": (
            ["-b", "boot.img", "-no-emul-boot", "-eltorito-alt-boot", "-e", "efi.img", "-no-emul-boot"],
            (ElToritoPlatform.X86, ElToritoPlatform.EFI),
        ),
    }
    for name, (flags, expected) in cases.items():
        iso = _xorriso_iso(tmp_path, name, *flags)
        el_torito = read_el_torito(iso)
        assert el_torito.bootable == expected, name
        report = run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain"]).stdout
        pltf = [line.split()[6] for line in report.splitlines() if line.startswith("El Torito boot img :")]
        assert pltf == [p.label.split()[0] for p in expected], name


@pytest.mark.image
def test_iso_without_the_firmwares_entry(media: BuildResult, tmp_path: Path) -> None:
    bios_only = _xorriso_iso(tmp_path, "bios", "-b", "boot.img", "-no-emul-boot", "-boot-load-size", "4")
    out = tmp_path / "vm"
    prepare_vbox("v", iso=bios_only, floppy=media.floppy, out=out)  # BIOS descriptor: fine
    with pytest.raises(UnusableImageError, match=r"no bootable UEFI entry \(it offers: BIOS \(x86\)\)"):
        prepare_vbox("v", iso=bios_only, floppy=media.floppy, out=out, firmware=Firmware.UEFI)
    assert not out.exists()


@pytest.mark.image
def test_iso_without_el_torito_and_not_an_iso(media: BuildResult, tmp_path: Path) -> None:
    plain = _xorriso_iso(tmp_path, "plain")
    with pytest.raises(UnusableImageError, match="has no El Torito boot record"):
        prepare_vbox("v", iso=plain, floppy=media.floppy, out=tmp_path / "vm")
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"x" * 40000)
    with pytest.raises(
        UnusableImageError, match=r"not an ISO 9660 image: it has no CD001 volume descriptor at sector 16"
    ):
        prepare_vbox("v", iso=junk, floppy=media.floppy, out=tmp_path / "vm")
    junk.write_bytes(b"x" * 1000)
    with pytest.raises(UnusableImageError, match="not an ISO 9660 image: it ends at sector 16"):
        prepare_vbox("v", iso=junk, floppy=media.floppy, out=tmp_path / "vm")
    assert not (tmp_path / "vm").exists()


@pytest.mark.image
def test_missing_files_and_bad_names(media: BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vm"
    assert (
        main(["vbox", "v", "--iso", str(tmp_path / "nope.iso"), "--floppy", str(media.floppy), "--out", str(out)]) == 2
    )
    assert f"ISO image {tmp_path / 'nope.iso'}: no such file" in capsys.readouterr().err
    assert _vbox(media, out, "--disk", str(tmp_path / "gone.raw")) == 2
    assert f"disk image {tmp_path / 'gone.raw'}: no such file" in capsys.readouterr().err
    assert _vbox(media, out, "--descriptor", str(tmp_path / "ASR.SIF")) == 2
    assert f"descriptor {tmp_path / 'ASR.SIF'}: no such file" in capsys.readouterr().err
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "vm;rm"):
        with pytest.raises(InputError, match="VM name"):
            prepare_vbox(bad, iso=media.iso, floppy=media.floppy, out=out)
    assert not out.exists()


@pytest.mark.image
def test_floppy_without_descriptor(media: BuildResult, tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.write_bytes(make_floppy({}, label="ASR", epoch=EPOCH))
    with pytest.raises(DescriptorMissingError, match=r"has no ASR\.SIF"):
        prepare_vbox("v", iso=media.iso, floppy=empty, out=tmp_path / "vm")
    sif = tmp_path / "ASR.SIF"
    sif.write_text(render_asr_sif(D), encoding="utf-8")
    assert prepare_vbox("v", iso=media.iso, floppy=empty, out=tmp_path / "vm", descriptor=sif).firmware.value == "bios"


@pytest.mark.image
def test_existing_vdi_is_not_overwritten(
    media: BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vm"
    out.mkdir()
    (out / "asr-vm-disk1.vdi").write_bytes(b"restored machine")
    assert _vbox(media, out) == 2
    assert "asr-vm-disk1.vdi already exists" in capsys.readouterr().err
    assert (out / "asr-vm-disk1.vdi").read_bytes() == b"restored machine"
    assert sorted(p.name for p in out.iterdir()) == ["asr-vm-disk1.vdi"]
