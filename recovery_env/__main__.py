"""``python3.11 -m recovery_env``: the agent /init starts on the VGA and serial consoles.

Exit codes for /init: 20 reboot, 21 power off, 22 rescue shell (then the agent again, at its menu); anything
else is an error (1: an unexpected exception, whose traceback is in /run/asr-agent.log and on serial).

Paths are injectable for tests on the host (``--tty``/``--serial`` may be pseudo-terminals, ``--floppy`` a
directory holding ASR.SIF):

    python3 -m recovery_env [--tty PATH]... [--serial PATH]... [--cmdline FILE] [--floppy DEV|DIR]
                            [--mountpoint DIR] [--log FILE] [--resume FILE]
"""

from __future__ import annotations

import os
import sys

from recovery_env.agent.cmdline import read_cmdline
from recovery_env.agent.console import DEFAULT_CONSOLES, Consoles, ConsoleSpec

USAGE = (
    "usage: python3 -m recovery_env [--tty PATH]... [--serial PATH]... [--cmdline FILE] "
    "[--floppy DEV|DIR] [--mountpoint DIR] [--log FILE] [--resume FILE]"
)
_VALUED = frozenset({"--tty", "--serial", "--cmdline", "--floppy", "--mountpoint", "--log", "--resume"})


def parse_args(argv: list[str]) -> dict[str, list[str]]:
    """``--name value`` pairs (argparse is not shipped in the initramfs); a bad word raises SystemExit(2)."""
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word not in _VALUED or i + 1 >= len(argv):
            print(f"recovery_env: bad argument {word!r}\n{USAGE}", file=sys.stderr)
            raise SystemExit(2)
        found.setdefault(word[2:], []).append(argv[i + 1])
        i += 2
    return found


def _last(args: dict[str, list[str]], name: str, default: str) -> str:
    return args.get(name, [default])[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    specs = [ConsoleSpec(p) for p in args.get("tty", [])] + [
        ConsoleSpec(p, serial=True) for p in args.get("serial", [])
    ]
    log_path = _last(args, "log", "/run/asr-agent.log")
    consoles = Consoles.open(specs or DEFAULT_CONSOLES)
    try:
        from recovery_env.agent.states import Agent

        options = read_cmdline(_last(args, "cmdline", "/proc/cmdline"))
        agent = Agent(
            consoles,
            options,
            floppy=args.get("floppy", [None])[-1],
            mountpoint=_last(args, "mountpoint", "/run/asr/floppy"),
            log_path=log_path,
            resume_path=_last(args, "resume", "/run/asr/resume"),
        )
        return agent.run()
    except Exception as e:  # the last line of defence: one line for people, the traceback for the log
        report_crash(consoles, e, log_path)
        return 1
    finally:
        consoles.close()


def report_crash(consoles: Consoles, error: BaseException, log_path: str) -> None:
    import traceback

    text = "".join(traceback.format_exception(error))
    one_line = f"ASR: internal error: {type(error).__name__}: {error} (details in {log_path})"
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(one_line + "\n" + text)
    except OSError:
        pass
    consoles.write(f"\x1b[0m\x1b[?25h\r\n{one_line}\r\n")
    consoles.write_serial(text.replace("\n", "\r\n"))
    if not consoles.terminals:
        print(one_line, file=sys.stderr)
        print(text, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
