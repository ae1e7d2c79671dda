"""Relax-and-Recover, the tool a user would otherwise pick: `rear mkrescue` time, its ISO's size, and its boot
to the rescue login under the same QEMU settings as asr's media.

ReaR runs only here, never in `make test`, with a private configuration directory (``rear -c DIR``) rendered
from templates/bench-rear.conf.j2: the system's /etc/rear is not touched.  Facts from the platform notes: it
needs a kernel in /boot (Debian's linux-image-amd64), ``BOOTLOADER=GRUB2`` (its detection fails here), its
ISOLINUX menu waits 30 s (we press Enter on serial), and its serial login needs USE_SERIAL_CONSOLE.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from builder.vm.qemu import QemuVM, VMError, VMSpec, find_accel
from recovery_env.errors import AsrError
from recovery_env.run import run
from recovery_env.templating import render

REAR_PACKAGES = ("rear", "isolinux", "syslinux-common", "xorriso", "linux-image-amd64")
LOGIN = r"login:"
ISO_PREFIX = "rear-bench"


class RearError(AsrError):
    exit_code = 5


@dataclass(frozen=True)
class RearSetup:
    conf_dir: Path
    iso_dir: Path
    kernel_file: Path
    kernel_version: str

    @property
    def iso(self) -> Path:
        return self.iso_dir / f"{ISO_PREFIX}.iso"


def find_host_kernel(boot: Path = Path("/boot")) -> tuple[Path, str] | None:
    """The newest /boot/vmlinuz-VERSION (ReaR puts the host's kernel into its rescue system)."""
    kernels = sorted(boot.glob("vmlinuz-*"), key=lambda p: [int(x) if x.isdigit() else x
                                                              for x in re.split(r"(\d+)", p.name)])  # fmt: skip
    if not kernels:
        return None
    k = kernels[-1]
    return k, k.name.removeprefix("vmlinuz-")


def find_blocker(*, euid: int | None = None) -> str | None:
    """Why ReaR cannot run here, or None."""
    if (os.geteuid() if euid is None else euid) != 0:
        return "ReaR needs root (it reads the whole system and writes /var/lib/rear)"
    if shutil.which("rear") is None:
        return "rear is not installed (apt-get install " + " ".join(REAR_PACKAGES) + ")"
    if find_host_kernel() is None:
        return "no kernel in /boot for ReaR's rescue system (apt-get install linux-image-amd64)"
    return None


def install_rear(repo: Path) -> None:
    """The packages ReaR needs, through the project's own installer (only what is missing)."""
    run(["bash", str(repo / "scripts" / "ensure-deps.sh"), *REAR_PACKAGES], capture=True, timeout=900)


def render_rear_conf(setup: RearSetup) -> str:
    return render(
        "bench-rear.conf.j2",
        iso_dir=str(setup.iso_dir),
        iso_prefix=ISO_PREFIX,
        kernel_file=str(setup.kernel_file),
        kernel_version=setup.kernel_version,
    )


def make_setup(workdir: Path) -> RearSetup:
    found = find_host_kernel()
    if found is None:
        raise RearError("no kernel in /boot")
    setup = RearSetup(workdir / "conf", workdir / "output", found[0], found[1])
    setup.conf_dir.mkdir(parents=True, exist_ok=True)
    setup.iso_dir.mkdir(parents=True, exist_ok=True)
    (setup.conf_dir / "local.conf").write_text(render_rear_conf(setup))
    return setup


def plan_mkrescue_argv(setup: RearSetup) -> list[str]:
    return ["rear", "-c", str(setup.conf_dir), "mkrescue"]


def make_rescue(setup: RearSetup) -> float:
    """`rear mkrescue`; its wall time.  RearError (with the tail of its output) when it fails or makes no ISO."""
    setup.iso.unlink(missing_ok=True)
    started = time.monotonic()
    proc = run(plan_mkrescue_argv(setup), check=False, timeout=1200)
    seconds = time.monotonic() - started
    if proc.returncode != 0 or not setup.iso.is_file():
        tail = " / ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
        raise RearError(f"rear mkrescue exited {proc.returncode}, ISO {setup.iso} "
                        f"{'made' if setup.iso.is_file() else 'missing'}: {tail}")  # fmt: skip
    return seconds


def boot_to_login(iso: Path, *, memory: str, timeout: float, serial_log: Path) -> float:
    """Boot ReaR's ISO (BIOS CD, same QEMU settings as asr's boots); seconds from QEMU start to ``login:`` on
    serial.  Enter is pressed on serial until the kernel starts, to skip the 30 s ISOLINUX menu."""
    spec = VMSpec(iso=iso, memory=memory, accel=find_accel(), name="rear-bench")
    with QemuVM(spec, log=serial_log) as vm:
        deadline = time.monotonic() + timeout
        while "Linux version" not in vm.serial_text and "Relax-and-Recover" not in vm.serial_text:
            if time.monotonic() > deadline:
                raise RearError(f"ReaR's kernel did not start within {timeout:g} s")
            if vm.returncode is not None:
                raise RearError(f"QEMU exited ({vm.returncode}) before ReaR's kernel started")
            vm.send_serial(b"\r")
            time.sleep(1.0)
        try:
            vm.wait_serial(LOGIN, timeout=max(1.0, deadline - time.monotonic()))
        except VMError as e:
            raise RearError(f"ReaR's rescue system: {e}") from None
        return vm.elapsed()
