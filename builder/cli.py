"""The `asr` command line.  Each subcommand parses its flags here and calls one function of the module that
owns the work; errors are reported once, without a traceback unless --debug."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recovery_env.errors import AsrError
from recovery_env.text import visible_lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asr", description="Automated System Recovery for Linux machines")
    p.add_argument("--debug", action="store_true", help="log every command and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build the recovery ISO and the ASR floppy")
    b.add_argument("--descriptor", type=Path, help="ASR.SIF to put on the floppy (default: the embedded sample)")
    b.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out/)")
    b.add_argument("--cache", type=Path, help="package cache (default: ~/.cache/asr or $ASR_CACHE)")
    b.add_argument("--budget-mb", type=float, help="fail if the ISO would exceed this many MB (default 40)")
    b.add_argument("--embed-backup", type=Path, metavar="DIR",
                   help="put the descriptor's backup set (DIR) on the ISO; the restore reads it from there")
    b.add_argument("--lock", type=Path, help="package lock (default: packages.lock; asr-packages.json of a build "
                   "reproduces that build)")
    b.add_argument("--locked", action="store_true", help="fail when a pinned package version left the archive "
                   "(also ASR_LOCKED=1); by default the current version is taken and named")
    b.add_argument("--json", action="store_true", help="print a machine-readable result")

    bo = sub.add_parser("boot", help="start the media in QEMU")
    bo.add_argument("--uefi", action="store_true", help="boot with OVMF instead of SeaBIOS")
    bo.add_argument("--iso", type=Path, default=Path("out/asr.iso"))
    bo.add_argument("--floppy", type=Path, help="floppy image for drive A: (default: out/asr-floppy.img)")
    bo.add_argument("--no-floppy", action="store_true", help="boot with an empty floppy drive")
    bo.add_argument("--disk", type=Path, action="append", default=[], help="extra hard disk image (repeatable)")
    bo.add_argument("--iso-as-disk", action="store_true", help="attach the ISO as a hard disk (isohybrid/USB)")
    bo.add_argument("--headless", action="store_true", help="no window; serial console on this terminal")
    bo.add_argument("--screenshot", type=Path, help="save a PNG of the VGA screen when the F2 prompt shows")
    bo.add_argument("--append", default="", help="extra kernel command line options (asr.timeout=...)")
    bo.add_argument("--memory", default="512M")

    i = sub.add_parser("inspect", help="show a descriptor, a floppy image or a backup set")
    i.add_argument("path", type=Path)
    i.add_argument("--json", action="store_true")
    i.add_argument("--reseal", action="store_true", help="re-seal an ASR.SIF/ASRPNP.SIF edited on purpose")

    bk = sub.add_parser("backup", help="record this machine's disks and back up its system volumes")
    bk.add_argument("--to", type=Path, required=True, dest="dest", help="backup directory")
    bk.add_argument("--root", type=Path, default=Path("/"), help="root of the system to capture")
    bk.add_argument("--disk", action="append", default=[], help="capture only these disks (repeatable)")
    bk.add_argument("--include-mount", action="append", default=[], help="also back up this mount point")
    bk.add_argument("--exclude", action="append", default=[], help="tar exclude pattern (repeatable)")
    bk.add_argument("--firmware", choices=["bios", "uefi"], help="firmware of a --root system (default: detected)")
    bk.add_argument("--json", action="store_true")

    vb = sub.add_parser("vbox", help="write a VBoxManage script that runs the media in VirtualBox")
    vb.add_argument("name", help="VM name (also names the script, serial log and VDI files)")
    vb.add_argument("--iso", type=Path, default=Path("out/asr.iso"))
    vb.add_argument("--floppy", type=Path, default=Path("out/asr-floppy.img"))
    vb.add_argument("--descriptor", type=Path, help="ASR.SIF for firmware and disks (default: the floppy's)")
    vb.add_argument("--disk", type=Path, action="append", default=[], help="disk image to convert to VDI")
    vb.add_argument("--out", type=Path, default=Path("out"), help="where the script and VDIs go (default: out/)")
    vb.add_argument("--firmware", choices=["bios", "uefi"], help="override the descriptor's firmware")
    vb.add_argument("--memory", type=int, default=1024, help="MiB of RAM (default 1024)")

    rh = sub.add_parser("rehearse", help="restore a backup set onto scratch disks in QEMU and boot the result")
    rh.add_argument("dir", type=Path, help="directory with ASR.SIF, ASRPNP.SIF and the backup set (asr backup)")
    rh.add_argument("--iso", type=Path, help="recovery ISO to use (default: built for the set)")
    rh.add_argument("--floppy", type=Path, help="ASR floppy to use with --iso")
    rh.add_argument("--firmware", choices=["auto", "bios", "uefi", "both"], default="auto",
                    help="boot the restored disks under this firmware (default: the descriptor's)")
    rh.add_argument("--grow", type=int, default=0, metavar="PERCENT", help="scratch disks this much larger")
    rh.add_argument("--expect", help="regex on the restored system's serial console, for systems without systemd "
                    "(default: the restored system's own check line, and its login prompt timed)")
    rh.add_argument("--keep", action="store_true", help="keep the scratch disks")
    rh.add_argument("--new-ids", action="store_true", help="restore with new disk, partition and filesystem ids "
                    "(asr.new_ids=1: a copy that must coexist with the original); judged by those ids")
    rh.add_argument("--workdir", type=Path, help="work and report directory (default: out/rehearse)")
    rh.add_argument("--memory", default="512M", help="RAM of the rescue VM (default 512M): prove the restore fits")
    rh.add_argument("--cpus", type=int, default=1, help="virtual CPUs of the VMs (default 1; under TCG each is a "
                    "host thread)")
    rh.add_argument("--json", action="store_true")

    dm = sub.add_parser("demo", help="rehearse the recovery of a real Debian 12 installation, as root (--f2: the "
                        "F2 tour of the sample media)")
    dm.add_argument("--f2", action="store_true", help="only boot the sample media, press F2, show the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # text with undecodable bytes (surrogates) never stops the output
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except AsrError as e:
        if args.debug:
            raise
        print(f"asr: error: {visible_lines(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("asr: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "build":
        from builder.build import cli_build

        return cli_build(args)
    if args.command == "boot":
        from builder.vm.qemu import cli_boot

        return cli_boot(args)
    if args.command == "inspect":
        from builder.inspect import cli_inspect

        return cli_inspect(args)
    if args.command == "backup":
        from builder.capture import cli_backup

        return cli_backup(args)
    if args.command == "vbox":
        from builder.vm.vbox import cli_vbox

        return cli_vbox(args)
    if args.command == "rehearse":
        from builder.vm.rehearse import cli_rehearse

        return cli_rehearse(args)
    if args.command == "demo":
        from builder.vm.demo import cli_demo

        return cli_demo(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
