"""`asr backup` of a running machine, run inside a QEMU guest: the capture of a live system, proven.

The guest is a Debian machine (:mod:`builder.vm.debian`) booted from a copy of its disk, with two more virtio disks
made on this host without mounting anything (``mke2fs -d``, no loop device):

- the project's sources (``recovery_env/``, ``builder/``, ``templates/``: what ``python3 -m builder.cli backup``
  imports; the machine has python3 and python3-jinja2) and the script rendered from
  ``templates/live-capture.sh.j2``, labelled :data:`SOURCE_LABEL`;
- an empty ext4 backup disk labelled ASRBACKUP (the label the rescue media look for).

After the serial autologin and the machine's own check (:func:`builder.vm.debian.check_login`: systemd is up),
one line typed on the serial console mounts the sources read-only and runs the script: it mounts the backup disk,
starts a writer (a log under /var/log appended, a file in /root rewritten in place, in a loop), runs ``asr backup
--to /mnt/backup/asr/<hostname> --json`` with no ``--root``, stops the writer and unmounts.  The machine is
powered off, and the set's small files and the capture's result are read back from the backup disk with
``debugfs`` (no mount).  The backup disk itself then serves as the rescue's backup medium.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.vm.debian import LoginCheck, check_login
from builder.vm.qemu import QemuVM, VMError, VMFirmware, VMSpec, find_accel
from builder.vm.rehearse import BACKUP_LABEL, MiB, make_disk
from recovery_env.run import run, run_bytes
from recovery_env.templating import TEMPLATES_DIR, render

PROJECT = TEMPLATES_DIR.parent
#: What the guest needs of the project to run ``python3 -m builder.cli backup`` (imports and templates).
SOURCE_PARTS = ("recovery_env", "builder", "templates")
SOURCE_LABEL = "ASRSOURCE"
SOURCE_DIR = "/run/asr-source"
BACKUP_DIR = "/mnt/backup"
SCRIPT = "live-capture.sh"
RESULT_FILE, STDERR_FILE, STATUS_FILE = "asr-backup.json", "asr-backup.stderr", "asr-backup.status"
#: What the writer changes while the capture runs.
LOG_FILE = "/var/log/asr-live-writer.log"
REWRITE_FILE = "/root/asr-live-rewrite.bin"
DONE_PREFIX = "ASR-LIVE"
CAPTURE_TIMEOUT = 1800.0  # asr backup of the ~700 MB machine under TCG, on a shared host


@dataclass(frozen=True)
class LiveCapture:
    """What the capture inside the running machine left: the backup disk and what was read back from it."""

    backup_disk: Path  # ext4, ASRBACKUP, the set at /asr/<hostname>
    set_dir: Path  # on this host: ASR.SIF, ASRPNP.SIF and MANIFEST of the set (the archives stay on the disk)
    set_path: str  # the set's directory on the backup disk
    status: int  # asr backup's exit status
    result: dict[str, Any]  # its --json output
    stderr: str
    before: LoginCheck  # the machine's own check before the capture
    serial: str
    seconds: dict[str, float] = field(default_factory=dict)


def make_source_disk(path: Path, script: str, project: Path = PROJECT) -> Path:
    """An ext4 image (``mke2fs -d``: no mount, no loop) of the project's :data:`SOURCE_PARTS` and ``script``."""
    stage = path.with_name(path.name + ".d")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for part in SOURCE_PARTS:
        shutil.copytree(project / part, stage / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (stage / SCRIPT).write_text(script)
    (stage / SCRIPT).chmod(0o755)
    used_kib = int(run(["du", "-sk", "--apparent-size", stage]).stdout.split()[0])
    path.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", stage, "-L", SOURCE_LABEL, path, f"{used_kib * 2 + 8192}k"])
    shutil.rmtree(stage)
    return path


def make_backup_disk(path: Path, mib: int) -> Path:
    """A blank sparse disk of ``mib`` MiB holding one ext4 filesystem labelled ASRBACKUP (no partition table)."""
    make_disk(path, mib * MiB)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", BACKUP_LABEL, path])
    return path


def render_capture_script(hostname: str) -> str:
    return render("live-capture.sh.j2", source_dir=SOURCE_DIR, backup_dir=BACKUP_DIR, backup_label=BACKUP_LABEL,
                  set_dir=f"{BACKUP_DIR}/asr/{hostname}", result_file=RESULT_FILE, stderr_file=STDERR_FILE,
                  status_file=STATUS_FILE, log_file=LOG_FILE, log_bytes=4 * MiB, rewrite_file=REWRITE_FILE,
                  rewrite_bytes=16 * MiB)  # fmt: skip


def render_capture_command() -> str:
    """The line typed on the serial console: mount the sources read-only, run the script, print its status
    (printf's format differs from what it prints, so the typed line never matches the status pattern)."""
    head, tail = DONE_PREFIX.split("-", 1)
    mount = shlex.join(["mount", "-o", "ro", f"LABEL={SOURCE_LABEL}", SOURCE_DIR])
    return (f"mkdir -p {SOURCE_DIR} && {mount} && sh {SOURCE_DIR}/{SCRIPT}; "
            f"printf '{head}-%s status=%s end\\n' {tail} $?")  # fmt: skip


def read_ext4_file(image: Path, path: str) -> bytes:
    """A file of the ext4 filesystem in ``image`` (debugfs: no mount)."""
    return run_bytes(["debugfs", "-R", f"cat {path}", image])


def capture_running(machine_disk: Path, hostname: str, work: Path, *, firmware: VMFirmware = VMFirmware.UEFI,
                    backup_mib: int = 1024, timeout: float = CAPTURE_TIMEOUT) -> LiveCapture:  # fmt: skip
    """Boot a copy of ``machine_disk`` (its system disk: vda) with the sources and backup disks, capture it while
    it runs (see the module docstring), power it off and read the result back.  The copy is removed again."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    system = work / "system.img"
    run(["cp", "--sparse=always", machine_disk, system])
    sources = make_source_disk(work / "sources.img", render_capture_script(hostname))
    backup = make_backup_disk(work / "backup.img", backup_mib)
    seconds["disks"] = round(time.monotonic() - t0, 1)
    spec = VMSpec(disks=(system, sources, backup), firmware=firmware, memory="1G", accel=find_accel(), cpus=2,
                  name="asr-live-capture")  # fmt: skip
    try:
        with QemuVM(spec, workdir=work / "vm", log=work / "serial.log") as vm:
            before = check_login(vm)
            seconds["login_and_check"] = round(vm.elapsed(), 1)
            t1 = time.monotonic()
            vm.send_serial(render_capture_command().encode() + b"\n")
            vm.wait_serial(rf"{DONE_PREFIX} status=\d+ end", timeout)
            seconds["capture"] = round(time.monotonic() - t1, 1)
            vm.send_serial(b"poweroff\n")
            vm.wait_exit(180)
            serial = vm.serial_text
    finally:
        system.unlink(missing_ok=True)
    status = int(read_ext4_file(backup, f"/{STATUS_FILE}").decode().strip() or "-1")
    stderr = read_ext4_file(backup, f"/{STDERR_FILE}").decode(errors="replace")
    text = read_ext4_file(backup, f"/{RESULT_FILE}").decode()
    if status != 0 or not text.strip():
        raise VMError(f"asr backup in the running machine exited {status}: {stderr.strip()[-2000:]}", serial[-4000:])
    result = json.loads(text)
    set_path = f"/asr/{hostname}"
    set_dir = work / "set"
    set_dir.mkdir()
    for name in ("ASR.SIF", "ASRPNP.SIF", "MANIFEST"):
        (set_dir / name).write_bytes(read_ext4_file(backup, f"{set_path}/{name}"))
    return LiveCapture(backup, set_dir, set_path, status, result, stderr, before, serial, seconds)
