"""The test source machine (builder/vm/machine.py): plan, image checks by independent tools, boots in QEMU.

Tiers: plain unit tests (planner, templates, BIOS boot code, cpio); ``image`` tests build the GPT and MBR
images once per session and check them with sfdisk, blkid, e2fsck, debugfs, fsck.fat and mtools; ``vm`` tests
boot them (SeaBIOS and OVMF under TCG) and take the verdict from the machine's own /init on the serial console.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from builder.media.packages import PackageSet, fetch_packages, read_deb
from builder.vm.machine import (
    BOOT_DRIVE,
    BOOT_DRIVE_CHECK,
    BOOT_KERNEL_SECTOR,
    CORE_LOAD_SEGMENT,
    FAIL_PREFIX,
    LONG_NAME,
    MARKER_PREFIX,
    MIB_SECTORS,
    SECTOR,
    Layout,
    MachineBuildError,
    MachineImage,
    MachineInputs,
    MachineSpec,
    PartRole,
    check_restored_disk,
    make_machine_image,
    plan_grub_bios_boot,
    plan_machine,
    read_disk_facts,
    read_ext4_xattrs,
    read_machine_inputs,
    render_grub_cfg,
    render_sfdisk_script,
)
from recovery_env.errors import AsrError
from recovery_env.model.descriptor import GPT_BIOS_BOOT, GPT_ESP, Firmware, FsType
from recovery_env.run import run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BOOT_TIMEOUT = 120.0


# ------------------------------------------------------------------------------------------------- unit tests


def test_plan_gpt_layout_is_aligned_and_typed() -> None:
    plan = plan_machine(MachineSpec(layout=Layout.GPT, size_mib=256))
    roles = [p.role for p in plan.partitions]
    assert roles == [PartRole.BIOS_BOOT, PartRole.ESP, PartRole.ROOT]
    assert [p.type for p in plan.partitions] == [GPT_BIOS_BOOT, GPT_ESP, "0fc63daf-8483-4772-8e79-3d69d8477de4"]
    for prev, part in zip(plan.partitions, plan.partitions[1:], strict=False):
        assert part.start == prev.start + prev.size
    assert all(p.start % MIB_SECTORS == 0 and p.size % MIB_SECTORS == 0 for p in plan.partitions)
    root = plan.partition(PartRole.ROOT)
    assert root.start + root.size <= 256 * MIB_SECTORS - 33  # the backup GPT stays clear
    assert len({p.uuid for p in plan.partitions} | {plan.disk_id}) == 4
    assert not any(p.bootable for p in plan.partitions)
    assert plan.filesystem(PartRole.ROOT).fstype is FsType.EXT4
    assert plan.filesystem(PartRole.ESP).fstype is FsType.VFAT


def test_plan_mbr_layout_has_bootable_root_and_derived_partuuids() -> None:
    plan = plan_machine(MachineSpec(layout=Layout.MBR))
    assert [(p.role, p.type, p.bootable) for p in plan.partitions] == [
        (PartRole.ESP, "ef", False),
        (PartRole.ROOT, "83", True),
    ]
    assert plan.disk_id.startswith("0x") and len(plan.disk_id) == 10
    assert [p.uuid for p in plan.partitions] == [f"{plan.disk_id[2:]}-01", f"{plan.disk_id[2:]}-02"]
    assert plan.partitions[0].start == MIB_SECTORS  # the post-MBR gap holds core.img


def test_plan_ids_follow_the_seed() -> None:
    a = plan_machine(MachineSpec(seed="one"))
    assert plan_machine(MachineSpec(seed="one")) == a
    b = plan_machine(MachineSpec(seed="two"))
    assert a.disk_id != b.disk_id
    assert a.filesystem(PartRole.ROOT).uuid != b.filesystem(PartRole.ROOT).uuid
    assert a.filesystem(PartRole.ESP).uuid != b.filesystem(PartRole.ESP).uuid


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"size_mib": 64}, "size_mib 64"),
        ({"hostname": "Bad_Host"}, "hostname 'Bad_Host'"),
        ({"marker": "two words"}, "marker 'two words'"),
        ({"epoch": 0}, "epoch 0"),
    ],
)
def test_spec_rejects_bad_values_by_name(change: dict[str, object], words: str) -> None:
    with pytest.raises(MachineBuildError, match=words):
        MachineSpec(**change)  # type: ignore[arg-type]


def test_sfdisk_script_names_ids_types_and_names() -> None:
    plan = plan_machine(MachineSpec(layout=Layout.GPT))
    script = render_sfdisk_script(plan)
    assert f"label-id: {plan.disk_id}" in script
    for part in plan.partitions:
        assert f'start={part.start}, size={part.size}, type={part.type}, uuid={part.uuid}, name="{part.name}"' in script
    mbr = render_sfdisk_script(plan_machine(MachineSpec(layout=Layout.MBR)))
    assert "label: dos" in mbr and "type=83, bootable" in mbr and "uuid=" not in mbr


def test_grub_cfg_boots_the_root_by_uuid() -> None:
    plan = plan_machine(MachineSpec(layout=Layout.MBR))
    cfg = render_grub_cfg(plan, "6.1.0-99-amd64")
    uuid = plan.filesystem(PartRole.ROOT).uuid
    assert f"search --no-floppy --fs-uuid --set=root {uuid}" in cfg
    assert f"linux /boot/vmlinuz-6.1.0-99-amd64 root=UUID={uuid} ro console=tty0 console=ttyS0,115200" in cfg
    assert "insmod part_msdos" in cfg and "set timeout=0" in cfg


@pytest.fixture(scope="session")
def machine_packages() -> PackageSet:
    return fetch_packages()


@pytest.fixture(scope="session")
def grub_pc_files(machine_packages: PackageSet) -> dict[str, bytes]:
    members = read_deb(machine_packages.deb("grub-pc-bin"), ["usr/lib/grub/i386-pc/"])
    return {path.rsplit("/", 1)[-1]: m.data for path, m in members.items() if m.data}


def _fake_core(grub_pc_files: dict[str, bytes], sectors: int) -> bytes:
    """diskboot.img followed by filler: the shape of a core.img (its first sector is diskboot.img)."""
    return grub_pc_files["diskboot.img"] + bytes(range(256)) * 2 * (sectors - 1)


def test_bios_boot_code_points_boot_img_at_core_and_core_at_itself(grub_pc_files: dict[str, bytes]) -> None:
    mbr = bytearray(SECTOR)
    mbr[0x1B8:0x1BC] = b"\x78\x56\x34\x12"  # disk signature
    mbr[0x1BE:0x1CE] = bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 4096)
    mbr[0x1FE:0x200] = b"\x55\xaa"
    boot_img = grub_pc_files["boot.img"]
    sector0, core = plan_grub_bios_boot(bytes(mbr), boot_img, _fake_core(grub_pc_files, 40), 2048, 2048)

    assert struct.unpack_from("<Q", sector0, BOOT_KERNEL_SECTOR)[0] == 2048
    assert sector0[BOOT_DRIVE] == 0xFF
    assert sector0[BOOT_DRIVE_CHECK : BOOT_DRIVE_CHECK + 2] == b"\x90\x90"
    assert sector0[0x1B8:0x200] == bytes(mbr[0x1B8:0x200])  # signature and partition table kept
    assert sector0[0x68:0x1B8] == boot_img[0x68:0x1B8]  # GRUB's code itself untouched
    assert struct.unpack_from("<QHH", core, SECTOR - 12) == (2049, 39, CORE_LOAD_SEGMENT)
    assert core[SECTOR - 24 : SECTOR - 12] == bytes(12)  # terminator
    assert len(core) == 40 * SECTOR


def test_bios_boot_code_refuses_what_does_not_fit_or_is_not_grub(grub_pc_files: dict[str, bytes]) -> None:
    mbr = bytes(SECTOR)
    with pytest.raises(MachineBuildError, match="needs 40 sectors, the embedding area has 39"):
        plan_grub_bios_boot(mbr, grub_pc_files["boot.img"], _fake_core(grub_pc_files, 40), 1, 39)
    with pytest.raises(MachineBuildError, match=r"boot\.img"):
        plan_grub_bios_boot(mbr, bytes(SECTOR), _fake_core(grub_pc_files, 4), 1, 39)
    with pytest.raises(MachineBuildError, match="diskboot"):
        plan_grub_bios_boot(mbr, grub_pc_files["boot.img"], bytes(4 * SECTOR), 1, 39)


# ------------------------------------------------------------------------------------------------ image tests


@pytest.fixture(scope="session")
def machine_inputs(machine_packages: PackageSet) -> MachineInputs:
    return read_machine_inputs(machine_packages)


@pytest.fixture(scope="session")
def machine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("machine")


@pytest.fixture(scope="session")
def gpt_machine(machine_dir: Path, machine_inputs: MachineInputs) -> MachineImage:
    return make_machine_image(machine_dir / "gpt.img", MachineSpec(layout=Layout.GPT), machine_inputs)


@pytest.fixture(scope="session")
def mbr_machine(machine_dir: Path, machine_inputs: MachineInputs) -> MachineImage:
    spec = MachineSpec(layout=Layout.MBR, hostname="asr-mbr", marker="mbr-1", seed="mbr")
    return make_machine_image(machine_dir / "mbr.img", spec, machine_inputs)


@pytest.fixture(params=["gpt", "mbr"])
def machine(request: pytest.FixtureRequest) -> MachineImage:
    image: MachineImage = request.getfixturevalue(f"{request.param}_machine")
    return image


def _sfdisk_json(image: MachineImage) -> dict[str, object]:
    table: dict[str, object] = json.loads(run(["sfdisk", "--json", str(image.path)]).stdout)["partitiontable"]
    return table


@pytest.mark.image
def test_sfdisk_reads_the_planned_table(machine: MachineImage) -> None:
    table = _sfdisk_json(machine)
    assert table["label"] == machine.layout.table.sfdisk_label
    assert str(table["id"]).lower() == machine.disk_id
    parts = table["partitions"]
    assert isinstance(parts, list) and len(parts) == len(machine.partitions)
    for got, want in zip(parts, machine.partitions, strict=True):
        assert (got["start"], got["size"]) == (want.start, want.size)
        assert got["type"].lower() == want.type
        if machine.layout is Layout.GPT:
            assert (got["uuid"].lower(), got["name"]) == (want.uuid, want.name)
        else:
            assert got.get("bootable", False) == want.bootable
    assert run(["sfdisk", "--verify", str(machine.path)]).returncode == 0


@pytest.mark.image
def test_blkid_finds_the_filesystems_by_uuid_and_label(machine: MachineImage) -> None:
    for fs in machine.filesystems:
        part = next(p for p in machine.partitions if p.number == fs.partition)
        out = run(["blkid", "-p", "-o", "export", "-O", str(part.offset), str(machine.path)]).stdout
        found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert found["TYPE"] == str(fs.fstype)
        assert found["UUID"] == fs.uuid
        assert found["LABEL"] == fs.label


@pytest.mark.image
def test_e2fsck_finds_the_root_clean(machine: MachineImage) -> None:
    part = next(p for p in machine.partitions if p.role is PartRole.ROOT)
    result = run(["e2fsck", "-fn", f"{machine.path}?offset={part.offset}"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _debugfs(image: MachineImage, request: str) -> str:
    part = next(p for p in image.partitions if p.role is PartRole.ROOT)
    return run(["debugfs", "-R", request, f"{image.path}?offset={part.offset}"]).stdout


@pytest.mark.image
def test_root_holds_kernel_initrd_grub_and_the_sample_files(gpt_machine: MachineImage) -> None:
    image = gpt_machine
    kver = image.kernel_version
    boot = _debugfs(image, "ls -l /boot")
    assert f"vmlinuz-{kver}" in boot and f"initrd.img-{kver}" in boot
    grub = _debugfs(image, "ls /boot/grub")
    assert "i386-pc" in grub and "x86_64-efi" in grub and "grub.cfg" in grub
    assert "normal.mod" in _debugfs(image, "ls /boot/grub/x86_64-efi")
    assert f"root=UUID={image.root.uuid}" in _debugfs(image, "cat /boot/grub/grub.cfg")
    fstab = _debugfs(image, "cat /etc/fstab")
    assert f"UUID={image.root.uuid} / ext4" in fstab and f"UUID={image.esp.uuid} /boot/efi vfat" in fstab
    assert _debugfs(image, "cat /etc/hostname") == "asr-sample\n"
    # owners, a hard link, a symlink, an extended attribute, a sparse file
    assert "User:  1000   Group:  1000" in _debugfs(image, "stat /home/user/secret.txt")
    assert "Links: 2" in _debugfs(image, "stat /srv/data/hardlink-a")
    assert 'Fast link dest: "notes.txt"' in _debugfs(image, "stat /home/user/notes-link")
    assert image.marker in _debugfs(image, "ea_get /srv/data/blob.bin user.asr.sample")
    root = next(p for p in image.partitions if p.role is PartRole.ROOT)
    for x in image.plan.xattrs:  # ACLs: stored in ext4's own form, converted by debugfs
        got = read_ext4_xattrs(image.path, root.offset, x.path)
        assert x.name in got and (got[x.name] == x.value or x.name.startswith("system.posix_acl")), x
    assert len(image.plan.xattrs) >= 15 and len(LONG_NAME) > 100
    sparse = _debugfs(image, "stat /srv/data/sparse.img")
    assert "Size: 8388608" in sparse
    blocks = int(sparse.split("Blockcount: ")[1].split()[0])  # 512-byte units
    assert blocks < 64, f"sparse.img occupies {blocks * 512} bytes: holes were not kept"
    times = _debugfs(image, "stat /etc/hostname")
    assert times.count("0x6553f100") == 4  # ctime, atime, mtime, crtime all at the epoch


@pytest.mark.image
def test_esp_passes_fsck_fat_and_holds_the_removable_path(machine: MachineImage, tmp_path: Path) -> None:
    part = next(p for p in machine.partitions if p.role is PartRole.ESP)
    esp = tmp_path / "esp.img"
    with machine.path.open("rb") as src, esp.open("wb") as dst:
        src.seek(part.offset)
        dst.write(src.read(part.size_bytes))
    result = run(["fsck.fat", "-n", str(esp)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    listing = run(["mdir", "-i", str(esp), "-/", "::"], env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "BOOTX64  EFI" in listing and "grubx64  efi" in listing
    assert f"Volume Serial Number is {machine.esp.uuid}" in listing
    efi = tmp_path / "BOOTX64.EFI"
    run(["mcopy", "-i", str(esp), "::EFI/BOOT/BOOTX64.EFI", str(efi)], env={"MTOOLS_SKIP_CHECK": "1"})
    pe = efi.read_bytes()
    assert pe[:2] == b"MZ"
    (pe_offset,) = struct.unpack_from("<I", pe, 0x3C)
    assert pe[pe_offset : pe_offset + 4] == b"PE\0\0"
    assert struct.unpack_from("<H", pe, pe_offset + 4)[0] == 0x8664  # x86-64


@pytest.mark.image
def test_bios_boot_code_is_in_place(machine: MachineImage) -> None:
    with machine.path.open("rb") as f:
        sector0 = f.read(SECTOR)
        core_sector = struct.unpack_from("<Q", sector0, BOOT_KERNEL_SECTOR)[0]
        f.seek(core_sector * SECTOR)
        diskboot = f.read(SECTOR)
    assert sector0[0x1FE:] == b"\x55\xaa"
    if machine.layout is Layout.GPT:
        assert core_sector == next(p for p in machine.partitions if p.role is PartRole.BIOS_BOOT).start
        assert sector0[0x1C2] == 0xEE  # the protective MBR entry survived
    else:
        assert core_sector == 1
        assert struct.unpack_from("<I", sector0, 0x1B8)[0] == int(machine.disk_id, 16)
    start, count, segment = struct.unpack_from("<QHH", diskboot, SECTOR - 12)
    assert (start, segment) == (core_sector + 1, CORE_LOAD_SEGMENT) and count > 10


@pytest.mark.image
def test_the_same_spec_builds_the_same_bytes(
    gpt_machine: MachineImage, machine_inputs: MachineInputs, tmp_path: Path
) -> None:
    time.sleep(1.1)  # a clock leaking into the image would now differ
    again = make_machine_image(tmp_path / "again.img", gpt_machine.plan.spec, machine_inputs)
    assert again.sha256 == gpt_machine.sha256
    assert again.path.read_bytes() == gpt_machine.path.read_bytes()
    later = make_machine_image(tmp_path / "later.img", replace(gpt_machine.plan.spec, epoch=1700086400), machine_inputs)
    assert later.sha256 != gpt_machine.sha256


@pytest.mark.image
def test_a_failed_build_leaves_nothing(machine_inputs: MachineInputs, tmp_path: Path) -> None:
    grub = dict(machine_inputs.grub)
    grub["x86_64-efi"] = {k: v for k, v in grub["x86_64-efi"].items() if k != "kernel.img"}
    broken = replace(machine_inputs, grub=grub)
    out = tmp_path / "out" / "broken.img"
    with pytest.raises(AsrError, match="grub-mkimage"):
        make_machine_image(out, MachineSpec(), broken)
    assert list(out.parent.iterdir()) == []


@pytest.mark.image
def test_a_disk_read_back_matches_its_machine(machine: MachineImage) -> None:
    facts = read_disk_facts(machine.path)
    assert check_restored_disk(machine, facts) == []
    assert {fs.uuid for fs in facts.filesystems} == {fs.uuid for fs in machine.filesystems}
    assert check_restored_disk(machine, facts, last_grows=True) == [
        f"partition {machine.partitions[-1].number} (root): size stayed {machine.partitions[-1].size} sectors; "
        "it should have grown to fill the disk"
    ]


def _copy_onto_larger_disk(image: MachineImage, target: Path, size_mib: int) -> None:
    """What a restore does to the layout, done with host tools: the same table on a larger disk with the last
    partition grown, each partition's bytes copied to the same place."""
    bigger = plan_machine(replace(image.plan.spec, size_mib=size_mib))
    with target.open("wb") as f:
        f.truncate(size_mib << 20)
    run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(target)], input=render_sfdisk_script(bigger))
    for part in image.partitions:
        run(
            ["dd", f"if={image.path}", f"of={target}", "bs=1M", f"skip={part.offset}", f"seek={part.offset}",
             f"count={part.size_bytes}", "iflag=skip_bytes,count_bytes", "oflag=seek_bytes", "conv=notrunc,sparse",
             "status=none"]
        )  # fmt: skip


@pytest.mark.image
def test_a_grown_copy_matches_and_damage_is_named(gpt_machine: MachineImage, tmp_path: Path) -> None:
    disk = tmp_path / "restored.img"
    _copy_onto_larger_disk(gpt_machine, disk, 384)
    assert check_restored_disk(gpt_machine, read_disk_facts(disk), last_grows=True) == []

    run(["sfdisk", "-q", "--disk-id", str(disk), "01234567-89ab-4def-8123-456789abcdef"])
    root = next(p for p in gpt_machine.partitions if p.role is PartRole.ROOT)
    run(["debugfs", "-w", "-R", "ssv volume_name other", f"{disk}?offset={root.offset}"])
    assert check_restored_disk(gpt_machine, read_disk_facts(disk), last_grows=True) == [
        f"disk id is 01234567-89ab-4def-8123-456789abcdef, the machine had {gpt_machine.disk_id}",
        f"ext4 filesystem of / (partition {root.number}): label is 'other', the machine had 'asr-root'",
    ]


# --------------------------------------------------------------------------------------------------- VM tests


def boot_machine(disk: Path, firmware: Firmware, workdir: Path, timeout: float = BOOT_TIMEOUT) -> tuple[str, str]:
    """Boot ``disk`` alone (snapshot: the file is not changed) and return (verdict line, serial log).

    The verdict is the machine's own: the first ASR-MACHINE-MARKER / ASR-MACHINE-FAIL line; "" if QEMU ended
    or the time ran out without one (the log then says why)."""
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "512", "-nographic", "-no-reboot"]
    argv += ["-nic", "none", "-monitor", "none", "-serial", "stdio"]
    if firmware is Firmware.UEFI:
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    argv += ["-drive", f"file={disk},format=raw,if=ide,snapshot=on"]
    log = bytearray()
    verdict = ""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and not verdict:
            chunk = proc.stdout.read(65536)
            if chunk:
                log.extend(chunk)
                for line in log.decode(errors="replace").replace("\r", "").splitlines():
                    if line.startswith((MARKER_PREFIX, FAIL_PREFIX)):
                        verdict = line.strip()
                        break
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        (workdir / f"serial-{firmware}.log").write_bytes(bytes(log))
    return verdict, log.decode(errors="replace")


@pytest.mark.vm
@pytest.mark.parametrize(
    ("layout", "firmware"),
    [("gpt", Firmware.BIOS), ("gpt", Firmware.UEFI), ("mbr", Firmware.BIOS)],
)
def test_machine_boots_and_prints_its_marker(
    layout: str, firmware: Firmware, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    image: MachineImage = request.getfixturevalue(f"{layout}_machine")
    before = image.path.stat().st_mtime_ns
    verdict, log = boot_machine(image.path, firmware, tmp_path)
    tail = "\n".join(log.splitlines()[-25:])
    assert verdict == image.expected_line(firmware), f"serial console ended with:\n{tail}"
    assert image.path.stat().st_mtime_ns == before


@pytest.mark.vm
def test_a_damaged_machine_says_so(mbr_machine: MachineImage, tmp_path: Path) -> None:
    """The verdict comes from the machine's checks, not from merely booting: a changed file is reported."""
    damaged = tmp_path / "damaged.img"
    run(["cp", "--sparse=always", str(mbr_machine.path), str(damaged)])
    root = next(p for p in mbr_machine.partitions if p.role is PartRole.ROOT)
    (tmp_path / "notes.txt").write_text("not the notes that were backed up\n")
    cmds = tmp_path / "cmds"
    cmds.write_text(f"rm /home/user/notes.txt\nwrite {tmp_path / 'notes.txt'} /home/user/notes.txt\n")
    run(["debugfs", "-w", "-f", str(cmds), f"{damaged}?offset={root.offset}"])
    verdict, log = boot_machine(damaged, Firmware.BIOS, tmp_path)
    assert verdict.startswith(FAIL_PREFIX), "\n".join(log.splitlines()[-25:])
    assert "differ from /etc/asr-machine/SHA256SUMS" in verdict
