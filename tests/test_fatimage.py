"""FAT images (ASR floppy, UEFI ESP): written with pyfatfs, checked with fsck.fat and mtools, read back."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.media.fatimage import (
    ESP_MAX_SIZE,
    FLOPPY_SIZE,
    FatType,
    check_label,
    make_dos_datetime,
    make_esp,
    make_fat_image,
    make_floppy,
    read_fat_image,
)
from recovery_env.errors import BudgetError, ImageFullError, InputError
from recovery_env.run import run, run_bytes

pytestmark = pytest.mark.image

EPOCH = 1_700_000_000  # 2023-11-14 22:13:20 UTC
SIF = b'[VERSION]\r\nSignature="$Windows NT$"\r\nASR-Version="1.0"\r\n' + b"; padding line\r\n" * 300
PNP = b"[DEVICES]\r\n" + bytes(range(256)) * 3  # binary-safe: every byte value
FLOPPY_FILES = {"ASR.SIF": SIF, "ASRPNP.SIF": PNP}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def fsck(path: Path) -> str:
    """fsck.fat -n must find nothing to fix (exit 0) and say nothing about damage."""
    proc = run(["fsck.fat", "-n", "-v", path], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    for bad in ("differ", "dirty", "Free cluster summary wrong", "Wrong", "corrupt", "invalid"):
        assert bad not in text, text
    return text


@pytest.fixture(scope="module")
def floppy() -> bytes:
    return make_floppy(FLOPPY_FILES, label="ASR DISK", epoch=EPOCH)


@pytest.fixture()
def floppy_path(tmp_path: Path, floppy: bytes) -> Path:
    return write(tmp_path, "floppy.img", floppy)


# --- the ASR floppy -------------------------------------------------------------------------------------------


def test_floppy_is_exactly_a_144_floppy(floppy: bytes) -> None:
    assert len(floppy) == FLOPPY_SIZE == 1_474_560
    assert floppy[510:512] == b"\x55\xaa"


def test_floppy_passes_fsck_as_fat12_with_media_f0(floppy_path: Path) -> None:
    text = fsck(floppy_path)
    assert "12 bit entries" in text
    assert "Media byte 0xf0" in text


def test_floppy_geometry_and_label_by_minfo(floppy_path: Path) -> None:
    info = run(["minfo", "-i", floppy_path, "::"]).stdout
    assert re.search(r"^sectors per track: 18$", info, re.M), info
    assert re.search(r"^heads: 2$", info, re.M), info
    assert re.search(r"^cylinders: 80$", info, re.M), info
    assert re.search(r"^media descriptor byte: 0xf0$", info, re.M), info
    assert 'disk type="FAT12   "' in info
    assert 'label="ASR DISK   "' in info


def test_floppy_mdir_lists_both_files_and_the_volume_label(floppy_path: Path) -> None:
    listing = run(["mdir", "-i", floppy_path, "::"]).stdout
    assert "Volume in drive : is ASR DISK" in listing
    assert re.search(rf"^ASR\s+SIF\s+{len(SIF)} 2023-11-14\s+22:13", listing, re.M), listing
    assert re.search(rf"^ASRPNP\s+SIF\s+{len(PNP)} 2023-11-14\s+22:13", listing, re.M), listing


@pytest.mark.parametrize("name", sorted(FLOPPY_FILES))
def test_floppy_mtype_reads_files_back_byte_for_byte(floppy_path: Path, name: str) -> None:
    assert run_bytes(["mtype", "-i", str(floppy_path), f"::/{name}"]) == FLOPPY_FILES[name]


def test_floppy_reads_back_with_pyfatfs(floppy: bytes) -> None:
    image = read_fat_image(floppy)
    assert image.files == FLOPPY_FILES
    assert image.fat_type is FatType.FAT12
    assert (image.media, image.sectors_per_track, image.heads) == (0xF0, 18, 2)
    assert image.bpb_label == image.volume_label == "ASR DISK"


def test_floppy_every_date_comes_from_the_epoch(floppy: bytes) -> None:
    image = read_fat_image(floppy)
    when = dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert image.volume_label_written == when
    for entry in image.entries:
        assert (entry.written, entry.created, entry.accessed) == (when, when, when.date()), entry.path


def test_floppy_is_reproducible_across_a_second_and_changes_with_content(floppy: bytes) -> None:
    time.sleep(1.1)  # a clock-dependent field would now differ
    again = make_floppy(FLOPPY_FILES, label="ASR DISK", epoch=EPOCH)
    assert again == floppy
    other = make_floppy({**FLOPPY_FILES, "ASR.SIF": SIF + b"x"}, label="ASR DISK", epoch=EPOCH)
    assert other != floppy
    later = make_floppy(FLOPPY_FILES, label="ASR DISK", epoch=EPOCH + 3600)
    assert later != floppy
    assert read_fat_image(later).volume_id != read_fat_image(floppy).volume_id


def test_floppy_that_does_not_fit_is_a_named_error() -> None:
    with pytest.raises(ImageFullError, match=r"ASR floppy: 1 file\(s\), 1500000 bytes, do not fit"):
        make_floppy({"ASR.SIF": b"x" * 1_500_000}, label="ASR", epoch=EPOCH)
    with pytest.raises(ImageFullError, match="root directory entries"):
        make_floppy({f"F{i}.SIF": b"" for i in range(300)}, label="ASR", epoch=EPOCH)


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["", "asr", "TWELVE CHARS", " LEAD", "A/B", "É"])
def test_bad_labels_are_refused(label: str) -> None:
    with pytest.raises(InputError, match="volume label"):
        check_label(label)
    with pytest.raises(InputError, match="volume label"):
        make_floppy(FLOPPY_FILES, label=label, epoch=EPOCH)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"/ASR.SIF": b""}, "must be a relative path"),
        ({"A//B": b""}, "must be a relative path"),
        ({"../X": b""}, "must be a relative path"),
        ({"A*B": b""}, "not a valid FAT long name"),
        ({"TRAIL.": b""}, "not a valid FAT long name"),
        ({"asr.sif": b"", "ASR.SIF": b""}, "same name on FAT"),
        ({"EFI": b"", "EFI/BOOT/X": b""}, "both a file and a directory"),
        ({"X": "text"}, "must be bytes"),
    ],
)
def test_bad_file_names_are_refused(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(InputError, match=message):
        make_fat_image(1024 * 1024, files, label="X", epoch=EPOCH)


def test_bad_size_media_geometry_and_volume_id_are_refused() -> None:
    with pytest.raises(InputError, match="multiple of 512"):
        make_fat_image(1_000_001, {}, label="X", epoch=EPOCH)
    with pytest.raises(InputError, match="FAT16"):
        make_fat_image(1024 * 1024, {}, label="X", epoch=EPOCH, fat_type=FatType.FAT16)
    with pytest.raises(InputError, match="media byte"):
        make_fat_image(1024 * 1024, {}, label="X", epoch=EPOCH, media=0xF1)
    with pytest.raises(InputError, match="geometry"):
        make_fat_image(1024 * 1024, {}, label="X", epoch=EPOCH, heads=0)
    with pytest.raises(InputError, match="volume id"):
        make_fat_image(1024 * 1024, {}, label="X", epoch=EPOCH, volume_id=0)


def test_dos_dates_are_utc_and_clamped_to_what_fat_stores() -> None:
    assert make_dos_datetime(0) == make_dos_datetime(315_532_800) == (1 << 5 | 1, 0)  # 1980-01-01 00:00
    date, tm = make_dos_datetime(EPOCH)
    assert (date >> 9, date >> 5 & 15, date & 31) == (43, 11, 14)
    assert (tm >> 11, tm >> 5 & 63, (tm & 31) * 2) == (22, 13, 20)
    assert make_dos_datetime(2**40)[0] >> 9 == 127  # 2107


# --- general images: directories, long names, FAT16 ----------------------------------------------------------


TREE = {
    "EFI/BOOT/BOOTX64.EFI": b"\x4d\x5a" + bytes(70_000),
    "EFI/BOOT/grub.cfg": b"configfile /boot/grub/grub.cfg\n",
    "Long File Name.txt": b"long\n",
    "EMPTY": b"",
    "deep/a/b/c/d/e/file": b"deep\n",
    **{f"many/entry number {i:03}.bin": bytes([i]) * (i * 53) for i in range(40)},  # > 1 directory cluster
}


@pytest.mark.parametrize(("fat_type", "size"), [(FatType.FAT12, 2 * 1024 * 1024), (FatType.FAT16, 8 * 1024 * 1024)])
def test_tree_with_long_names_passes_fsck_and_mtools(tmp_path: Path, fat_type: FatType, size: int) -> None:
    image = make_fat_image(size, TREE, label="TREE", epoch=EPOCH, fat_type=fat_type)
    assert len(image) == size
    path = write(tmp_path, "tree.img", image)
    assert f"{fat_type.bits} bit entries" in fsck(path)
    listing = run(["mdir", "-i", path, "-/", "::"]).stdout
    assert "Long File Name.txt" in listing
    assert "Directory for ::/deep/a/b/c/d/e" in listing
    for name in ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grub.cfg", "many/entry number 039.bin", "deep/a/b/c/d/e/file"):
        assert run_bytes(["mtype", "-i", str(path), f"::/{name}"]) == TREE[name], name
    back = read_fat_image(image)
    assert back.files == TREE
    assert set(back.dirs) >= {"EFI", "EFI/BOOT", "many", "deep/a/b/c/d/e"}
    assert back.fat_type is fat_type


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.lists(
            st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_ .-]{0,20}[A-Za-z0-9_]", fullmatch=True), min_size=1, max_size=3
        )
        .map("/".join)
        .filter(lambda p: all(not c.endswith(".") for c in p.split("/"))),
        st.binary(max_size=3000),
        max_size=12,
    )
)
def test_any_small_tree_round_trips_and_passes_fsck(tmp_path: Path, files: dict[str, bytes]) -> None:
    try:
        image = make_fat_image(1024 * 1024, files, label="PROP", epoch=EPOCH)
    except InputError as e:  # name clashes the generator can produce (case, file-vs-directory)
        assert "same name" in str(e) or "both a file and a directory" in str(e)
        return
    fsck(write(tmp_path, "prop.img", image))
    assert read_fat_image(image).files == files


# --- the ESP --------------------------------------------------------------------------------------------------


def test_esp_is_small_valid_and_holds_the_loader(tmp_path: Path) -> None:
    loader = bytes(range(256)) * 2800  # ~700 KiB, the size of the real GRUB image
    esp = make_esp({"EFI/BOOT/BOOTX64.EFI": loader}, epoch=EPOCH)
    assert len(esp) % 512 == 0
    assert len(loader) < len(esp) <= len(loader) + 192 * 1024  # as small as fits, in 64 KiB steps
    path = write(tmp_path, "esp.img", esp)
    fsck(path)
    listing = run(["mdir", "-i", path, "-/", "::"]).stdout
    assert "Directory for ::/EFI/BOOT" in listing
    assert re.search(rf"^BOOTX64\s+EFI\s+{len(loader)} ", listing, re.M), listing
    assert run_bytes(["mtype", "-i", str(path), "::/EFI/BOOT/BOOTX64.EFI"]) == loader
    assert make_esp({"EFI/BOOT/BOOTX64.EFI": loader}, epoch=EPOCH) == esp


def test_esp_grows_for_large_loaders_and_stops_at_the_el_torito_limit(tmp_path: Path) -> None:
    big = bytes(20 * 1024 * 1024)
    esp = make_esp({"EFI/BOOT/BOOTX64.EFI": big}, epoch=EPOCH)
    assert len(big) < len(esp) < ESP_MAX_SIZE
    fsck(write(tmp_path, "big.img", esp))
    with pytest.raises(BudgetError, match="the most an El Torito entry can load"):
        make_esp({"EFI/BOOT/BOOTX64.EFI": bytes(ESP_MAX_SIZE)}, epoch=EPOCH)
