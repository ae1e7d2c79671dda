"""`asr inspect`: descriptors, device inventories, floppy images (made by mtools and by the project's own pyfatfs
builder) and backup-set directories, readable and --json; bad input gives the named error and a non-zero exit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from builder.cli import main
from builder.vm.sample import sample_descriptor, sample_inventory
from recovery_env.model.descriptor import Archive, Descriptor
from recovery_env.model.sif import reseal
from recovery_env.model.sif_render import render_asr_sif, render_asrpnp_sif
from recovery_env.run import run

ROOT = Path(__file__).resolve().parent.parent
D = sample_descriptor()
INV = sample_inventory()


def _asr(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _as_json(obj: object) -> object:
    return json.loads(json.dumps(dataclasses.asdict(obj)))  # type: ignore[call-overload]


@pytest.fixture
def sif_files(tmp_path: Path) -> tuple[Path, Path]:
    asr, pnp = tmp_path / "ASR.SIF", tmp_path / "ASRPNP.SIF"
    asr.write_text(render_asr_sif(D), encoding="utf-8")
    pnp.write_text(render_asrpnp_sif(INV), encoding="utf-8")
    return asr, pnp


# --- text files --------------------------------------------------------------------------------------------------


def test_inspect_asr_sif_readable(sif_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _asr("inspect", str(sif_files[0]), capsys=capsys)
    assert (rc, err) == (0, "")
    assert out.startswith(f"{sif_files[0]}: ASR.SIF descriptor\n")
    for expected in (
        "System      asr-sample  x86_64  bios firmware  kernel 6.1.0-28-amd64",
        "disk1       2.0 GiB  gpt 8c2f6a1e-3b7d-4e59-a0c4-2d9e7f1b5a63  512/512 B sectors  critical",
        "disk1p1            2048    1.0 MiB  BIOS boot              bios_grub  BIOS boot",
        "disk1p2            4096    255 MiB  EFI System             esp        EFI System",
        "disk1p3          526336    1.7 GiB  Linux root (x86-64)",
        "fs1    disk1p2    vfat FAT16 5A3C-19E2",
        "/boot/efi            fs1    uuid      UUID=5A3C-19E2",
        "Bootloader  grub-bios on disk1, ESP /boot/efi, EFI/debian",
        "Backup set  /asr/asr-sample-20260101 on ASRBACKUP 6e0d7c1b-2a3f-4b5c-8d9e-0f1a2b3c4d5e, zstd, 31874 files",
        "fs2.tar.zst             298 MiB  sha256 2e4c6a8b",
        "    1  update-initramfs -u -k all  (critical)",
    ):
        assert expected in out, expected


def test_inspect_asr_sif_json(sif_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _asr("inspect", "--json", str(sif_files[0]), capsys=capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc["kind"] == "asr-sif" and doc["ok"] is True and doc["inventory"] is None and doc["checks"] == []
    assert doc["descriptor"] == _as_json(D)
    assert doc["descriptor"]["system"]["firmware"] == "bios"  # enums as their strings
    assert doc["descriptor"]["partitions"][0]["flags"] == ["bios_grub"]


def test_inspect_asrpnp_sif(sif_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _asr("inspect", str(sif_files[1]), capsys=capsys)
    assert rc == 0
    assert "ASRPNP.SIF device inventory" in out
    assert "pci     0000:00:01.1   8086:7010  ata_piix     Intel 82371SB PIIX3 IDE" in out
    assert "Drivers     ata_piix, i2c_piix4, bochs, virtio_pci, ahci, virtio_net, virtio_blk, floppy" in out
    rc, out, _ = _asr("inspect", "--json", str(sif_files[1]), capsys=capsys)
    assert rc == 0
    assert json.loads(out)["inventory"] == _as_json(INV)


def test_damaged_file_is_refused(sif_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    asr = sif_files[0]
    data = bytearray(asr.read_bytes())
    data[data.index(b"size=522240")] ^= 0x01  # one flipped bit in the ESP's record
    asr.write_bytes(bytes(data))
    rc, out, err = _asr("inspect", str(asr), capsys=capsys)
    assert rc == 2 and out == ""
    assert err.startswith("asr: error: ASR.SIF: integrity check failed: the file is damaged or was edited (sha256 ")


def test_invalid_descriptor_names_the_line(sif_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    asr = sif_files[0]
    text = asr.read_text()
    asr.write_text(reseal(text.replace("start=4096", "start=3000")))
    rc, out, err = _asr("inspect", str(asr), capsys=capsys)
    line = text[: text.index("start=4096")].count("\n") + 1
    assert rc == 2 and out == ""
    assert err == (
        f"asr: error: ASR.SIF line {line}, [PARTITIONS] record 2, field 'start': "
        "disk1p2 (3000..525239) overlaps disk1p1 (2048..4095)\n"
    )


def test_garbage_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    rc, _, err = _asr("inspect", str(bad), capsys=capsys)
    assert rc == 2 and "notes.txt: integrity check failed: no [INTEGRITY] section" in err
    rc, _, err = _asr("inspect", str(tmp_path / "nope.sif"), capsys=capsys)
    assert rc == 2 and "nope.sif: no such file or directory" in err
    big = tmp_path / "random.img"
    big.write_bytes(os.urandom(1474560 + 512))
    rc, _, err = _asr("inspect", str(big), capsys=capsys)
    assert rc == 3 and "neither a FAT floppy image nor a descriptor" in err


def test_reseal_a_deliberate_edit(sif_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    asr = sif_files[0]
    asr.write_text(asr.read_text().replace("media_label = ASRBACKUP", 'media_label = "USB BACKUP"'))
    rc, _, err = _asr("inspect", str(asr), capsys=capsys)
    assert rc == 2 and "integrity check failed" in err
    rc, out, _ = _asr("inspect", "--reseal", str(asr), capsys=capsys)
    assert rc == 0 and "re-sealed" in out
    rc, out, _ = _asr("inspect", str(asr), capsys=capsys)
    assert rc == 0 and "on USB BACKUP 6e0d7c1b" in out
    # an edit that does not validate is not sealed, and the file is left as it was
    broken = asr.read_text().replace("kind = grub-bios", "kind = lilo")
    asr.write_text(broken)
    rc, _, err = _asr("inspect", "--reseal", str(asr), capsys=capsys)
    assert rc == 2 and "[BOOTLOADER], field 'kind': 'lilo' is not one of grub-bios" in err
    assert asr.read_text() == broken


# --- floppy images -----------------------------------------------------------------------------------------------


def _mtools_floppy(path: Path, files: dict[str, bytes]) -> Path:
    """A 1.44 MB floppy made by mtools (independent of the project's own FAT writer)."""
    run(["mformat", "-C", "-f", "1440", "-v", "ASRDISK", "-i", str(path), "::"])
    for name, data in files.items():
        src = path.parent / f"src-{name}"
        src.write_bytes(data)
        run(["mcopy", "-i", str(path), str(src), f"::{name}"])
    return path


@pytest.mark.image
def test_inspect_floppy_made_by_mtools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = _mtools_floppy(
        tmp_path / "floppy.img",
        {"ASR.SIF": render_asr_sif(D).encode(), "ASRPNP.SIF": render_asrpnp_sif(INV).encode()},
    )
    assert img.stat().st_size == 1474560
    rc, out, err = _asr("inspect", str(img), capsys=capsys)
    assert (rc, err) == (0, "")
    assert out.startswith(f"{img}: ASR floppy image\n")
    assert "disk1p3          526336    1.7 GiB  Linux root (x86-64)" in out
    assert "Devices of asr-sample (11)" in out
    assert f"OK       ASR.SIF              {len(render_asr_sif(D).encode())} bytes, integrity line matches" in out
    rc, out, _ = _asr("inspect", "--json", str(img), capsys=capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["kind"] == "floppy" and doc["ok"] is True
    assert doc["descriptor"] == _as_json(D) and doc["inventory"] == _as_json(INV)
    assert [c["status"] for c in doc["checks"]] == ["OK", "OK"]


@pytest.mark.image
def test_inspect_floppy_made_by_the_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from builder.media.fatimage import make_floppy

    img = tmp_path / "asr-floppy.img"
    files = {"ASR.SIF": render_asr_sif(D).encode(), "ASRPNP.SIF": render_asrpnp_sif(INV).encode()}
    img.write_bytes(make_floppy(files, label="ASR DISK", epoch=1767225600))
    rc, out, _ = _asr("inspect", "--json", str(img), capsys=capsys)
    assert rc == 0
    assert json.loads(out)["descriptor"] == _as_json(D)


@pytest.mark.image
def test_floppy_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = _mtools_floppy(tmp_path / "empty.img", {"README.TXT": b"nothing here\n"})
    rc, _, err = _asr("inspect", str(empty), capsys=capsys)
    assert rc == 3 and "the floppy has no ASR.SIF (files: README.TXT)" in err

    no_pnp = _mtools_floppy(tmp_path / "nopnp.img", {"ASR.SIF": render_asr_sif(D).encode()})
    rc, out, err = _asr("inspect", str(no_pnp), capsys=capsys)
    assert rc == 3
    assert "MISSING  ASRPNP.SIF           not on the floppy" in out
    assert "1 of 2 checks failed: ASRPNP.SIF missing" in err

    damaged = render_asr_sif(D).replace("fs2.tar.zst", "fs2.tar.zsT").encode()
    bad = _mtools_floppy(tmp_path / "bad.img", {"ASR.SIF": damaged, "ASRPNP.SIF": render_asrpnp_sif(INV).encode()})
    rc, _, err = _asr("inspect", str(bad), capsys=capsys)
    assert rc == 2 and "bad.img:ASR.SIF: integrity check failed" in err


# --- backup sets -------------------------------------------------------------------------------------------------


def _backup_set(directory: Path) -> Descriptor:
    """A backup-set directory: archives of random bytes, a MANIFEST, and the descriptor that records them."""
    directory.mkdir()
    assert D.backup is not None
    archives = []
    for i, a in enumerate(D.backup.archives):
        data = os.urandom(1000 + 7 * i)
        (directory / a.file).write_bytes(data)
        archives.append(Archive(a.filesystem, a.file, len(data), hashlib.sha256(data).hexdigest(), entries=3))
    manifest = b'{"path": "/", "type": "dir"}\n'
    (directory / "MANIFEST").write_bytes(manifest)
    backup = dataclasses.replace(
        D.backup, archives=tuple(archives), manifest_sha256=hashlib.sha256(manifest).hexdigest(), file_count=1
    )
    d = dataclasses.replace(D, backup=backup)
    (directory / "ASR.SIF").write_text(render_asr_sif(d))
    (directory / "ASRPNP.SIF").write_text(render_asrpnp_sif(INV))
    return d


def test_inspect_backup_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_dir = tmp_path / "set"
    d = _backup_set(set_dir)
    rc, out, err = _asr("inspect", str(set_dir), capsys=capsys)
    assert (rc, err) == (0, "")
    assert out.startswith(f"{set_dir}: backup set\n")
    for a in d.backup.archives:  # type: ignore[union-attr]
        assert f"OK       {a.file:<20} {a.size} B, SHA-256 {a.sha256[:16]}..." in out
    assert "OK       MANIFEST " in out
    rc, out, _ = _asr("inspect", "--json", str(set_dir), capsys=capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["kind"] == "backup-set" and doc["ok"] is True
    assert doc["descriptor"] == _as_json(d)
    assert [(c["item"], c["status"]) for c in doc["checks"]] == [
        ("fs1.tar.zst", "OK"),
        ("fs2.tar.zst", "OK"),
        ("MANIFEST", "OK"),
    ]


def test_backup_set_mismatches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_dir = tmp_path / "set"
    d = _backup_set(set_dir)
    assert d.backup is not None
    fs2 = set_dir / "fs2.tar.zst"
    data = bytearray(fs2.read_bytes())
    data[500] ^= 0xFF
    fs2.write_bytes(bytes(data))
    (set_dir / "MANIFEST").write_bytes(b"truncated")
    (set_dir / "fs1.tar.zst").unlink()
    rc, out, err = _asr("inspect", str(set_dir), capsys=capsys)
    assert rc == 3
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert "MISSING  fs1.tar.zst          no such file" in out
    assert f"MISMATCH fs2.tar.zst          SHA-256 {actual}, expected {d.backup.archives[1].sha256}" in out
    assert "MISMATCH MANIFEST             9 bytes" not in out  # the manifest's size is not recorded: its hash is
    assert "MISMATCH MANIFEST             SHA-256 " in out
    assert err.startswith(f"asr: error: {set_dir}: 3 of 3 checks failed: fs1.tar.zst missing (no such file); ")
    rc, out, _ = _asr("inspect", "--json", str(set_dir), capsys=capsys)
    doc = json.loads(out)
    assert rc == 3 and doc["ok"] is False
    assert [c["status"] for c in doc["checks"]] == ["MISSING", "MISMATCH", "MISMATCH"]


def test_backup_set_size_mismatch_and_not_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_dir = tmp_path / "set"
    d = _backup_set(set_dir)
    with (set_dir / "fs1.tar.zst").open("ab") as f:
        f.write(b"x")
    rc, out, _ = _asr("inspect", str(set_dir), capsys=capsys)
    assert rc == 3
    assert f"MISMATCH fs1.tar.zst          {d.backup.archives[0].size + 1} bytes, expected " in out  # type: ignore[union-attr]
    rc, _, err = _asr("inspect", str(tmp_path), capsys=capsys)
    assert rc == 3 and "not a backup set: no ASR.SIF in it" in err
    nobackup = tmp_path / "nobackup"
    nobackup.mkdir()
    (nobackup / "ASR.SIF").write_text(render_asr_sif(dataclasses.replace(D, backup=None)))
    rc, _, err = _asr("inspect", str(nobackup), capsys=capsys)
    assert rc == 3 and "records no backup set" in err


def test_the_installed_command(sif_files: tuple[Path, Path]) -> None:
    """The real entry point, in a process of its own: output on stdout, errors on stderr with the exit code."""
    ok = run([sys.executable, "-m", "builder.cli", "inspect", "--json", str(sif_files[0])], cwd=ROOT)
    assert json.loads(ok.stdout)["descriptor"]["system"]["hostname"] == "asr-sample"
    sif_files[0].write_text(sif_files[0].read_text().replace("asr-sample", "asr-other"))
    bad = run([sys.executable, "-m", "builder.cli", "inspect", str(sif_files[0])], cwd=ROOT, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("asr: error: ASR.SIF: integrity check failed")
