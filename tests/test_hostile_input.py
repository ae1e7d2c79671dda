"""Hostile and damaged input never gives a traceback, an endless loop or unbounded memory (issue 10, findings 7-9).

- 7: damaged floppies.  A good floppy from the project's own make_floppy, with FAT bytes or a directory entry
  patched: a chain that loops, a chain that breaks (free, bad, out-of-range cluster), an absurd size, a
  directory cycle.  `asr inspect IMAGE` (a new process, under a memory limit and a timeout) names the file and the
  fault with the MediaError exit code; pyfatfs' warnings never reach stderr.
- 8: lone surrogates in --json output, a non-UTF-8 /etc/fstab at capture and at restore, tar headers with
  negative, oversized or garbage sizes fed to the MANIFEST's tar parser (in a new process, bounded).
- 9: escape and control characters from a descriptor (and from a target disk's model) are shown, never sent
  raw, by `asr inspect` and by the agent's screens.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from test_capture import ROOT_UUID, Attached, attach, backup_args, system  # noqa: F401 - fixtures, used by name
from test_capture import asr as capture_asr
from test_plan import _plan, gpt_descriptor, target

from builder.media.fatimage import make_floppy, read_fat_image
from builder.vm.sample import sample_descriptor, sample_inventory
from recovery_env.agent.screens import (
    BODY,
    BRIGHT,
    CSI,
    ERROR,
    STATUS,
    Screen,
    plan_pages,
    render_log_line,
    render_plan_page,
    render_screen,
    render_status,
    render_summary,
)
from recovery_env.errors import DamagedFatError
from recovery_env.model.descriptor import Descriptor
from recovery_env.model.sif import parse_asr_sif, reseal
from recovery_env.model.sif_render import render_asr_sif, render_asrpnp_sif
from recovery_env.restore.execute import _run_step
from recovery_env.restore.plan import PLAN_WIDTH, EditFstab, FstabChange, Phase, render_plan
from recovery_env.text import json_text, visible

ROOT = Path(__file__).resolve().parent.parent
D = sample_descriptor()
INV = sample_inventory()
MEMORY_LIMIT = 1 << 30  # bytes of address space for the processes under test: a loop followed would hit it


def run_bounded(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """``argv`` (after the interpreter) in a new process with MEMORY_LIMIT and a timeout; raw bytes back."""
    return subprocess.run(["prlimit", f"--as={MEMORY_LIMIT}", "--", sys.executable, *argv], capture_output=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout, check=False)


def asr(*args: str) -> tuple[int, str, str]:
    """The real `asr` command line, bounded; stdout and stderr must be valid UTF-8."""
    p = run_bounded("-m", "builder.cli", *args)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


# ---------------------------------------------------------------------------------------------------------------
# 7. damaged floppies
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fat12:
    """Where things are in a FAT12 image, from its boot sector."""

    image: bytearray

    def _bpb(self) -> tuple[int, int, int, int, int]:
        bps, _, reserved, fats, root_entries = struct.unpack_from("<HBHBH", self.image, 11)
        return bps, reserved, fats, root_entries, struct.unpack_from("<H", self.image, 22)[0]

    def fat_offsets(self) -> list[int]:
        bps, reserved, fats, _, fat_sectors = self._bpb()
        return [(reserved + i * fat_sectors) * bps for i in range(fats)]

    def root_offset(self) -> int:
        bps, reserved, fats, _, fat_sectors = self._bpb()
        return (reserved + fats * fat_sectors) * bps

    def cluster_offset(self, cluster: int) -> int:
        bps, _, _, root_entries, _ = self._bpb()
        return self.root_offset() + root_entries * 32 + (cluster - 2) * bps  # one sector per cluster

    def entry(self, name: bytes, directory: int | None = None) -> int:
        """Offset of the 8.3 entry ``name`` (11 bytes) in the root directory, or in the directory at a cluster."""
        start = self.root_offset() if directory is None else self.cluster_offset(directory)
        for off in range(start, start + 224 * 32, 32):
            if self.image[off : off + 11] == name:
                return off
        raise AssertionError(name)

    def first_cluster(self, name: bytes, directory: int | None = None) -> int:
        return int(struct.unpack_from("<H", self.image, self.entry(name, directory) + 26)[0])

    def set_fat(self, n: int, value: int, copies: tuple[int, ...] = (0, 1)) -> None:
        for i in copies:
            o = self.fat_offsets()[i] + n * 3 // 2
            if n & 1:
                self.image[o] = (self.image[o] & 0x0F) | ((value << 4) & 0xF0)
                self.image[o + 1] = (value >> 4) & 0xFF
            else:
                self.image[o] = value & 0xFF
                self.image[o + 1] = (self.image[o + 1] & 0xF0) | ((value >> 8) & 0x0F)


ASR = b"ASR     SIF"
PNP = b"ASRPNP  SIF"


def good_floppy(extra: dict[str, bytes] | None = None) -> Fat12:
    files = {"ASR.SIF": render_asr_sif(D).encode(), "ASRPNP.SIF": render_asrpnp_sif(INV).encode(), **(extra or {})}
    return Fat12(bytearray(make_floppy(files, label="ASRDISK", epoch=1_764_000_000)))


def _loop(f: Fat12) -> None:
    first = f.first_cluster(ASR)
    f.set_fat(first + 3, first + 1)  # in the middle of the file


def _loop_at_end(f: Fat12) -> None:
    first = f.first_cluster(PNP)
    f.set_fat(first + len(render_asrpnp_sif(INV).encode()) // 512, first)  # the last cluster back to the first


ASR_CLUSTERS = -(-len(render_asr_sif(D).encode()) // 512)  # the sample's ASR.SIF, in 512-byte clusters
ASR_BYTES = ASR_CLUSTERS * 512


def _size(value: int) -> Callable[[Fat12], None]:
    def patch(f: Fat12) -> None:
        struct.pack_into("<I", f.image, f.entry(ASR) + 28, value)
    return patch


DAMAGE: dict[str, tuple[Callable[[Fat12], None], str]] = {
    "loop": (_loop, r"ASR\.SIF: cluster chain loops: cluster (\d+) links back to cluster \d+ after 4 clusters"),
    "loop-at-end": (_loop_at_end,
                    r"ASRPNP\.SIF: cluster chain loops: cluster \d+ links back to cluster \d+ after 6 clusters"),
    "free": (lambda f: f.set_fat(f.first_cluster(ASR) + 2, 0),
             r"ASR\.SIF: broken cluster chain: cluster \d+ links to cluster 0 \(free\) after 3 clusters"),
    "bad": (lambda f: f.set_fat(f.first_cluster(ASR) + 2, 0xFF7),
            r"ASR\.SIF: broken cluster chain: cluster \d+ links to a cluster marked bad \(0xff7\) after 3 clusters"),
    "out-of-range": (lambda f: f.set_fat(f.first_cluster(ASR) + 2, 0xFE0),
                     r"ASR\.SIF: broken cluster chain: cluster \d+ links to cluster 4064, outside the volume's "
                     r"data clusters 2\.\.\d+"),
    "absurd-size": (_size(0xFFFF_FFF0), r"ASR\.SIF: its directory entry says 4294967280 bytes, more than the "
                                        r"whole volume holds \(\d+ bytes of data clusters\)"),
    "size-beyond-chain": (_size(100_000), r"ASR\.SIF: its directory entry says 100000 bytes \(196 clusters\) but "
                                          rf"its cluster chain has {ASR_CLUSTERS} clusters \({ASR_BYTES} bytes\)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_floppy_is_a_named_media_error(damage: str, tmp_path: Path) -> None:
    patch, message = DAMAGE[damage]
    floppy = good_floppy()
    patch(floppy)
    img = tmp_path / "floppy.img"
    img.write_bytes(floppy.image)
    rc, out, err = asr("inspect", str(img))
    assert "Traceback" not in err
    assert rc == 3 and out == ""  # MediaError's exit code
    assert re.fullmatch(f"asr: error: {re.escape(str(img))}: {message}\n", err), err
    with pytest.raises(DamagedFatError, match=message):  # safe in this process now: the reader is bounded
        read_fat_image(bytes(floppy.image), what="floppy")


def test_directory_cycle_is_a_named_media_error(tmp_path: Path) -> None:
    """A subdirectory whose entry points back at its parent: a walk that followed it would never end."""
    floppy = good_floppy({"EFI/BOOT/BOOTX64.EFI": b"\x90" * 700})
    efi = floppy.first_cluster(b"EFI        ")
    struct.pack_into("<H", floppy.image, floppy.entry(b"BOOT       ", efi) + 26, efi)
    img = tmp_path / "cycle.img"
    img.write_bytes(floppy.image)
    rc, out, err = asr("inspect", str(img))
    assert "Traceback" not in err
    assert (rc, out) == (3, "")
    assert err == (f"asr: error: {img}: directory EFI/BOOT starts at cluster {efi}, which another directory "
                   "already uses (a directory loop or a cross-link)\n")


def test_pyfatfs_warnings_do_not_reach_stderr(tmp_path: Path) -> None:
    """FAT copies that differ (pyfatfs warns through `warnings`): the floppy is read, the warning is a note."""
    floppy = good_floppy()
    floppy.set_fat(2000, 0xFFF, copies=(0,))  # a lost cluster in the first FAT only
    img = tmp_path / "differ.img"
    img.write_bytes(floppy.image)
    rc, out, err = asr("inspect", str(img))
    assert (rc, err) == (0, "")
    assert "\nNotes\n  One or more FATs differ, filesystem most likely corrupted. Using first FAT.\n" in out
    rc, out, err = asr("inspect", "--json", str(img))
    assert (rc, err) == (0, "") and json.loads(out)["notes"] == [
        "One or more FATs differ, filesystem most likely corrupted. Using first FAT."]


# ---------------------------------------------------------------------------------------------------------------
# 8. no traceback: lone surrogates in --json, a non-UTF-8 fstab, bad sizes in tar headers
# ---------------------------------------------------------------------------------------------------------------


def _with_text(text: str) -> Descriptor:
    """The sample descriptor with ``text`` in every free-text field the validator lets through."""
    s = D.system
    disk = dataclasses.replace(D.disks[0], model="QEMU " + text, serial="QM" + text)
    part = dataclasses.replace(D.partitions[0], name="BIOS " + text)
    mount = dataclasses.replace(D.mounts[0], options="errors=remount-ro,x-note=" + text)
    command = dataclasses.replace(D.commands[0], command="echo " + text)
    assert D.backup is not None
    return dataclasses.replace(
        D, system=dataclasses.replace(s, os_release="Debian " + text, kernel="6.1" + text),
        disks=(disk, *D.disks[1:]), partitions=(part, *D.partitions[1:]), mounts=(mount, *D.mounts[1:]),
        commands=(command, *D.commands[1:]), backup=dataclasses.replace(D.backup, media_label="ASR" + text))


def test_inspect_json_with_undecodable_bytes_is_valid_json(tmp_path: Path) -> None:
    """A descriptor recording undecodable bytes (read with surrogateescape, written as \\udcXX in the SIF)."""
    sif = tmp_path / "ASR.SIF"
    sif.write_text(render_asr_sif(_with_text("caf\udce9")), encoding="utf-8")
    rc, out, err = asr("inspect", "--json", str(sif))  # asr() decodes both streams as strict UTF-8
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    assert doc["descriptor"]["system"]["os_release"] == "Debian caf\udce9"
    assert doc["descriptor"]["disks"][0]["model"].encode("utf-8", "surrogateescape") == b"QEMU caf\xe9"
    assert '"os_release": "Debian caf\\udce9"' in out  # the documented encoding: a JSON escape
    rc, out, err = asr("inspect", str(sif))
    assert (rc, err) == (0, "") and "Debian caf\\udce9" in out


def test_json_text_is_valid_utf8_json_and_round_trips() -> None:
    doc = {"k\udcff": ["caf\udce9", "é ✓ \U0001f600", "\x1b[31m\x9b\x7f\u202e\U000e0001", 1, None]}
    text = json_text(doc)
    text.encode("utf-8")  # no lone surrogate left: strict UTF-8 works
    assert json.loads(text) == doc
    assert "é ✓ \U0001f600" in text and "\\udce9" in text and "\\udb40\\udc01" in text
    assert all(c.isprintable() or c == "\n" for c in text)


def test_restore_rewrites_a_non_utf8_fstab_keeping_its_bytes(tmp_path: Path) -> None:
    root = tmp_path / "target"
    (root / "etc").mkdir(parents=True)
    fstab = root / "etc/fstab"
    fstab.write_bytes(b"# disque syst\xe8me\nUUID=abc / ext4 defaults 0 1\n/dev/sda2 none swap sw 0 0\n"
                      b"tmpfs /mnt/caf\xe9 tmpfs defaults 0 0\n")
    step = EditFstab("rewrite /etc/fstab", Phase.RESTORE, str(fstab), (FstabChange("swap", "/dev/sda2", "/dev/vda2"),))
    _run_step(step, str(root), log=lambda line: None, progress=lambda p: None)
    assert fstab.read_bytes() == (b"# disque syst\xe8me\nUUID=abc / ext4 defaults 0 1\n/dev/vda2 none swap sw 0 0\n"
                                  b"tmpfs /mnt/caf\xe9 tmpfs defaults 0 0\n")


@pytest.mark.root
def test_backup_of_a_non_utf8_fstab_records_its_bytes(system: Attached, tmp_path: Path) -> None:  # noqa: F811
    """A Latin-1 comment, mount option and mount point: the capture goes on; ASR.SIF keeps the bytes."""
    assert system.mnt is not None
    fstab = system.mnt / "etc/fstab"
    fstab.write_bytes(b"# disque syst\xe8me\n"
                      b"UUID=" + ROOT_UUID.encode() + b" / ext4 errors=remount-ro,x-note=caf\xe9 0 1\n"
                      b"tmpfs /mnt/caf\xe9 tmpfs defaults 0 0\n")
    code, out, err = capture_asr(*backup_args(system, tmp_path / "set", "--json"))
    assert "Traceback" not in err
    assert code == 0, err
    assert json.loads(out)["hostname"] == "asr-test"
    (root,) = parse_asr_sif((tmp_path / "set/ASR.SIF").read_text(encoding="utf-8")).mounts
    assert root.options.encode("utf-8", "surrogateescape") == b"errors=remount-ro,x-note=caf\xe9"


@pytest.mark.root
def test_backup_of_a_non_utf8_hostname_is_refused_by_name(system: Attached,  # noqa: F811
                                                          tmp_path: Path) -> None:
    assert system.mnt is not None
    (system.mnt / "etc/hostname").write_bytes(b"asr-t\xe9st\n")
    try:
        code, out, err = capture_asr(*backup_args(system, tmp_path / "set"))
    finally:
        (system.mnt / "etc/hostname").write_text("asr-test\n")
    assert "Traceback" not in err
    assert (code, out) == (2, "")
    assert "field 'hostname': 'asr-t\\udce9st' is not a host name" in err


# tar headers: a real archive written by tarfile, one header patched and its checksum recomputed; the MANIFEST's
# parser reads it in a new process under the memory limit and a timeout


def _tar(pax: dict[str, str] | None = None) -> bytearray:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT) as tf:
        for name, data in (("etc/hostname", b"asr-sample\n"), ("etc/motd", b"hello\n" * 200)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_764_000_000
            if pax and name == "etc/motd":
                info.pax_headers = pax
            tf.addfile(info, io.BytesIO(data))
    return bytearray(buf.getvalue())


def _header_at(data: bytearray, name: bytes) -> int:
    for off in range(0, len(data), 512):
        if data[off : off + len(name) + 1] == name + b"\0":
            return off
    raise AssertionError(name)


def _set_size(data: bytearray, off: int, field: bytes) -> bytearray:
    data[off + 124 : off + 136] = field
    data[off + 148 : off + 156] = b" " * 8
    data[off + 148 : off + 156] = b"%06o\0 " % sum(data[off : off + 512])
    return data


def _pax_record(data: bytearray, record: bytes, value: bytes) -> bytearray:
    """Replace ``record`` in the pax header by one of the same length with ``value`` (padded with spaces)."""
    i = data.index(record)
    key, old = record.split(b"=", 1)
    data[i : i + len(record)] = key + b"=" + value.ljust(len(old) - 1) + b"\n"
    return data


TAR_DAMAGE: dict[str, tuple[Callable[[], bytearray], str]] = {
    # -512: a parser that stepped back by the size would read this same header again, for ever
    "negative-size": (lambda: _set_size(t := _tar(), _header_at(t, b"etc/motd"), b"\xff" * 10 + b"\xfe\0"),
                      r"tar header after 1 members: size -512 is negative \(a damaged archive\)"),
    "negative-pax-header-size": (lambda: _set_size(t := _tar({"comment": "x"}), _header_at(t, b"././@PaxHeader"),
                                                   b"\xff" * 11 + b"\x00"),
                                 r"tar header after 1 members: size -256 is negative"),
    "oversized": (lambda: _set_size(t := _tar(), _header_at(t, b"etc/motd"), b"\x80" + (1 << 80).to_bytes(11)),
                  r"tar header after 1 members: size 1208925819614629174706176 is larger than any file"),
    "beyond-the-stream": (lambda: _set_size(t := _tar(), _header_at(t, b"etc/motd"), b"07777777777\0"),
                          r"the tar stream ends inside the archive, after 1 members: truncated"),
    "pax-size-negative": (lambda: _pax_record(_tar({"size": "1200"}), b"size=1200\n", b"-5"),
                          r"archive entry 'etc/motd': pax record size='-5  ' is not a size"),
    "pax-size-garbage": (lambda: _pax_record(_tar({"size": "1200"}), b"size=1200\n", b"12x"),
                         r"archive entry 'etc/motd': pax record size='12x ' is not a size"),
    "huge-pax-header": (lambda: _set_size(t := _tar({"comment": "x"}), _header_at(t, b"././@PaxHeader"),
                                          b"%011o\0" % (1 << 32)),
                        r"a 4294967296-byte extended header \(more than 67108864; a damaged archive\)"),
}

PARSE = ("import sys\n"
         "from recovery_env.capture.archive import iter_tar_entries\n"
         "from recovery_env.errors import AsrError\n"
         "try:\n"
         "    print(len(list(iter_tar_entries(open(sys.argv[1], 'rb'), 'fs1', '/'))))\n"
         "except AsrError as e:\n"
         "    print(f'{type(e).__name__}: {e}', file=sys.stderr)\n"
         "    sys.exit(e.exit_code)\n")


def test_tar_parser_reads_the_unpatched_archives(tmp_path: Path) -> None:
    for data in (_tar(), _tar({"comment": "x"}), _tar({"size": "1200"})):
        (tmp_path / "ok.tar").write_bytes(data)
        p = run_bounded("-c", PARSE, str(tmp_path / "ok.tar"))
        assert (p.returncode, p.stdout, p.stderr) == (0, b"2\n", b"")


@pytest.mark.parametrize("damage", list(TAR_DAMAGE))
def test_tar_header_with_a_bad_size_is_a_named_error(damage: str, tmp_path: Path) -> None:
    make, message = TAR_DAMAGE[damage]
    (tmp_path / "bad.tar").write_bytes(make())
    p = run_bounded("-c", PARSE, str(tmp_path / "bad.tar"), timeout=30)
    err = p.stderr.decode()
    assert "Traceback" not in err
    assert p.returncode == 3 and re.match(f"BackupSetError: .*{message}", err), err


# ---------------------------------------------------------------------------------------------------------------
# 9. escape and control characters are shown, never sent raw
# ---------------------------------------------------------------------------------------------------------------

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1bc\x9b31m\x7f\u202e\x08"
# every raw character a terminal acts on: C0 but LF, DEL, C1, bidi embeddings/overrides/isolates
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_visible_escapes_what_a_terminal_would_act_on() -> None:
    assert visible("QEMU HARDDISK /dev/sda é\\") == "QEMU HARDDISK /dev/sda é\\"
    assert visible(HOSTILE) == "\\x1b]0;pwned\\x07\\x1b[2J\\x1bc\\x9b31m\\x7f\\u202e\\x08"
    assert visible("caf\udce9\t\n") == "caf\\udce9\\x09\\x0a"


def test_inspect_never_writes_raw_controls(tmp_path: Path) -> None:
    sif, pnp = tmp_path / "ASR.SIF", tmp_path / "ASRPNP.SIF"
    hostile = _with_text(HOSTILE)
    sif.write_text(render_asr_sif(hostile), encoding="utf-8")
    devices = (dataclasses.replace(INV.devices[0], description="PIIX3 " + HOSTILE), *INV.devices[1:])
    pnp.write_text(render_asrpnp_sif(dataclasses.replace(INV, devices=devices)), encoding="utf-8")
    assert parse_asr_sif(sif.read_text()) == hostile  # sealed: it parses and validates
    for path in (sif, pnp):
        for args in ((), ("--json",)):
            rc, out, err = asr("inspect", *args, str(path))
            assert (rc, err) == (0, "")
            assert not RAW.findall(out), (args, path.name, RAW.findall(out))
            shown = "\\u001b]0;pwned\\u0007" if args else "\\x1b]0;pwned\\x07"  # as JSON escapes, as text
            assert shown in out
    rc, out, _ = asr("inspect", "--json", str(sif))
    assert json.loads(out)["descriptor"]["disks"][0]["model"] == "QEMU " + HOSTILE  # the JSON stays faithful
    # a refused descriptor: the validator's message quotes the value (without repr); the error line escapes it
    text = render_asr_sif(D).replace("esp_mountpoint = /boot/efi", 'esp_mountpoint = "/boot/efi\\x1b]0;pwned\\x07"')
    sif.write_text(reseal(text), encoding="utf-8")
    rc, out, err = asr("inspect", str(sif))
    assert (rc, out) == (2, "") and "field 'esp_mountpoint'" in err
    assert not RAW.findall(err) and "\\x1b]0;pwned\\x07" in err


def _renderer_sequences(text: str) -> str:
    """``text`` without the escape sequences screens.py writes itself (colours, cursor moves, clears)."""
    own = [BODY, BRIGHT, STATUS, ERROR, f"{CSI}?25l", f"{CSI}2J", f"{CSI}K"]
    for s in own:
        text = text.replace(s, "")
    return re.sub(r"\x1b\[\d+;1H", "", text).replace("\r\n", "\n")


def test_agent_screens_never_write_raw_controls() -> None:
    summary = render_summary(_with_text(HOSTILE), INV)
    t = target("vda", 3 * 1024**3, serial="QM00001", model="EVIL" + HOSTILE)
    command = "echo " + HOSTILE * 6  # longer than a row: wrapped, never cut
    plan = render_plan(_plan(dataclasses.replace(gpt_descriptor(), commands=(
        dataclasses.replace(D.commands[0], command=command),)), t))
    shown = plan[next(i for i, line in enumerate(plan) if "post-restore command(s)" in line) + 1 :]
    assert all(len(line) <= PLAN_WIDTH for line in shown)  # wrapped as shown, so fit() cuts nothing
    assert re.sub(r"\s", "", "".join(shown)) == "1.(critical)" + visible(command).replace(" ", "")
    pages = plan_pages(plan)
    painted = [
        render_screen(Screen(("The Automated System Recovery Disk describes this system:", "", *summary), "F3")),
        *(render_screen(render_plan_page(pages, i, confirmable=True)) for i in range(len(pages))),
        render_screen(Screen((f"Error: {HOSTILE}", "model " + HOSTILE), "status " + HOSTILE, error=True)),
        render_status("Reading " + HOSTILE),
        render_log_line("ASR: summary: " + HOSTILE),
    ]
    for text in painted:
        rest = _renderer_sequences(text)
        assert "\x1b" not in rest and not RAW.findall(rest), RAW.findall(rest)
    assert "\\x1b]0;pwned\\x07" in _renderer_sequences(painted[0])  # the model and the OS, shown as text
    assert "EVIL\\x1b]0;pwned" in "".join(map(_renderer_sequences, painted[1:-3]))  # a disk's model, from sysfs
