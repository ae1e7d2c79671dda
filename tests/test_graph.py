"""Issue 12, the descriptor part: ASR.SIF format 3 records the storage stack as a graph of block devices (disk ->
partition -> md -> luks -> pv -> vg -> lv -> filesystem).

The two machines of the issue round-trip through the text form (encrypted LVM on a partition; RAID1 of two disks'
partitions with LVM on the array), every validator rule refuses with a named error, formats 1 and 2 are still
read, ``disks_under`` walks the graph to the disks, generated graphs round-trip (hypothesis), and the planner
refuses such a descriptor cleanly, naming its first device it cannot lay out yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_plan import target

from builder.vm.sample import sample_descriptor
from recovery_env.errors import DescriptorError, PlanError
from recovery_env.model.descriptor import (
    GPT_ESP,
    MD_MISSING,
    Archive,
    BackupSet,
    BlockKind,
    Bootloader,
    BootloaderKind,
    Compression,
    Descriptor,
    Disk,
    Filesystem,
    Firmware,
    FstabSpec,
    FsType,
    LuksDevice,
    LvmLv,
    LvmPv,
    LvmVg,
    LvType,
    MdArray,
    Mount,
    Partition,
    RaidLevel,
    TableType,
)
from recovery_env.model.sif import parse_asr_sif, reseal
from recovery_env.model.sif_render import render_asr_sif
from recovery_env.model.validate import validate_descriptor
from recovery_env.restore.match import match_disks
from recovery_env.restore.plan import plan_restore, unsupported_device

GIB = 1 << 30
MIB = 1 << 20
LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
LINUX_RAID = "a19d880f-05fc-4d3b-a006-743f0f84911e"
LINUX_LUKS = "ca7d7ccb-63ed-4c53-861c-1742536059cc"
SHA = "ab" * 32
SECTORS_16G = 16 * GIB // 512


def _disk(key: str, n: int) -> Disk:
    return Disk(key, 16 * GIB, 512, 512, TableType.GPT, f"8c2f6a1e-3b7d-4e59-a0c4-2d9e7f1b5a6{n}", True)


def _lvm_uuid(n: int) -> str:
    return f"aB{n:04d}-1234-5678-9AbC-dEf0-1234-xY{n:04d}"


def _fs(key: str, dev: str, fstype: FsType, n: int, **kw: Any) -> Filesystem:
    uuid = f"{n:04X}-ABCD" if fstype is FsType.VFAT else f"0b6f2d8e-4c1a-4f7b-9e3d-5a8c1b2e7f4{n}"
    return Filesystem(key, dev, fstype, uuid=uuid, **kw)


def _backup(d: Descriptor) -> BackupSet:
    archives = tuple(
        Archive(f.key, f"{f.key}.tar.zst", 1000, SHA) for f in d.filesystems if f.backup and f.type.has_files
    )
    return BackupSet("ASRBACKUP", "", "/asr/graph", Compression.ZSTD, "MANIFEST", SHA, 10, archives)


def _machine(
    disks: tuple[Disk, ...],
    partitions: tuple[Partition, ...],
    filesystems: tuple[Filesystem, ...],
    mounts: tuple[Mount, ...],
    **graph: Any,
) -> Descriptor:
    base = sample_descriptor()
    d = Descriptor(
        replace(base.system, firmware=Firmware.UEFI),
        disks,
        partitions,
        filesystems,
        mounts,
        Bootloader(BootloaderKind.GRUB_EFI, "disk1", "/boot/efi", "debian"),
        **graph,
    )
    return replace(d, backup=_backup(d))


def _esp(disk: str = "disk1") -> Partition:
    return Partition(disk, 1, 2048, 1048576, GPT_ESP, name="EFI System")


ENCRYPTED = _machine(
    (_disk("disk1", 1),),
    (
        _esp(),
        Partition("disk1", 2, 1050624, 2097152, LINUX_FS, name="boot"),
        Partition("disk1", 3, 3147776, 30404608, LINUX_LUKS, name="crypt"),
    ),
    (
        _fs("fs1", "disk1p1", FsType.VFAT, 1),
        _fs("fs2", "disk1p2", FsType.EXT4, 2),
        _fs("fs3", "lv1", FsType.EXT4, 3, label="root"),
        _fs("fs4", "lv2", FsType.EXT4, 4),
        _fs("fs5", "lv3", FsType.SWAP, 5),
    ),
    (
        Mount("/", "fs3", passno=1),
        Mount("/boot", "fs2", passno=2),
        Mount("/boot/efi", "fs1", passno=2),
        Mount("/home", "fs4", passno=2),
        Mount("swap", "fs5", "sw"),
    ),
    luks=(LuksDevice("luks1", "disk1p3", "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", 2, "sda3_crypt", "luks1.header"),),
    lvm_pvs=(LvmPv("luks1", _lvm_uuid(1), "vg0"),),
    lvm_vgs=(LvmVg("vg0", _lvm_uuid(2), 4 * MIB, "vg0.vgcfg"),),
    lvm_lvs=(
        LvmLv("lv1", "vg0", "root", _lvm_uuid(3), 8 * GIB),
        LvmLv("lv2", "vg0", "home", _lvm_uuid(4), 4 * GIB),
        LvmLv("lv3", "vg0", "swap_1", _lvm_uuid(5), GIB),
    ),
)
"""A Debian "guided - use entire disk and set up encrypted LVM" machine: ESP and /boot partitions, LUKS2 on
partition 3, one PV on the LUKS device, a VG with root, home and swap."""

RAIDED = _machine(
    (_disk("disk1", 1), _disk("disk2", 2)),
    (
        _esp(),
        Partition("disk1", 2, 1050624, 32503775, LINUX_RAID),
        _esp("disk2"),
        Partition("disk2", 2, 1050624, 32503775, LINUX_RAID),
    ),
    (
        _fs("fs1", "disk1p1", FsType.VFAT, 1),
        _fs("fs2", "lv1", FsType.EXT4, 2),
        _fs("fs3", "lv2", FsType.XFS, 3),
    ),
    (Mount("/", "fs2"), Mount("/boot/efi", "fs1"), Mount("/srv", "fs3", "noatime")),
    md_arrays=(
        MdArray(
            "md1",
            "0123abcd:4567ef01:89abcdef:01234567",
            RaidLevel.RAID1,
            ("disk1p2", "disk2p2"),
            2,
            name="raided:0",
            size_bytes=16 * GIB - 64 * MIB,
            device="/dev/md0",
        ),
    ),
    lvm_pvs=(LvmPv("md1", _lvm_uuid(6), "vgraid"),),
    lvm_vgs=(LvmVg("vgraid", _lvm_uuid(7), 4 * MIB),),
    lvm_lvs=(
        LvmLv("lv1", "vgraid", "root", _lvm_uuid(8), 6 * GIB),
        LvmLv("lv2", "vgraid", "srv", _lvm_uuid(9), 2 * GIB),
    ),
)
"""RAID1 of two disks' second partitions (an ESP on each), LVM on the array: / and /srv."""


def test_the_two_machines_round_trip_exactly() -> None:
    for d in (ENCRYPTED, RAIDED):
        text = render_asr_sif(d)
        assert parse_asr_sif(text) == d
        assert render_asr_sif(parse_asr_sif(text)) == text


def test_the_format_3_sections_as_a_person_reads_them() -> None:
    text = render_asr_sif(ENCRYPTED)
    assert "format = 3\n" in text
    records = {
        s: [x for x in text.split(f"\n[{s}]\n", 1)[1].split("\n[", 1)[0].splitlines() if x and x[0] != ";"]
        for s in ("MD", "LUKS", "LVM_PV", "LVM_VG", "LVM_LV")
    }
    assert records == {
        "MD": [],
        "LUKS": [
            "key=luks1 device=disk1p3 uuid=7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6 version=2 name=sda3_crypt"
            " header_file=luks1.header"
        ],
        "LVM_PV": [f"device=luks1 uuid={_lvm_uuid(1)} vg=vg0"],
        "LVM_VG": [f"name=vg0 uuid={_lvm_uuid(2)} extent_size=4194304 metadata_file=vg0.vgcfg"],
        "LVM_LV": [
            f"key=lv1 vg=vg0 name=root uuid={_lvm_uuid(3)} size=8589934592",
            f"key=lv2 vg=vg0 name=home uuid={_lvm_uuid(4)} size=4294967296",
            f"key=lv3 vg=vg0 name=swap_1 uuid={_lvm_uuid(5)} size=1073741824",
        ],
    }
    assert "\nkey=fs3 partition=lv1 type=ext4 " in text
    md = render_asr_sif(RAIDED).split("\n[MD]\n", 1)[1].split("\n[", 1)[0]
    assert (
        "\nkey=md1 uuid=0123abcd:4567ef01:89abcdef:01234567 level=raid1 members=disk1p2,disk2p2 raid_disks=2"
        " name=raided:0 size_bytes=17112760320 device=/dev/md0\n"
    ) in md


def test_disks_under_walk_the_graph() -> None:
    e, r = ENCRYPTED, RAIDED
    assert e.disks_under(e.filesystem("fs3").device) == ("disk1",)
    assert e.parents_of("lv1") == ("luks1",) and e.parents_of("luks1") == ("disk1p3",)
    assert e.parents_of("disk1p3") == ("disk1",) and e.parents_of("disk1") == ()
    assert r.disks_under("lv2") == ("disk1", "disk2")
    assert r.parents_of("lv1") == ("md1",) and r.parents_of("md1") == ("disk1p2", "disk2p2")
    assert [e.block_kind(k) for k in ("disk1", "disk1p3", "luks1", "lv1")] == [
        BlockKind.DISK, BlockKind.PARTITION, BlockKind.LUKS, BlockKind.LV]  # fmt: skip
    assert r.block_kind("md1") is BlockKind.MD
    with pytest.raises(KeyError):
        e.block_device("md9")
    assert e.has_graph and not sample_descriptor().has_graph


def test_formats_1_and_2_are_still_read() -> None:
    for version in (1, 2):
        old = replace(sample_descriptor(), version=version)
        text = render_asr_sif(old)
        assert f"format = {version}\n" in text and "[MD]" not in text and "[LVM_LV]" not in text
        assert parse_asr_sif(text) == old
        assert not parse_asr_sif(text).has_graph


def test_a_format_2_file_with_a_format_3_section_is_refused() -> None:
    text = reseal(render_asr_sif(RAIDED).replace("format = 3\n", "format = 2\n"))
    with pytest.raises(DescriptorError, match=r"section \[MD\] is not in format 2 \(it came with format 3\)") as e:
        parse_asr_sif(text)
    assert e.value.line == text.splitlines().index("[MD]") + 1


def test_a_format_2_descriptor_with_graph_records_is_refused() -> None:
    with pytest.raises(DescriptorError, match=r"format 2 has no \[LUKS\] \(format 3 has\)"):
        validate_descriptor(replace(ENCRYPTED, version=2))


def test_the_parser_names_the_field_of_a_bad_value() -> None:
    text = reseal(render_asr_sif(RAIDED).replace("level=raid1", "level=raid7"))
    with pytest.raises(DescriptorError, match="'raid7' is not one of raid0, raid1, raid5, raid6, raid10") as e:
        parse_asr_sif(text)
    assert (e.value.section, e.value.record, e.value.field) == ("MD", 1, "level")
    text = reseal(render_asr_sif(ENCRYPTED).replace(" vg=vg0 name=home", " vg=vg0 name=home colour=red"))
    with pytest.raises(DescriptorError, match="unknown field") as e:
        parse_asr_sif(text)
    assert (e.value.section, e.value.record, e.value.field) == ("LVM_LV", 2, "colour")


# --- the validator's rules ------------------------------------------------------------------------------------


def _at(seq: tuple[Any, ...], i: int, **kw: Any) -> tuple[Any, ...]:
    return (*seq[:i], replace(seq[i], **kw), *seq[i + 1 :])


def md(i: int = 0, d: Descriptor = RAIDED, **kw: Any) -> Descriptor:
    return replace(d, md_arrays=_at(d.md_arrays, i, **kw))


def luks(i: int = 0, d: Descriptor = ENCRYPTED, **kw: Any) -> Descriptor:
    return replace(d, luks=_at(d.luks, i, **kw))


def pv(i: int = 0, d: Descriptor = ENCRYPTED, **kw: Any) -> Descriptor:
    return replace(d, lvm_pvs=_at(d.lvm_pvs, i, **kw))


def vg(i: int = 0, d: Descriptor = ENCRYPTED, **kw: Any) -> Descriptor:
    return replace(d, lvm_vgs=_at(d.lvm_vgs, i, **kw))


def lv(i: int = 0, d: Descriptor = ENCRYPTED, **kw: Any) -> Descriptor:
    return replace(d, lvm_lvs=_at(d.lvm_lvs, i, **kw))


def fs(i: int, d: Descriptor = ENCRYPTED, **kw: Any) -> Descriptor:
    return replace(d, filesystems=_at(d.filesystems, i, **kw))


def thin(d: Descriptor = ENCRYPTED) -> Descriptor:
    """lv2 (home) as a thin volume of a thin pool lv4."""
    with_thin = lv(1, d, segtype=LvType.THIN, pool="pool")
    pool = LvmLv("lv4", "vg0", "pool", _lvm_uuid(10), 4 * GIB, LvType.THIN_POOL)
    return replace(with_thin, lvm_lvs=(*with_thin.lvm_lvs, pool))


RAID5 = md(level=RaidLevel.RAID5, members=("disk1p2", "disk2p2", MD_MISSING), raid_disks=3, chunk_kib=512)

CASES: list[tuple[str, Callable[[], Descriptor], str, int | None, str | None, str]] = [
    # references
    ("md member unknown", lambda: md(members=("disk1p2", "disk3p2")), "MD", 1, "members",
     "'disk3p2' is not a block device: not in [PARTITIONS], [DISKS], [MD], [LUKS] or [LVM_LV]"),
    ("luks device unknown", lambda: luks(device="disk1p4"), "LUKS", 1, "device", "'disk1p4' is not a block device"),
    ("pv device unknown", lambda: pv(device="luks2"), "LVM_PV", 1, "device", "'luks2' is not a block device"),
    ("pv's vg unknown", lambda: pv(vg="vg1"), "LVM_PV", 1, "vg", "volume group 'vg1' is not in [LVM_VG]"),
    ("lv's vg unknown", lambda: lv(2, vg="vg1"), "LVM_LV", 3, "vg", "volume group 'vg1' is not in [LVM_VG]"),
    ("thin pool unknown", lambda: lv(1, thin(), pool="pool2"), "LVM_LV", 2, "pool",
     "thin pool vg0/pool2 is not in [LVM_LV]"),
    ("thin pool not a pool", lambda: lv(1, thin(), pool="root"), "LVM_LV", 2, "pool",
     "vg0/root (lv1) is linear, not a thin pool"),
    ("fs device unknown", lambda: fs(2, partition="lv9"), "FILESYSTEMS", 3, "partition",
     "'lv9' is not a block device"),
    ("vg without pv", lambda: replace(ENCRYPTED, lvm_vgs=(*ENCRYPTED.lvm_vgs, LvmVg("vg1", _lvm_uuid(11), 4 * MIB))),
     "LVM_VG", 2, "name", "volume group vg1 has no physical volume in [LVM_PV]"),
    # one holder per device
    ("partition both md member and pv", lambda: replace(RAIDED, lvm_pvs=(*RAIDED.lvm_pvs, LvmPv(
        "disk1p2", _lvm_uuid(12), "vgraid"))), "LVM_PV", 2, "device", "disk1p2 already holds a member of md1"),
    ("fs on a luks partition", lambda: fs(1, partition="disk1p3"), "FILESYSTEMS", 2, "partition",
     "disk1p3 already holds luks1"),
    ("fs on a pv", lambda: fs(1, partition="luks1"), "FILESYSTEMS", 2, "partition",
     "luks1 already holds a physical volume of vg0"),
    ("two fs on one lv", lambda: fs(3, partition="lv1"), "FILESYSTEMS", 4, "partition", "lv1 already holds fs3"),
    ("member twice", lambda: md(members=("disk1p2", "disk1p2")), "MD", 1, "members",
     "disk1p2 already holds a member of md1"),
    ("fs on a thin pool", lambda: replace(thin(), filesystems=(*thin().filesystems, _fs("fs6", "lv4", FsType.EXT4, 6,
     backup=False))), "FILESYSTEMS", 6, "partition", "lv4 (vg0/pool) is a thin pool"),
    ("disk with partitions used whole", lambda: luks(device="disk1"), "LUKS", 1, "device",
     "disk1 has partitions (disk1p1...): it cannot be used whole"),
    ("key collides", lambda: luks(key="lv1"), "LVM_LV", 1, "key",
     "key lv1 is also the LUKS2 device lv1 (sda3_crypt)'s"),
    ("key of a partition", lambda: md(key="disk1p2"), "MD", 1, "key", "key disk1p2 is also the partition disk1p2's"),
    ("key missing", lambda: replace(RAIDED, luks=(LuksDevice("missing", "lv2", "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6",
     2, "c"),)), "LUKS", 1, "key",
     "'missing' marks an absent slot of an MD array: it is no key"),
    # cycles
    ("cycle", lambda: replace(RAIDED, luks=(LuksDevice("luks1", "lv2", "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", 2,
     "c"),), lvm_pvs=(*RAIDED.lvm_pvs, LvmPv("luks1", _lvm_uuid(13), "vgraid")),
     filesystems=RAIDED.filesystems[:2], mounts=RAIDED.mounts[:2], backup=None), "LUKS", 1, "device",
     "luks1 sits on itself: luks1 -> lv2 -> luks1"),
    # formats of ids
    ("md uuid", lambda: md(uuid="0123abcd-4567ef01-89abcdef-01234567"), "MD", 1, "uuid", "is not an MD UUID like"),
    ("luks uuid", lambda: luks(uuid="7D1E2F3A-4B5C-4D6E-8F70-8192A3B4C5D6"), "LUKS", 1, "uuid", "is not a UUID"),
    ("pv uuid", lambda: pv(uuid="7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"), "LVM_PV", 1, "uuid", "is not an LVM UUID"),
    ("vg uuid", lambda: vg(uuid="abc"), "LVM_VG", 1, "uuid", "'abc' is not an LVM UUID like"),
    ("lv uuid", lambda: lv(uuid=""), "LVM_LV", 1, "uuid", "'' is not an LVM UUID"),
    ("uuid twice", lambda: lv(1, uuid=_lvm_uuid(3)), "LVM_LV", 2, "uuid", f"UUID {_lvm_uuid(3)} is also lv1's"),
    # levels and slots
    ("raid1 of one slot", lambda: md(members=("disk1p2",), raid_disks=1), "MD", 1, "raid_disks",
     "raid1 needs 2 raid devices or more, not 1"),
    ("raid5 of two", lambda: md(0, RAID5, members=("disk1p2", "disk2p2"), raid_disks=2), "MD", 1,
     "raid_disks", "raid5 needs 3 raid devices or more, not 2"),
    ("raid10 of three", lambda: md(level=RaidLevel.RAID10, members=("disk1p2", "disk2p2", MD_MISSING), raid_disks=3,
     chunk_kib=512), "MD", 1, "raid_disks", "raid10 needs 4 raid devices or more, not 3"),
    ("slots and members", lambda: md(raid_disks=3), "MD", 1, "members",
     "2 members listed for 3 raid devices (write 'missing' for an absent one)"),
    ("raid5 missing two", lambda: md(0, RAID5, members=("disk1p2", MD_MISSING, MD_MISSING)), "MD", 1, "members",
     "raid5 of 3 devices does not run with 1 of them (it needs 2)"),
    ("raid1 chunk", lambda: md(chunk_kib=64), "MD", 1, "chunk_kib", "raid1 has no chunk size (0, not 64)"),
    ("raid5 chunk", lambda: md(0, RAID5, chunk_kib=3), "MD", 1, "chunk_kib",
     "chunk 3 KiB is not a power of two of 4 KiB or more"),
    ("metadata", lambda: md(metadata="2.0"), "MD", 1, "metadata", "metadata '2.0' is not 0.90, 1.0, 1.1, 1.2"),
    ("0.90 has no name", lambda: md(metadata="0.90"), "MD", 1, "name", "a 0.90 superblock has no name"),
    ("luks version", lambda: luks(version=3), "LUKS", 1, "version", "LUKS version 3 is not 1 or 2"),
    # LVM sizes and names
    ("lv size in extents", lambda: lv(size=8 * GIB + MIB), "LVM_LV", 1, "size",
     "size 8590983168 is not a whole number of vg0's 4194304-byte extents"),
    ("extent size", lambda: vg(extent_size=3000), "LVM_VG", 1, "extent_size", "extent size 3000 is not a power"),
    ("lv name dash", lambda: lv(name="-root"), "LVM_LV", 1, "name", "'-root' is not a valid logical volume name"),
    ("lv name char", lambda: lv(name="ro/ot"), "LVM_LV", 1, "name", "'ro/ot' is not a valid logical volume name"),
    ("lv name reserved", lambda: lv(name="root_tmeta"), "LVM_LV", 1, "name", "holds '_tmeta', which LVM keeps"),
    ("vg name", lambda: pv(vg="vg 0"), "LVM_PV", 1, "vg", "'vg 0' is not a valid volume group name"),
    ("lv twice", lambda: lv(1, name="root"), "LVM_LV", 2, "name", "vg0/root is listed twice"),
    ("striped stripes", lambda: lv(segtype=LvType.STRIPED, stripe_size=65536), "LVM_LV", 1, "stripes",
     "a striped volume has 2 stripes or more, not 1"),
    ("linear stripe size", lambda: lv(stripe_size=65536), "LVM_LV", 1, "stripe_size",
     "a linear volume has no stripe size"),
    ("pool of a linear", lambda: lv(pool="pool"), "LVM_LV", 1, "pool", "a linear volume has no pool"),
    ("dm name", lambda: luks(name="sda3 crypt"), "LUKS", 1, "name", "'sda3 crypt' is not a device-mapper name"),
    # files of the backup set, the ESP, fstab, the root disks
    ("header file name", lambda: luks(header_file="a/b"), "LUKS", 1, "header_file", "'a/b' is not a file name"),
    ("header file twice", lambda: luks(header_file="fs1.tar.zst"), "LUKS", 1, "header_file",
     "file fs1.tar.zst is also the archive of fs1"),
    ("header without set", lambda: replace(ENCRYPTED, backup=None, filesystems=tuple(
        replace(f, backup=False) for f in ENCRYPTED.filesystems)), "LUKS", 1, "header_file",
     "luks1.header names a file of the backup set, but there is none"),
    ("esp on an lv", lambda: replace(ENCRYPTED, filesystems=(replace(ENCRYPTED.filesystems[0], partition="lv3"),
     *ENCRYPTED.filesystems[1:4]), mounts=ENCRYPTED.mounts[:4]), "BOOTLOADER", None, "esp_mountpoint",
     "the ESP /boot/efi is on lv3, not on a partition (the firmware reads partitions)"),
    ("partuuid of an lv", lambda: replace(ENCRYPTED, mounts=_at(ENCRYPTED.mounts, 0, spec=FstabSpec.PARTUUID)),
     "MOUNTS", 1, "spec", "fstab names it by PARTUUID but lv1 is not a partition"),
    ("root disks critical", lambda: replace(RAIDED, disks=_at(RAIDED.disks, 1, critical=False)), "DISKS", 2,
     "critical", "disk2 holds '/' and must be critical"),
]  # fmt: skip


def test_the_machines_are_valid() -> None:
    for d in (ENCRYPTED, RAIDED, thin(), RAID5):
        validate_descriptor(d)
        assert parse_asr_sif(render_asr_sif(d)) == d


@pytest.mark.parametrize(("name", "make", "section", "record", "field", "message"), CASES, ids=[c[0] for c in CASES])
def test_rule(
    name: str, make: Callable[[], Descriptor], section: str, record: int | None, field: str | None, message: str
) -> None:
    with pytest.raises(DescriptorError) as e:
        validate_descriptor(make())
    err = e.value
    assert (err.section, err.record, err.field) == (section, record, field), str(err)
    assert message in err.reason, str(err)


# --- generated graphs ------------------------------------------------------------------------------------------


@st.composite
def graphs(draw: Any) -> Descriptor:
    """A valid format-3 descriptor: a UEFI disk with an ESP and root partition and up to 5 more partitions, maybe
    a whole second disk, with MD arrays, LUKS devices and LVM groups stacked on the free devices in any order, and
    filesystems on some of what is left on top."""
    n_parts = draw(st.integers(0, 5))
    parts = [_esp(), Partition("disk1", 2, 1050624, 2097152, LINUX_FS)]
    for n in range(n_parts):
        parts.append(Partition("disk1", 3 + n, 3147776 + n * 4194304, 4194304, LINUX_FS))
    disks = [_disk("disk1", 1)]
    free = [p.key for p in parts[2:]]
    if draw(st.booleans()):
        disks.append(replace(_disk("disk2", 2), critical=draw(st.booleans())))
        free.append("disk2")
    free = draw(st.permutations(free))
    free = list(free)
    mds: list[MdArray] = []
    lukses: list[LuksDevice] = []
    pvs: list[LvmPv] = []
    vgs: list[LvmVg] = []
    lvs: list[LvmLv] = []
    ids = iter(range(1, 1000))
    for _ in range(draw(st.integers(0, 6))):
        if not free:
            break
        kind = draw(st.sampled_from(["md", "luks", "lvm"]))
        n = next(ids)
        if kind == "md" and len(free) >= 2:
            level = draw(st.sampled_from([RaidLevel.RAID0, RaidLevel.RAID1, RaidLevel.RAID5, RaidLevel.RAID10]))
            take = draw(st.integers(2, len(free)))
            members = [free.pop() for _ in range(take)]
            slots = max(len(members) + draw(st.integers(0, 1)), level.min_devices)  # maybe degraded
            members += [MD_MISSING] * (slots - len(members))
            if len(members) - members.count(MD_MISSING) < level.min_present(slots):
                free.extend(m for m in members if m != MD_MISSING)
                continue
            mds.append(MdArray(f"md{n}", f"{n:08x}:4567ef01:89abcdef:01234567", level,
                               tuple(members), slots, draw(st.sampled_from(["1.2", "1.0"])),
                               draw(st.sampled_from(["", f"host:{n}"])),
                               512 if level.striped else 0))  # fmt: skip
            free.append(f"md{n}")
        elif kind == "luks":
            lukses.append(LuksDevice(f"luks{n}", free.pop(), f"7d1e2f3a-4b5c-4d6e-8f70-{n:012x}",
                                     draw(st.sampled_from([1, 2])), f"crypt{n}",
                                     draw(st.sampled_from(["", f"luks{n}.header"]))))  # fmt: skip
            free.append(f"luks{n}")
        else:
            name = f"vg{n}"
            extent = draw(st.sampled_from([4 * MIB, 1 << 16, 128 << 10]))
            vgs.append(LvmVg(name, _lvm_uuid(n), extent, draw(st.sampled_from(["", f"{name}.vgcfg"]))))
            for _ in range(draw(st.integers(1, max(1, min(3, len(free)))))):
                if free:
                    pvs.append(LvmPv(free.pop(), _lvm_uuid(500 + next(ids)), name))
            for j in range(draw(st.integers(1, 3))):
                segtype = draw(st.sampled_from([LvType.LINEAR, LvType.STRIPED]))
                striped = segtype is LvType.STRIPED
                k = next(ids)
                lvs.append(LvmLv(f"lv{k}", name, f"lv_{j}.x+y", _lvm_uuid(k), extent * draw(st.integers(1, 4096)),
                                 segtype, 2 if striped else 1, 65536 if striped else 0))  # fmt: skip
                free.append(f"lv{k}")
            if draw(st.booleans()):  # a thin pool and a thin volume in it
                k = next(ids)
                lvs.append(LvmLv(f"lv{k}", name, "pool", _lvm_uuid(k), extent * 16, LvType.THIN_POOL))
                lvs.append(LvmLv(f"lv{k + 1000}", name, "thin", _lvm_uuid(k + 1000), extent * 64, LvType.THIN,
                                 pool="pool"))  # fmt: skip
                free.append(f"lv{k + 1000}")
    filesystems = [_fs("fs1", "disk1p1", FsType.VFAT, 1), _fs("fs2", "disk1p2", FsType.EXT4, 2)]
    for n, key in enumerate(free):
        if draw(st.booleans()):
            fstype = draw(st.sampled_from([FsType.EXT4, FsType.XFS, FsType.SWAP]))
            filesystems.append(Filesystem(f"fs{n + 3}", key, fstype, backup=draw(st.booleans())))
    mounts = [Mount("/", "fs2", spec=FstabSpec.PATH), Mount("/boot/efi", "fs1")]
    return _machine(tuple(disks), tuple(parts), tuple(filesystems), tuple(mounts), md_arrays=tuple(mds),
                    luks=tuple(lukses), lvm_pvs=tuple(pvs), lvm_vgs=tuple(vgs), lvm_lvs=tuple(lvs))  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_generated_graphs_round_trip(d: Descriptor) -> None:
    validate_descriptor(d)
    assert parse_asr_sif(render_asr_sif(d)) == d
    for f in d.filesystems:
        assert set(d.disks_under(f.device)) <= {k.key for k in d.disks}
    for t in (lv for lv in d.lvm_lvs if lv.segtype is LvType.THIN):
        assert d.block_device(d.parents_of(t.key)[0]).segtype is LvType.THIN_POOL  # type: ignore[union-attr]
    assert bool(unsupported_device(d)) == d.has_graph


# --- consumers -------------------------------------------------------------------------------------------------


def test_the_planner_refuses_a_graph_cleanly() -> None:
    disk = target("vda", 16 * GIB)
    mapping = match_disks(ENCRYPTED, [disk], unattended=True)
    assert dict(mapping) == {"disk1": disk}
    with pytest.raises(PlanError, match=r"^LVM logical volume lv1 \(vg0/root\): restoring LVM is not implemented yet$"):
        plan_restore(ENCRYPTED, mapping, backup_dir="/backup")
    assert unsupported_device(RAIDED) == "LVM logical volume lv1 (vgraid/root): restoring LVM is not implemented yet"
    only_md = replace(
        RAIDED,
        lvm_pvs=(),
        lvm_vgs=(),
        lvm_lvs=(),
        filesystems=(*RAIDED.filesystems[:1], replace(RAIDED.filesystems[1], partition="md1")),
        mounts=RAIDED.mounts[:2],
    )
    only_md = replace(only_md, backup=_backup(only_md))
    validate_descriptor(only_md)
    refusal = "MD RAID array md1 (raid1, raided:0): restoring MD RAID is not implemented yet"
    assert unsupported_device(only_md) == refusal
    assert unsupported_device(sample_descriptor()) == ""


def test_inspect_shows_the_graph() -> None:
    from builder.inspect import render_descriptor

    text = "\n".join(render_descriptor(ENCRYPTED))
    assert "Storage graph (bottom up)" in text and "LUKS2 on disk1p3 as sda3_crypt" in text
    assert "vg0/root" in text and "volume group on luks1" in text
    assert "Storage graph" not in "\n".join(render_descriptor(sample_descriptor()))
    assert "md1        raid1 of disk1p2,disk2p2" in "\n".join(render_descriptor(RAIDED))


def test_every_field_is_named_in_its_section_comment() -> None:
    import dataclasses
    import re

    text = render_asr_sif(RAIDED)
    for section, cls in (("MD", MdArray), ("LUKS", LuksDevice), ("LVM_PV", LvmPv), ("LVM_VG", LvmVg),
                         ("LVM_LV", LvmLv)):  # fmt: skip
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        comment = " ".join(x for x in body.split("\n") if x.startswith(";"))
        for f in dataclasses.fields(cls):
            assert re.search(rf"\b{f.name}\b", comment), (section, f.name)
