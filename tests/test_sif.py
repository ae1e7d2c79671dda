"""ASR.SIF / ASRPNP.SIF: round trip, determinism, escaping, strict syntax errors with their location, integrity."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import descriptors, inventories

from builder.vm.sample import sample_descriptor, sample_descriptor_mbr, sample_inventory
from recovery_env.errors import DescriptorError, IntegrityError
from recovery_env.model.descriptor import (
    GPT_TYPES,
    Archive,
    BackupSet,
    Bootloader,
    BootloaderKind,
    Command,
    Compression,
    Descriptor,
    Disk,
    Filesystem,
    FsType,
    Mount,
    Partition,
    TableType,
)
from recovery_env.model.sif import parse_asr_sif, parse_asr_sif_bytes, parse_asrpnp_sif, read_asr_sif, reseal
from recovery_env.model.sif_render import render_asr_sif, render_asrpnp_sif, reseal_sif
from recovery_env.model.validate import validate_descriptor

HYPOTHESIS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- round trip ----------------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(descriptors())
def test_round_trip_generated_descriptors(d: Descriptor) -> None:
    text = render_asr_sif(d)
    assert parse_asr_sif(text) == d
    assert render_asr_sif(d) == text  # deterministic
    assert render_asr_sif(parse_asr_sif(text)) == text


@HYPOTHESIS
@given(inventories())
def test_round_trip_generated_inventories(inv: object) -> None:
    from recovery_env.model.descriptor import DeviceInventory

    assert isinstance(inv, DeviceInventory)
    text = render_asrpnp_sif(inv)
    assert parse_asrpnp_sif(text) == inv
    assert render_asrpnp_sif(inv) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_string_round_trips_and_stays_on_its_line(s: str) -> None:
    """Commas, quotes, '=', ';', blanks, controls, line separators, non-ASCII, lone surrogates: all survive."""
    base = sample_descriptor()
    d = dataclasses.replace(
        base,
        disks=(dataclasses.replace(base.disks[0], model=s, serial=s, wwn=s),),
        system=dataclasses.replace(base.system, os_release=s, kernel=s),
    )
    text = render_asr_sif(d)
    assert parse_asr_sif(text) == d
    disk_lines = [line for line in text.split("\n") if line.startswith("key=disk1 ")]
    assert len(disk_lines) == 1  # the record is one line whatever the string holds


def test_escaping_is_readable() -> None:
    base = sample_descriptor()
    d = dataclasses.replace(
        base, disks=(dataclasses.replace(base.disks[0], model='Disk, "fast"; a=b\tx\\y é\u2028'),)
    )
    text = render_asr_sif(d)
    assert 'model="Disk, \\"fast\\"; a=b\\tx\\\\y é\\u2028"' in text
    assert parse_asr_sif(text).disks[0].model == 'Disk, "fast"; a=b\tx\\y é\u2028'


def test_samples_validate_and_round_trip() -> None:
    for d in (sample_descriptor(), sample_descriptor_mbr()):
        validate_descriptor(d)
        assert parse_asr_sif(render_asr_sif(d)) == d
    inv = sample_inventory()
    assert parse_asrpnp_sif(render_asrpnp_sif(inv)) == inv
    assert "ata_piix" in inv.modules() and "floppy" in inv.modules()


def test_sample_text_shape() -> None:
    """The format as a person reads it: sections in order, named fields, the integrity line last."""
    text = render_asr_sif(sample_descriptor())
    headers = re.findall(r"^\[([A-Z_]+)\]$", text, re.M)
    assert headers == [
        "VERSION", "SYSTEM", "DISKS", "PARTITIONS", "MD", "LUKS", "LVM_PV", "LVM_VG", "LVM_LV", "FILESYSTEMS",
        "MOUNTS", "SUBVOLUMES", "BOOTLOADER", "BACKUP", "ARCHIVES", "COMMANDS", "INTEGRITY",
    ]  # fmt: skip
    assert 'signature = "$ASR-LINUX$"\nformat = 3\ntool = "asr 0.1.0"\n' in text
    assert "\ndisk=disk1 number=3 start=526336 size=3667935 type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709 " in text
    body, _, tail = text.partition("[INTEGRITY]\n")
    assert tail == f"sha256 = {hashlib.sha256(body.encode()).hexdigest()}\n"
    assert text == render_asr_sif(sample_descriptor())


def test_btrfs_subvolumes_round_trip_in_their_section() -> None:
    from test_validation import BTRFS

    text = render_asr_sif(BTRFS)
    assert parse_asr_sif(text) == BTRFS
    section = text[text.index("[SUBVOLUMES]") : text.index("[BOOTLOADER]")]
    assert [line for line in section.splitlines() if line and not line.startswith(("[", ";"))] == [
        "filesystem=fs2 path=@ id=256",
        "filesystem=fs2 path=@home id=257",
        "filesystem=fs2 path=@snapshots id=258",
        "filesystem=fs2 path=@snapshots/1/snapshot id=259 parent=258 readonly=yes compression=zstd",
    ]
    assert " default_subvolume=256\n" in text


def test_a_format_1_file_is_still_read() -> None:
    """ASR.SIF written by an asr before format 2: no [SUBVOLUMES] section, format = 1."""
    old = dataclasses.replace(sample_descriptor(), version=1)
    text = render_asr_sif(old)
    assert "format = 1\n" in text and "[SUBVOLUMES]" not in text
    assert parse_asr_sif(text) == old
    assert parse_asr_sif(text).version == 1 and render_asr_sif(parse_asr_sif(text)) == text


def test_sample_mbr_has_logical_partitions() -> None:
    d = sample_descriptor_mbr()
    assert d.disks[0].table is TableType.MBR
    assert sorted(p.number for p in d.partitions) == [1, 2, 5, 6]


def test_big_descriptor_fits_a_floppy_with_room() -> None:
    """16 disks x 8 partitions, every one with a filesystem, a mount and an archive: well under 100 KB."""
    base = sample_descriptor()
    disks, parts, fss, mounts, archives = [], [], [], [], []
    for n in range(1, 17):
        disk = Disk(
            f"disk{n}", 1 << 40, 512, 4096, TableType.GPT, f"00000000-0000-4000-8000-{n:012x}", True,
            device=f"/dev/sd{chr(96 + n)}", model="SAMSUNG MZ7LH960HAJR-00005", serial=f"S45NNE0M{n:07d}",
            wwn=f"0x5002538e{n:08x}",
            by_id=(f"ata-SAMSUNG_MZ7LH960HAJR-00005_S45NNE0M{n:07d}", f"wwn-0x5002538e{n:08x}"),
        )  # fmt: skip
        disks.append(disk)
        for k in range(1, 9):
            p = Partition(
                disk.key, k, 2048 + (k - 1) * (1 << 26), 1 << 26, "0fc63daf-8483-4772-8e79-3d69d8477de4",
                partuuid=f"{n:08x}-{k:04x}-4000-8000-000000000000", name=f"data volume {n}.{k}",
            )  # fmt: skip
            parts.append(p)
            key = f"fs{n}_{k}"
            uuid = f"{n:08x}-{k:04x}-4000-9000-000000000000"
            features = ("has_journal", "extent", "64bit", "metadata_csum")
            fss.append(
                Filesystem(key, p.key, FsType.EXT4, uuid=uuid, label=f"d{n}_{k}", block_size=4096, features=features)
            )
            mp = "/" if (n, k) == (1, 1) else f"/srv/data/volume{n:02d}/part{k}"
            mounts.append(Mount(mp, key, "defaults,noatime", device=f"UUID={uuid}", passno=2))
            archives.append(Archive(key, f"{key}.tar.zst", 123456789012, "ab" * 32, entries=1234567))
    d = dataclasses.replace(
        base,
        disks=tuple(disks),
        partitions=tuple(parts),
        filesystems=tuple(fss),
        mounts=tuple(mounts),
        bootloader=Bootloader(BootloaderKind.NONE),
        backup=dataclasses.replace(base.backup, archives=tuple(archives)) if base.backup else None,
    )
    text = render_asr_sif(d)
    assert len(parts) == 128
    assert len(text.encode()) < 100_000, len(text.encode())
    assert parse_asr_sif(text) == d


# --- integrity -----------------------------------------------------------------------------------------------------


def test_every_flipped_byte_is_caught() -> None:
    data = render_asr_sif(sample_descriptor()).encode()
    for pos in range(len(data)):
        for mask in (0x01, 0x20):
            damaged = bytearray(data)
            damaged[pos] ^= mask
            with pytest.raises(IntegrityError) as e:
                parse_asr_sif_bytes(bytes(damaged))
            assert str(e.value).startswith("ASR.SIF") and "integrity check failed" in str(e.value)


def test_integrity_message_names_both_checksums() -> None:
    text = render_asr_sif(sample_descriptor())
    edited = text.replace("file_count = 31874", "file_count = 31875")
    with pytest.raises(IntegrityError) as e:
        parse_asr_sif(edited)
    expected = re.search(r"\[INTEGRITY\]\nsha256 = ([0-9a-f]{64})", text)
    assert expected is not None
    actual = hashlib.sha256(edited.partition("[INTEGRITY]")[0].encode()).hexdigest()
    assert str(e.value).startswith(
        f"ASR.SIF: integrity check failed: the file is damaged or was edited (sha256 {actual} expected "
        f"{expected.group(1)})"
    )


def test_truncated_file_is_an_integrity_error() -> None:
    text = render_asr_sif(sample_descriptor())
    with pytest.raises(IntegrityError, match=r"no \[INTEGRITY\] section"):
        parse_asr_sif(text[: text.index("[INTEGRITY]")])
    with pytest.raises(IntegrityError, match="no sha256 line"):
        parse_asr_sif(text[: text.rindex("sha256 = ")])


def test_reseal_after_a_deliberate_edit() -> None:
    text = render_asr_sif(sample_descriptor())
    edited = text.replace("file_count = 31874", "file_count = 31875")
    with pytest.raises(IntegrityError):
        parse_asr_sif(edited)
    sealed = reseal_sif(edited)
    assert parse_asr_sif(sealed).backup is not None
    assert parse_asr_sif(sealed).backup.file_count == 31875  # type: ignore[union-attr]
    # an edit that breaks the descriptor is refused, not sealed
    broken = text.replace("passno=1", "passno=x")
    with pytest.raises(DescriptorError, match="'x' is not a whole number") as e:
        reseal_sif(broken)
    assert not isinstance(e.value, IntegrityError)


def test_read_asr_sif_names_the_file(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    p = tmp_path / "MY.SIF"
    p.write_text(render_asr_sif(sample_descriptor()).replace("ASRBACKUP", "OTHER"))
    with pytest.raises(IntegrityError, match=r"^MY\.SIF"):
        read_asr_sif(p)
    p.write_text(render_asr_sif(sample_descriptor()))
    assert read_asr_sif(p) == sample_descriptor()


# --- strict syntax, with the exact location ------------------------------------------------------------------------


def _edit(text: str, old: str, new: str) -> str:
    """Replace ``old`` (exactly once) and re-seal: a deliberate edit that passes the integrity check."""
    assert text.count(old) == 1, old
    return reseal(text.replace(old, new))


def _line(text: str, fragment: str) -> int:
    return text[: text.index(fragment)].count("\n") + 1


SAMPLE = render_asr_sif(sample_descriptor())

SYNTAX_CASES = [
    # (old, new, fragment on the error's line, section, record, field, message)
    ("[SYSTEM]\n", "[SYSTEM]\n[EXTRA]\n", "[EXTRA]", None, None, None, "unknown section [EXTRA]"),
    ("[MOUNTS]\n", "[MOUNTS]\n[DISKS]\n", "[DISKS]\n; mountpoint", None, None, None, "duplicate section [DISKS]"),
    ("[BOOTLOADER]\n", "[BACKUP]\n", "[BACKUP]\nkind", None, None, None, "section [BACKUP] out of order"),
    ("[COMMANDS]\n", "[COMMAND]\n", "[COMMAND]", None, None, None, "unknown section [COMMAND]"),
    ("[SYSTEM", "[SYSTEM\n", "[SYSTEM", None, None, None, "malformed section header"),
    ("; ASR.SIF -", "stray\n; ASR.SIF -", "stray", None, None, None, "text before the first section"),
    ("hostname = asr-sample\n", "hostname = asr-sample\ncolor = blue\n", "color", "SYSTEM", None, "color",
     "unknown key"),
    ("kind = grub-bios\n", "kind = grub-bios\nkind = none\n", "kind = none", "BOOTLOADER", None, "kind",
     "duplicate key"),
    ("kernel = 6.1.0-28-amd64\n", "", "[SYSTEM]", "SYSTEM", None, "kernel", "required key 'kernel' is missing"),
    (" start=4096 ", " ", "number=2", "PARTITIONS", 2, "start", "required field 'start' is missing"),
    ("number=2 ", "number=2 colour=red ", "number=2", "PARTITIONS", 2, "colour", "unknown field"),
    ("number=2 ", "number=2 number=2 ", "number=2", "PARTITIONS", 2, "number", "duplicate field"),
    ("size=522240", "size=522240.0", "size=522240.0", "PARTITIONS", 2, "size", "'522240.0' is not a whole number"),
    ("size=2048 ", "size=2k ", "size=2k", "PARTITIONS", 1, "size", "'2k' is not a whole number"),
    ("critical=yes device", "critical=true device", "critical=true", "DISKS", 1, "critical", "'true' is not yes or no"),
    ("table=gpt", "table=apm", "table=apm", "DISKS", 1, "table", "'apm' is not one of mbr, gpt"),
    ("flags=esp", "flags=esp,raid", "flags=esp,raid", "PARTITIONS", 2, "flags", "'raid' is not one of"),
    ("flags=esp", "attributes=4 flags=esp", "attributes=4", "PARTITIONS", 2, "attributes",
     "'4' is not a hexadecimal number"),
    ('(bookworm)"', "(bookworm)", "os_release", "SYSTEM", None, "os_release", "unterminated quoted string"),
    ('model="QEMU HARDDISK"', 'model="QEMU\\q"', "model=", "DISKS", 1, "model", "unknown escape \\q"),
    ('model="QEMU HARDDISK"', 'model="QEMU\\x4"', "model=", "DISKS", 1, "model", "bad escape \\x4"),
    ('model="QEMU HARDDISK"', "model=QEMU HARDDISK", "model=", "DISKS", 1, None, "expected field=value"),
    ('model="QEMU HARDDISK"', 'model=QEMU"HARDDISK"', "model=", "DISKS", 1, "model", "unexpected character '\"'"),
    ("by_id=ata-QEMU_HARDDISK_QM00001", "by_id=a,", "by_id=a,", "DISKS", 1, "by_id", "a list item is missing"),
    ("file_count = 31874", "file_count = 31874 more", "file_count", "BACKUP", None, "file_count",
     "unexpected text after the value"),
    ("path = /asr/asr-sample-20260101", "path = /asr/asr sample", "path = ", "BACKUP", None, "path",
     "unexpected text after the value"),
    ('signature = "$ASR-LINUX$"', 'signature = "$ASR-LINUX-PNP$"', "signature", "VERSION", None, "signature",
     "(this is an ASRPNP.SIF)"),
    ("format = 3", "format = 4", "format = 4", "VERSION", None, "format", "format 4 is not supported"),
    ("format = 3", "format = 2", "[MD]", None, None, None, "section [MD] is not in format 2 (it came with format 3)"),
    ("format = 3", "format = 1", "[MD]", None, None, None, "section [MD] is not in format 1"),
    (SAMPLE[SAMPLE.index("[COMMANDS]") : SAMPLE.index("[INTEGRITY]")], "", "[INTEGRITY]", "COMMANDS", None, None,
     "section [COMMANDS] is missing"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "fragment", "section", "record", "field", "message"),
    SYNTAX_CASES,
    ids=[c[-1][:40] for c in SYNTAX_CASES],
)
def test_syntax_errors_name_their_location(
    old: str, new: str, fragment: str, section: str | None, record: int | None, field: str | None, message: str
) -> None:
    text = _edit(SAMPLE, old, new)
    with pytest.raises(DescriptorError) as e:
        parse_asr_sif(text)
    err = e.value
    assert not isinstance(err, IntegrityError)
    assert message in err.reason
    assert (err.section, err.record, err.field) == (section, record, field)
    if section is not None and "missing" in message and field is None:
        assert err.line == text.count("\n") + 1 or err.line == _line(text, fragment)
    else:
        assert err.line == _line(text, fragment), str(err)
    assert str(err).startswith(f"ASR.SIF line {err.line}")


def test_error_message_format() -> None:
    text = _edit(SAMPLE, "size=3667935", "size=3667936")
    with pytest.raises(DescriptorError) as e:
        parse_asr_sif(text)
    line = _line(text, "size=3667936")
    assert str(e.value) == (
        f"ASR.SIF line {line}, [PARTITIONS] record 3, field 'start': start 526336 + size 3667936 exceeds disk1 "
        "(4194304 sectors, last usable 4194270)"
    )


def test_comments_and_blank_lines_are_ignored() -> None:
    text = _edit(SAMPLE, "kind = grub-bios\n", "  ; the loader\n\nkind = grub-bios   ; in the MBR gap\n")
    assert parse_asr_sif(text) == sample_descriptor()


def test_fields_may_come_in_any_order_and_defaults_may_be_left_out() -> None:
    text = render_asr_sif(sample_descriptor())
    line = next(x for x in text.split("\n") if x.startswith("order=2 "))
    text = _edit(text, line, 'command="systemctl enable ssh.service" order=2')
    assert parse_asr_sif(text) == sample_descriptor()


def test_asrpnp_errors() -> None:
    text = render_asrpnp_sif(sample_inventory())
    with pytest.raises(DescriptorError) as e:
        parse_asrpnp_sif(_edit(text, "vendor=8086 device=7010", "vendor=80861 device=7010"))
    assert (e.value.file, e.value.section, e.value.record, e.value.field) == ("ASRPNP.SIF", "DEVICES", 3, "vendor")
    assert e.value.line is not None
    with pytest.raises(DescriptorError, match=r"\(this is an ASR.SIF\)"):
        parse_asrpnp_sif(SAMPLE)
    with pytest.raises(IntegrityError, match=r"ASRPNP\.SIF: integrity check failed"):
        parse_asrpnp_sif(text.replace("ahci", "ahcj"))
    dup = _edit(text, "address=virtio1", "address=virtio0")
    with pytest.raises(DescriptorError, match="virtio virtio0 is also device 9") as e:
        parse_asrpnp_sif(dup)
    assert (e.value.record, e.value.field) == (10, "address")


def test_descriptor_without_backup_set() -> None:
    d = dataclasses.replace(sample_descriptor(), backup=None, commands=())
    text = render_asr_sif(d)
    assert "[BACKUP]\n; no backup set\n\n[ARCHIVES]" in text
    assert parse_asr_sif(text) == d
    # archives without a [BACKUP] are refused
    with_archive = _edit(
        text, "[ARCHIVES]\n", "[ARCHIVES]\nfilesystem=fs1 file=a.tar.zst size=1 sha256=" + "0" * 64 + "\n"
    )
    with pytest.raises(DescriptorError, match=r"archives are listed but \[BACKUP\] is empty"):
        parse_asr_sif(with_archive)


def test_gpt_type_table_is_known() -> None:
    assert all(re.fullmatch(r"[0-9a-f-]{36}", g) for g in GPT_TYPES)


def test_defaults_are_left_out_and_required_fields_always_written() -> None:
    d = sample_descriptor()
    text = render_asr_sif(d)
    disk_line = next(x for x in text.split("\n") if x.startswith("key=disk1 "))
    assert " wwn=" not in disk_line and " grow_last=" not in disk_line  # defaults ("" and yes)
    no_model = dataclasses.replace(d, disks=(dataclasses.replace(d.disks[0], model="", grow_last=False),))
    line = next(x for x in render_asr_sif(no_model).split("\n") if x.startswith("key=disk1 "))
    assert " model=" not in line and line.endswith(" grow_last=no")
    for section, cls in (("DISKS", Disk), ("PARTITIONS", Partition), ("FILESYSTEMS", Filesystem),
                         ("MOUNTS", Mount), ("ARCHIVES", Archive), ("COMMANDS", Command)):  # fmt: skip
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        lines = [x for x in body.split("\n") if x and not x.startswith(";")]
        assert lines, cls
        for x in lines:
            assert all(f" {n}=" in f" {x}" for n in required), (cls.__name__, x)
    for f in dataclasses.fields(BackupSet):
        if f.name != "archives":
            assert f"\n{f.name} = " in text
    assert Compression.ZSTD.value in text


def test_the_template_header_names_every_field() -> None:
    """The comment above each record section lists its fields: a sysadmin sees what may be written."""
    text = render_asr_sif(sample_descriptor())
    for section, cls in (("DISKS", Disk), ("PARTITIONS", Partition), ("FILESYSTEMS", Filesystem),
                         ("MOUNTS", Mount), ("ARCHIVES", Archive), ("COMMANDS", Command)):  # fmt: skip
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        comment = " ".join(x for x in body.split("\n") if x.startswith(";"))
        for f in dataclasses.fields(cls):
            assert re.search(rf"\b{f.name}\b", comment), (section, f.name)


@settings(max_examples=int(os.environ.get("ASR_FUZZ", "400")), deadline=None)
@given(
    st.sampled_from([SAMPLE, render_asr_sif(sample_descriptor_mbr())]),
    st.lists(st.tuples(st.sampled_from(["drop", "dup", "swap", "field"]), st.integers(0, 10**6)), max_size=3),
)
def test_any_edit_parses_or_names_its_error(text: str, edits: list[tuple[str, int]]) -> None:
    """Whatever a sysadmin does to the lines (then re-seals), the parser answers a descriptor or a DescriptorError,
    never another exception."""
    lines = text.partition("[INTEGRITY]")[0].split("\n")
    for op, n in edits:
        i = n % len(lines)
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = (n // 7) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        else:  # move a value from one field to another one
            other = lines[(n // 13) % len(lines)]
            values = re.findall(r"=(\S+)", other)
            if values:
                lines[i] = re.sub(r"=(\S+)", "=" + values[n % len(values)].replace("\\", "\\\\"), lines[i], count=1)
    try:
        d = parse_asr_sif(reseal("\n".join(lines)))
    except DescriptorError as e:
        assert not isinstance(e, IntegrityError)
        assert str(e).startswith("ASR.SIF")
    else:
        validate_descriptor(d)
