"""The agent's boot options: the ``asr.*`` words of the kernel command line (``/proc/cmdline``).

Pure: :func:`parse_cmdline` turns the text into a frozen :class:`BootOptions`.  An unknown ``asr.*`` key or a bad
value gives a warning line (shown on the consoles), never a crash: the machine must still reach the F2 prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    """What the agent does first."""

    ASK = "ask"  # the "Press F2" prompt for asr.timeout seconds, then the main menu
    MENU = "menu"  # straight to the main menu
    SHELL = "shell"  # straight to the rescue shell
    CAPTURE = "capture"  # capture the attached machine onto the backup medium, then power off

    @property
    def shows_prompt(self) -> bool:
        return self is Mode.ASK


_TRUE = frozenset({"1", "yes", "true", "on", "y"})
_FALSE = frozenset({"0", "no", "false", "off", "n"})

MAX_TIMEOUT = 3600


@dataclass(frozen=True)
class BootOptions:
    timeout: int = 8  # seconds the "Press F2" prompt waits; 0 = go to the menu at once
    unattended: bool = False  # behave as if F2 were pressed and the floppy were confirmed
    dryrun: bool = False  # plan and show, change no disk (used by the restore)
    poweroff: bool = False  # power off instead of rebooting when the restore is done
    mode: Mode = Mode.ASK
    floppy: str = "/dev/fd0"  # where the ASR floppy is read from (and written to by the capture)
    backup: str = "LABEL=ASRBACKUP"  # the capture's backup medium: LABEL=NAME or UUID=UUID
    rehearsal: bool = False  # `asr rehearse` on scratch disks: the plan installs the rehearsal check
    new_ids: bool = False  # the restored disks, partitions and filesystems get new ids (recovery_env.restore.newids)
    warnings: tuple[str, ...] = ()


def _parse_bool(key: str, value: str | None) -> bool:
    if value is None:  # a bare "asr.unattended" means yes
        return True
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"asr.{key}={value}: expected 1/0, yes/no, true/false or on/off")


def _parse_timeout(key: str, value: str | None) -> int:
    if value is None or not value.isdigit():
        raise ValueError(f"asr.{key}={value}: expected a whole number of seconds")
    n = int(value)
    if n > MAX_TIMEOUT:
        raise ValueError(f"asr.{key}={value}: at most {MAX_TIMEOUT} seconds")
    return n


def _parse_mode(key: str, value: str | None) -> Mode:
    try:
        return Mode(value or "")
    except ValueError:
        names = ", ".join(m.value for m in Mode)
        raise ValueError(f"asr.{key}={value}: expected one of {names}") from None


def _parse_path(key: str, value: str | None) -> str:
    if not value or not value.startswith("/"):
        raise ValueError(f"asr.{key}={value}: expected an absolute path")
    return value


def _parse_medium(key: str, value: str | None) -> str:
    tag, sep, name = (value or "").partition("=")
    if not sep or tag.upper() not in ("LABEL", "UUID") or not name:
        raise ValueError(f"asr.{key}={value}: expected LABEL=NAME or UUID=UUID")
    return f"{tag.upper()}={name}"


# key → (field of BootOptions, parser); the table is the list of known options
_OPTIONS: dict[str, tuple[str, Callable[[str, str | None], object]]] = {
    "timeout": ("timeout", _parse_timeout),
    "unattended": ("unattended", _parse_bool),
    "dryrun": ("dryrun", _parse_bool),
    "poweroff": ("poweroff", _parse_bool),
    "mode": ("mode", _parse_mode),
    "floppy": ("floppy", _parse_path),
    "backup": ("backup", _parse_medium),
    "rehearsal": ("rehearsal", _parse_bool),
    "new_ids": ("new_ids", _parse_bool),
}


def parse_cmdline(text: str) -> BootOptions:
    """Read the ``asr.*`` options from a kernel command line; later words win, as in the kernel."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for word in text.split():
        if not word.startswith("asr."):
            continue
        key, sep, raw = word[4:].partition("=")
        value = raw if sep else None
        known = _OPTIONS.get(key)
        if known is None:
            warnings.append(
                f"unknown boot option {word!r} ignored (known: " + ", ".join("asr." + k for k in _OPTIONS) + ")"
            )
            continue
        field, parser = known
        try:
            values[field] = parser(key, value)
        except ValueError as e:
            warnings.append(f"{e}; using the default")
    return BootOptions(**values, warnings=tuple(warnings))


def read_cmdline(path: str = "/proc/cmdline") -> BootOptions:
    """Read and parse the kernel command line file; a missing file gives the defaults plus a warning."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cmdline(f.read())
    except OSError as e:
        return BootOptions(warnings=(f"cannot read {path}: {e.strerror}; using the defaults",))
