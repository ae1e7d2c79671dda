"""The rescue tree assembled from the real package set, and the kernel module closure."""

from __future__ import annotations

import ast
import importlib.util
import io
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from builder.media.elf import LIB_DIRS, MissingLibraryError, add_library_closure, check_elf_closure, resolve_in_tree
from builder.media.modules import (
    WANTED_MODULES,
    ModuleIndex,
    UnknownModuleError,
    find_modules_for_modalias,
    find_unshipped_reason,
    plan_boot_modules,
    plan_module_closure,
    read_module_index,
)
from builder.media.packages import PackageLock, PackageSet, read_deb
from builder.media.python import ImportScanCache, PythonStdlib, plan_python_modules, read_python_stdlib
from builder.media.rootfs import BUSYBOX_APPLETS, TOOLS, Rootfs, add_busybox, find_tool, make_rootfs
from builder.media.tree import EntryKind, PackageFiles, TreeBuilder
from recovery_env.run import run

REPO = Path(__file__).resolve().parent.parent


#: Drivers of a device inventory (ASRPNP.SIF) the shared rescue tree is built with: a display driver, a RAID
#: controller, a network driver and one this kernel does not have.
INVENTORY_DRIVERS = ("bochs", "megaraid_sas", "virtio_net", "not_a_real_driver")


@pytest.fixture(scope="module")
def rootfs(package_set: PackageSet) -> Rootfs:
    return make_rootfs(package_set, optional_modules=INVENTORY_DRIVERS)


@pytest.fixture(scope="module")
def module_index(package_set: PackageSet) -> ModuleIndex:
    members = read_deb(package_set.deb(package_set.kernel_package), ("lib/modules/", "boot/vmlinuz"))
    return read_module_index(members, package_set.kernel_version)


# --------------------------------------------------------------------------------------------------- modules


def test_ext4_pulls_its_soft_and_hard_dependencies_first(module_index: ModuleIndex) -> None:
    order = [m.name for m in plan_module_closure(module_index, ["ext4"])]
    assert {"crc32c_generic", "jbd2", "mbcache", "crc16"} <= set(order)
    assert order[-1] == "ext4"
    assert order.index("crc32c_generic") < order.index("jbd2")


def test_closure_of_the_wanted_set_is_in_dependency_order(module_index: ModuleIndex, package_set: PackageSet) -> None:
    closure = plan_module_closure(module_index, WANTED_MODULES)
    names = [m.name for m in closure]
    assert len(names) == len(set(names))
    for wanted in ("floppy", "ahci", "sd_mod", "sr_mod", "isofs", "vfat", "nls_cp437", "virtio_blk", "xfs", "btrfs"):
        assert wanted in names
    # check the order against each module's .modinfo as pyelftools reads it (not our section reader)
    members = read_deb(package_set.deb(package_set.kernel_package), ("lib/modules/",))
    for i, module in enumerate(closure):
        section = ELFFile(io.BytesIO(members[module.path].data)).get_section_by_name(".modinfo")
        info = dict(item.split(b"=", 1) for item in section.data().split(b"\0") if b"=" in item)
        for dep in filter(None, info.get(b"depends", b"").decode().split(",")):
            dep = dep.replace("-", "_")
            if dep not in module_index.builtin:
                assert dep in names[:i], f"{module.name} is loaded before its dependency {dep}"


def test_builtin_and_unknown_modules(module_index: ModuleIndex) -> None:
    assert plan_module_closure(module_index, ["crc32"]) == ()  # built into the Debian kernel
    with pytest.raises(UnknownModuleError, match="no_such_driver"):
        plan_module_closure(module_index, ["no_such_driver"])


def test_early_modules_come_first_with_their_dependencies(module_index: ModuleIndex) -> None:
    early, late = plan_boot_modules(module_index, ["floppy", "ext4", "vfat"], early=frozenset({"vfat"}))
    assert [m.name for m in early] == ["fat", "vfat"]
    assert [m.name for m in late][-1] == "ext4" and "floppy" in [m.name for m in late]
    assert plan_boot_modules(module_index, ["floppy"]) == ((), plan_module_closure(module_index, ["floppy"]))


def test_inventory_drivers_the_rescue_system_has_no_use_for(module_index: ModuleIndex) -> None:
    for name in ("bochs", "i2c_piix4", "virtio_net", "snd_hda_intel"):
        assert find_unshipped_reason(module_index, name) is not None, name
    assert "display" in (find_unshipped_reason(module_index, "bochs") or "")
    for name in ("ahci", "nvme", "virtio_blk", "usb_storage", "usbhid", "floppy", "megaraid_sas"):
        assert find_unshipped_reason(module_index, name) is None, name


def test_the_inventory_adds_storage_drivers_but_no_display_driver(rootfs: Rootfs) -> None:
    names = {m.name for m in (*rootfs.modules, *rootfs.late_modules)}
    assert "megaraid_sas" in names
    assert not names & {"bochs", "drm", "drm_kms_helper", "virtio_net", "not_a_real_driver"}
    assert not any("/drivers/gpu/" in p or "/drivers/net/" in p for p in rootfs.tree.entries)


def test_pci_modalias_resolves_to_its_driver(module_index: ModuleIndex) -> None:
    ich9_ahci = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
    assert find_modules_for_modalias(module_index, ich9_ahci) == ("ahci",)
    virtio_net = "virtio:d00000001v00001AF4"
    assert find_modules_for_modalias(module_index, virtio_net) == ("virtio_net",)


# ---------------------------------------------------------------------------------------------------- rootfs


def test_busybox_and_its_applets(rootfs: Rootfs) -> None:
    entries = rootfs.tree.entries
    assert entries["usr/bin/busybox"].data[:4] == b"\x7fELF"
    for applet in ("sh", "mount", "insmod", "poweroff", "reboot", "setsid", "cttyhack", "sleep"):
        assert entries[f"usr/bin/{applet}"].target == "busybox"
    assert len([p for p, e in entries.items() if e.target == "busybox"]) == len(set(BUSYBOX_APPLETS))


def test_real_tools_win_over_applets(package_set: PackageSet) -> None:
    tree = TreeBuilder()
    add_busybox(tree, PackageFiles(package_set), {"sh", "mount"})
    assert not tree.has("usr/bin/sh") and not tree.has("usr/bin/mount")
    assert tree.entries["usr/bin/umount"].target == "busybox"


def test_merged_usr_and_device_nodes(rootfs: Rootfs) -> None:
    entries = rootfs.tree.entries
    for link in ("bin", "sbin", "lib", "lib64"):
        assert entries[link].kind is EntryKind.SYMLINK and entries[link].target == f"usr/{link}"
    assert entries["dev/console"].kind is EntryKind.CHAR and entries["dev/console"].rdev == (5, 1)
    assert entries["dev/ttyS0"].rdev == (4, 64)
    for d in ("proc", "sys", "dev", "run", "tmp", "mnt"):
        assert entries[d].kind is EntryKind.DIR
    assert not any(p.startswith(("usr/share/doc", "usr/share/man", "usr/share/locale")) for p in entries)


def test_restore_tools_are_present(rootfs: Rootfs) -> None:
    for tool in ("sfdisk", "wipefs", "blkid", "mkfs.ext4", "e2fsck", "tune2fs", "mkfs.vfat", "mkfs.xfs",
                 "mkfs.btrfs", "mkswap", "tar", "zstd", "grub-install"):
        found = [resolve_in_tree(rootfs.tree, f"usr/{d}/{tool}") for d in ("bin", "sbin")]
        entry = next((e for e in found if e is not None), None)
        assert entry is not None and entry.kind is EntryKind.FILE and entry.mode & 0o111, tool
    for platform in ("i386-pc", "x86_64-efi"):
        assert f"usr/lib/grub/{platform}/normal.mod" in rootfs.tree.entries
    assert "usr/lib/grub/i386-pc/grub-bios-setup" in rootfs.tree.entries
    assert not any("monolithic" in p for p in rootfs.tree.entries)


def test_every_elf_finds_its_loader_and_libraries(rootfs: Rootfs) -> None:
    assert check_elf_closure(rootfs.tree) == []
    # the same, read independently with pyelftools
    checked = 0
    for path, entry in rootfs.tree.entries.items():
        if entry.kind is not EntryKind.FILE or entry.data[:4] != b"\x7fELF":
            continue
        elf = ELFFile(io.BytesIO(entry.data))
        if elf.header["e_type"] not in ("ET_EXEC", "ET_DYN"):
            continue
        checked += 1
        for seg in elf.iter_segments():
            if isinstance(seg, InterpSegment):
                assert resolve_in_tree(rootfs.tree, seg.get_interp_name()) is not None, path
        dyn = elf.get_section_by_name(".dynamic")
        if isinstance(dyn, DynamicSection):
            for tag in dyn.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    assert any(resolve_in_tree(rootfs.tree, f"{d}/{tag.needed}") for d in LIB_DIRS), (path, tag.needed)
    assert checked > 30


def test_missing_library_is_a_named_error(package_set: PackageSet) -> None:
    lock = package_set.lock
    without = PackageLock(tuple(p for p in lock.packages if p.name != "libmount1"), lock.kernel_package)
    files = PackageFiles(PackageSet(package_set.cache, without))
    tree = TreeBuilder()
    findmnt = next(t for t in TOOLS if t.name == "findmnt")
    files.copy(tree, findmnt.package, find_tool(files, findmnt), findmnt.group)
    with pytest.raises(MissingLibraryError, match=r"libmount\.so\.1 \(needed by usr/bin/findmnt\)"):
        add_library_closure(tree, files)


def test_python_is_bytecode_only_and_reproducible_format(rootfs: Rootfs) -> None:
    entries = rootfs.tree.entries
    assert entries["usr/bin/python3.11"].data[:4] == b"\x7fELF"
    pycs = {p: e for p, e in entries.items() if p.endswith(".pyc")}
    assert "usr/lib/python3.11/os.pyc" in pycs
    assert "usr/lib/asr/recovery_env/__init__.pyc" in pycs
    assert not [p for p in entries if p.endswith(".py")]
    for path, entry in pycs.items():
        assert entry.data[:4] == importlib.util.MAGIC_NUMBER, path
        assert int.from_bytes(entry.data[4:8], "little") == 0b01, path  # hash-based, unchecked
    assert "usr/lib/python3.11/lib-dynload/termios.cpython-311-x86_64-linux-gnu.so" in entries


def _imports_of(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_every_module_the_agent_imports_is_shipped(rootfs: Rootfs, package_set: PackageSet) -> None:
    builtins = read_python_stdlib(PackageFiles(package_set)).builtins
    entries = rootfs.tree.entries
    wanted: set[str] = set()
    for path in (REPO / "recovery_env").rglob("*.py"):  # subpackages too
        wanted |= {m for m in _imports_of(path.read_text()) if not m.startswith("recovery_env")}
    assert {"os", "select", "dataclasses", "enum"} <= wanted
    for module in sorted(wanted):
        rel = module.replace(".", "/")
        candidates = (
            f"usr/lib/python3.11/{rel}.pyc",
            f"usr/lib/python3.11/{rel}/__init__.pyc",
            f"usr/lib/python3.11/lib-dynload/{rel}.cpython-311-x86_64-linux-gnu.so",
            f"usr/lib/asr/{rel}.pyc",  # the SIF renderer of the offline capture (recovery_env.model.sif_render, jinja2)
            f"usr/lib/asr/{rel}/__init__.pyc",
        )
        assert module in builtins or any(c in entries for c in candidates), module
    for agent_module in (REPO / "recovery_env").rglob("*.py"):  # subpackages too
        rel = agent_module.relative_to(REPO).with_suffix(".pyc").as_posix()
        assert f"usr/lib/asr/{rel}" in entries, rel


def test_the_sif_renderer_is_shipped_for_the_offline_capture(rootfs: Rootfs) -> None:
    entries = rootfs.tree.entries
    for path in ("usr/lib/asr/jinja2/__init__.pyc", "usr/lib/asr/jinja2/environment.pyc",
                 "usr/lib/asr/markupsafe/__init__.pyc", "usr/lib/asr/markupsafe/_native.pyc",
                 "usr/lib/asr/recovery_env/templating.pyc",
                 "usr/lib/asr/recovery_env/model/sif_render.pyc"):  # fmt: skip
        assert path in entries, path
    for name in ("asr.sif.j2", "asrpnp.sif.j2"):
        assert entries[f"usr/lib/asr/templates/{name}"].data == (REPO / "templates" / name).read_bytes()
    assert not any(p.startswith("usr/lib/asr/") and p.endswith(".so") for p in entries)  # no C speedups
    assert not any(p.startswith("usr/lib/asr/builder") for p in entries)  # the boot media ship recovery_env only


def test_kernel_and_modules_match(rootfs: Rootfs) -> None:
    assert rootfs.kernel[0x202:0x206] == b"HdrS"  # x86 boot protocol header of a bzImage
    assert rootfs.modules == ()  # nothing before the agent: its F2 prompt needs no driver
    late = [m.name for m in rootfs.late_modules]
    assert set(late) >= {"floppy", "ahci", "vfat", "isofs", "nls_cp437", "ext4", "xfs", "btrfs", "jbd2", "usbhid"}
    assert late.index("floppy") < late.index("vfat") < late.index("ext4") < late.index("xfs")  # the floppy first
    assert late.index("xhci_hcd") < late.index("usbhid")  # a USB keyboard comes back right after its controller
    for module in (*rootfs.modules, *rootfs.late_modules):
        assert f"usr/{module.path}" in rootfs.tree.entries
    breakdown = rootfs.tree.size_breakdown()
    assert set(breakdown) >= {"kernel modules", "python", "libraries", "tools", "grub", "busybox", "agent"}
    assert sum(breakdown.values()) == rootfs.tree.raw_size


def test_the_shipped_renderer_runs_without_the_build_environment(rootfs: Rootfs, tmp_path: Path) -> None:
    """The shipped .pyc of usr/lib/asr, run by a Python 3.11 that has no jinja2 of its own (isolated from the
    venv), render ASR.SIF and ASRPNP.SIF that parse back."""
    python = Path("/usr/bin/python3.11")
    if not python.exists():
        pytest.skip("no /usr/bin/python3.11 on this host")
    for path, entry in rootfs.tree.entries.items():
        if path.startswith("usr/lib/asr/") and entry.kind is EntryKind.FILE:
            dest = tmp_path / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(entry.data)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import importlib.util; assert importlib.util.find_spec('jinja2').origin.startswith(sys.argv[1])\n"
        "from recovery_env.capture.flow import load_renderer\n"
        "from recovery_env.model.descriptor import DeviceInventory\n"
        "from recovery_env.model.sif import parse_asrpnp_sif\n"
        "text = load_renderer().asrpnp_sif(DeviceInventory('guest'))\n"
        "assert parse_asrpnp_sif(text) == DeviceInventory('guest'); print('rendered', len(text))\n"
    )
    out = run([str(python), "-I", "-S", "-c", script, str(tmp_path / "usr/lib/asr")]).stdout
    assert out.startswith("rendered ")


def _stdlib(modules: dict[str, bytes]) -> PythonStdlib:
    return PythonStdlib(
        {name: (f"usr/lib/python3.11/{name.replace('.', '/')}.py", src) for name, src in modules.items()},
        {},
        frozenset({"sys"}),
    )


def test_the_import_scan_cache_gives_the_scanner_s_answers(tmp_path: Path) -> None:
    stdlib = _stdlib({
        "a": b"import b\nfrom c import d\n",
        "b": b"def f():\n    import e\n",
        "c": b"import sys\n",
        "e": b"",
        "x": b"",
        "unused": b"import a\n",
    })  # fmt: skip
    plain = plan_python_modules(stdlib, ["a"], [])
    assert plain == ["a", "b", "c", "e"]
    first = ImportScanCache(tmp_path / "imports.json")
    assert plan_python_modules(stdlib, ["a"], [], first.scan) == plain
    first.save()
    again = ImportScanCache(tmp_path / "imports.json")
    assert len(again.entries) == 4  # every module scanned once, kept
    for key in again.entries:  # a cached answer is what is used: a poisoned entry shows through
        if key.endswith(":c:0"):
            again.entries[key] = [["x"], [], []]
    assert plan_python_modules(stdlib, ["a"], [], again.scan) == sorted([*plain, "x"])
    assert ImportScanCache(tmp_path / "missing.json").entries == {}
    (tmp_path / "imports.json").write_text('{"version": "old scanner", "entries": {"x": [[], [], []]}}')
    assert ImportScanCache(tmp_path / "imports.json").entries == {}  # made by other code: started afresh
    (tmp_path / "imports.json").write_text("not json")
    assert ImportScanCache(tmp_path / "imports.json").entries == {}
