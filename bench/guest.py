"""Restore throughput in the guest: the host side of bench/guest_agent.py.

The rescue environment is built with guest_agent.py in place of the agent (``build_media(agent_override=...)``,
cached like any rescue environment).  The archive goes onto an ext4 image (``mke2fs -d``, no mount) with a
bench.json saying which rounds to run; a second, empty image is the scratch target.  The guest prints one
``ASR-BENCH {json}`` line: the verdict comes from the guest, not from a timeout.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from builder.vm.qemu import DiskBus, QemuVM, VMError, VMSpec, find_accel
from recovery_env.errors import AsrError, InputError
from recovery_env.run import run

GUEST_AGENT = Path(__file__).resolve().with_name("guest_agent.py")
VERDICT_PREFIX = "ASR-BENCH "
SOURCE_LABEL = "ASRBENCH"
MiB = 1 << 20


class GuestBenchError(AsrError):
    """The guest harness did not produce a usable verdict."""

    exit_code = 5


class Method(StrEnum):
    """How the guest extracts the archive: the agent's extraction, or plain GNU tar."""

    AGENT = "agent"
    PLAIN = "plain"


@dataclass(frozen=True)
class Round:
    method: str
    seconds: float
    files: int
    nbytes: int


@dataclass(frozen=True)
class GuestVerdict:
    rounds: tuple[Round, ...]
    mem_total_kib: int

    def seconds(self, method: str) -> list[float]:
        return [r.seconds for r in self.rounds if r.method == method]


def read_guest_agent() -> bytes:
    return GUEST_AGENT.read_bytes()


def plan_rounds(n: int) -> tuple[str, ...]:
    """n rounds of each method, in ABBA order (agent, plain, plain, agent, ...) so that drifts even out."""
    if n < 1:
        raise InputError(f"guest rounds: {n}; at least 1")
    pair = (Method.AGENT, Method.PLAIN)
    out: list[str] = []
    for i in range(n):
        out += pair if i % 2 == 0 else pair[::-1]
    return tuple(out)


def parse_verdict(serial: str, *, expect_files: int | None = None, expect_bytes: int | None = None) -> GuestVerdict:
    """The last ``ASR-BENCH {json}`` line of the serial console → GuestVerdict.  GuestBenchError when there is
    none, when the guest reports an error, or when a round restored a different number of files or bytes
    than the data set has."""
    lines = [line for line in serial.splitlines() if line.startswith(VERDICT_PREFIX)]
    if not lines:
        raise GuestBenchError("the guest printed no ASR-BENCH verdict line")
    try:
        data = json.loads(lines[-1][len(VERDICT_PREFIX) :])
    except json.JSONDecodeError as e:
        raise GuestBenchError(f"the guest's verdict line is not JSON ({e}): {lines[-1][:200]}") from None
    if not data.get("ok"):
        raise GuestBenchError(f"the guest harness failed: {data.get('error', 'no reason given')}")
    rounds = tuple(Round(r["method"], float(r["seconds"]), int(r["files"]), int(r["bytes"])) for r in data["rounds"])
    for i, r in enumerate(rounds, start=1):
        if expect_files is not None and r.files != expect_files:
            raise GuestBenchError(f"round {i} ({r.method}) restored {r.files} files, the data set has {expect_files}")
        if expect_bytes is not None and r.nbytes != expect_bytes:
            raise GuestBenchError(f"round {i} ({r.method}) restored {r.nbytes} bytes, the data set has {expect_bytes}")
    return GuestVerdict(rounds, int(data.get("mem_total_kib", 0)))


def make_source_disk(image: Path, archive: Path, sha256: str, rounds: tuple[str, ...], staging: Path) -> None:
    """An ext4 image labelled ASRBENCH holding the archive and bench.json, written without mounting."""
    staging.mkdir(parents=True)
    try:
        target = staging / archive.name
        try:
            target.hardlink_to(archive)
        except OSError:
            shutil.copyfile(archive, target)
        config = {"archive": archive.name, "sha256": sha256, "rounds": list(rounds)}
        (staging / "bench.json").write_text(json.dumps(config, indent=1) + "\n")
        size_kib = (archive.stat().st_size + 64 * MiB) // 1024
        run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", SOURCE_LABEL, "-d", str(staging), str(image), f"{size_kib}k"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_scratch_disk(image: Path, nbytes: int) -> None:
    with image.open("wb") as f:
        f.truncate(nbytes)


def run_guest_restore(
    iso: Path,
    source_disk: Path,
    scratch_disk: Path,
    *,
    memory: str,
    timeout: float,
    serial_log: Path,
) -> str:
    """Boot the bench media (BIOS CD) with the two disks; return the serial text once the verdict line is out."""
    spec = VMSpec(iso=iso, disks=(source_disk, scratch_disk), disk_bus=DiskBus.VIRTIO, memory=memory,
                  accel=find_accel(), name="asr-bench-restore")  # fmt: skip
    with QemuVM(spec, log=serial_log) as vm:
        try:
            vm.wait_serial(r"ASR-BENCH \{.*\}\n", timeout=timeout)
        except VMError as e:
            raise GuestBenchError(f"restore harness in the guest: {e}") from None
        return vm.serial_text

