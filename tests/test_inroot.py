"""Paths under the target root resolve inside it, whatever symlinks the restored files hold: real directory trees
with hostile links (absolute, relative ``..`` chains, loops), and a check that nothing was written outside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recovery_env.errors import TargetPathError
from recovery_env.restore.inroot import read_in_root, resolve_in_root, write_in_root


def snapshot(top: Path) -> dict[str, object]:
    """Every path below ``top`` with its link target or content (what a stray write would change)."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(top))] = (
                os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
            )
    return out


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A target root whose restored files point out of it in every way, and the outside they point at."""
    root, outside = tmp_path / "target", tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc/fstab").write_text("/dev/sda2 /boot/efi vfat umask=0077 0 1\n")
    (outside / "var").mkdir()
    (root / "real/etc").mkdir(parents=True)
    (root / "real/etc/fstab").write_text("/dev/sda2 /boot/efi vfat umask=0077 0 1\n")
    (root / "outside/etc").mkdir(parents=True)
    (root / "outside/etc/fstab").write_text("restored\n")
    os.symlink(str(outside), root / "boot")  # absolute, to the host's directory
    os.symlink("../outside/etc", root / "etc")  # relative: on the host, ../outside; in the root, .. stays at root
    os.symlink("../../../../../../../../../../" + str(outside / "var").lstrip("/"), root / "var")  # a long chain
    (root / "home").mkdir()
    os.symlink("../..", root / "home/up")  # a relative chain past the root
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink("self", root / "self")
    (root / "file").write_text("not a directory\n")
    return root, outside


def test_absolute_and_relative_links_resolve_inside_the_root(hostile: tuple[Path, Path]) -> None:
    root, outside = hostile
    before = snapshot(outside)
    r = str(root)
    # the mount point /boot/efi behind boot -> /abs/outside: made inside the root, under the same absolute path
    made = resolve_in_root(r, f"{r}/boot/efi", create=True)
    assert made == r + str(outside / "efi")
    assert os.path.isdir(made) and not (outside / "efi").exists()
    # etc -> ../outside/etc is root/outside/etc inside the root (.. stops at the root)
    assert resolve_in_root(r, f"{r}/etc/fstab") == f"{r}/outside/etc/fstab"
    assert read_in_root(r, f"{r}/etc/fstab") == "restored\n"
    assert resolve_in_root(r, f"{r}/home/up/boot") == r + str(outside)  # ../.. from home: the root
    assert resolve_in_root(r, f"{r}/home/up/../../..") == r
    assert resolve_in_root(r, r) == r
    # writes: the log under var/log/asr (var -> ../../...outside/var) and a file through a link at its end
    log = write_in_root(r, f"{r}/var/log/asr/restore.log", "log\n", mode=0o600, create_dirs=True)
    assert log == r + str(outside / "var/log/asr/restore.log")
    assert Path(log).read_text() == "log\n" and os.stat(log).st_mode & 0o777 == 0o600
    os.symlink(str(outside / "etc/fstab"), root / "real/etc/link")  # a file link: followed, inside the root
    with pytest.raises(TargetPathError, match="does not exist"):
        write_in_root(r, f"{r}/real/etc/link", "x")  # root/<outside>/etc does not exist inside the root
    assert snapshot(outside) == before  # nothing outside was created, read through or written


def test_fstab_rewrite_through_a_link_keeps_the_link_and_the_mode(hostile: tuple[Path, Path]) -> None:
    root, outside = hostile
    before = snapshot(outside)
    r = str(root)
    os.symlink("../../real/etc/fstab", root / "real/fstab-link")
    os.chmod(root / "real/etc/fstab", 0o640)
    assert read_in_root(r, f"{r}/real/fstab-link").startswith("/dev/sda2 ")
    assert write_in_root(r, f"{r}/real/fstab-link", "new\n") == f"{r}/real/etc/fstab"
    assert os.readlink(root / "real/fstab-link") == "../../real/etc/fstab"
    assert (root / "real/etc/fstab").read_text() == "new\n"
    assert os.stat(root / "real/etc/fstab").st_mode & 0o777 == 0o640
    assert not list((root / "real/etc").glob("*.asr-new"))
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    ("path", "msg", "link"),
    [
        ("loop1/x", "more than 40 symlinks", "loop"),
        ("self", "more than 40 symlinks", "self -> self"),
        ("file/x", "file is not a directory", ""),
        ("boot/missing/x", "does not exist", "boot -> "),
    ],
)
def test_loops_files_and_missing_directories_are_named_errors(
    hostile: tuple[Path, Path], path: str, msg: str, link: str
) -> None:
    root, outside = hostile
    before = snapshot(outside)
    with pytest.raises(TargetPathError, match=msg) as e:
        resolve_in_root(str(root), f"{root}/{path}")
    assert e.value.path == f"{root}/{path}" and link in e.value.symlink
    assert f"{root}/{path}" in str(e.value)
    if msg != "does not exist":  # making the directories does not get round a loop or a file
        with pytest.raises(TargetPathError, match=msg):
            resolve_in_root(str(root), f"{root}/{path}/y", create=True)
    assert snapshot(outside) == before


def test_a_path_outside_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TargetPathError, match="not under the target root"):
        resolve_in_root(str(tmp_path / "target"), str(tmp_path / "targetx/etc"))
