"""Issue 11, layout 1 captured while running: the real Debian machine (builder/vm/debian.py) booted under UEFI runs
this project's ``asr backup --to /mnt/backup/asr/<host>`` with no ``--root`` (builder/vm/live.py) while a writer
appends to a log under /var/log and rewrites a file in /root; the set is restored unattended by the rescue media
(UEFI) onto a blank disk 1.5x larger and the restored disk boots under UEFI to its login, where the check runs.

Asserted from the guests and independent tools: the capture's --json (firmware uefi read from /sys/firmware/efi,
the ESP read through its vfat mount at /boot/efi, a named warning per file that changed while read, nothing of
/proc, /sys, /dev, /run or the backup and sources disks in the MANIFEST), the MANIFEST's sums against GNU tar's
extraction of the archive on the backup disk, sfdisk/blkid of the restored disk against the capture's ids, and
the restored system's ``ASR-CHECK`` line.  One capture boot, one restore, one boot.  Artifacts under
tests/artifacts/live-capture/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.build import build_media
from builder.vm import rehearse
from builder.vm.debian import DebianImage, DebianSpec, check_login, make_debian_image
from builder.vm.live import LOG_FILE, REWRITE_FILE, LiveCapture, capture_running
from builder.vm.qemu import QemuVM, VMFirmware, VMSpec, find_accel
from recovery_env.model.descriptor import BootloaderKind, Descriptor, Firmware, FsType
from recovery_env.model.manifest import ManifestEntry
from recovery_env.model.sif import parse_asr_sif
from recovery_env.restore.resize import solve_disk
from recovery_env.restore.verify import read_manifest
from recovery_env.run import run, run_bytes

pytestmark = [pytest.mark.vm, pytest.mark.root]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "live-capture"
MiB = 1 << 20


TIMINGS: dict[str, object] = {}  # this run's, written whole to timings.json at each addition


def _record(what: str, data: object) -> None:
    TIMINGS[what] = data
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=1))


@dataclass(frozen=True)
class Restored:
    machine: DebianImage
    live: LiveCapture
    descriptor: Descriptor
    entries: dict[str, ManifestEntry]
    target: Path
    serial: str


@pytest.fixture(scope="module")
def restored() -> Restored:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, the machine's build)")
    machine = make_debian_image(DebianSpec())
    for stale in ("media", "rescue", "boot"):
        shutil.rmtree(ARTIFACTS / stale, ignore_errors=True)
    (ARTIFACTS / "target.img").unlink(missing_ok=True)
    live = capture_running(machine.disks[0], machine.hostname, ARTIFACTS / "capture", firmware=VMFirmware.UEFI)
    _record("capture", live.seconds)
    t0 = time.monotonic()
    media = build_media(ARTIFACTS / "media", descriptor=live.set_dir / "ASR.SIF", unattended=True, timeout=600)
    t1 = time.monotonic()
    target = rehearse.make_disk(ARTIFACTS / "target.img", machine.plan.disks[0].size_mib * 3 // 2 * MiB)
    spec = rehearse.make_rescue_spec(media.iso, media.floppy, (target, live.backup_disk), firmware=VMFirmware.UEFI,
                                     memory="768M", cpus=2)  # fmt: skip
    serial = rehearse.run_rescue(spec, ARTIFACTS / "rescue", "reboot")
    _record("restore", {"media": round(t1 - t0, 1), "rescue_run": round(time.monotonic() - t1, 1)})
    descriptor = parse_asr_sif((live.set_dir / "ASR.SIF").read_text())
    entries = {e.path: e for e in read_manifest(live.set_dir / "MANIFEST")}
    return Restored(machine, live, descriptor, entries, target, serial)


def test_the_running_system_was_captured_as_uefi_with_its_esp_read_through_the_mount(restored: Restored) -> None:
    r, d, plan = restored.live.result, restored.descriptor, restored.machine.plan
    assert restored.live.before.firmware == "uefi"  # the machine itself, before the capture
    assert r["firmware"] == "uefi" and d.system.firmware is Firmware.UEFI  # from /sys/firmware/efi
    assert d.bootloader.kind is BootloaderKind.GRUB_EFI and d.bootloader.esp_mountpoint == "/boot/efi"
    assert {(s["mountpoint"], s["read"], s["directory"]) for s in r["sources"]} == {
        ("/", "mounted", "/"), ("/boot/efi", "mounted", "/boot/efi")}
    assert not [n for n in r["notes"] if "mtools" in n]
    # only the system disk is recorded; the sources and backup disks and the empty floppy drive are named as left out
    assert [k["device"] for k in r["disks"]] == ["/dev/vda"]
    assert {n.split(":")[0] for n in r["notes"] if "not recorded" in n} >= {"/dev/vdb", "/dev/vdc"}
    esp_key = next(f.key for f in d.filesystems if f.type is FsType.VFAT)
    esp = {p.lower() for p, e in restored.entries.items() if e.fs == esp_key}
    assert {"/boot/efi/efi/boot/bootx64.efi", "/boot/efi/efi/debian/grubx64.efi"} <= esp
    assert d.disks[0].disk_id.lower() == plan.disks[0].disk_id


def test_pseudo_filesystems_run_and_other_mounts_are_not_archived(restored: Restored) -> None:
    paths = restored.entries.keys()
    for mount in ("/proc", "/sys", "/dev", "/run", "/mnt/backup"):
        assert mount in paths  # the mount point itself: the restored system needs it
        if mount not in ("/dev", "/run"):
            assert not [p for p in paths if p.startswith(mount + "/")], mount
    # the root filesystem is read through a bind of it: under /dev and /run, what is ON the root filesystem (hidden
    # by devtmpfs and the tmpfs while it runs) is archived, nothing of the running system's (disks, serial port)
    assert "/dev/console" in paths and "/dev/null" in paths
    assert not [p for p in paths if p.startswith(("/dev/vd", "/dev/sd", "/dev/ttyS", "/dev/disk/", "/dev/loop"))]
    machine = restored.machine
    offset = machine.plan.disks[0].partitions[machine.plan.root.partition - 1].start * 512
    listing = run(["debugfs", "-R", "ls -p /run", f"{machine.disks[0]}?offset={offset}"]).stdout
    on_disk = {line.split("/")[5] for line in listing.splitlines() if line.startswith("/")} - {".", ".."}
    assert {p.split("/")[2] for p in paths if p.startswith("/run/")} == on_disk
    assert "/usr/sbin/grub-install" in paths and "/etc/fstab" in paths


def test_files_changed_while_read_are_named_and_archived_as_read(restored: Restored) -> None:
    live = restored.live
    changed = {c["path"]: c for c in live.result["changed_while_read"]}
    _record("changed_while_read", sorted(changed))
    assert changed[REWRITE_FILE]["change"] == "changed"
    # mount points are read through a bind of their filesystem: the directory on disk, not a pseudo filesystem
    assert not {"/sys", "/proc", "/dev", "/run", "/tmp", "/boot/efi"} & set(changed), sorted(changed)
    assert "file changed as we read it" in changed[REWRITE_FILE]["tar"]
    assert [w for w in live.result["warnings"] if w.startswith(f"{REWRITE_FILE} (")]
    # the MANIFEST's sums are those of what was archived: GNU tar's extraction from the archive on the backup disk
    root_key = next(m.filesystem for m in restored.descriptor.mounts if m.mountpoint == "/")
    archive = f"{live.set_path}/{root_key}.tar.zst"
    for path in (REWRITE_FILE, LOG_FILE):
        script = (f"debugfs -R 'cat {archive}' {live.backup_disk} 2>/dev/null | zstd -dc | "
                  f"tar -xOf - .{path}")  # fmt: skip
        content = run_bytes(["sh", "-c", script])
        entry = restored.entries[path]
        assert (entry.size, entry.sha256) == (len(content), hashlib.sha256(content).hexdigest()), path


def test_the_live_set_restored_with_the_captured_ids(restored: Restored) -> None:
    assert "ASR: restore complete" in restored.serial and "ASR: error:" not in restored.serial
    d = restored.descriptor
    table = json.loads(run(["sfdisk", "--json", restored.target]).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["id"].lower() == d.disks[0].disk_id.lower()
    # the 1.5x disk: partitions where the resize solver places them (the root grown, the swap moved after it)
    placed = solve_disk(d, d.disks[0], os.path.getsize(restored.target))
    got = [(p["start"], p["size"], p["type"].lower(), p["uuid"].lower()) for p in table["partitions"]]
    assert got == [(placed.of(p.number).start, placed.of(p.number).size, p.type.lower(), p.partuuid.lower())
                   for p in d.partitions]
    starts = {p.key: placed.of(p.number).start for p in d.partitions}
    for fs in d.filesystems:
        probe = run(["blkid", "-p", "-O", str(starts[fs.partition] * 512), "-o", "export", restored.target]).stdout
        tags = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        assert (tags["TYPE"], tags["UUID"].lower()) == (fs.type.value, fs.uuid.lower()), fs
    plan = restored.machine.plan
    assert {f.uuid.lower() for f in d.filesystems} == {f.uuid.lower() for f in plan.filesystems}


def test_the_restored_live_capture_boots_to_its_login_and_passes_its_check(restored: Restored) -> None:
    plan = restored.machine.plan
    spec = VMSpec(disks=(restored.target,), firmware=VMFirmware.UEFI, memory="1G", accel=find_accel(),
                  name="asr-live-restored")  # fmt: skip
    with QemuVM(spec, workdir=ARTIFACTS / "boot", log=ARTIFACTS / "restored-uefi.serial.log") as vm:
        found = check_login(vm)
        _record("boot-uefi", {"login_and_check_seconds": round(vm.elapsed(), 1), "line": found.line})
    assert found.state == "running", found.line
    assert (found.root_source, found.root_fstype, found.root_uuid) == ("/dev/vda3", "ext4", plan.root.uuid)
    assert found.esp_fstype == FsType.VFAT.value and found.swap_uuid == plan.swap.uuid
    assert (found.hostname, found.firmware) == (plan.spec.hostname, "uefi")
