"""Issue 11, a restore with new ids (``asr rehearse --new-ids``, ``asr.new_ids=1``): the real Debian machine
(layout 1: GPT, ESP, ext4 root, swap as its resume device) captured on this host, rehearsed under UEFI with new
disk, partition and filesystem ids onto a disk 1.5x larger, and booted to its login, where its own check judges
the mounts by the NEW ids (the harness reads them from the rescue system's ``ASR-NEW-ID`` lines).

What is asserted comes from independent tools on the kept scratch disk: sfdisk and blkid (every id differs from
the capture and is the one the rescue system announced), debugfs (fstab, the initramfs' resume device and grub.cfg
name the new ids and none of the old), the restore log (the restored system's update-initramfs and update-grub ran
in the chroot), and the restored initramfs itself (its conf/conf.d/resume names the new swap UUID).

Artifacts under tests/artifacts/new-ids/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.vm import rehearse
from builder.vm.debian import DebianImage, DebianSpec, make_debian_image
from recovery_env.model.descriptor import Descriptor, FsType
from recovery_env.model.sif import parse_asr_sif
from recovery_env.restore.newids import NewIds, parse_new_id_lines
from recovery_env.run import run

pytestmark = [pytest.mark.vm, pytest.mark.root]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "new-ids"
BACKUP_MIB = 1024
REBUILD = "rebuild the initramfs for the new ids (chroot, update-initramfs)"
REWRITE = "write the new ids into the restored system's files"
UPDATE_GRUB = "rewrite the grub configuration (chroot, update-grub)"


@dataclass(frozen=True)
class NewIdsRun:
    machine: DebianImage
    descriptor: Descriptor  # as captured
    report: rehearse.RehearsalReport
    ids: NewIds  # what the rescue system announced
    disk: Path  # the kept scratch disk
    table: dict  # type: ignore[type-arg]  # sfdisk --json of it
    restore_log: str


def _root_offset(table: dict, number: int) -> int:  # type: ignore[type-arg]
    part = next(p for p in table["partitions"] if p["node"].endswith(str(number)))
    return int(part["start"]) * 512


def _cat(disk: Path, offset: int, path: str) -> str:
    return run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={offset}"]).stdout


@pytest.fixture(scope="module")
def new_ids_run() -> NewIdsRun:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices (debootstrap, the capture's loop mounts)")
    machine = make_debian_image(DebianSpec())
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    started = time.monotonic()
    image, set_dir = rehearse.capture_disk_image(machine.disks, machine.plan.root.partition, machine.hostname,
                                                 "uefi", ARTIFACTS / "capture", backup_mib=BACKUP_MIB)  # fmt: skip
    image.unlink()  # the rehearsal makes its own backup medium from the set
    report = rehearse.rehearse(set_dir, firmware="uefi", grow_percent=50, workdir=ARTIFACTS / "rehearse",
                               memory="768M", keep=True, new_ids=True, restore_timeout=2700.0, cpus=2)  # fmt: skip
    (ARTIFACTS / "timings.json").write_text(json.dumps(
        {"total": round(time.monotonic() - started, 1), **{p.name: p.seconds for p in report.phases}}, indent=1))
    serial = Path(report.rescue_log).read_text(errors="replace")
    (disk,) = (Path(d) for d in report.scratch_disks)
    table = json.loads(run(["sfdisk", "--json", disk]).stdout)["partitiontable"]
    offset = _root_offset(table, machine.plan.root.partition)
    names = re.findall(r"restore-\d{8}-\d{6}\.log", run(["debugfs", "-R", "ls -l /var/log/asr",
                                                         f"{disk}?offset={offset}"]).stdout)  # fmt: skip
    log = _cat(disk, offset, f"/var/log/asr/{names[0]}") if names else ""
    return NewIdsRun(machine, parse_asr_sif((set_dir / "ASR.SIF").read_text()), report, parse_new_id_lines(serial),
                     disk, table, log)  # fmt: skip


def test_the_rehearsal_with_new_ids_boots_and_its_check_passes_with_the_new_ids(new_ids_run: NewIdsRun) -> None:
    r = new_ids_run.report
    assert r.recoverable, r.verdict
    (boot,) = r.boots
    assert boot.booted and boot.login and not boot.check_problems
    root_new = new_ids_run.ids.of("filesystem")[new_ids_run.descriptor.root_mount.filesystem].new
    assert f":{root_new}:ext4" in boot.check or f":{root_new.lower()}:ext4" in boot.check  # findmnt saw it


def test_every_id_on_the_restored_disk_is_new_and_the_one_announced(new_ids_run: NewIdsRun) -> None:
    d, ids, table = new_ids_run.descriptor, new_ids_run.ids, new_ids_run.table
    assert {c.key for c in ids.changes} == ({x.key for x in d.disks} | {p.key for p in d.partitions}
                                            | {f.key for f in d.filesystems if f.uuid})  # fmt: skip
    assert table["id"].lower() == ids.of("disk")["disk1"].new != d.disks[0].disk_id.lower()
    parts = ids.of("partition")
    for p in table["partitions"]:
        number = int(re.search(r"(\d+)$", p["node"]).group(1))  # type: ignore[union-attr]
        change = parts[f"disk1p{number}"]
        assert p["uuid"].lower() == change.new != change.old.lower()
        start = int(p["start"]) * 512
        fs = next((f for f in d.filesystems if f.partition == f"disk1p{number}"), None)
        if fs is None:
            continue
        probe = run(["blkid", "-p", "-O", str(start), "-o", "export", new_ids_run.disk]).stdout
        tags = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        new = ids.of("filesystem")[fs.key].new
        assert (tags["TYPE"], tags["UUID"].lower()) == (fs.type.value, new.lower()), fs
        assert new.lower() != fs.uuid.lower()


def test_fstab_resume_and_grub_name_the_new_ids_and_none_of_the_old(new_ids_run: NewIdsRun) -> None:
    d, ids = new_ids_run.descriptor, new_ids_run.ids
    offset = _root_offset(new_ids_run.table, new_ids_run.machine.plan.root.partition)
    fs = ids.of("filesystem")
    root, swap = d.root_mount.filesystem, next(f.key for f in d.filesystems if f.type is FsType.SWAP)
    fstab = _cat(new_ids_run.disk, offset, "/etc/fstab")
    resume = _cat(new_ids_run.disk, offset, "/etc/initramfs-tools/conf.d/resume")
    grub_cfg = _cat(new_ids_run.disk, offset, "/boot/grub/grub.cfg")
    for c in fs.values():
        assert c.old.lower() not in (fstab + resume + grub_cfg).lower(), c
    assert f"UUID={fs[root].new}" in fstab and f"UUID={fs[swap].new}" in fstab
    assert f"RESUME=UUID={fs[swap].new}" in resume
    assert f"root=UUID={fs[root].new} " in grub_cfg


def test_the_restored_systems_initramfs_was_rebuilt_with_the_new_resume_device(new_ids_run: NewIdsRun) -> None:
    outcomes = rehearse.read_step_outcomes(new_ids_run.restore_log)
    assert outcomes[REWRITE] == "done" and outcomes[REBUILD] == "done" and outcomes[UPDATE_GRUB] == "done"
    offset = _root_offset(new_ids_run.table, new_ids_run.machine.plan.root.partition)
    listing = run(["debugfs", "-R", "ls -l /boot", f"{new_ids_run.disk}?offset={offset}"]).stdout
    (initrd,) = re.findall(r"initrd\.img-\S+", listing)
    work = ARTIFACTS / "initrd"
    work.mkdir(parents=True, exist_ok=True)
    (work / "initrd.img").write_bytes(subprocess.run(["debugfs", "-R", f"cat /boot/{initrd}",
                                                      f"{new_ids_run.disk}?offset={offset}"],
                                                     capture_output=True, check=True).stdout)  # fmt: skip
    # unmkinitramfs (initramfs-tools-core) is not on the host: the initramfs is a zstd cpio, read with cpio
    data = subprocess.run(["zstd", "-dc", str(work / "initrd.img")], capture_output=True, check=True).stdout
    listed = subprocess.run(["cpio", "-i", "--to-stdout", "conf/conf.d/resume"], input=data, capture_output=True,
                            check=True).stdout.decode()  # fmt: skip
    swap = next(f.key for f in new_ids_run.descriptor.filesystems if f.type is FsType.SWAP)
    assert listed.strip() == f"RESUME=UUID={new_ids_run.ids.of('filesystem')[swap].new}"
