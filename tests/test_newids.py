"""A restore with new ids (asr.new_ids=1): the ids, the plan that writes them, the files rewritten with them.

The planner's part is pure (``ASR_FORBID_SUBPROCESS=1``); the rewrite runs the executor's step on a directory tree.
The restore and boot of a real Debian machine with new ids: tests/test_new_ids_vm.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
from test_plan import ROOT_UUID, SWAP_UUID, gpt_descriptor, mbr_descriptor, target

from recovery_env.agent.cmdline import parse_cmdline
from recovery_env.agent.screens import Size, plan_pages
from recovery_env.errors import PlanViolationError
from recovery_env.model.descriptor import TableType
from recovery_env.model.manifest import EntryType, ManifestEntry
from recovery_env.model.sif import parse_asr_sif
from recovery_env.model.sif_render import render_asr_sif
from recovery_env.restore.execute import _run_step, check_step
from recovery_env.restore.match import match_disks
from recovery_env.restore.newids import (
    ID_FILES,
    IdChange,
    apply_new_ids,
    derive_new_ids,
    parse_new_id_lines,
    replace_ids,
)
from recovery_env.restore.plan import (
    CheckFilesystem,
    CheckManifest,
    LinkByUuid,
    ReplaceIds,
    RunStep,
    plan_restore,
    render_plan,
)
from recovery_env.restore.rehearsal import plan_check_sample

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_FORBID_SUBPROCESS", "1")


def test_every_id_of_the_restored_disks_is_new_in_the_format_its_tool_writes() -> None:
    d = gpt_descriptor()
    ids = derive_new_ids(d, "salt")
    kinds = {(c.kind, c.key) for c in ids.changes}
    assert kinds == {("disk", "disk1"), ("partition", "disk1p1"), ("partition", "disk1p2"),
                     ("partition", "disk1p3"), ("filesystem", "fs1"), ("filesystem", "fs2")}  # fmt: skip
    for c in ids.changes:
        assert c.new.lower() != c.old.lower()
        if c.key == "fs1":  # FAT volume id
            assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}", c.new)
        else:
            assert GUID.fullmatch(c.new), c
    assert len({c.new for c in ids.changes}) == len(ids.changes)


def test_mbr_ids_a_signature_and_partitions_named_after_it() -> None:
    ids = derive_new_ids(mbr_descriptor(extended=True), "salt")
    disk = ids.of("disk")["disk1"]
    assert disk.old == "0x1234abcd" and re.fullmatch(r"0x[0-9a-f]{8}", disk.new) and disk.new != "0x00000000"
    sig = disk.new[2:]
    assert {k: c.new for k, c in ids.of("partition").items()} == {
        "disk1p1": f"{sig}-01", "disk1p2": f"{sig}-02", "disk1p5": f"{sig}-05"}


def test_the_same_salt_gives_the_same_ids_and_another_salt_others() -> None:
    d = gpt_descriptor()
    assert derive_new_ids(d, "one") == derive_new_ids(d, "one")
    one, two = derive_new_ids(d, "one"), derive_new_ids(d, "two")
    assert not {c.new for c in one.changes} & {c.new for c in two.changes}


def test_the_descriptor_with_new_ids_is_still_valid_and_nothing_else_changed() -> None:
    d = gpt_descriptor()
    ids = derive_new_ids(d, "salt")
    new = apply_new_ids(d, ids)
    assert new.disks[0].disk_id == ids.of("disk")["disk1"].new
    assert [p.partuuid for p in new.partitions] == [ids.of("partition")[p.key].new for p in d.partitions]
    assert [f.uuid for f in new.filesystems] == [ids.of("filesystem")[f.key].new for f in d.filesystems]
    assert new.mounts == d.mounts and new.bootloader == d.bootloader and new.backup == d.backup
    text = render_asr_sif(new)
    assert parse_asr_sif(text) == new  # the validator accepts it (formats, uniqueness)


FSTAB = f"""\
# /etc/fstab: static file system information.
UUID={ROOT_UUID} /               ext4    errors=remount-ro 0       1
UUID=abcd-1234  /boot/efi       vfat    umask=0077      0       1
PARTUUID=11111111-0000-4000-8000-000000000003 /mnt/x ext4 noauto 0 0
# an id inside a longer word is not an id: x{ROOT_UUID}0
"""


def test_replace_ids_whole_ids_in_either_case() -> None:
    d = gpt_descriptor()
    ids = derive_new_ids(d, "salt")
    fs = ids.of("filesystem")
    text, count = replace_ids(FSTAB, ids.replacements)
    assert count == 3
    assert f"UUID={fs['fs2'].new} /  " in text and f"UUID={fs['fs1'].new}  /boot/efi" in text
    assert f"PARTUUID={ids.of('partition')['disk1p3'].new} /mnt/x" in text
    assert f"x{ROOT_UUID}0" in text  # untouched
    assert replace_ids(FSTAB, ()) == (FSTAB, 0)


def test_the_plan_makes_and_checks_the_new_ids() -> None:
    d = gpt_descriptor()
    ids = derive_new_ids(d, "salt")
    plan = plan_restore(d, match_disks(d, [target("vda", 3 << 30)], unattended=True), backup_dir="/b", new_ids=ids)
    fs, parts, disk = ids.of("filesystem"), ids.of("partition"), ids.of("disk")["disk1"]
    (dp,) = plan.disks
    assert f"label-id: {disk.new}" in dp.sfdisk_script and d.disks[0].disk_id not in dp.sfdisk_script
    for key, c in parts.items():
        assert f"uuid={c.new}" in dp.sfdisk_script, key
    mkfs = {f.key: f.mkfs_argv for f in plan.filesystems}
    assert "-U" in mkfs["fs2"] and fs["fs2"].new in mkfs["fs2"] and ROOT_UUID not in mkfs["fs2"]
    assert fs["fs1"].new.replace("-", "") in mkfs["fs1"]  # mkfs.vfat -i ABCD1234
    steps = plan.steps()
    checks = [s.filesystem.uuid for s in steps if isinstance(s, CheckFilesystem)]
    assert checks == [fs["fs1"].new, fs["fs2"].new]
    (links,) = [s for s in steps if isinstance(s, LinkByUuid)]
    assert {u for u, _ in links.links} == {fs["fs1"].new, fs["fs2"].new}
    assert plan.new_ids == ids.changes


def test_the_files_are_rewritten_after_the_manifest_check_and_the_initramfs_rebuilt_before_grub() -> None:
    d = gpt_descriptor()
    ids = derive_new_ids(d, "salt")
    plan = plan_restore(d, match_disks(d, [target("vda", 2 << 30)], unattended=True), backup_dir="/b", new_ids=ids)
    names = [s.name for s in plan.steps()]
    order = {type(s).__name__: i for i, s in enumerate(plan.steps()) if isinstance(s, CheckManifest | ReplaceIds)}
    assert order["CheckManifest"] < order["ReplaceIds"]
    (rewrite,) = [s for s in plan.steps() if isinstance(s, ReplaceIds)]
    assert rewrite.files == tuple("/target" + f for f in ID_FILES)
    assert rewrite.replacements == ids.replacements
    initramfs = names.index("rebuild the initramfs for the new ids (chroot, update-initramfs)")
    first_grub = min(i for i, s in enumerate(plan.steps()) if isinstance(s, RunStep) and "grub-install" in s.argv)
    update_grub = names.index("rewrite the grub configuration (chroot, update-grub)")
    assert names.index("mount /sys into /target") < initramfs < first_grub < update_grub
    step = plan.steps()[initramfs]
    assert isinstance(step, RunStep)
    assert step.argv == ("chroot", "/target", "update-initramfs", "-u", "-k", "all")


def test_without_new_ids_no_rewrite_and_no_rebuild() -> None:
    d = gpt_descriptor()
    plan = plan_restore(d, match_disks(d, [target("vda", 2 << 30)], unattended=True), backup_dir="/b")
    assert not any(isinstance(s, ReplaceIds) for s in plan.steps())
    assert not any("initramfs" in s.name for s in plan.steps())
    assert not any("NEW IDS" in line for line in render_plan(plan))


def test_the_plan_screen_shows_each_old_and_new_id_within_its_width() -> None:
    d = mbr_descriptor()
    ids = derive_new_ids(d, "salt")
    plan = plan_restore(d, match_disks(d, [target("sda", 1 << 30)], unattended=True), backup_dir="/b", new_ids=ids)
    lines = render_plan(plan)
    assert any(line.startswith("NEW IDS") for line in lines)
    text = "\n".join(lines)
    for c in ids.changes:
        assert c.old in text and f"-> {c.new}" in text
    start = next(i for i, line in enumerate(lines) if line.startswith("NEW IDS"))
    assert max(len(line) for line in lines[start:start + 2 + 2 * len(ids.changes)]) <= 76
    assert plan_pages(lines, Size.of(25, 80))  # pages as any plan


def test_the_rewrite_step_on_a_restored_tree(tmp_path: Path) -> None:
    d = gpt_descriptor()
    ids = derive_new_ids(d, "salt")
    plan = plan_restore(d, match_disks(d, [target("vda", 2 << 30)], unattended=True), backup_dir="/b",
                        target_root=str(tmp_path), new_ids=ids)  # fmt: skip
    (step,) = [s for s in plan.steps() if isinstance(s, ReplaceIds)]
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "etc/initramfs-tools/conf.d").mkdir(parents=True)
    (tmp_path / "etc/fstab").write_text(FSTAB)
    (tmp_path / "etc/fstab").chmod(0o600)
    (tmp_path / "etc/initramfs-tools/conf.d/resume").write_text(f"RESUME=UUID={ROOT_UUID}\n")
    (tmp_path / "etc/default/grub.d/resume.cfg").write_text(f'GRUB_CMDLINE_LINUX="resume=UUID={ROOT_UUID.upper()}"\n')
    (tmp_path / "etc/default/grub.d/other.txt").write_text(ROOT_UUID)
    check_step(step, plan)
    logged: list[str] = []
    _run_step(step, str(tmp_path), log=logged.append, progress=lambda _: None)
    new_root = ids.of("filesystem")["fs2"].new
    assert (tmp_path / "etc/initramfs-tools/conf.d/resume").read_text() == f"RESUME=UUID={new_root}\n"
    assert f"resume=UUID={new_root}" in (tmp_path / "etc/default/grub.d/resume.cfg").read_text()
    assert (tmp_path / "etc/default/grub.d/other.txt").read_text() == ROOT_UUID  # not a .cfg
    assert f"UUID={new_root} /" in (tmp_path / "etc/fstab").read_text()
    assert (tmp_path / "etc/fstab").stat().st_mode & 0o777 == 0o600  # the file's mode kept
    assert f"  {tmp_path}/etc/fstab: 3 id(s) replaced" in logged
    assert not any("crypttab" in line for line in logged)  # a missing file is left alone


def test_the_rewrite_never_follows_a_link_out_of_the_restored_tree(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (outside / "fstab").write_text(f"UUID={ROOT_UUID} / ext4 defaults 0 1\n")
    os.symlink(str(outside / "fstab"), root / "etc/fstab")  # absolute: resolved inside the root, it is not there
    d = gpt_descriptor()
    ids = derive_new_ids(d, "salt")
    plan = plan_restore(d, match_disks(d, [target("vda", 2 << 30)], unattended=True), backup_dir="/b",
                        target_root=str(root), new_ids=ids)  # fmt: skip
    (step,) = [s for s in plan.steps() if isinstance(s, ReplaceIds)]
    logged: list[str] = []
    _run_step(step, str(root), log=logged.append, progress=lambda _: None)  # the link leads nowhere inside the root
    assert ROOT_UUID in (outside / "fstab").read_text()  # untouched
    assert logged == []
    with pytest.raises(PlanViolationError, match="outside the target root"):
        check_step(replace(step, files=("/etc/fstab",)), plan)


def test_the_logged_lines_give_the_ids_back() -> None:
    ids = derive_new_ids(mbr_descriptor(), "salt")
    serial = "noise\r\n" + "".join(f"ASR: {c.line}\r\n" for c in ids.changes) + "ASR: done\r\n"
    assert parse_new_id_lines(serial) == ids
    assert parse_new_id_lines("nothing here").changes == ()
    assert IdChange("disk", "disk1", "0x1", "0x2").line == "ASR-NEW-ID disk disk1 0x1 -> 0x2"


def test_the_boot_option() -> None:
    assert parse_cmdline("quiet asr.new_ids=1").new_ids
    assert not parse_cmdline("quiet").new_ids
    assert parse_cmdline("asr.new_ids").new_ids


def test_the_rehearsal_sample_leaves_out_the_files_new_ids_rewrite() -> None:
    d = mbr_descriptor()
    entries = [ManifestEntry(p, "fs1", EntryType.FILE, 0o644, 0, 0, 0, size=10, sha256="e" * 64)
               for p in ("/etc/fstab", "/etc/default/grub", "/etc/initramfs-tools/conf.d/resume",
                         "/etc/default/grub.d/x.cfg", "/etc/hostname")]  # fmt: skip
    assert [s.path for s in plan_check_sample(entries, d)] == ["/etc/hostname"]


def test_other_tables_untouched_by_a_swap_uuid() -> None:
    d = mbr_descriptor()
    ids = derive_new_ids(d, "salt")
    assert ids.of("filesystem")["fs2"].old == SWAP_UUID
    assert apply_new_ids(d, ids).disks[0].table is TableType.MBR
