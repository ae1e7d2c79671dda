"""`asr build` end to end: the real media, checked by independent tools (xorriso, isoinfo, fsck.fat, mtools),
reproducibility of a fresh build, the size budget, and bad input that writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.build import FLOPPY_NAME, ISO_NAME, BuildResult, build_media, plan_prune, prune_cache
from builder.cli import main
from builder.media.initramfs import DEFAULT_EPOCH, read_segments
from builder.vm.sample import sample_descriptor
from recovery_env.errors import BudgetError, DescriptorError, DescriptorMissingError
from recovery_env.model.sif import reseal
from recovery_env.model.sif_render import render_asr_sif
from recovery_env.run import run, run_bytes

pytestmark = pytest.mark.image

EPOCH = DEFAULT_EPOCH  # the same as test_boot's media: one rescue environment in the cache serves both


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build_media(tmp_path_factory.mktemp("media"), epoch=EPOCH)


def test_el_torito_bios_uefi_and_isohybrid(built: BuildResult) -> None:
    report = run(["xorriso", "-indev", str(built.iso), "-report_el_torito", "plain"]).stdout
    platforms = [line.split() for line in report.splitlines() if line.startswith("El Torito boot img :")]
    assert len(platforms) == 2, report
    assert any("BIOS" in p for p in platforms), report
    assert any("UEFI" in p for p in platforms), report
    assert "isohybrid" in report.lower() or "MBR" in report, report
    mbr = built.iso.read_bytes()[:512]
    assert mbr[510:512] == b"\x55\xaa"  # a hybrid ISO carries an MBR, so it boots as a disk too


def test_joliet_rock_ridge_and_files(built: BuildResult) -> None:
    info = run(["isoinfo", "-d", "-i", str(built.iso)]).stdout
    assert "Joliet with UCS level" in info
    assert "Rock Ridge signatures version" in info
    assert "Volume id: ASR_RECOVERY" in info
    listing = run(["isoinfo", "-R", "-f", "-i", str(built.iso)]).stdout.split()
    for path in ("/live/vmlinuz", "/live/initrd.img", "/isolinux/isolinux.bin", "/boot/grub/grub.cfg", "/.disk"):
        assert path in listing, listing
    cfg = run(["isoinfo", "-R", "-x", "/isolinux/isolinux.cfg", "-i", str(built.iso)]).stdout
    assert "asr.timeout=8" in cfg and "console=ttyS0" in cfg
    initrd = run_bytes(["isoinfo", "-R", "-x", "/live/initrd.img", "-i", str(built.iso)])
    assert len(initrd) == built.initramfs_size
    assert initrd[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame: the kernel decompresses it
    # zstd decompresses every frame; together they are the cpio archives of the whole rescue tree
    assert len(run_bytes(["zstd", "-dc"], input=initrd)) == built.initramfs_raw_size
    listing = [p for cpio in read_segments(initrd) for p in run(["cpio", "-t", "--quiet"], input=cpio).stdout.split()]
    assert {"init", "usr/bin/busybox", "usr/bin/python3.11", "usr/lib/asr/recovery_env/__main__.pyc"} <= set(listing)


def test_floppy_is_the_descriptor_on_a_144mb_fat12_disk(built: BuildResult) -> None:
    assert built.floppy.stat().st_size == 1_474_560
    fsck = run(["fsck.fat", "-n", "-v", str(built.floppy)]).stdout
    assert "12 bit entries" in fsck and "Media byte 0xf0" in fsck and "18 sectors/track, 2 heads" in fsck, fsck
    names = run(["mdir", "-b", "-i", str(built.floppy), "::"]).stdout.split()
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == ["ASR.SIF", "ASRPNP.SIF"]
    on_floppy = run_bytes(["mtype", "-i", str(built.floppy), "::ASR.SIF"])
    assert on_floppy == render_asr_sif(sample_descriptor()).encode()


def test_fresh_build_is_byte_identical(built: BuildResult, tmp_path: Path) -> None:
    """No cache: the rescue environment, ISO and floppy are made again from the packages and sources."""
    again = build_media(tmp_path, epoch=EPOCH, use_cache=False)
    assert not again.rescue_cached
    assert again.iso_sha256 == built.iso_sha256
    assert again.floppy_sha256 == built.floppy_sha256
    assert again.iso.read_bytes() == built.iso.read_bytes()


def test_budget_below_the_real_size_fails_and_writes_nothing(built: BuildResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(BudgetError) as err:
        build_media(out, epoch=EPOCH, budget_mb=built.iso_size / 1_000_000 / 2)
    message = str(err.value)
    assert "kernel" in message and "initramfs" in message  # the largest contributors are named
    assert not out.exists()


def test_invalid_descriptor_writes_nothing(tmp_path: Path) -> None:
    """A re-sealed descriptor whose root partition overlaps the ESP: the validator names line and field."""
    lines = render_asr_sif(sample_descriptor()).splitlines(keepends=True)
    n = max(i for i, line in enumerate(lines) if " start=" in line)
    start = lines[n].split(" start=")[1].split()[0]
    lines[n] = lines[n].replace(f" start={start} ", " start=4096 ")
    sif = tmp_path / "ASR.SIF"
    sif.write_text(reseal("".join(lines)))
    out = tmp_path / "out"
    with pytest.raises(DescriptorError) as err:
        build_media(out, descriptor=sif, epoch=EPOCH)
    assert f"line {n + 1}" in str(err.value) and "[PARTITIONS]" in str(err.value)
    assert not out.exists()
    with pytest.raises(DescriptorMissingError):
        build_media(out, descriptor=tmp_path / "nope" / "ASR.SIF", epoch=EPOCH)
    assert not out.exists()


def test_cli_build_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["build", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["iso"] == str(out / ISO_NAME) and result["floppy"] == str(out / FLOPPY_NAME)
    assert result["floppy_size"] == 1_474_560
    assert [s["name"] for s in result["steps"]][:3] == ["read_descriptor", "fetch_packages", "make_rescue_env"]
    assert len(result["iso_sha256"]) == 64
    # A descriptor with a broken integrity line: a named error, a non-zero exit, nothing written.
    bad = tmp_path / "bad" / "ASR.SIF"
    bad.parent.mkdir()
    bad.write_text(render_asr_sif(sample_descriptor()).replace("asr-sample", "asr-sampl3", 1))
    out2 = tmp_path / "out2"
    assert main(["build", "--descriptor", str(bad), "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "integrity" in err and str(bad) in err
    assert not out2.exists()


def test_asrpnp_drivers_go_into_the_initramfs(tmp_path: Path) -> None:
    """`asr build --descriptor` adds the drivers ASRPNP.SIF lists (with their dependencies); a driver this kernel
    does not have (an out-of-tree one) is left out with a warning, not a failed build; a network driver is left
    out (the rescue system configures no network)."""
    from recovery_env.model.descriptor import Device, DeviceInventory
    from recovery_env.model.sif_render import render_asrpnp_sif

    src = tmp_path / "set"
    src.mkdir()
    (src / "ASR.SIF").write_text(render_asr_sif(sample_descriptor()))
    nic = Device("pci", "0000:00:03.0", "8086", "100e", "0x020000", "pci:v00008086d0000100Esv*", driver="e1000",
                 modules=("e1000",), description="Intel 82540EM")
    vendor = Device("pci", "0000:00:04.0", "10de", "1eb8", "0x030200", "", driver="nvidia",
                    modules=("nvidia",), description="an out-of-tree driver")
    hba = Device("pci", "0000:00:05.0", "1000", "0097", "0x010700", "pci:v00001000d00000097sv*", driver="mpt3sas",
                 modules=("mpt3sas",), description="SAS3008 PCI-Express Fusion-MPT SAS-3")
    (src / "ASRPNP.SIF").write_text(render_asrpnp_sif(DeviceInventory("asr-sample", (nic, vendor, hba))))
    result = build_media(tmp_path / "out", descriptor=src / "ASR.SIF", epoch=EPOCH)
    initrd = run_bytes(["isoinfo", "-R", "-x", "/live/initrd.img", "-i", str(result.iso)])
    listing = [p for cpio in read_segments(initrd) for p in run(["cpio", "-t", "--quiet"], input=cpio).stdout.split()]
    assert any(p.endswith("/mpt3sas.ko") for p in listing), "the inventory's disk controller driver is in it"
    assert not any(p.endswith("/e1000.ko") for p in listing)
    assert not any("nvidia" in p for p in listing)
    assert run_bytes(["mtype", "-i", str(result.floppy), "::ASRPNP.SIF"]) == (src / "ASRPNP.SIF").read_bytes()


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path: Path) -> None:
    assert plan_prune([("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 2.0)], 2) == ["b", "d"]  # c wins the tie by name
    assert plan_prune([("a", 1.0)], 5) == [] and plan_prune([("a", 1.0)], 0) == ["a"]
    cache = tmp_path / "rescue"
    for i, name in enumerate(["old", "mid", "new"]):
        (cache / name).mkdir(parents=True)
        (cache / name / "initrd.img").write_bytes(b"x")
        os.utime(cache / name, (1000 + i, 1000 + i))
    (cache / "new.tmp123").mkdir()  # a build still writing
    os.utime(cache / "new.tmp123", (1, 1))
    (cache / "seg.zst").write_bytes(b"y")
    os.utime(cache / "seg.zst", (999, 999))
    assert prune_cache(cache, 2) == ["old", "seg.zst"]
    assert sorted(p.name for p in cache.iterdir()) == ["mid", "new", "new.tmp123"]
    assert prune_cache(tmp_path / "missing", 2) == []
