"""The rehearsal check (recovery_env/restore/rehearsal.py): the sample of files the restored system checks, the
files the plan step writes, the step in the plan only for a rehearsal, the executor writing them inside the target
root, and the harness reading and judging the line.  The check running inside a restored Debian is proven by
tests/test_demo_vm.py (`asr demo`)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from recovery_env.agent.cmdline import parse_cmdline
from recovery_env.model.descriptor import Filesystem, FstabSpec, FsType, Mount
from recovery_env.model.manifest import EntryType, ManifestEntry
from recovery_env.restore.execute import Outcome, _run_step
from recovery_env.restore.match import match_disks
from recovery_env.restore.plan import Phase, WriteFiles, plan_restore, render_plan
from recovery_env.restore.rehearsal import (
    CHECK_PREFIX,
    DROPIN_PATH,
    SCRIPT_PATH,
    SUMS_PATH,
    UNIT_PATH,
    SampledFile,
    expected_mounts,
    judge_check,
    parse_check_line,
    plan_check_sample,
    render_check_files,
)
from tests.test_plan import ROOT_UUID, gpt_descriptor, target

GIB = 1 << 30
SWAP_UUID = "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"


def _descriptor():  # type: ignore[no-untyped-def]
    d = gpt_descriptor()
    home = Filesystem("fs3", "disk1p3", FsType.EXT4, "33333333-0000-4000-8000-000000000003")
    swap = Filesystem("fs4", "disk1p3", FsType.SWAP, SWAP_UUID)
    return replace(d, filesystems=(*d.filesystems, home, swap),
                   mounts=(*d.mounts, Mount("/home", "fs3", "defaults", FstabSpec.UUID, "", 0, 2),
                           Mount("swap", "fs4", "sw", FstabSpec.UUID, "", 0, 0),
                           Mount("/mnt/usb", "fs3", "noauto", FstabSpec.UUID, "", 0, 0)))  # fmt: skip


def _file(path: str, fs: str = "fs2", size: int = 100) -> ManifestEntry:
    return ManifestEntry(path, fs, EntryType.FILE, 0o644, 0, 0, 0, size, f"{abs(hash(path)):064x}"[:64])


def _entries() -> list[ManifestEntry]:
    out = [_file(f"/etc/file{i}") for i in range(300)]
    out += [_file(f"/usr/bin/tool{i}") for i in range(300)]
    out += [_file(f"/usr/sbin/daemon{i}") for i in range(10)]
    out += [_file(f"/home/user/doc{i}", "fs3") for i in range(5)]
    out += [_file("/etc/ld.so.cache"), _file("/etc/fstab"), _file("/boot/grub/grub.cfg"), _file("/var/log/x"),
            _file("/boot/efi/EFI/debian/grubx64.efi", "fs1"), _file("/usr/bin/big", size=10 << 20),
            _file("/usr/bin/with space"), _file("/usr/lib/libc.so")]  # fmt: skip
    out.append(ManifestEntry("/etc/link", "fs2", EntryType.SYMLINK, 0o777, 0, 0, 0, link="file1"))
    return out


def test_the_sample_is_deterministic_spread_and_leaves_out_what_changes_legitimately() -> None:
    d = _descriptor()
    sample = plan_check_sample(_entries(), d)
    assert sample == plan_check_sample(list(reversed(_entries())), d)  # the same whatever the order
    paths = [s.path for s in sample]
    assert len(paths) <= 200 and paths == sorted(paths)
    groups = {p.split("/")[1] + ("/" + p.split("/")[2] if p.startswith("/usr") else "") for p in paths}
    assert groups == {"etc", "usr/bin", "usr/sbin", "home"}
    assert sum(p.startswith("/etc/") for p in paths) == 50  # 4 groups: 50 each at most
    assert sum(p.startswith("/usr/sbin/") for p in paths) == 10 and sum(p.startswith("/home/") for p in paths) == 5
    for left_out in ("/etc/ld.so.cache", "/etc/fstab", "/boot/grub/grub.cfg", "/var/log/x", "/usr/bin/big",
                     "/usr/bin/with space", "/usr/lib/libc.so", "/etc/link", "/boot/efi/EFI/debian/grubx64.efi"):
        assert left_out not in paths
    # the later entry of a path is the visible one
    again = [*_entries(), replace(_file("/home/user/doc0", "fs3"), sha256="f" * 64)]
    assert SampledFile("/home/user/doc0", "f" * 64) in plan_check_sample(again, d)
    assert plan_check_sample([], d) == ()


def test_the_check_files_are_rendered_for_the_descriptor(tmp_path: Path) -> None:
    d = _descriptor()
    assert [m[0] for m in expected_mounts(d)] == ["/boot/efi", "/", "/home"]  # noauto and swap left out
    files = {f.path: f for f in render_check_files(d, [SampledFile("/etc/a", "a" * 64)])}
    assert set(files) == {SCRIPT_PATH, SUMS_PATH, UNIT_PATH, DROPIN_PATH}
    assert files[SUMS_PATH].text == f"{'a' * 64}  /etc/a\n"
    assert files[SCRIPT_PATH].mode == 0o755
    script = files[SCRIPT_PATH].text
    assert "systemctl is-system-running --wait" in script and CHECK_PREFIX in script
    assert "for m in /boot/efi / /home ; do" in script
    path = tmp_path / "check.sh"
    path.write_text(script)
    subprocess.run(["sh", "-n", str(path)], check=True)  # the shell parses it
    assert "Type=exec" in files[UNIT_PATH].text and f"ExecStart={SCRIPT_PATH}" in files[UNIT_PATH].text
    assert "Wants=asr-rehearsal-check.service" in files[DROPIN_PATH].text


def _plan(**kw):  # type: ignore[no-untyped-def]
    d = gpt_descriptor()
    return plan_restore(d, match_disks(d, [target("sda", 2 * GIB, serial="QM00001")], unattended=True),
                        backup_dir="/run/asr/backup/asr/sample", **kw)  # fmt: skip


def test_the_plan_installs_the_check_only_for_a_rehearsal() -> None:
    assert parse_cmdline("asr.rehearsal=1").rehearsal and not parse_cmdline("asr.unattended=1").rehearsal
    plain = _plan()
    assert not [s for s in plain.steps() if isinstance(s, WriteFiles)]
    assert not [line for line in render_plan(plain) if "Rehearsal" in line]
    rehearsal = _plan(rehearsal_check=render_check_files(gpt_descriptor(), [SampledFile("/etc/a", "a" * 64)]))
    steps = rehearsal.steps()
    (write,) = [s for s in steps if isinstance(s, WriteFiles)]
    assert write.name.startswith("install the rehearsal check")
    assert [p for p, _, _ in write.files] == [f"/target{p}" for p in (SCRIPT_PATH, SUMS_PATH, UNIT_PATH, DROPIN_PATH)]
    assert write.only_if_any == ("/target/lib/systemd/systemd", "/target/usr/lib/systemd/systemd")
    names = [s.name for s in steps]
    assert names.index(write.name) > max(i for i, n in enumerate(names) if n.startswith("post-restore command"))
    assert names.index(write.name) < names.index("unmount / (/dev/sda3)")
    assert [line for line in render_plan(rehearsal) if line.startswith("Rehearsal: install a check")]
    assert rehearsal.digest != plain.digest


def test_the_executor_writes_the_check_inside_the_target_root_on_systemd_systems_only(tmp_path: Path) -> None:
    root = tmp_path / "target"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/systemd").symlink_to("/elsewhere")  # absolute: resolved inside the root, never on the host
    r = str(root)
    files = tuple((f"{r}{f.path}", f.text, f.mode) for f in render_check_files(gpt_descriptor(), []))
    step = WriteFiles("install the rehearsal check", Phase.COMMANDS, files,
                      only_if_any=(f"{r}/usr/lib/systemd/systemd",))
    logged: list[str] = []
    assert _run_step(step, r, log=logged.append, progress=lambda p: None)[0] is Outcome.SKIPPED
    (root / "usr/lib/systemd/systemd").write_text("")
    assert _run_step(step, r, log=logged.append, progress=lambda p: None) == (Outcome.DONE, "")
    assert (root / "elsewhere/system/asr-rehearsal-check.service").is_file()
    assert (root / "elsewhere/system/multi-user.target.d/asr-rehearsal-check.conf").is_file()
    assert (root / "etc/asr-rehearsal/check.sh").stat().st_mode & 0o777 == 0o755
    assert not Path("/elsewhere").exists()


GOOD = (f"{CHECK_PREFIX} state=running failed=- host=sample mounts=/boot/efi:ABCD-1234:vfat,/:{ROOT_UUID}:ext4 "
        "swap=- sums=150/150 bad=- end")  # fmt: skip


def test_the_harness_reads_and_judges_the_line() -> None:
    d = gpt_descriptor()
    check = parse_check_line(f"noise\r\n{GOOD}\r\n{GOOD.replace('sample', 'other')}\r\n")
    assert check is not None and check.line == GOOD
    assert check.mounts == (("/boot/efi", "ABCD-1234", "vfat"), ("/", ROOT_UUID, "ext4"))
    assert judge_check(check, d) == ()
    assert parse_check_line("ASR-REHEARSAL-CHECK state=running") is None
    bad = parse_check_line(GOOD.replace("state=running failed=-", "state=degraded failed=ssh.service,x.mount")
                           .replace("host=sample", "host=other").replace(f"/:{ROOT_UUID}:ext4", "/:-:none")
                           .replace("/boot/efi:ABCD-1234:vfat", "/boot/efi:ABCD-9999:vfat")
                           .replace("sums=150/150 bad=-", "sums=148/150 bad=/etc/passwd"))  # fmt: skip
    assert bad is not None
    assert judge_check(bad, d) == (
        "systemd says 'degraded', not 'running' (failed units: ssh.service, x.mount)",
        "hostname 'other', captured 'sample'",
        "/boot/efi is vfat ABCD-9999, captured vfat ABCD-1234",
        f"/ is not mounted (captured: ext4 {ROOT_UUID})",
        "2 of 150 file checksums differ (first: /etc/passwd)",
    )
    withswap = _descriptor()
    check2 = parse_check_line(GOOD.replace("sums=", "x=1 sums="))
    assert check2 is None  # the line's fields are fixed
    line = GOOD.replace(f"/:{ROOT_UUID}:ext4", f"/:{ROOT_UUID}:ext4,/home:33333333-0000-4000-8000-000000000003:ext4")
    judged = judge_check(parse_check_line(line), withswap)  # type: ignore[arg-type]
    assert judged == (f"swap {SWAP_UUID} is not active",)
    empty = parse_check_line(GOOD.replace("sums=150/150", "sums=0/0"))
    assert empty is not None and judge_check(empty, d) == ("no file checksum was checked (empty sample)",)


@pytest.mark.parametrize("fs_type", [FsType.XFS, FsType.BTRFS])
def test_other_root_types_are_expected_by_their_type(fs_type: FsType) -> None:
    d = gpt_descriptor()
    d = replace(d, filesystems=tuple(replace(f, type=fs_type) if f.key == "fs2" else f for f in d.filesystems))
    assert ("/", ROOT_UUID, fs_type.value) in expected_mounts(d)


def test_the_demo_summary_names_each_phase_the_login_the_check_and_the_verdict(tmp_path: Path) -> None:
    from builder.vm.demo import DemoRun, render_demo_summary
    from builder.vm.rehearse import BootEvidence, RehearsalReport

    boot = BootEvidence("bios", True, GOOD, 80.0, "", "", "", login_seconds=41.5, check_seconds=62.0, check=GOOD)
    report = RehearsalReport(str(tmp_path), "sample", "uefi", ("bios",), 0, "", "verified recoverable", (), (), "",
                             (boot,), "", "", (), str(tmp_path), str(tmp_path / "report.md"))  # fmt: skip
    lines = render_demo_summary(DemoRun(report, (("capture (asr backup)", 5.2), ("restore", 136.0)), True, 150.4))
    assert lines[:4] == ["phases:", "  capture (asr backup)      5.2 s", "  restore                 136.0 s",
                         "  total                   150.4 s"]  # fmt: skip
    assert lines[4] == ("restored system under bios: login prompt on serial after 41.5 s; check passed: systemd "
                        "running, host sample, mounts as captured (/boot/efi vfat, / ext4), 0 swap(s), 150/150 file "
                        "checksums (after 62.0 s)")  # fmt: skip
    assert lines[5] == "verdict: verified recoverable in 150 s (machine cached)"
    from builder.vm.rehearse import render_report

    md = render_report(report)
    assert "- Login: login prompt on serial after 41.5 s" in md and f"- Check line after 62.0 s: `{GOOD}`" in md
    assert "Verdict from the restored system itself" in md
    nologin = replace(boot, login_seconds=-1.0)
    assert "no login prompt on serial" in render_demo_summary(DemoRun(replace(report, boots=(nologin,)), (), True,
                                                                      1.0))[2]  # fmt: skip


def test_the_demo_needs_root_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from builder.vm import demo
    from recovery_env.errors import NotRootError

    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    with pytest.raises(demo.DemoNeedsRootError, match=r"run it as root") as e:
        demo.run_rehearsal_demo(tmp_path)
    assert isinstance(e.value, NotRootError) and not (tmp_path / "demo").exists()
