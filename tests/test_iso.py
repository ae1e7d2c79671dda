"""The recovery ISO and its boot loaders: built with the real ISOLINUX and GRUB bits (dummy kernel/initramfs),
checked with xorriso, isoinfo, sfdisk, fsck.fat/mtools and read back with pycdlib."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pycdlib
import pytest

from builder.media.bootloader import (
    ESP_LOADER_PATH,
    MEDIA_LAYOUT,
    BootConfig,
    BootLoaders,
    make_boot_loaders,
    plan_boot_entries,
    render_grub_cfg,
    render_grub_early_cfg,
    render_isolinux_cfg,
)
from builder.media.fatimage import make_esp, read_fat_image
from builder.media.iso import fix_gpt_crcs, make_iso, make_iso9660_name, pinned_clock, plan_iso_tree
from builder.media.packages import fetch_packages
from recovery_env.errors import BudgetError, InputError, MediaError
from recovery_env.run import run, run_bytes

pytestmark = pytest.mark.image

EPOCH = 1_700_000_000
KERNEL = b"MZ-dummy-kernel" + bytes(range(256)) * 40
INITRAMFS = b"070701-dummy-initramfs" + bytes(range(255, -1, -1)) * 60
EXTRA = {"backup/set 1/disk0.tar.zst": b"\x28\xb5\x2f\xfd" + b"z" * 5000, "backup/README.txt": b"backup set\n"}
OPTIONS = BootConfig(timeout=5, unattended=False, dryrun=False, append=("random.trust_cpu=on",))


@pytest.fixture(scope="session")
def loaders() -> BootLoaders:
    return make_boot_loaders(fetch_packages().deb)


@pytest.fixture(scope="session")
def esp(loaders: BootLoaders) -> bytes:
    return make_esp({ESP_LOADER_PATH: loaders.grub_efi}, epoch=EPOCH)


@pytest.fixture(scope="session")
def build(loaders: BootLoaders, esp: bytes, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    def _build(name: str = "asr.iso", **overrides: object) -> Path:
        args: dict[str, object] = {
            "kernel": KERNEL,
            "initramfs": INITRAMFS,
            "isolinux_bin": loaders.isolinux_bin,
            "ldlinux_c32": loaders.ldlinux_c32,
            "isolinux_cfg": render_isolinux_cfg(OPTIONS),
            "grub_cfg": render_grub_cfg(OPTIONS),
            "esp_image": esp,
            "volume_id": "ASR_RECOVERY",
            "epoch": EPOCH,
            "extra_files": EXTRA,
        }
        args.update(overrides)
        out = tmp_path_factory.mktemp("iso") / name
        make_iso(out, **args)  # type: ignore[arg-type]
        return out

    return _build


@pytest.fixture(scope="session")
def iso(build: Callable[..., Path]) -> Path:
    return build()


# --- boot configurations --------------------------------------------------------------------------------------


def test_kernel_command_line_carries_consoles_panic_and_agent_options() -> None:
    args = BootConfig(timeout=3, unattended=True, dryrun=True, append=("asr.debug=1",)).kernel_args()
    assert args == (
        "console=tty0",
        "console=ttyS0,115200",
        "panic=10",
        "quiet",
        "asr.timeout=3",
        "asr.unattended=1",
        "asr.dryrun=1",
        "asr.debug=1",
    )


def test_bad_boot_options_are_refused() -> None:
    for kwargs in ({"timeout": -1}, {"append": ("two words",)}, {"append": ("x;reboot",)}, {"title": 'a"b'}):
        with pytest.raises(InputError, match="boot options"):
            BootConfig(**kwargs)  # type: ignore[arg-type]


def test_isolinux_cfg_boots_the_default_entry_on_serial_and_vga() -> None:
    cfg = render_isolinux_cfg(OPTIONS)
    assert cfg.splitlines()[1] == "serial 0 115200"
    assert "prompt 0" in cfg
    assert "default asr\n" in cfg
    line = "  append " + " ".join(OPTIONS.kernel_args())
    assert line in cfg.splitlines()
    assert "  kernel /live/vmlinuz" in cfg
    assert "  initrd /live/initrd.img" in cfg
    assert [e.label for e in plan_boot_entries(OPTIONS)] == ["asr", "verbose", "dryrun"]
    assert cfg.count("\nlabel ") == 3
    waiting = render_isolinux_cfg(BootConfig(prompt_timeout=30))
    assert "prompt 1\ntimeout 30\n" in waiting


def test_grub_cfg_has_serial_terminal_no_wait_and_the_same_command_line() -> None:
    cfg = render_grub_cfg(OPTIONS)
    assert "serial --unit=0 --speed=115200" in cfg
    assert "terminal_input serial console" in cfg and "terminal_output serial console" in cfg
    assert "set timeout=0\nset timeout_style=menu\n" in cfg  # no wait: the default entry boots at once
    assert "set timeout=3\nset timeout_style=menu\n" in render_grub_cfg(BootConfig(menu_timeout=3))
    assert f"  linux /live/vmlinuz {' '.join(OPTIONS.kernel_args())}\n" in cfg
    assert "  initrd /live/initrd.img\n" in cfg
    assert cfg.count("menuentry ") == 3


def test_grub_early_cfg_searches_the_marker_and_reads_grub_cfg() -> None:
    early = render_grub_early_cfg()
    assert f"search --no-floppy --file --set=root {MEDIA_LAYOUT.marker}" in early
    assert "configfile ($root)/boot/grub/grub.cfg" in early


def test_grub_efi_image_is_a_reproducible_pe_with_the_early_config(loaders: BootLoaders) -> None:
    grub = loaders.grub_efi
    assert grub[:2] == b"MZ"
    pe = int.from_bytes(grub[0x3C:0x40], "little")
    assert grub[pe : pe + 4] == b"PE\0\0"
    assert int.from_bytes(grub[pe + 4 : pe + 6], "little") == 0x8664  # x86-64
    assert render_grub_early_cfg().encode() in grub
    time.sleep(1.1)
    assert make_boot_loaders(fetch_packages().deb).grub_efi == grub


def test_isolinux_files_come_from_the_packages(loaders: BootLoaders) -> None:
    assert loaders.isolinux_bin[0x40:0x44] == b"\xfb\xc0\x78\x70"  # the isohybrid signature
    assert loaders.ldlinux_c32[:4] == b"\x7fELF"


# --- ISO names ------------------------------------------------------------------------------------------------


def test_iso9660_names_are_d_characters_with_versions() -> None:
    assert make_iso9660_name("vmlinuz", is_dir=False) == "VMLINUZ.;1"
    assert make_iso9660_name("initrd.img", is_dir=False) == "INITRD.IMG;1"
    assert make_iso9660_name(".disk", is_dir=True) == "DISK"
    assert make_iso9660_name("data.tar.zst", is_dir=False) == "DATA_TAR.ZST;1"
    assert make_iso9660_name("set 1", is_dir=True) == "SET_1"
    long = make_iso9660_name("x" * 50 + ".extension", is_dir=False)
    assert len(long) <= 32 and long.endswith(".EXTENSIO;1")


def test_iso_tree_gives_clashing_names_distinct_iso_paths() -> None:
    nodes = plan_iso_tree({"a b/x": b"1", "a_b/x": b"2", "A-B/x": b"3", "top": b""})
    paths = [n.iso_path for n in nodes]
    assert len(set(paths)) == len(paths)
    assert [n.path for n in nodes][:4] == ["A-B", "a b", "a_b", "top"]  # parents first, sorted
    with pytest.raises(InputError, match="both a file and a directory"):
        plan_iso_tree({"a": b"", "a/b": b""})
    with pytest.raises(InputError, match="relative path"):
        plan_iso_tree({"a/../b": b""})


# --- the ISO, checked by independent tools -------------------------------------------------------------------


def test_xorriso_reports_bios_and_uefi_boot_images_and_an_isohybrid_mbr(iso: Path, esp: bytes) -> None:
    report = run(["xorriso", "-indev", iso, "-report_el_torito", "plain", "-report_system_area", "plain"])
    text = report.stdout + report.stderr
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y\s+none\s+0x0000\s+0x00\s+4\s+\d+", text), text
    assert re.search(rf"El Torito boot img :\s+2\s+UEFI\s+y\s+none\s+0x0000\s+0x00\s+{len(esp) // 512}\s", text)
    assert "El Torito img path :   1  /isolinux/isolinux.bin" in text
    assert "El Torito img opts :   1  boot-info-table isohybrid-suitable" in text
    assert "El Torito img path :   2  /boot/efi.img" in text
    assert "El Torito cat path : /isolinux/boot.cat" in text
    assert "System area summary: MBR isohybrid" in text
    assert re.search(r"MBR partition path :\s+2\s+/boot/efi.img", text), text
    assert "CRC wrong" not in text and "problems" not in text, text


def test_isoinfo_shows_joliet_rock_ridge_and_el_torito(iso: Path) -> None:
    info = run(["isoinfo", "-d", "-i", iso]).stdout
    assert "Volume id: ASR_RECOVERY" in info
    assert "Joliet with UCS level 3 found" in info
    assert "Rock Ridge signatures version 1 found" in info
    assert "El Torito VD version 1 found" in info
    assert "Nsect 4" in info


@pytest.mark.parametrize("mode", ["-R", "-J"])
def test_isoinfo_lists_and_extracts_real_names(iso: Path, mode: str) -> None:
    listing = set(run(["isoinfo", mode, "-f", "-i", iso]).stdout.split("\n"))
    expected = {
        "/live/vmlinuz": KERNEL,
        "/live/initrd.img": INITRAMFS,
        "/isolinux/isolinux.cfg": render_isolinux_cfg(OPTIONS).encode(),
        "/boot/grub/grub.cfg": render_grub_cfg(OPTIONS).encode(),
        "/backup/set 1/disk0.tar.zst": EXTRA["backup/set 1/disk0.tar.zst"],
        "/.disk/info": b"Automated System Recovery ASR_RECOVERY 20231114-22:13\n",
    }
    assert set(expected) | {"/isolinux/isolinux.bin", "/isolinux/ldlinux.c32", "/boot/efi.img"} <= listing
    for path, data in expected.items():
        assert run_bytes(["isoinfo", mode, "-i", str(iso), "-x", path]) == data, path


def test_pycdlib_reads_the_iso_back(iso: Path, loaders: BootLoaders, esp: bytes) -> None:
    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    try:
        for kind in ("rr_path", "joliet_path"):
            for path, data in (("/live/vmlinuz", KERNEL), ("/boot/efi.img", esp), ("/.disk/info", None)):
                out = io.BytesIO()
                reader.get_file_from_iso_fp(out, **{kind: path})
                if data is not None:
                    assert out.getvalue() == data, (kind, path)
        out = io.BytesIO()
        reader.get_file_from_iso_fp(out, rr_path="/isolinux/ldlinux.c32")
        assert out.getvalue() == loaders.ldlinux_c32
        catalog = reader.eltorito_boot_catalog
        assert catalog.initial_entry.sector_count == 4
        assert catalog.initial_entry.boot_indicator == 0x88
        assert [s.platform_id for s in catalog.sections] == [0xEF]
        assert reader.isohybrid_mbr is not None
    finally:
        reader.close()


def test_boot_info_table_points_at_the_primary_volume_descriptor(iso: Path, loaders: BootLoaders) -> None:
    data = iso.read_bytes()
    lba = next(int(m) for m in re.findall(r"Bootoff \w+ (\d+)", run(["isoinfo", "-d", "-i", iso]).stdout))
    boot = data[lba * 2048 : lba * 2048 + len(loaders.isolinux_bin)]
    assert int.from_bytes(boot[8:12], "little") == 16  # bi_pvd
    assert int.from_bytes(boot[12:16], "little") == lba  # bi_file
    assert int.from_bytes(boot[16:20], "little") == len(loaders.isolinux_bin)  # bi_length
    assert boot[64:] == loaders.isolinux_bin[64:]


def test_hybrid_mbr_exposes_the_esp_as_a_fat_partition(iso: Path, esp: bytes, tmp_path: Path) -> None:
    table = json.loads(run(["sfdisk", "--json", iso]).stdout)["partitiontable"]
    assert table["label"] == "dos"
    parts = table["partitions"]
    assert parts[0]["start"] == 0 and parts[0].get("bootable") is True
    efi = next(p for p in parts if p["type"] == "ef")
    data = iso.read_bytes()
    assert len(data) % (32 * 64 * 512) == 0  # padded to whole hybrid cylinders
    part = data[efi["start"] * 512 : (efi["start"] + efi["size"]) * 512]
    assert part == esp
    img = tmp_path / "esp-from-iso.img"
    img.write_bytes(part)
    assert run(["fsck.fat", "-n", img], check=False).returncode == 0
    assert "EFI/BOOT/BOOTX64.EFI" in read_fat_image(part).files
    assert "BOOTX64  EFI" in run(["mdir", "-i", img, "::/EFI/BOOT"]).stdout


def test_gpt_crcs_are_valid_and_fix_is_idempotent(iso: Path) -> None:
    data = bytearray(iso.read_bytes())
    with io.BytesIO(data) as f:
        assert fix_gpt_crcs(f) == 2
        assert f.getvalue() == bytes(data)  # already right: make_iso fixed them
    broken = bytearray(data)
    broken[512 + 88] ^= 0xFF  # the primary header's partition-array CRC
    with io.BytesIO(broken) as f:
        assert fix_gpt_crcs(f) == 2
        assert f.getvalue() == bytes(data)
    with io.BytesIO(bytes(4096)) as f:
        assert fix_gpt_crcs(f) == 0


CYLINDER = 32 * 64 * 512  # ISOHYBRID_GEOMETRY: the hybrid image is padded to whole cylinders


def _space_bytes(path: Path) -> int:
    """The ISO 9660 volume size (primary volume descriptor, sector 16), before the hybrid padding."""
    with path.open("rb") as f:
        f.seek(16 * 2048 + 80)
        return int.from_bytes(f.read(4), "little") * 2048


@pytest.mark.parametrize("short_by", [0, 2048, 16 * 1024])
def test_the_backup_gpt_never_overwrites_the_last_files(build: Callable[..., Path], short_by: int) -> None:
    """An ISO that ends on a cylinder boundary (or less than the backup GPT's 33 sectors before one) still gets
    room for the backup GPT after its last file: pycdlib alone wrote the backup GPT over grub.cfg and the UEFI
    marker in that case, and UEFI boots found no ASR medium."""
    first = build("probe.iso")
    grow = (CYLINDER - _space_bytes(first) % CYLINDER - short_by) % CYLINDER
    iso = build(f"edge-{short_by}.iso", kernel=KERNEL + bytes(grow))
    space = _space_bytes(iso)
    assert (CYLINDER - space % CYLINDER) % CYLINDER == short_by  # the case under test really happened
    size = iso.stat().st_size
    assert size % CYLINDER == 0 and size - space >= 33 * 512
    data = iso.read_bytes()
    assert data[size - 512 : size - 504] == b"EFI PART"  # the backup GPT header, in the padding
    for path, expected in (
        ("/boot/grub/grub.cfg", render_grub_cfg(OPTIONS).encode()),
        ("/backup/README.txt", EXTRA["backup/README.txt"]),
        ("/backup/set 1/disk0.tar.zst", EXTRA["backup/set 1/disk0.tar.zst"]),
    ):
        assert run_bytes(["isoinfo", "-R", "-x", path, "-i", str(iso)]) == expected, path
    assert b"Automated System Recovery" in run_bytes(["isoinfo", "-R", "-x", "/boot/grub/asr-media.id", "-i", str(iso)])
    report = run(["xorriso", "-indev", str(iso), "-report_system_area", "plain"]).stdout
    assert "GPT backup" in report or "GPT" in report


# --- reproducibility and errors -------------------------------------------------------------------------------


def test_two_builds_a_second_apart_are_identical_and_content_changes_bytes(
    iso: Path, build: Callable[..., Path]
) -> None:
    time.sleep(1.1)
    again = build("again.iso")
    assert again.read_bytes() == iso.read_bytes()
    assert build("other.iso", initramfs=INITRAMFS + b"!").read_bytes() != iso.read_bytes()
    assert build("later.iso", epoch=EPOCH + 86400).read_bytes() != iso.read_bytes()


def test_pinned_clock_is_local_to_pycdlib_and_restored() -> None:
    import pycdlib.headervd

    before = time.time()
    with pinned_clock(86400):
        assert pycdlib.headervd.time.time() == 86400.0
        assert pycdlib.headervd.time.localtime().tm_hour == 0
        assert time.time() >= before  # the rest of the process keeps the real clock
    assert pycdlib.headervd.time is time


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"volume_id": "asr recovery"}, InputError, "volume id"),
        ({"volume_id": "X" * 33}, InputError, "volume id"),
        ({"extra_files": {"live/vmlinuz": b""}}, InputError, "would replace the boot file"),
        ({"extra_files": {"../x": b""}}, InputError, "relative path"),
        ({"esp_image": bytes(0xFFFF * 512 + 512)}, BudgetError, "El Torito"),
        ({"isolinux_bin": b"not isolinux" * 400}, MediaError, "isolinux.bin"),
    ],
)
def test_bad_input_is_a_named_error_and_writes_nothing(
    build: Callable[..., Path], tmp_path: Path, overrides: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        build("bad.iso", **overrides)
    assert list(tmp_path.parent.glob("iso*/bad.iso*")) == []


def test_missing_output_directory_is_a_named_error(tmp_path: Path, loaders: BootLoaders, esp: bytes) -> None:
    with pytest.raises(InputError, match="output directory"):
        make_iso(
            tmp_path / "missing" / "asr.iso",
            kernel=KERNEL,
            initramfs=INITRAMFS,
            isolinux_bin=loaders.isolinux_bin,
            ldlinux_c32=loaders.ldlinux_c32,
            isolinux_cfg="",
            grub_cfg="",
            esp_image=esp,
            volume_id="ASR",
            epoch=EPOCH,
        )
    assert list(tmp_path.iterdir()) == []


# --- smoke boot under QEMU: the media start a real kernel with our command line ----------------------------

SMOKE_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
fw=BIOS; [ -d /sys/firmware/efi ] && fw=UEFI
echo "ASR-SMOKE firmware=$fw cmdline=$(/bin/busybox cat /proc/cmdline)" > /dev/ttyS0
/bin/busybox poweroff -f
"""
OVMF = Path("/usr/share/ovmf/OVMF.fd")
SMOKE_MODES = {
    "bios-cd": ("BIOS", ["-cdrom", "{iso}", "-boot", "d"]),
    "uefi-cd": ("UEFI", ["-bios", str(OVMF), "-cdrom", "{iso}", "-boot", "d"]),
    "bios-disk": ("BIOS", ["-drive", "file={iso},format=raw,if=ide,snapshot=on"]),
    "uefi-disk": ("UEFI", ["-bios", str(OVMF), "-drive", "file={iso},format=raw,if=ide,snapshot=on"]),
}


@pytest.fixture(scope="session")
def smoke_iso(loaders: BootLoaders, esp: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ISO with the real Debian kernel and an initramfs whose /init reports firmware and command line on
    ttyS0 and powers off."""
    from builder.media.packages import read_deb

    packages = fetch_packages()
    kernel = next(m.data for p, m in read_deb(packages.deb(packages.kernel_package), ["boot/vmlinuz-"]).items())
    root = tmp_path_factory.mktemp("smoke-root")
    (root / "bin").mkdir()
    (root / "bin/busybox").write_bytes(read_deb(packages.deb("busybox-static"), ["bin/busybox"])["bin/busybox"].data)
    (root / "init").write_text(SMOKE_INIT)
    for path in (root / "bin/busybox", root / "init"):
        path.chmod(0o755)
    initrd = root.parent / "smoke-initrd.cpio"
    run(["cpio", "-o", "-H", "newc", "--quiet", "-O", initrd], input="init\nbin\nbin/busybox\n", cwd=root)
    out = tmp_path_factory.mktemp("smoke") / "smoke.iso"
    make_iso(
        out,
        kernel=kernel,
        initramfs=initrd.read_bytes(),
        isolinux_bin=loaders.isolinux_bin,
        ldlinux_c32=loaders.ldlinux_c32,
        isolinux_cfg=render_isolinux_cfg(OPTIONS),
        grub_cfg=render_grub_cfg(OPTIONS),
        esp_image=esp,
        volume_id="ASR_SMOKE",
        epoch=EPOCH,
    )
    return out


@pytest.mark.vm
@pytest.mark.parametrize("mode", sorted(SMOKE_MODES))
def test_media_boot_the_kernel_with_our_command_line(smoke_iso: Path, mode: str) -> None:
    firmware, args = SMOKE_MODES[mode]
    if firmware == "UEFI" and not OVMF.is_file():
        pytest.skip(f"{OVMF} missing (package ovmf)")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none"]
    argv += ["-serial", "stdio", "-no-reboot", *(a.format(iso=smoke_iso) for a in args)]
    proc = run(argv, timeout=300)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("ASR-SMOKE ")]
    assert lines, proc.stdout[-3000:]
    assert "Unknown command" not in proc.stdout  # the GRUB early config suits the rescue parser
    assert "cannot find the Automated System Recovery medium" not in proc.stdout
    verdict = lines[-1]
    assert verdict.startswith(f"ASR-SMOKE firmware={firmware} cmdline=")
    cmdline = verdict.split("cmdline=", 1)[1].split()
    assert "BOOT_IMAGE=/live/vmlinuz" in cmdline
    expected = list(OPTIONS.kernel_args())
    start = cmdline.index(expected[0])
    assert cmdline[start : start + len(expected)] == expected
