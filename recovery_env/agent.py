"""The agent's flow: a small state machine over the screens.

    PROMPT --F2--> INSERT_FLOPPY --key--> READ_FLOPPY --ok--> SUMMARY --Enter--> RESTORE
       |                 |F3                  |error               |F3            (the restore work plugs in
       v timeout         v                    v                    v             here: Agent.handlers)
     MENU <--------------+------F3------- ERROR --key (retry)--> READ_FLOPPY

Each state has a handler returning the next state or an :class:`ExitCode` for /init (reboot, power off, shell).
Everything a test needs to observe goes to the serial console as a plain ``ASR: ...`` line as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from recovery_env import __version__
from recovery_env.cmdline import BootOptions, Mode
from recovery_env.console import Consoles, Key, KeyName
from recovery_env.descriptor import Descriptor, DeviceInventory
from recovery_env.errors import (
    DescriptorError,
    DescriptorMissingError,
    MediaError,
    NoDiskInDriveError,
    NoFloppyDriveError,
    NotFatError,
)
from recovery_env.floppy import FloppyContents, read_floppy
from recovery_env.screens import (
    Screen,
    Size,
    render_log_line,
    render_screen,
    render_status,
    render_summary,
    summary_log_line,
    wrap,
)
from recovery_env.sif import parse_asr_sif_bytes, parse_asrpnp_sif_bytes

PROMPT_TEXT = "Press F2 to run Automated System Recovery (ASR)..."
INSERT_TEXT = (
    "Please insert the disk labeled",
    "",
    "    Automated System Recovery Disk",
    "",
    "into the floppy drive (A:).",
    "",
    "Press any key when ready.",
)


class State(StrEnum):
    PROMPT = "prompt"
    MENU = "menu"
    INSERT_FLOPPY = "insert-floppy"
    READ_FLOPPY = "read-floppy"
    SUMMARY = "summary"
    RESTORE = "restore"
    ERROR = "error"


class ExitCode(IntEnum):
    """What /init does when the agent exits (anything else: an error message and a rescue shell)."""

    REBOOT = 20
    POWEROFF = 21
    SHELL = 22

    @property
    def log_text(self) -> str:
        return {20: "reboot", 21: "power off", 22: "rescue shell"}[self.value]


class ErrorKind(StrEnum):
    """The floppy errors a person meets, each with a heading and what to do about it."""

    NO_DRIVE = "no-floppy-drive"
    NO_DISK = "no-disk-in-drive"
    NOT_FAT = "not-fat"
    SIF_MISSING = "asr-sif-missing"
    SIF_INVALID = "asr-sif-invalid"
    MEDIA = "media"

    @classmethod
    def of(cls, error: Exception) -> ErrorKind:
        for kind, types in _ERROR_KINDS:
            if isinstance(error, types):
                return kind
        return cls.MEDIA

    @property
    def heading(self) -> str:
        return _ERROR_TEXT[self][0]

    @property
    def advice(self) -> str:
        return _ERROR_TEXT[self][1]


_ERROR_KINDS: tuple[tuple[ErrorKind, type[Exception]], ...] = (
    (ErrorKind.NO_DRIVE, NoFloppyDriveError),
    (ErrorKind.NO_DISK, NoDiskInDriveError),
    (ErrorKind.NOT_FAT, NotFatError),
    (ErrorKind.SIF_MISSING, DescriptorMissingError),
    (ErrorKind.SIF_INVALID, DescriptorError),
)
_ERROR_TEXT: dict[ErrorKind, tuple[str, str]] = {
    ErrorKind.NO_DRIVE: (
        "No floppy drive was found.",
        "Connect a floppy drive, or boot with asr.floppy=DEVICE naming the drive.",
    ),
    ErrorKind.NO_DISK: (
        "There is no disk in the floppy drive (A:).",
        "Insert the disk labeled Automated System Recovery Disk.",
    ),
    ErrorKind.NOT_FAT: (
        "The disk in drive A: is not an ASR floppy: it has no FAT file system.",
        "Insert the disk labeled Automated System Recovery Disk.",
    ),
    ErrorKind.SIF_MISSING: (
        "The disk in the floppy drive (A:) has no ASR.SIF file.",
        "Insert the Automated System Recovery Disk made by 'asr backup' for this machine.",
    ),
    ErrorKind.SIF_INVALID: (
        "The ASR files on the floppy are not valid.",
        "Make a new Automated System Recovery Disk with 'asr backup', or correct the file.",
    ),
    ErrorKind.MEDIA: ("The floppy could not be read.", "Check the disk and the drive."),
}


@dataclass(frozen=True)
class FloppyReading:
    """What the F2 path learnt from the floppy: the parsed descriptor (and inventory) and the raw files."""

    contents: FloppyContents
    descriptor: Descriptor
    inventory: DeviceInventory | None


def read_asr_floppy(device: str, mountpoint: str) -> FloppyReading:
    """Read and parse the floppy; raises the named MediaError / DescriptorError."""
    contents = read_floppy(device, mountpoint)
    descriptor = parse_asr_sif_bytes(contents.asr_sif.data, file="ASR.SIF")
    inventory = None
    if contents.asrpnp_sif is not None:
        inventory = parse_asrpnp_sif_bytes(contents.asrpnp_sif.data, file="ASRPNP.SIF")
    return FloppyReading(contents, descriptor, inventory)


Next = State | ExitCode


class Agent:
    """The agent on its consoles.  ``handlers`` maps each state to its screen; later work adds or replaces one."""

    def __init__(
        self,
        consoles: Consoles,
        options: BootOptions,
        *,
        floppy: str | None = None,
        mountpoint: str = "/run/asr/floppy",
        log_path: str | None = "/run/asr-agent.log",
        resume_path: str | None = "/run/asr/resume",
    ) -> None:
        self.consoles = consoles
        self.options = options
        self.floppy = floppy or options.floppy
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.resume_path = resume_path
        self.reading: FloppyReading | None = None
        self.error: Exception | None = None
        self.handlers: dict[State, Callable[[], Next]] = {
            State.PROMPT: self.on_prompt,
            State.MENU: self.on_menu,
            State.INSERT_FLOPPY: self.on_insert_floppy,
            State.READ_FLOPPY: self.on_read_floppy,
            State.SUMMARY: self.on_summary,
            State.RESTORE: self.on_restore,
            State.ERROR: self.on_error,
        }

    # -- output -------------------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        """A plain line on the serial console (and in the agent's log file)."""
        # on the row above the status line, so a person on the serial console keeps the screen readable
        self.consoles.write_sized(
            lambda rows, cols: render_log_line(f"ASR: {line}", Size.of(rows, cols)), serial_only=True
        )
        if self.log_path:
            try:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(f"ASR: {line}\n")
            except OSError:
                pass

    def show(self, screen: Screen) -> None:
        self.consoles.write_sized(lambda rows, cols: render_screen(screen, Size.of(rows, cols)))

    def paint_status(self, text: str) -> None:
        self.consoles.write_sized(lambda rows, cols: render_status(text, Size.of(rows, cols)))

    def notes(self) -> list[str]:
        """Warnings worth a line on the first screens: bad boot options, a console that is missing."""
        return [*self.options.warnings, *self.consoles.notes]

    # -- the loop -----------------------------------------------------------------------------------------
    def first_state(self) -> Next:
        if self.resume_path and os.path.exists(self.resume_path):
            os.unlink(self.resume_path)  # back from the rescue shell: to the menu, not the countdown again
            return State.MENU
        if self.options.unattended:
            self.log("unattended: F2 assumed")
            return State.INSERT_FLOPPY
        first: dict[Mode, Next] = {Mode.ASK: State.PROMPT, Mode.MENU: State.MENU, Mode.SHELL: ExitCode.SHELL}
        return first[self.options.mode]

    def run(self) -> int:
        self.log(
            f"agent {__version__} started (timeout={self.options.timeout} unattended="
            f"{int(self.options.unattended)} dryrun={int(self.options.dryrun)} floppy={self.floppy})"
        )
        for note in self.notes():
            self.log(f"warning: {note}")
        state = self.first_state()
        while isinstance(state, State):
            self.log(f"state: {state.value}")
            state = self.handlers[state]()
        self.log(f"exit {int(state)} ({state.log_text})")
        if state is ExitCode.SHELL and self.resume_path:
            try:
                os.makedirs(os.path.dirname(self.resume_path), exist_ok=True)
                with open(self.resume_path, "w") as f:
                    f.write("menu\n")
            except OSError:
                pass
        return int(state)

    def wait_key(self, timeout: float | None = None) -> Key | None:
        key = self.consoles.read_key(timeout)
        if key is not None:
            self.log(f"key {key.label()} from {key.console}")
        return key

    # -- states -------------------------------------------------------------------------------------------
    def on_prompt(self) -> Next:
        body = [
            "Setup is starting the Automated System Recovery environment.",
            "",
            f"asr {__version__}" + ("   DRY RUN: no disk will be changed" if self.options.dryrun else ""),
            "",
        ]
        body += [f"Note: {n}" for n in self.notes()]
        self.show(Screen(tuple(body), PROMPT_TEXT))
        self.log(f"prompt: {PROMPT_TEXT} ({self.options.timeout} s)")
        remaining = self.options.timeout
        while remaining > 0:
            self.paint_status(f"{PROMPT_TEXT}  ({remaining})")
            key = self.wait_key(1.0)
            if key is None:
                remaining -= 1
                continue
            if key.name is KeyName.F2:
                self.log(f"F2 pressed (on {key.console})")
                return State.INSERT_FLOPPY
            if key.name in (KeyName.ENTER, KeyName.ESC, KeyName.F3):
                break
        self.log("no F2: main menu")
        return State.MENU

    def on_menu(self) -> Next:
        choices: dict[str, tuple[str, Next]] = {
            "1": ("Restore this computer from an Automated System Recovery floppy", State.INSERT_FLOPPY),
            "2": ("Rescue shell", ExitCode.SHELL),
            "3": ("Reboot", ExitCode.REBOOT),
            "4": ("Power off", ExitCode.POWEROFF),
        }
        body = ["Automated System Recovery main menu", ""]
        body += [f"   {k}.  {text}" for k, (text, _) in choices.items()]
        body += ["", "Type the number of your choice."]
        self.show(Screen(tuple(body), "1-4=Choose   F2=Restore from the ASR floppy"))
        self.log("menu: 1=restore 2=shell 3=reboot 4=power off")
        while True:
            key = self.wait_key()
            if key is None:
                continue
            if key.name is KeyName.F2:
                return State.INSERT_FLOPPY
            if key.name is KeyName.CHAR and key.char in choices:
                self.log(f"menu: choice {key.char}")
                return choices[key.char][1]

    def on_insert_floppy(self) -> Next:
        self.consoles.drain()  # a key typed before the question is not its answer
        self.show(Screen(INSERT_TEXT, "Any key=Continue   F3=Quit"))
        self.log("insert the ASR floppy, then press any key")
        if self.options.unattended:
            return State.READ_FLOPPY
        while True:
            key = self.wait_key()
            if key is None:
                continue
            return State.MENU if key.name is KeyName.F3 else State.READ_FLOPPY

    def on_read_floppy(self) -> Next:
        self.show(Screen(("Reading the Automated System Recovery Disk in drive A: ...",), "Please wait..."))
        try:
            self.reading = read_asr_floppy(self.floppy, self.mountpoint)
        except (MediaError, DescriptorError) as e:
            self.error = e
            return State.ERROR
        c = self.reading.contents
        self.log(
            f"floppy read: {c.asr_sif.name.upper()} ({c.asr_sif.size} bytes)"
            + (f", {c.asrpnp_sif.name.upper()} ({c.asrpnp_sif.size} bytes)" if c.asrpnp_sif else ", no ASRPNP.SIF")
            + f" from {c.source}"
        )
        return State.SUMMARY

    def on_error(self) -> Next:
        assert self.error is not None
        kind = ErrorKind.of(self.error)
        self.consoles.drain()
        self.log(f"error: {kind.value}: {self.error}")
        body = [kind.heading, ""]
        body += wrap(str(self.error))
        body += ["", *wrap(kind.advice), "", "Press any key to try again, or F3 to quit to the main menu."]
        self.show(Screen(tuple(body), "Any key=Retry   F3=Quit", error=True))
        while True:
            key = self.wait_key()
            if key is None:
                continue
            self.error = None
            if key.name is KeyName.F3:
                return State.MENU
            self.log("retry")
            return State.READ_FLOPPY

    def on_summary(self) -> Next:
        assert self.reading is not None
        d = self.reading.descriptor
        lines = render_summary(d, self.reading.inventory)
        self.log(summary_log_line(d))
        for line in lines:
            self.log(f"  {line}")
        body = ["The Automated System Recovery Disk describes this system:", "", *lines]
        if self.options.unattended:
            self.show(Screen(tuple(body), "Unattended: powering off"))
            self.log("unattended: summary shown, powering off")
            return ExitCode.POWEROFF
        self.show(Screen(tuple(body), "ENTER=Continue   F3=Quit"))
        while True:
            key = self.wait_key()
            if key is None:
                continue
            if key.name is KeyName.ENTER:
                return State.RESTORE
            if key.name is KeyName.F3:
                return State.MENU

    def on_restore(self) -> Next:
        """Where the restore work continues after the summary.  This version reads and shows only."""
        body = [
            "Restoring is not part of this version of asr.",
            "",
            *wrap(
                "Re-creating the disks, restoring the backup set and installing the boot loader come with "
                "the restore work item. This version reads the Automated System Recovery Disk and shows "
                "what it describes; nothing on this computer's disks has been changed."
            ),
            "",
            "Press F3 to quit to the main menu.",
        ]
        self.show(Screen(tuple(body), "F3=Quit"))
        self.log("restore: not in this version (comes with the restore work item); F3 = main menu")
        while True:
            key = self.wait_key()
            if key is not None and key.name is KeyName.F3:
                return State.MENU
