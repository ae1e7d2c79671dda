"""The real Debian 12 source machine (builder/vm/debian.py): its planner and sources parsing, its image read back by
independent tools, and the machine booted to its own serial login under BIOS and UEFI with a check run inside."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from itertools import pairwise
from pathlib import Path

import pytest

from builder.vm.debian import (
    LAYOUTS,
    MIB_SECTORS,
    AptSource,
    DebianImage,
    DebianLayout,
    DebianMachineError,
    DebianPlan,
    DebianSpec,
    MirrorNotFoundError,
    Mounted,
    Role,
    check_login,
    expected_mounts,
    find_mirror,
    image_digest,
    make_debian_image,
    parse_check_line,
    parse_deb822_sources,
    parse_guest_timings,
    parse_sources_list,
    plan_debian_machine,
    plan_guest_steps,
    render_check_command,
    render_machine_files,
    render_sfdisk,
)
from builder.vm.qemu import QemuVM, VMError, VMFirmware, VMSpec, find_accel
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


def _check_geometry(plan: DebianPlan) -> None:
    """Every partition 1 MiB aligned, inside its disk (the backup GPT kept free), none overlapping another but a
    logical one inside its extended partition; every id distinct."""
    for disk in plan.disks:
        end_usable = disk.size_mib * MIB_SECTORS - (34 if disk.label == "gpt" else 0)
        extended = [p for p in disk.partitions if p.role is Role.EXTENDED]
        flat = sorted((p for p in disk.partitions if p.role is not Role.EXTENDED), key=lambda p: p.start)
        for p in disk.partitions:
            assert p.start % MIB_SECTORS == 0 and p.size % MIB_SECTORS == 0 and p.size > 0, p
            assert MIB_SECTORS <= p.start and p.start + p.size <= end_usable, p
        for a, b in pairwise(flat):
            assert a.start + a.size <= b.start, (a, b)
        for p in disk.partitions:
            if p.number >= 5:  # logical: after its EBR, inside the extended partition
                (ext,) = extended
                assert ext.start < p.start and p.start + p.size <= ext.start + ext.size
        assert end_usable - max(p.start + p.size for p in disk.partitions) < MIB_SECTORS  # the disk is used
    ids = [d.disk_id for d in plan.disks] + [p.uuid for d in plan.disks for p in d.partitions]
    ids += sorted({f.uuid for f in plan.filesystems})
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("layout", list(DebianLayout))
def test_every_layout_plans_aligned_partitions_distinct_ids_and_its_firmwares(layout: DebianLayout) -> None:
    plan = plan_debian_machine(DebianSpec(layout=layout))
    _check_geometry(plan)
    assert plan.spec.layout is layout and plan.firmwares == LAYOUTS[layout].firmwares
    assert plan.grub_targets == tuple({"bios": "i386-pc", "uefi": "x86_64-efi"}[f] for f in plan.firmwares)
    has_bios_grub = any(p.role is Role.BIOS_BOOT for d in plan.disks for p in d.partitions)
    gpt = plan.disks[0].label == "gpt"
    assert ("bios" in plan.firmwares) == (has_bios_grub or not gpt)  # GPT boots under BIOS only by a bios_grub
    assert ("uefi" in plan.firmwares) == (plan.esp is not None)
    assert plan.mounts[0] is plan.root and plan.swap.fstype is FsType.SWAP
    assert plan_debian_machine(DebianSpec(layout=layout)) == plan  # the same spec, the same ids
    # the image digest changes with the layout (and ids never repeat across layouts)
    others = [plan_debian_machine(DebianSpec(layout=o)) for o in DebianLayout if o is not layout]
    assert all(image_digest(o, Path("tree-x.tar.zst")) != image_digest(plan, Path("tree-x.tar.zst")) for o in others)
    assert all(o.root.uuid != plan.root.uuid and o.disks[0].disk_id != plan.disks[0].disk_id for o in others)
    # the fstab names every filesystem by UUID with its options (btrfs: subvol=)
    fstab = [line.split() for line in render_machine_files(plan)["etc/fstab"].splitlines()
             if line and not line.startswith("#")]  # fmt: skip
    assert [(f[1], f[2], f[3]) for f in fstab] == [(f.mountpoint or "none", f.fstype.value, f.options)
                                                   for f in plan.filesystems]  # fmt: skip
    # what the check will list: every fstab filesystem but swap
    assert [m.target for m in expected_mounts(plan)] == sorted(f.mountpoint for f in plan.mounts)


def test_layout_2_is_an_xp_era_mbr_with_an_active_boot_and_a_logical_swap() -> None:
    plan = plan_debian_machine(DebianSpec(layout=DebianLayout.MBR_BIOS))
    (disk,) = plan.disks
    assert disk.label == "dos" and re.fullmatch(r"0x[0-9a-f]{8}", disk.disk_id)
    got = [(p.number, p.role, p.type, p.bootable) for p in disk.partitions]
    assert got == [(1, Role.BOOT, "83", True), (2, Role.ROOT, "83", False), (3, Role.EXTENDED, "05", False),
                   (5, Role.SWAP, "82", False)]  # fmt: skip
    assert disk.partition(1).size == 256 * MIB_SECTORS
    assert [p.uuid for p in disk.partitions] == [f"{disk.disk_id[2:]}-{n:02x}" for n in (1, 2, 3, 5)]  # PARTUUIDs
    by_mount = {f.mountpoint: f for f in plan.filesystems}
    assert (by_mount["/boot"].partition, by_mount["/boot"].fstype) == (1, FsType.EXT4)
    assert (by_mount["/"].partition, by_mount["/"].fstype) == (2, FsType.EXT4)
    assert plan.swap.partition == 5 and plan.esp is None
    assert plan.firmwares == ("bios",) and plan.grub_targets == ("i386-pc",)
    steps = {s.name: s.commands for s in plan_guest_steps(plan)}
    assert steps["install GRUB"] == ("chroot /run/asr/target grub-install --target=i386-pc /dev/vdb",)
    assert "wait_block /dev/vdb5" in steps["wait for partitions"]
    assert "wait_block /dev/vdb3" not in steps["wait for partitions"]  # the extended partition holds no filesystem
    assert steps["mount"][-1] == "mount /dev/vdb1 /run/asr/target/boot"  # below the root
    assert not [c for c in steps["report"] if "boot/efi" in c]


def test_layout_3_is_uefi_only_with_an_xfs_root_and_an_ext4_home_holding_a_users_files() -> None:
    plan = plan_debian_machine(DebianSpec(layout=DebianLayout.GPT_XFS_HOME))
    (disk,) = plan.disks
    assert [p.role for p in disk.partitions] == [Role.ESP, Role.ROOT, Role.HOME, Role.SWAP]
    assert plan.root.fstype is FsType.XFS and plan.mount("/home").fstype is FsType.EXT4  # type: ignore[union-attr]
    assert plan.firmwares == ("uefi",) and plan.grub_targets == ("x86_64-efi",)
    assert {p for p, _ in plan.data_files} >= {"/home/alice/notes.txt", "/home/alice/.profile"}
    files = render_machine_files(plan)
    assert all(files[path.lstrip("/")] == text for path, text in plan.data_files)
    steps = {s.name: s.commands for s in plan_guest_steps(plan)}
    assert f"mkfs.xfs -q -f -m uuid={plan.root.uuid} -L root /dev/vdb2" in steps["make filesystems"]
    assert not [c for c in steps["install GRUB"] if "i386-pc" in c]


def test_layout_4_is_a_btrfs_with_subvolumes_a_default_and_a_read_only_snapshot() -> None:
    plan = plan_debian_machine(DebianSpec(layout=DebianLayout.GPT_BTRFS))
    (disk,) = plan.disks
    assert [p.role for p in disk.partitions] == [Role.BIOS_BOOT, Role.ROOT, Role.SWAP]
    assert plan.firmwares == ("bios",) and plan.esp is None
    btrfs = [f for f in plan.filesystems if f.fstype is FsType.BTRFS]
    assert [(f.mountpoint, f.subvolume, f.options) for f in btrfs] == [
        ("/", "@", "defaults,subvol=@"), ("/home", "@home", "defaults,subvol=@home"),
        ("/.snapshots", "@snapshots", "defaults,subvol=@snapshots")]  # fmt: skip
    assert len({(f.uuid, f.partition) for f in btrfs}) == 1  # one filesystem
    assert [f.fstype for f in plan.formats] == [FsType.BTRFS, FsType.SWAP]  # made once
    assert plan.subvolumes == ("@", "@home", "@snapshots") and plan.default_subvolume == "@"
    steps = {s.name: s.commands for s in plan_guest_steps(plan)}
    assert steps["make subvolumes"][-2:] == ("btrfs subvolume set-default /run/asr/top/@", "umount /run/asr/top")
    assert "mount -o subvol=@home /dev/vdb2 /run/asr/target/home" in steps["mount"]
    assert "grep -q rootflags=subvol=@ /run/asr/target/boot/grub/grub.cfg" in steps["configure GRUB"]
    assert ("btrfs subvolume snapshot -r /run/asr/target /run/asr/target/.snapshots/1/snapshot"
            in steps["snapshot"])  # fmt: skip
    names = [s.name for s in plan_guest_steps(plan)]
    assert names.index("snapshot") > names.index("configure GRUB")  # the snapshot holds the finished system
    assert {m.fsroot for m in expected_mounts(plan)} == {"/@", "/@home", "/@snapshots"}


def test_layout_5_puts_srv_on_a_smaller_second_disk() -> None:
    plan = plan_debian_machine(DebianSpec(layout=DebianLayout.TWO_DISKS))
    first, second = plan.disks
    assert [p.role for p in first.partitions] == [Role.ESP, Role.ROOT, Role.SWAP]
    assert second.size_mib == 512 < first.size_mib and [p.role for p in second.partitions] == [Role.SRV]
    srv = plan.mount("/srv")
    assert srv is not None and (srv.disk, srv.partition, srv.fstype) == (1, 1, FsType.EXT4)
    assert plan.firmwares == ("uefi",) and {p.split("/")[1] for p, _ in plan.data_files} == {"srv"}
    steps = {s.name: s.commands for s in plan_guest_steps(plan)}
    assert steps["partition"][1] == "sfdisk --quiet --wipe always /dev/vdc < /asr/disk1.sfdisk"
    assert "mount /dev/vdc1 /run/asr/target/srv" in steps["mount"]


@pytest.mark.image
@pytest.mark.parametrize("layout", list(DebianLayout))
def test_the_sfdisk_scripts_make_the_planned_tables(layout: DebianLayout, tmp_path: Path) -> None:
    """sfdisk itself reads each planned script into a plain file and reads the table back (no root, no guest)."""
    plan = plan_debian_machine(DebianSpec(layout=layout))
    for disk in plan.disks:
        img = tmp_path / f"disk{disk.index}.img"
        with open(img, "wb") as f:
            f.truncate(disk.size_mib << 20)
        run(["sfdisk", "--quiet", str(img)], input=render_sfdisk(disk))
        table = json.loads(run(["sfdisk", "--json", str(img)]).stdout)["partitiontable"]
        assert table["label"] == disk.label and table["id"].lower() == disk.disk_id
        got = [(int(p["node"].removeprefix(str(img))), p["start"], p["size"], p["type"].lower().zfill(2),
                p.get("bootable", False)) for p in table["partitions"]]  # fmt: skip
        assert got == [(p.number, p.start, p.size, p.type, p.bootable) for p in disk.partitions]
        if disk.label == "gpt":
            assert [p["uuid"].lower() for p in table["partitions"]] == [p.uuid for p in disk.partitions]


def test_the_check_line_typed_is_not_the_line_it_prints() -> None:
    typed = render_check_command()
    assert parse_check_line(typed) is None
    said = ("ASR-CHECK state=running root=/dev/vda3 fstype=ext4 uuid=u esp=vfat swap=s host=h firmware=bios "
            "mounts=/:u:ext4:/,/boot/efi:AB12-CD34:vfat:/,/home:u:btrfs:/@home data=" + "0" * 64 + " end")  # fmt: skip
    found = parse_check_line(typed + "\n" + said + "\n")
    assert found is not None and found.state == "running" and found.firmware == "bios"
    assert found.mounts == (Mounted("/", "u", "ext4", "/"), Mounted("/boot/efi", "AB12-CD34", "vfat", "/"),
                            Mounted("/home", "u", "btrfs", "/@home"))  # fmt: skip
    assert found.mounted("/home") is not None and found.mounted("/home").subvolume == "@home"  # type: ignore[union-attr]
    assert found.mounted("/").subvolume == "" and found.mounted("/srv") is None  # type: ignore[union-attr]
    assert found.data == "0" * 64
    with pytest.raises(VMError, match="mounts field has '/home:u'"):
        parse_check_line(said.replace("/home:u:btrfs:/@home", "/home:u"))


def test_the_check_says_which_filesystems_are_mounted_and_what_the_data_files_hash_to() -> None:
    typed = render_check_command()
    assert "findmnt -rn -t ext2,ext3,ext4,xfs,btrfs,vfat -o TARGET,UUID,FSTYPE,FSROOT" in typed
    assert "find /home /srv -type f" in typed
    plan = plan_debian_machine(DebianSpec(layout=DebianLayout.GPT_XFS_HOME))
    # what `sha256sum` of `sha256sum FILE...` prints: the reference is computed here from the files' texts
    lines = "".join(f"{hashlib.sha256(text.encode()).hexdigest()}  {path}\n" for path, text in sorted(plan.data_files))
    assert plan.data_digest == hashlib.sha256(lines.encode()).hexdigest()
    assert plan_debian_machine(DebianSpec()).data_digest == hashlib.sha256(b"").hexdigest()  # no separate /home


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
    assert tuple(sorted(found.mounts)) == expected_mounts(plan) and found.data == plan.data_digest
    shutil.rmtree(tmp_path / "vm", ignore_errors=True)
