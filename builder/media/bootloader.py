"""Boot loaders of the recovery media: ISOLINUX for BIOS, a GRUB EFI image for UEFI, and their configurations.

Everything here takes bytes or directories, so it does not care where the Debian packages come from:

- BIOS: ``isolinux.bin`` (package ``isolinux``) and ``ldlinux.c32`` (``syslinux-common``) go to ``/isolinux`` on
  the ISO with ``isolinux.cfg`` rendered from ``templates/isolinux.cfg.j2``.
- UEFI: ``grub-mkimage`` (host, grub-common) builds ``BOOTX64.EFI`` from the x86_64-efi module directory of the
  ``grub-efi-amd64-bin`` package with a small built-in config (``templates/grub-early.cfg.j2``) that finds the
  medium by a marker file and reads ``/boot/grub/grub.cfg`` (``templates/grub.cfg.j2``) from it.  The output
  of grub-mkimage depends only on its inputs (no dates inside; measured: identical across runs and config
  paths), so the image is reproducible for a given module directory and host grub-mkimage.

Both menus boot the same entries with the same kernel command line (:meth:`BootConfig.kernel_args`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recovery_env.errors import InputError, MediaError
from recovery_env.run import run
from recovery_env.templating import render

# --- where things live --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaLayout:
    """Absolute paths on the ISO.  iso.py puts the files there; the boot configs point at them."""

    kernel: str = "/live/vmlinuz"
    initrd: str = "/live/initrd.img"
    isolinux_dir: str = "/isolinux"
    grub_dir: str = "/boot/grub"
    marker: str = "/boot/grub/asr-media.id"
    """A file only the ASR medium has: the UEFI loader searches every device for it."""
    esp: str = "/boot/efi.img"
    boot_catalog: str = "/isolinux/boot.cat"

    @property
    def isolinux_bin(self) -> str:
        return f"{self.isolinux_dir}/isolinux.bin"

    @property
    def ldlinux_c32(self) -> str:
        return f"{self.isolinux_dir}/ldlinux.c32"

    @property
    def isolinux_cfg(self) -> str:
        return f"{self.isolinux_dir}/isolinux.cfg"

    @property
    def grub_cfg(self) -> str:
        return f"{self.grub_dir}/grub.cfg"


MEDIA_LAYOUT = MediaLayout()

ESP_LOADER_PATH = "EFI/BOOT/BOOTX64.EFI"
"""The removable-media default loader path UEFI firmware boots from an ESP."""

# Package file table: which file of which Debian package we need, and where it is inside the package.
ISOLINUX_BIN = ("isolinux", "usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = ("syslinux-common", "usr/lib/syslinux/modules/bios/ldlinux.c32")
GRUB_EFI_MODULE_DIR = ("grub-efi-amd64-bin", "usr/lib/grub/x86_64-efi")

GRUB_EFI_MODULES: tuple[str, ...] = (
    "part_gpt", "part_msdos", "fat", "iso9660", "ext2",
    "linux", "boot", "normal", "configfile", "search", "search_fs_file",
    "echo", "serial", "terminal", "efi_gop", "all_video", "gzio",
)  # fmt: skip
"""Built into BOOTX64.EFI (grub-mkimage adds their dependencies from moddep.lst)."""

SERIAL_SPEED = 115200


# --- the kernel command line and the menu entries ----------------------------------------------------------


@dataclass(frozen=True)
class BootConfig:
    """What the boot menus pass to the kernel and to the agent (``asr.*`` options), and how long menus wait."""

    timeout: int = 8
    """Seconds the agent shows "Press F2 to run Automated System Recovery (ASR)..." (asr.timeout=)."""
    unattended: bool = False
    dryrun: bool = False
    append: tuple[str, ...] = ()
    """Extra kernel command line words, e.g. ("random.trust_cpu=on",)."""
    quiet: bool = True
    panic: int = 10
    """Seconds before the kernel reboots after a panic (QEMU with -no-reboot then exits)."""
    prompt_timeout: int = 0
    """Tenths of a second ISOLINUX waits at its ``boot:`` prompt; 0 boots the default entry at once."""
    menu_timeout: int = 0
    """Seconds GRUB shows its menu before booting the default entry; 0 boots it at once without drawing it, as
    ISOLINUX does with ``prompt_timeout`` 0.  (GRUB's ``timeout_style=hidden``, which would let Esc show the
    menu, spends 3 s under TCG before it boots.)"""
    title: str = "Automated System Recovery"

    def __post_init__(self) -> None:
        if self.timeout < 0 or self.panic < 0 or self.prompt_timeout < 0 or self.menu_timeout < 0:
            raise InputError(f"boot options: timeouts must not be negative ({self})")
        for word in self.append:
            if not word or any(c.isspace() or c in "\"'\\{};#$" for c in word):
                raise InputError(
                    f"boot options: kernel command line word {word!r} must be non-empty, without spaces, "
                    "quotes or any of \\{};#$"
                )
        if any(c in self.title for c in '"\\$\n'):
            raise InputError(f"boot options: title {self.title!r} must not contain quotes, \\, $ or newlines")

    def kernel_args(self, *, quiet: bool | None = None, dryrun: bool | None = None) -> tuple[str, ...]:
        """The kernel command line as words.  ttyS0 last: /dev/console is the last console given."""
        words = ["console=tty0", f"console=ttyS0,{SERIAL_SPEED}", f"panic={self.panic}"]
        if self.quiet if quiet is None else quiet:
            words.append("quiet")
        words += [
            f"asr.timeout={self.timeout}",
            f"asr.unattended={int(self.unattended)}",
            f"asr.dryrun={int(self.dryrun if dryrun is None else dryrun)}",
        ]
        return (*words, *self.append)


@dataclass(frozen=True)
class BootEntry:
    label: str
    title: str
    kernel_args: tuple[str, ...]


def plan_boot_entries(options: BootConfig) -> tuple[BootEntry, ...]:
    """The menu entries, default first: ASR; ASR showing kernel messages; ASR as a dry run."""
    entries = [BootEntry("asr", options.title, options.kernel_args())]
    entries.append(BootEntry("verbose", f"{options.title} (kernel messages)", options.kernel_args(quiet=False)))
    if not options.dryrun:
        entries.append(BootEntry("dryrun", f"{options.title} (dry run)", options.kernel_args(dryrun=True)))
    return tuple(entries)


def render_isolinux_cfg(options: BootConfig, layout: MediaLayout = MEDIA_LAYOUT) -> str:
    return render(
        "isolinux.cfg.j2",
        title=options.title,
        prompt_timeout=options.prompt_timeout,
        entries=plan_boot_entries(options),
        kernel=layout.kernel,
        initrd=layout.initrd,
    )


def render_grub_cfg(options: BootConfig, layout: MediaLayout = MEDIA_LAYOUT) -> str:
    return render(
        "grub.cfg.j2",
        menu_timeout=options.menu_timeout,
        entries=plan_boot_entries(options),
        kernel=layout.kernel,
        initrd=layout.initrd,
    )


def render_grub_early_cfg(layout: MediaLayout = MEDIA_LAYOUT) -> str:
    return render("grub-early.cfg.j2", marker=layout.marker, grub_dir=layout.grub_dir)


# --- boot loader binaries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsolinuxFiles:
    isolinux_bin: bytes
    ldlinux_c32: bytes


def check_isolinux_bin(data: bytes, *, source: str = "isolinux.bin") -> bytes:
    """isolinux.bin carries the boot-info-table hole at 8..63 and must be in 2 KiB sectors for load size 4."""
    if len(data) < 2048 or len(data) % 4 or b"ISOLINUX" not in data:
        raise MediaError(f"{source}: not an isolinux.bin ({len(data)} bytes, no ISOLINUX signature)")
    return data


def check_ldlinux_c32(data: bytes, *, source: str = "ldlinux.c32") -> bytes:
    if data[:4] != b"\x7fELF":
        raise MediaError(f"{source}: not an ldlinux.c32 (no ELF header)")
    return data


def read_isolinux_files(root: Path) -> IsolinuxFiles:
    """isolinux.bin and ldlinux.c32 from a directory holding the extracted ``isolinux`` and ``syslinux-common``
    packages (their ``usr/lib/...`` trees)."""
    files = []
    for (package, member), check in ((ISOLINUX_BIN, check_isolinux_bin), (LDLINUX_C32, check_ldlinux_c32)):
        path = root / member
        if not path.is_file():
            raise MediaError(f"{path}: missing (extract the Debian package {package!r} into {root})")
        files.append(check(path.read_bytes(), source=str(path)))
    return IsolinuxFiles(isolinux_bin=files[0], ldlinux_c32=files[1])


def read_isolinux_debs(isolinux_deb: Path, syslinux_common_deb: Path) -> IsolinuxFiles:
    """isolinux.bin and ldlinux.c32 straight from the two .deb files (no extraction to disk)."""
    from builder.media.packages import read_deb

    found = []
    for deb, ((package, member), check) in (
        (isolinux_deb, (ISOLINUX_BIN, check_isolinux_bin)),
        (syslinux_common_deb, (LDLINUX_C32, check_ldlinux_c32)),
    ):
        entry = read_deb(deb, [member]).get(member)
        if entry is None:
            raise MediaError(f"{deb}: has no {member} (is it the {package!r} package?)")
        found.append(check(entry.data, source=f"{deb.name}:{member}"))
    return IsolinuxFiles(isolinux_bin=found[0], ldlinux_c32=found[1])


def extract_grub_module_dir(grub_deb: Path, dest: Path) -> Path:
    """Write the x86_64-efi module directory of the ``grub-efi-amd64-bin`` .deb under ``dest``; return it."""
    from builder.media.packages import MemberKind, read_deb

    _, member = GRUB_EFI_MODULE_DIR
    for path, entry in read_deb(grub_deb, [member + "/"]).items():
        if entry.kind is MemberKind.FILE:
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(entry.data)
    return find_grub_module_dir(dest)


def find_grub_module_dir(root: Path) -> Path:
    """The x86_64-efi module directory inside a directory holding the extracted ``grub-efi-amd64-bin``."""
    package, member = GRUB_EFI_MODULE_DIR
    path = root / member
    if not (path / "kernel.img").is_file() or not (path / "moddep.lst").is_file():
        raise MediaError(f"{path}: not a GRUB x86_64-efi module directory (extract {package!r} into {root})")
    return path


def plan_grub_mkimage(
    module_dir: Path,
    early_cfg: Path,
    output: Path,
    *,
    modules: tuple[str, ...] = GRUB_EFI_MODULES,
    prefix: str = MEDIA_LAYOUT.grub_dir,
) -> list[str]:
    """The grub-mkimage command line that builds BOOTX64.EFI."""
    return [
        "grub-mkimage",
        "--format=x86_64-efi",
        f"--directory={module_dir}",
        f"--prefix={prefix}",
        f"--config={early_cfg}",
        f"--output={output}",
        *modules,
    ]


def make_grub_efi(
    module_dir: Path,
    early_cfg: str,
    *,
    modules: tuple[str, ...] = GRUB_EFI_MODULES,
    prefix: str = MEDIA_LAYOUT.grub_dir,
) -> bytes:
    """Build the GRUB EFI image (a PE32+ executable) with ``early_cfg`` built in; return its bytes."""
    missing = [m for m in modules if not (module_dir / f"{m}.mod").is_file()]
    if missing:
        raise MediaError(f"{module_dir}: GRUB modules missing: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="asr-grub-") as tmp:
        cfg = Path(tmp) / "early.cfg"
        cfg.write_text(early_cfg)
        out = Path(tmp) / "BOOTX64.EFI"
        run(plan_grub_mkimage(module_dir, cfg, out, modules=modules, prefix=prefix), env={"LC_ALL": "C"})
        data = out.read_bytes()
    if data[:2] != b"MZ":
        raise MediaError(f"grub-mkimage wrote no PE image ({len(data)} bytes, starts {data[:4]!r})")
    return data


@dataclass(frozen=True)
class BootLoaders:
    """The three boot loader binaries of the media."""

    isolinux_bin: bytes
    ldlinux_c32: bytes
    grub_efi: bytes


def make_boot_loaders(deb: Callable[[str], Path], layout: MediaLayout = MEDIA_LAYOUT) -> BootLoaders:
    """ISOLINUX from the packages, and BOOTX64.EFI built from ``grub-efi-amd64-bin`` with the early config.
    ``deb`` maps a package name to its verified .deb (``PackageSet.deb``)."""
    isolinux = read_isolinux_debs(deb(ISOLINUX_BIN[0]), deb(LDLINUX_C32[0]))
    with tempfile.TemporaryDirectory(prefix="asr-grub-modules-") as tmp:
        module_dir = extract_grub_module_dir(deb(GRUB_EFI_MODULE_DIR[0]), Path(tmp))
        grub = make_grub_efi(module_dir, render_grub_early_cfg(layout), prefix=layout.grub_dir)
    return BootLoaders(isolinux_bin=isolinux.isolinux_bin, ldlinux_c32=isolinux.ldlinux_c32, grub_efi=grub)
