"""The agent's flow: a small state machine over the screens.

    PROMPT --F2--> INSERT_FLOPPY --key--> READ_FLOPPY --ok--> SUMMARY --Enter--> RESTORE
       |                 |F3                  |error               |F3               |
       v timeout         v                    v                    v                 v
     MENU <--------------+------F3------- ERROR --key (retry)--> READ_FLOPPY     FIND_BACKUP (find, check sums)
                                                                                     |
          RESTORE_ERROR <-- named error (R = retry the state, F3 = menu) --------- PLAN <--> PICK_DISK
                                                                                     | C (dry run: stop here)
          STEP_FAILED <-- a step fails (R = retry it, S = shell, F3 = menu) ----- EXECUTE --> FINISH --> reboot

    MENU --5 (or asr.mode=capture)--> CAPTURE (the offline capture, recovery_env.capture.flow) --> power off

Unattended (asr.unattended=1) no key is needed anywhere: the summary goes on to the restore, the plan is confirmed
when the disk match is unambiguous, and any error is logged and powers the machine off.

Each state has a handler returning the next state or an :class:`ExitCode` for /init (reboot, power off, shell).
Everything a test needs to observe goes to the serial console as a plain ``ASR: ...`` line as well.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

from recovery_env import __version__
from recovery_env.agent.cmdline import BootOptions, Mode
from recovery_env.agent.console import Consoles, Key, KeyName
from recovery_env.agent.screens import (
    Screen,
    Size,
    plan_pages,
    render_log_line,
    render_plan_page,
    render_screen,
    render_status,
    wrap,
)
from recovery_env.errors import (
    AsrError,
    BackupMediaLostError,
    BackupSetError,
    DescriptorError,
    DescriptorMissingError,
    MediaError,
    NoDiskInDriveError,
    NoFloppyDriveError,
    NotFatError,
    StepFailed,
)
from recovery_env.text import visible_lines

if TYPE_CHECKING:
    from recovery_env.agent.floppy import FloppyContents
    from recovery_env.model.descriptor import Descriptor, DeviceInventory
    from recovery_env.restore.execute import Progress
    from recovery_env.restore.flow import BackupLocation
    from recovery_env.restore.match import DiskMatch
    from recovery_env.restore.plan import RestorePlan

#: What the states after the prompt need: the descriptor model, the floppy reader, the planner and the executor.
#: They are imported in a background thread while the prompt waits for F2 (under TCG they take about two seconds,
#: the prompt needs none of them), and by the handlers themselves (an import done by the thread costs nothing).
TOOLBOX_MODULES: tuple[str, ...] = (
    "recovery_env.model.descriptor",
    "recovery_env.model.sif",
    "recovery_env.agent.floppy",
    "recovery_env.restore.plan",
    "recovery_env.restore.flow",
    "recovery_env.restore.execute",
)


def import_toolbox() -> None:
    """Import TOOLBOX_MODULES (the body of the background thread).  A failure is left to the handler that
    imports the module again: it raises there and is reported like any other error."""
    for name in TOOLBOX_MODULES:
        try:
            __import__(name)
        except Exception:
            return


#: Seconds the floppy read waits for /init's background module loading (floppy, vfat, ...) to finish.
MODULES_TIMEOUT = 60.0

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
    FIND_BACKUP = "find-backup"
    PLAN = "plan"
    PICK_DISK = "pick-disk"
    EXECUTE = "execute"
    FINISH = "finish"
    STEP_FAILED = "step-failed"
    RESTORE_ERROR = "restore-error"
    CAPTURE = "capture"

    @property
    def needs_toolbox(self) -> bool:
        """Whether the state's handler uses TOOLBOX_MODULES (the loop waits for their import first)."""
        return self not in (State.PROMPT, State.MENU, State.INSERT_FLOPPY)


class ExitCode(IntEnum):
    """What /init does when the agent exits (anything else: an error message and a rescue shell)."""

    REBOOT = 20
    POWEROFF = 21
    SHELL = 22

    @property
    def log_text(self) -> str:
        return {20: "reboot", 21: "power off", 22: "rescue shell"}[self.value]

    @property
    def action(self) -> str:
        """What /init runs for it (templates/init.j2)."""
        return {20: "reboot", 21: "poweroff", 22: "shell"}[self.value]


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
    from recovery_env.agent.floppy import read_floppy
    from recovery_env.model.sif import parse_asr_sif_bytes, parse_asrpnp_sif_bytes

    contents = read_floppy(device, mountpoint)
    descriptor = parse_asr_sif_bytes(contents.asr_sif.data, file="ASR.SIF")
    inventory = None
    if contents.asrpnp_sif is not None:
        inventory = parse_asrpnp_sif_bytes(contents.asrpnp_sif.data, file="ASRPNP.SIF")
    return FloppyReading(contents, descriptor, inventory)


Next = State | ExitCode

RESTART_SECONDS = 10  # "Your computer will restart in N seconds..." (unattended: UNATTENDED_RESTART_SECONDS)
UNATTENDED_RESTART_SECONDS = 3
PROGRESS_LOG_INTERVAL = 2.0  # seconds between progress lines in the log (the status line follows every report)


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
        # the restore's state (reset when the restore starts)
        self.location: BackupLocation | None = None
        self.match: DiskMatch | None = None
        self.pinned: dict[str, str] = {}
        # asr.new_ids: the salt of the new ids, one per agent, so a plan made again (after a retry) has the same ids
        self.id_salt = os.urandom(16).hex()
        self.plan: RestorePlan | None = None
        self.confirmation = ""  # recovery_env.restore.execute.confirm_plan's token, made when the plan is confirmed
        self.from_step = 0
        self.failure: StepFailed | None = None
        self.restore_error: Exception | None = None
        self.retry_state: State = State.FIND_BACKUP
        self.started = 0.0
        self.recent: list[str] = []  # the last lines of the run, shown while it executes
        self.last_progress_log = 0.0
        self.toolbox: threading.Thread | None = None
        self.handlers: dict[State, Callable[[], Next]] = {
            State.PROMPT: self.on_prompt,
            State.MENU: self.on_menu,
            State.INSERT_FLOPPY: self.on_insert_floppy,
            State.READ_FLOPPY: self.on_read_floppy,
            State.SUMMARY: self.on_summary,
            State.RESTORE: self.on_restore,
            State.ERROR: self.on_error,
            State.FIND_BACKUP: self.on_find_backup,
            State.PLAN: self.on_plan,
            State.PICK_DISK: self.on_pick_disk,
            State.EXECUTE: self.on_execute,
            State.FINISH: self.on_finish,
            State.STEP_FAILED: self.on_step_failed,
            State.RESTORE_ERROR: self.on_restore_error,
            State.CAPTURE: self.on_capture,
        }

    # -- output -------------------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        """A plain line on the serial console (and in the agent's log file), its control characters escaped."""
        line = visible_lines(line)
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
        if self.options.mode is Mode.CAPTURE:
            self.log("asr.mode=capture: capturing this computer")
            return State.CAPTURE
        if self.options.unattended:
            self.log("unattended: F2 assumed")
            return State.INSERT_FLOPPY
        first: dict[Mode, Next] = {Mode.ASK: State.PROMPT, Mode.MENU: State.MENU, Mode.SHELL: ExitCode.SHELL}
        return first[self.options.mode]

    def run(self) -> int:
        self.log(
            f"agent {__version__} started (timeout={self.options.timeout} unattended="
            f"{int(self.options.unattended)} dryrun={int(self.options.dryrun)} rehearsal={int(self.options.rehearsal)} "
            f"new_ids={int(self.options.new_ids)} "
            f"floppy={self.floppy})"
        )
        for note in self.notes():
            self.log(f"warning: {note}")
        state = self.first_state()
        if state is not State.PROMPT:
            self.start_toolbox()  # the prompt starts it once it is on the screen
        while isinstance(state, State):
            self.log(f"state: {state.value}")
            if state.needs_toolbox:
                self.wait_toolbox()
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

    def start_toolbox(self) -> None:
        """Import the modules of the later states in a background thread (once)."""
        if self.toolbox is None:
            self.toolbox = threading.Thread(target=import_toolbox, name="asr-toolbox", daemon=True)
            self.toolbox.start()

    def wait_toolbox(self) -> None:
        """Wait until the background imports are done, so that no two threads import the same module."""
        if self.toolbox is not None:
            self.toolbox.join()

    def wait_key(self, timeout: float | None = None) -> Key | None:
        key = self.consoles.read_key(timeout)
        if key is not None:
            self.log(f"key {key.label()} from {key.console}")
        return key

    def next_key(self) -> Key:
        """The next key, however long it takes."""
        while (key := self.wait_key()) is None:
            pass
        return key

    def show_and_wait(self, screen: Screen) -> Key:
        """Show ``screen`` and wait for a key pressed on it: keys typed before are forgotten first, before the screen
        appears, so that a key pressed as soon as it shows is never lost."""
        self.consoles.drain()
        self.show(screen)
        return self.next_key()

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
        self.start_toolbox()
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
            "5": ("Capture this computer to a backup medium", State.CAPTURE),
        }
        body = ["Automated System Recovery main menu", ""]
        body += [f"   {k}.  {text}" for k, (text, _) in choices.items()]
        body += ["", "Type the number of your choice."]
        self.show(Screen(tuple(body), "1-5=Choose   F2=Restore from the ASR floppy"))
        self.log("menu: 1=restore 2=shell 3=reboot 4=power off 5=capture")
        while True:
            key = self.next_key()
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
            key = self.next_key()
            return State.MENU if key.name is KeyName.F3 else State.READ_FLOPPY

    def on_read_floppy(self) -> Next:
        self.show(Screen(("Reading the Automated System Recovery Disk in drive A: ...",), "Please wait..."))
        self.wait_modules()
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

    def wait_modules(self) -> None:
        """In the rescue system, wait until /init has loaded the kernel modules (the floppy driver and vfat among
        them): it loads them in the background while the first screens show."""
        from recovery_env.probe.media import MODULES_LOADED, wait_for_file

        if not os.path.isdir(os.path.dirname(MODULES_LOADED)) or os.path.exists(MODULES_LOADED):
            return
        self.log("waiting for the kernel modules to finish loading")
        if not wait_for_file(MODULES_LOADED, MODULES_TIMEOUT):
            self.log(f"warning: {MODULES_LOADED} did not appear within {MODULES_TIMEOUT:g} s; reading anyway")

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
            key = self.next_key()
            self.error = None
            if key.name is KeyName.F3:
                return State.MENU
            self.log("retry")
            return State.READ_FLOPPY

    def on_summary(self) -> Next:
        assert self.reading is not None
        d = self.reading.descriptor
        from recovery_env.agent.screens import render_summary, summary_log_line

        lines = render_summary(d, self.reading.inventory)
        self.log(summary_log_line(d))
        for line in lines:
            self.log(f"  {line}")
        body = ["The Automated System Recovery Disk describes this system:", "", *lines]
        if self.options.unattended:
            self.show(Screen(tuple(body), "Unattended: continuing with the restore"))
            self.log("unattended: summary shown, continuing with the restore")
            return State.RESTORE
        self.show(Screen(tuple(body), "ENTER=Continue   F3=Quit"))
        while True:
            key = self.next_key()
            if key.name is KeyName.ENTER:
                return State.RESTORE
            if key.name is KeyName.F3:
                return State.MENU

    # -- the restore ----------------------------------------------------------------------------------------
    def on_restore(self) -> Next:
        """The restore starts: forget what an earlier attempt chose and unmount what it left under the target."""
        from recovery_env.restore.flow import release_target

        release_target(self.log)
        self.location = self.match = self.plan = None
        self.confirmation = ""
        self.pinned = {}
        self.from_step = 0
        self.failure = self.restore_error = None
        self.started = time.time()
        self.recent = []
        return State.FIND_BACKUP

    def fail_restore(self, error: Exception, retry: State) -> Next:
        """A named error of the restore: logged as ``ASR: error: <ErrorName>: ...``; unattended powers off."""
        text = " / ".join(line.strip() for line in str(error).splitlines() if line.strip())
        self.log(f"error: {type(error).__name__}: {text}")
        if self.options.unattended:
            self.log("unattended: stopping here; nothing more is written")
            return ExitCode.POWEROFF
        self.restore_error = error
        self.retry_state = retry
        return State.RESTORE_ERROR

    def on_restore_error(self) -> Next:
        assert self.restore_error is not None
        e = self.restore_error
        self.consoles.drain()
        body = [f"Automated System Recovery cannot continue ({type(e).__name__}).", ""]
        for line in str(e).splitlines():
            body += wrap(line.strip())
        body += ["", "Press R to try again, or F3 to quit to the main menu."]
        self.show(Screen(tuple(body), "R=Retry   F3=Quit", error=True))
        while True:
            key = self.next_key()
            if key.name is KeyName.F3:
                self.log("quit after the error: nothing more was written")
                return State.MENU
            if key.name is KeyName.CHAR and (key.char or "").lower() == "r":
                self.log("retry")
                self.restore_error = None
                return self.retry_state

    def on_find_backup(self) -> Next:
        assert self.reading is not None
        from recovery_env.restore.flow import describe_wanted, locate_backup, release_backup, verify_backup

        backup = self.reading.descriptor.backup
        if backup is None:
            return self.fail_restore(BackupSetError("the ASR floppy records no backup set to restore"), State.MENU)
        if self.location is not None:  # an earlier attempt's medium (gone, or to be checked again): probe afresh
            release_backup(self.location, self.log)
            self.location = None
        self.show(Screen(("Looking for the backup set on " + describe_wanted(backup) + " ...",), "Please wait..."))
        try:
            self.location = locate_backup(backup, self.log)
        except MediaError as e:
            return self.fail_restore(e, State.FIND_BACKUP)
        total = sum(a.size for a in backup.archives)
        self.show(
            Screen(
                (
                    f"Checking the backup set in {self.location.directory} ...",
                    "",
                    f"{len(backup.archives)} archive(s), {total} bytes, and the MANIFEST",
                ),
                "Please wait...",
            )
        )
        try:
            verify_backup(self.location, backup)
        except MediaError as e:
            return self.fail_restore(e, State.FIND_BACKUP)
        self.log(
            f"backup set verified: {len(backup.archives)} archive(s), {total} bytes, MANIFEST "
            f"({backup.file_count} entries) in {self.location.describe()}"
        )
        if self.plan is not None:  # the medium was lost during the restore and is back: resume the confirmed plan
            return self.resume_plan(self.plan, self.location)
        return State.PLAN

    def resume_plan(self, plan: RestorePlan, location: BackupLocation) -> Next:
        """After BackupMediaLostError: the plan confirmed before goes on from the step that lost the medium, if the
        set is where the plan reads it and its medium is not on a disk the plan writes."""
        from recovery_env.restore.flow import find_targets

        _, exclude = find_targets(self.floppy)
        written = sorted(set(exclude) & {d.device for d in plan.disks})
        if location.directory != plan.backup_dir or written:
            why = f"on {written[0]}, a disk the plan erases" if written else f"not at {plan.backup_dir}"
            return self.fail_restore(
                BackupSetError(f"the backup set found again ({location.describe()}) is {why}; the confirmed plan "
                               "cannot resume: quit (F3) and start the restore again"), State.FIND_BACKUP)  # fmt: skip
        self.log(f"resuming the restore at step {self.from_step + 1}, token {self.confirmation[:16]}")
        return State.EXECUTE

    def on_plan(self) -> Next:
        assert self.reading is not None and self.location is not None
        from recovery_env.restore.execute import confirm_plan
        from recovery_env.restore.flow import find_targets, make_match, make_plan
        from recovery_env.restore.plan import render_plan

        d = self.reading.descriptor
        self.confirmation = ""  # a new plan is confirmed anew
        self.show(Screen(("Looking for the disks of this computer ...",), "Please wait..."))
        try:
            targets, exclude = find_targets(self.floppy, (self.location.device,))
            self.log("disks: " + ", ".join(t.describe() for t in targets) if targets else "disks: none")
            for dev, why in sorted(exclude.items()):
                self.log(f"never a target: {dev} ({why})")
            self.match = make_match(d, targets, exclude, unattended=self.options.unattended, pinned=self.pinned)
            if self.match.pending:
                return State.PICK_DISK
            self.plan = make_plan(d, self.match, self.location, rehearsal=self.options.rehearsal,
                                  new_ids_salt=self.id_salt if self.options.new_ids else "")
        except AsrError as e:
            return self.fail_restore(e, State.PLAN)
        for change in self.plan.new_ids:
            self.log(change.line)  # ASR-NEW-ID ...: what a rehearsal judges the restored system's ids by
        lines = render_plan(self.plan)
        wiped = ", ".join(f"{w.device} <- {w.disk_key}" for w in self.plan.disks_to_wipe)
        self.log(f"plan: {len(self.plan.steps())} steps; disks to erase: {wiped}; plan {self.plan.digest[:16]}")
        for line in lines:
            self.log(f"plan:   {line}")
        if self.options.dryrun:
            then = "Unattended: powering off" if self.options.unattended else "Any key=Quit"
            screen = Screen(("DRY RUN: this is the plan; nothing will be written.", "", *lines), f"Dry run   {then}")
            self.log("dry run: nothing written")
            if self.options.unattended:
                self.show(screen)
                return ExitCode.POWEROFF
            self.show_and_wait(screen)
            return State.MENU
        if self.options.unattended:
            self.show(Screen(tuple(lines), "Unattended: continuing"))
            self.confirmation = confirm_plan(self.plan)
            self.log(f"unattended: plan confirmed (the disk match is unambiguous), token {self.confirmation[:16]}")
            return State.EXECUTE
        self.consoles.drain()
        pages = plan_pages(lines)
        page, seen = 0, {0}
        while True:
            self.show(render_plan_page(pages, page, confirmable=len(seen) == len(pages)))
            key = self.next_key()
            ch = (key.char or "").lower() if key.name is KeyName.CHAR else ""
            if key.name is KeyName.F3:
                self.log("quit at the plan: nothing written")
                return State.MENU
            if ch == "c" and len(seen) == len(pages):  # every page (every command, every warning) was shown
                self.confirmation = confirm_plan(self.plan)
                self.log(f"plan confirmed, token {self.confirmation[:16]}")
                return State.EXECUTE
            if ch in ("n", " ") or key.name in (KeyName.ENTER, KeyName.DOWN):
                page = min(page + 1, len(pages) - 1)
            elif ch == "p" or key.name is KeyName.UP:
                page = max(page - 1, 0)
            seen.add(page)

    def on_pick_disk(self) -> Next:
        assert self.match is not None and self.match.pending
        choice = self.match.pending[0]
        self.log(f"choose a disk: {choice.describe()}")
        body = [
            f"Several disks fit the original disk {choice.disk.key} equally well.",
            "",
            f"Which disk should replace {choice.disk.key}?",
            "",
        ]
        body += [
            f"   {n}.  {t.describe()}" + (f"  serial {t.serial}" if t.serial else "")
            for n, t in enumerate(choice.candidates, 1)
        ]
        body += ["", "The disk you choose will be ERASED."]
        self.consoles.drain()
        self.show(Screen(tuple(body), f"1-{len(choice.candidates)}=Choose   F3=Quit"))
        while True:
            key = self.next_key()
            if key.name is KeyName.F3:
                self.log("quit at the disk choice: nothing written")
                return State.MENU
            if key.name is KeyName.CHAR and (key.char or "").isdigit():
                n = int(key.char or "0")
                if 1 <= n <= len(choice.candidates):
                    picked = choice.candidates[n - 1]
                    self.pinned[choice.disk.key] = picked.name
                    self.log(f"chosen: {picked.device} for {choice.disk.key}")
                    return State.PLAN

    def step_log(self, line: str) -> None:
        """A line of the executor: logged, and the screen shows the last ones with the current phase."""
        self.log(line)
        if line.startswith("["):
            self.recent = [*self.recent, line][-14:]
            self.show(
                Screen(
                    ("Automated System Recovery is restoring this computer. Do not turn it off.", "", *self.recent),
                    "Restoring...",
                )
            )

    def on_progress(self, p: Progress) -> None:
        from recovery_env.restore.flow import render_progress_bar

        self.paint_status(f"{p.step.split(' from ')[0]} {render_progress_bar(p)}")
        now = time.monotonic()
        if now - self.last_progress_log >= PROGRESS_LOG_INTERVAL or p.done >= p.total:
            self.last_progress_log = now
            self.log(f"progress: {p.render()}")

    def on_execute(self) -> Next:
        assert self.plan is not None and self.reading is not None
        from recovery_env.restore.execute import execute_plan
        from recovery_env.restore.flow import write_run_log
        from recovery_env.restore.plan import Phase

        plan = self.plan
        token = self.confirmation
        before_unmount = tuple(p for p in Phase if p is not Phase.UNMOUNT)  # the run's log is written before UNMOUNT
        try:
            report = execute_plan(
                plan,
                log=self.step_log,
                progress=self.on_progress,
                confirm_token=token,
                phases=before_unmount,
                from_step=self.from_step,
                backup_device=self.location.device if self.location else "",
            )
            if report.manifest_checked:
                entries = self.reading.descriptor.backup.file_count if self.reading.descriptor.backup else 0
                self.log(f"manifest: {entries} entries, {len(report.differences)} differences")
                for diff in report.differences[:20]:
                    self.log(f"  difference: {diff}")
            if self.log_path:
                written = write_run_log(plan, self.log_path, self.started)
                self.log(f"log of this run: /{os.path.relpath(written, plan.target_root)} in the restored system")
            execute_plan(
                plan,
                log=self.step_log,
                progress=self.on_progress,
                confirm_token=token,
                phases=(Phase.UNMOUNT,),
                from_step=self.from_step,
            )
        except StepFailed as e:
            self.failure = e
            return State.STEP_FAILED
        except BackupMediaLostError as e:  # R: find the medium again, then resume at the step that lost it
            self.from_step = e.index
            return self.fail_restore(e, State.FIND_BACKUP)
        except (AsrError, OSError) as e:
            return self.fail_restore(e, State.EXECUTE)
        self.log(
            f"restore complete: {self.plan.hostname} restored onto "
            + ", ".join(d.device for d in plan.disks)
            + f" in {time.time() - self.started:.0f} s"
        )
        return State.FINISH

    def on_step_failed(self) -> Next:
        assert self.failure is not None
        e = self.failure
        self.log(f"error: StepFailed: {e.step}: {e.reason}")
        if self.options.unattended:
            self.log("unattended: stopping here; the disks are partly restored")
            return ExitCode.POWEROFF
        body = [f"This step of the restore failed: {e.step}", ""]
        if e.reason:
            body += wrap(f"Reason: {e.reason}")
        if e.argv:
            body += wrap("Command: " + " ".join(e.argv))
        body += ["Output:"] + [f"  {line}" for line in e.output.strip().splitlines()[-8:]]
        body += ["", *wrap("R retries the step, S opens a rescue shell, F3 quits (the disks are partly restored).")]
        self.consoles.drain()
        self.show(Screen(tuple(body), "R=Retry   S=Rescue shell   F3=Quit", error=True))
        while True:
            key = self.next_key()
            if key.name is KeyName.F3:
                self.log("quit after a failed step: the disks are partly restored")
                return State.MENU
            ch = (key.char or "").lower() if key.name is KeyName.CHAR else ""
            if ch == "r":
                self.log(f"retry from step {e.index + 1}")
                self.from_step = max(e.index, 0)
                self.failure = None
                return State.EXECUTE
            if ch == "s":
                return ExitCode.SHELL

    # -- the offline capture ------------------------------------------------------------------------------
    def on_capture(self) -> Next:
        """Capture the attached machine (source disks read-only) onto the backup medium, ASR.SIF and ASRPNP.SIF
        onto the floppy when it is writable; then power off.  A named error: logged; unattended powers off,
        interactive shows it and goes back to the menu on a key."""
        from recovery_env.capture.flow import run_offline_capture

        self.consoles.drain()
        self.show(
            Screen(
                (
                    "Automated System Recovery is capturing this computer.",
                    "",
                    f"Backup medium: the filesystem with {self.options.backup.replace('=', ' ', 1)}",
                    "The disks of this computer are mounted read-only and never written.",
                ),
                "Please wait...",
            )
        )
        self.log(f"capture: backup medium {self.options.backup}, floppy {self.floppy}")
        started = time.monotonic()
        try:
            done = run_offline_capture(
                self.log, floppy=self.floppy, backup=self.options.backup, progress=self.on_capture_progress
            )
        except AsrError as e:
            text = " / ".join(line.strip() for line in str(e).splitlines() if line.strip())
            self.log(f"capture failed: {type(e).__name__}: {text}")
            if self.options.unattended:
                return ExitCode.POWEROFF
            body = [f"The capture failed ({type(e).__name__}).", "", *(w for ln in str(e).splitlines()
                                                                       for w in wrap(ln.strip()))]
            self.show_and_wait(Screen(tuple(body), "Any key=Main menu", error=True))
            return State.MENU
        r = done.result
        self.log(
            f"capture complete: {r.dest} on {done.backup_device}, {len(r.backup.archives)} archive(s), "
            f"{r.backup.file_count} entries, {r.backup.raw_bytes} bytes in {time.monotonic() - started:.1f} s; "
            f"ASR.SIF on {'the floppy' if done.floppy_written else 'the backup medium only'}"
        )
        done_body = (
            "Automated System Recovery has captured this computer.",
            "",
            f"Backup set: {r.dest} on {done.backup_device}",
            f"ASR.SIF and ASRPNP.SIF: {done.where_sif}",
        )
        if self.options.unattended:
            self.show(Screen(done_body, "The computer will power off."))
            return ExitCode.POWEROFF
        self.show_and_wait(Screen(done_body, "Any key=Power off"))
        return ExitCode.POWEROFF

    def on_capture_progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last_progress_log >= PROGRESS_LOG_INTERVAL or done >= total:
            self.last_progress_log = now
            self.log(f"capture: {done} of {total} bytes archived")
        self.paint_status(f"Capturing: {done * 100 // total if total else 100}%")

    def on_finish(self) -> Next:
        what, code = ("power off", ExitCode.POWEROFF) if self.options.poweroff else ("restart", ExitCode.REBOOT)
        seconds = UNATTENDED_RESTART_SECONDS if self.options.unattended else RESTART_SECONDS
        body = (
            "Automated System Recovery has restored this computer.",
            "",
            "Remove the Automated System Recovery floppy and the boot medium.",
        )
        self.consoles.drain()
        self.show(Screen(body, f"Your computer will {what} in {seconds} seconds..."))
        self.log(f"Your computer will {what} in {seconds} seconds...")
        remaining = seconds
        while remaining > 0:
            self.paint_status(f"Your computer will {what} in {remaining} seconds...  (any key: now)")
            if self.options.unattended:
                time.sleep(1.0)
            elif self.wait_key(1.0) is not None:
                break
            remaining -= 1
        return code
