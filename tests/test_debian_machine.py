"""The real Debian 12 source machine (builder/vm/debian.py): its planner and sources parsing, its image read back by
independent tools, and the machine booted to its own serial login under BIOS and UEFI with a check run inside."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from builder.vm.debian import (
    MIB_SECTORS,
    AptSource,
    DebianImage,
    DebianMachineError,
    DebianSpec,
    MirrorNotFoundError,
    Role,
    check_login,
    find_mirror,
    make_debian_image,
    parse_check_line,
    parse_deb822_sources,
    parse_guest_timings,
    parse_sources_list,
    plan_debian_machine,
    plan_guest_steps,
    render_check_command,
    render_machine_files,
)
from builder.vm.qemu import QemuVM, VMFirmware, VMSpec, find_accel
from recovery_env.model.descriptor import FsType
from recovery_env.run import run

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# ------------------------------------------------------------------------------------- pure: sources, spec, plan


def test_sources_list_one_line_format() -> None:
    text = (
        "# a comment\n"
        "deb-src http://src.example.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://a.example.invalid/debian bookworm main contrib # trailing\n"
        "deb http://b.example.invalid/debian-security bookworm-security main\n"
    )
    assert parse_sources_list(text) == [
        AptSource("http://a.example.invalid/debian", ("bookworm",), ("main", "contrib")),
        AptSource("http://b.example.invalid/debian-security", ("bookworm-security",), ("main",)),
    ]


def test_deb822_sources_and_the_mirror_for_a_suite() -> None:
    text = (
        "Types: deb\n# comment inside\nURIs: http://sec.example.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://off.example.invalid/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        "Types: deb\nURIs: http://main.example.invalid/debian\nSuites: bookworm\n bookworm-updates\n"
        "Components: main\n"
    )
    sources = parse_deb822_sources(text)
    assert [s.uri for s in sources] == [
        "http://sec.example.invalid/debian-security",
        "http://main.example.invalid/debian",
    ]
    assert sources[1].suites == ("bookworm", "bookworm-updates")
    assert find_mirror(sources, "bookworm") == "http://main.example.invalid/debian"
    with pytest.raises(MirrorNotFoundError, match=r"no 'deb' source for suite 'trixie'.*bookworm-security"):
        find_mirror(sources, "trixie")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hostname": "Not_A_Host"}, "hostname 'Not_A_Host'"),
        ({"disk_mib": 1000}, "disk_mib 1000: the gpt-bios-uefi layout needs at least"),
        ({"esp_mib": 16}, "esp_mib 16: FAT32 needs at least 33 MiB"),
        ({"swap_mib": 0}, "swap_mib 0"),
        ({"layout": "lvm"}, "layout 'lvm'"),
    ],
)
def test_bad_spec_is_a_named_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DebianMachineError, match=message):
        DebianSpec(**kwargs)  # type: ignore[arg-type]


def test_layout_1_plan_fills_the_disk_aligned_with_swap_last() -> None:
    spec = DebianSpec(disk_mib=3000)
    plan = plan_debian_machine(spec)
    (disk,) = plan.disks
    assert [p.role for p in disk.partitions] == [Role.BIOS_BOOT, Role.ESP, Role.ROOT, Role.SWAP]
    end = MIB_SECTORS
    for p in disk.partitions:
        assert p.start == end and p.start % MIB_SECTORS == 0 and p.size % MIB_SECTORS == 0
        end = p.start + p.size
    assert end <= spec.disk_mib * MIB_SECTORS - 34 < end + MIB_SECTORS  # the backup GPT fits, < 1 MiB unused
    assert disk.partitions[3].size == spec.swap_mib * MIB_SECTORS
    assert plan.root.fstype is FsType.EXT4 and plan.swap.fstype is FsType.SWAP
    assert [f.mountpoint for f in plan.mounts] == ["/", "/boot/efi"]
    ids = [disk.disk_id, *(p.uuid for p in disk.partitions), *(f.uuid for f in plan.filesystems)]
    assert len(set(ids)) == len(ids)
    assert plan_debian_machine(DebianSpec(disk_mib=3000)) == plan  # the same spec, the same ids
    assert plan_debian_machine(DebianSpec(disk_mib=3000, seed="other")).root.uuid != plan.root.uuid


def test_machine_files_and_guest_steps_name_the_planned_ids() -> None:
    plan = plan_debian_machine(DebianSpec())
    files = render_machine_files(plan)
    fstab = [line.split() for line in files["etc/fstab"].splitlines() if line and not line.startswith("#")]
    assert fstab == [[f"UUID={f.uuid}", f.mountpoint or "none", f.fstype.value, f.options, "0", str(f.passno)]
                     for f in plan.filesystems]  # fmt: skip
    assert 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"' in files["etc/default/grub"]
    assert "--autologin root" in files["etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"]
    assert files["etc/initramfs-tools/conf.d/resume"] == f"RESUME=UUID={plan.swap.uuid}\n"
    steps = {s.name: s.commands for s in plan_guest_steps(plan)}
    assert any(plan.root.uuid in c and c.startswith("mkfs.ext4") for c in steps["make filesystems"])
    assert steps["install GRUB"][0].endswith("grub-install --target=i386-pc /dev/vdb")
    assert "--force-extra-removable" in steps["install GRUB"][1]


def test_the_check_line_typed_is_not_the_line_it_prints() -> None:
    typed = render_check_command()
    assert parse_check_line(typed) is None
    said = "ASR-CHECK state=running root=/dev/vda3 fstype=ext4 uuid=u esp=vfat swap=s host=h firmware=bios end"
    found = parse_check_line(typed + "\n" + said + "\n")
    assert found is not None and found.state == "running" and found.firmware == "bios"


def test_guest_step_timings_come_from_its_uptime_lines() -> None:
    serial = (
        "ASR-MAKE-MACHINE 3.50 step partition\nnoise\nASR-MAKE-MACHINE 4.00 step copy the system\n"
        "ASR-MAKE-MACHINE 61.25 done\n"
    )
    assert parse_guest_timings(serial) == {"partition": 0.5, "copy the system": 57.2}
    assert parse_guest_timings("ASR-MAKE-MACHINE 3.50 step partition\n") == {}  # no end: no duration


# ------------------------------------------------------------------------------------- the real machine (root, VM)


@pytest.fixture(scope="module")
def debian_image() -> DebianImage:
    if os.geteuid() != 0:
        pytest.skip("building the Debian machine needs root (debootstrap, chroot)")
    started = time.monotonic()
    image = make_debian_image(DebianSpec())
    _record("build", {"seconds": round(time.monotonic() - started, 1), "steps": image.build_seconds,
                      "digest": image.digest})  # fmt: skip
    return image


def _record(what: str, data: object) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "debian-machine.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc[what] = data
    path.write_text(json.dumps(doc, indent=1))


@pytest.mark.vm
@pytest.mark.root
def test_debian_image_reads_back_with_independent_tools(debian_image: DebianImage) -> None:
    plan = debian_image.plan
    (disk,) = plan.disks
    table = json.loads(run(["sfdisk", "--json", debian_image.disks[0]]).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["id"].lower() == disk.disk_id
    got = [(p["start"], p["size"], p["type"].lower(), p["uuid"].lower()) for p in table["partitions"]]
    assert got == [(p.start, p.size, p.type, p.uuid) for p in disk.partitions]
    for fs in plan.filesystems:
        offset = disk.partitions[fs.partition - 1].start * 512
        probe = run(["blkid", "-p", "-O", str(offset), "-o", "export", debian_image.disks[0]]).stdout
        tags = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        assert (tags["TYPE"], tags["UUID"], tags["LABEL"]) == (fs.fstype.value, fs.uuid, fs.label)
    root = f"{debian_image.disks[0]}?offset={disk.partitions[plan.root.partition - 1].start * 512}"
    listing = run(["debugfs", "-R", "ls -p /boot/grub", root]).stdout
    assert "grub.cfg" in listing and "i386-pc" in listing and "x86_64-efi" in listing
    grub_cfg = run(["debugfs", "-R", "cat /boot/grub/grub.cfg", root]).stdout  # update-grub's, by UUID
    assert f"root=UUID={plan.root.uuid} ro console=tty0 console=ttyS0,115200 quiet" in grub_cfg
    esp = f"{debian_image.disks[0]}@@{disk.partitions[1].start * 512}"
    for efi_dir, loader in (("EFI/BOOT", "BOOTX64"), ("EFI/debian", "grubx64")):  # removable path + distribution's
        assert loader in run(["mdir", "-b", "-i", esp, f"::{efi_dir}"], env={"MTOOLS_SKIP_CHECK": "1"}).stdout


@pytest.mark.vm
@pytest.mark.root
@pytest.mark.parametrize("firmware", [VMFirmware.BIOS, VMFirmware.UEFI])
def test_debian_machine_boots_to_its_login_and_passes_its_check(
    debian_image: DebianImage, firmware: VMFirmware, tmp_path: Path
) -> None:
    disk = tmp_path / "disk0.img"
    run(["cp", "--sparse=always", debian_image.disks[0], disk])
    spec = VMSpec(disks=(disk,), firmware=firmware, memory="1G", accel=find_accel(), name=f"asr-debian-{firmware}")
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"debian-machine-{firmware}.serial.log"
    log.unlink(missing_ok=True)
    with QemuVM(spec, workdir=tmp_path / "vm", log=log) as vm:
        found = check_login(vm)
        seconds = round(vm.elapsed(), 1)
    _record(f"boot-{firmware}", {"login_and_check_seconds": seconds, "line": found.line})
    plan = debian_image.plan
    assert found.state == "running", found.line
    assert (found.root_source, found.root_fstype, found.root_uuid) == ("/dev/vda3", "ext4", plan.root.uuid)
    assert found.esp_fstype == "vfat"
    assert found.swap_uuid == plan.swap.uuid
    assert found.hostname == plan.spec.hostname
    assert found.firmware == firmware.value
    shutil.rmtree(tmp_path / "vm", ignore_errors=True)
