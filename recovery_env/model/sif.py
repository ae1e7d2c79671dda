"""ASR.SIF and ASRPNP.SIF: the strict parser (standard library only); the two-pass validator it calls is
:mod:`recovery_env.model.validate`.

The format (written by ``recovery_env.model.sif_render`` through ``templates/asr[pnp].sif.j2``)
----------------------------------------------------------------------------------------------------------------
An INI-style UTF-8 text, one item per line, ``\\n`` line ends::

    ; comment                                   (a line whose first non-blank character is ';')
    [VERSION]                                   (sections, in a fixed order, each exactly once)
    signature = "$ASR-LINUX$"                   (scalar sections: ``key = value`` lines)
    [PARTITIONS]
    disk=disk1 number=1 start=2048 size=2048 type=21686148-6449-6e6f-744e-656564454649 ...
                                                (record sections: one record per line, ``field=value`` pairs)
    [INTEGRITY]
    sha256 = <hex SHA-256 of every byte before the [INTEGRITY] line>

Records use *named* fields rather than positional columns.  A sysadmin who edits a record sees what every value
means without counting commas against a header; a field the model gives a default may be left out (the renderer
writes optional fields only when they differ from their default, so what is unusual stands out); fields may come
in any order; a later format can add fields without shifting columns; and an error names the field a person has
to fix.  The price is size: the sample is 3.7 KB, and a dense 16-disk, 128-partition descriptor (every partition
with a filesystem, a mount and an archive) about 84 KB, on a floppy of 1.44 MB.

Values (the same grammar in scalar and record sections):

- a *bare* value is a run of ``A-Z a-z 0-9 _ . / : + @ % - ~``: numbers, keys, UUIDs, paths, enum values;
- anything else is a *quoted* string ``"..."``: inside it ``\\\\`` and ``\\"`` stand for a backslash and a quote,
  ``\\n \\t \\r`` for those controls, and ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH`` for any character that is not
  printable (controls, line and paragraph separators, lone surrogates).  Every other printable character, commas,
  ``=``, ``;``, spaces and non-ASCII included, stands for itself, so ANY string round-trips and every line stays
  one line;
- a list is its items joined by ``,`` (each bare or quoted); an empty list is an empty value (``flags=``);
- booleans are ``yes`` / ``no``; integers are decimal, GPT attribute bits hexadecimal (``0x4``); enums their value.

After a complete value, the rest of a line may be a ``;`` comment.

Parsing is strict: unknown, duplicate, misplaced or missing sections, unknown or duplicate keys, missing required
keys, malformed values and a wrong signature or format version are :class:`DescriptorError` naming file, line,
section, record (1-based within its section) and field.  The integrity line is checked first, over the raw bytes:
a damaged or edited file is an :class:`IntegrityError` before anything else is believed.  A sysadmin who edited
the file on purpose re-seals it with ``asr inspect --reseal FILE``.

Validation runs in two passes, on parsed and on in-memory descriptors alike
(:func:`recovery_env.model.validate.validate_descriptor`):
pass 1 checks each record's own fields (syntax, formats, ranges, enums); pass 2 the references between records
and the geometry (partitions inside their disk and apart, one holder per block device, no cycle in the storage
graph, one root mount, the ESP is vfat on an ESP partition, archives for every backed-up filesystem...).

Format 3 adds the storage graph (:mod:`recovery_env.model.descriptor`) in five record sections between
[PARTITIONS] and [FILESYSTEMS]; a filesystem's ``partition`` may then name any block device key::

    [LUKS]
    key=luks1 device=disk1p3 uuid=7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6 version=2 name=sda3_crypt header_file=...
    [LVM_PV]
    device=luks1 uuid=aB0001-1234-5678-9AbC-dEf0-1234-xY0001 vg=vg0
    [LVM_VG]
    name=vg0 uuid=aB0002-1234-5678-9AbC-dEf0-1234-xY0002 extent_size=4194304
    [LVM_LV]
    key=lv1 vg=vg0 name=root uuid=aB0003-1234-5678-9AbC-dEf0-1234-xY0003 size=8589934592
    [FILESYSTEMS]
    key=fs3 partition=lv1 type=ext4 ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from recovery_env.errors import DescriptorError, IntegrityError
from recovery_env.model.descriptor import (
    FORMAT_VERSIONS,
    PNP_FORMAT_VERSION,
    SIGNATURE,
    Archive,
    BackupSet,
    Bootloader,
    Command,
    Descriptor,
    Device,
    DeviceInventory,
    Disk,
    Filesystem,
    LuksDevice,
    LvmLv,
    LvmPv,
    LvmVg,
    MdArray,
    Mount,
    Partition,
    Subvolume,
    SystemInfo,
)
from recovery_env.model.validate import validate_descriptor, validate_inventory

PNP_SIGNATURE = "$ASR-LINUX-PNP$"
INTEGRITY_HEADER = "[INTEGRITY]"

BARE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:+@%-~")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_HEX_ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}

_SECTION_RE = re.compile(r"^\s*\[([^\]]*)\]\s*(;.*)?$")
_SCALAR_RE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*=[ \t]*")
_FIELD_RE = re.compile(r"([a-z_][a-z0-9_]*)=")
_INT_RE = re.compile(r"^-?[0-9]+$")
_HEX_RE = re.compile(r"^0x[0-9a-f]{1,16}$")

T = TypeVar("T")


# --- values ------------------------------------------------------------------------------------------------------


def format_string(value: str) -> str:
    """A string as a value: bare when it can be, else quoted with the escapes above."""
    if value and all(c in BARE_CHARS for c in value):
        return value
    out = []
    for c in value:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def format_value(value: object) -> str:
    """Any model value as it is written in a SIF file (see the module docstring)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    raise TypeError(f"no SIF form for {type(value).__name__}: {value!r}")


def format_hex(value: int) -> str:
    """An integer bit set, in hexadecimal (GPT attribute bits)."""
    return f"0x{value:x}"


def format_optional(record: object, name: str, fmt: Callable[[Any], str] = format_value) -> str:
    """`` name=value`` for a record field that differs from the model's default, else nothing: the renderer leaves
    defaults out (the parser fills them in), which keeps records short and the unusual values visible."""
    spec = next(f for f in dataclasses.fields(record) if f.name == name)  # type: ignore[arg-type]
    value = getattr(record, name)
    default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
    if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
        raise TypeError(f"{type(record).__name__}.{name} is required: write it always")
    return "" if value == default else f" {name}={fmt(value)}"


class ValueKind(StrEnum):
    """How a field's text turns into a model value."""

    STR = "str"
    INT = "int"
    HEX = "hex"
    BOOL = "bool"
    ENUM = "enum"
    STR_LIST = "str-list"
    ENUM_LIST = "enum-list"

    @property
    def is_list(self) -> bool:
        return self in (ValueKind.STR_LIST, ValueKind.ENUM_LIST)

    def convert(self, items: Sequence[str], enum: type[StrEnum] | None) -> object:
        """The model value of ``items`` (the value's list items).  ValueError with a reason when malformed."""
        if self.is_list:
            if self is ValueKind.ENUM_LIST:
                assert enum is not None
                return tuple(_convert_enum(i, enum) for i in items)
            return tuple(items)
        if len(items) != 1:
            raise ValueError("a value is missing" if not items else f"expected one value, got a list of {len(items)}")
        text = items[0]
        if self is ValueKind.STR:
            return text
        if self is ValueKind.INT:
            if not _INT_RE.match(text):
                raise ValueError(f"{text!r} is not a whole number")
            return int(text)
        if self is ValueKind.HEX:
            if not _HEX_RE.match(text):
                raise ValueError(f"{text!r} is not a hexadecimal number like 0x4")
            return int(text, 16)
        if self is ValueKind.BOOL:
            if text not in ("yes", "no"):
                raise ValueError(f"{text!r} is not yes or no")
            return text == "yes"
        assert enum is not None
        return _convert_enum(text, enum)


def _convert_enum(text: str, enum: type[StrEnum]) -> StrEnum:
    try:
        return enum(text)
    except ValueError:
        raise ValueError(f"{text!r} is not one of {', '.join(e.value for e in enum)}") from None


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: ValueKind
    required: bool
    enum: type[StrEnum] | None = None


def _field_specs(cls: type, *, skip: tuple[str, ...] = (), hex_fields: tuple[str, ...] = ()) -> dict[str, FieldSpec]:
    """The fields of a model dataclass as a SIF section or record holds them, read from its type hints."""
    hints = typing.get_type_hints(cls)
    specs: dict[str, FieldSpec] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        enum: type[StrEnum] | None = None
        if hint is str:
            kind = ValueKind.STR
        elif hint is bool:
            kind = ValueKind.BOOL
        elif hint is int:
            kind = ValueKind.HEX if f.name in hex_fields else ValueKind.INT
        elif isinstance(hint, type) and issubclass(hint, StrEnum):
            kind, enum = ValueKind.ENUM, hint
        elif typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is str:
            kind = ValueKind.STR_LIST
        elif typing.get_origin(hint) is tuple and issubclass(typing.get_args(hint)[0], StrEnum):
            kind, enum = ValueKind.ENUM_LIST, typing.get_args(hint)[0]
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no SIF form for {hint!r}")
        specs[f.name] = FieldSpec(f.name, kind, required, enum)
    return specs


# --- sections ----------------------------------------------------------------------------------------------------


class SectionKind(StrEnum):
    SCALAR = "scalar"  # key = value lines
    RECORDS = "records"  # one record per line of field=value pairs


@dataclass(frozen=True)
class SectionSpec:
    name: str
    kind: SectionKind
    fields: Mapping[str, FieldSpec]
    since: int = 1  # the first format version that has the section (an older file has none)


_VERSION_FIELDS = {
    "signature": FieldSpec("signature", ValueKind.STR, True),
    "format": FieldSpec("format", ValueKind.INT, True),
    "tool": FieldSpec("tool", ValueKind.STR, True),
}

ASR_SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("VERSION", SectionKind.SCALAR, _VERSION_FIELDS),
    SectionSpec("SYSTEM", SectionKind.SCALAR, _field_specs(SystemInfo, skip=("tool_version",))),
    SectionSpec("DISKS", SectionKind.RECORDS, _field_specs(Disk)),
    SectionSpec("PARTITIONS", SectionKind.RECORDS, _field_specs(Partition, hex_fields=("attributes",))),
    SectionSpec("MD", SectionKind.RECORDS, _field_specs(MdArray), since=3),
    SectionSpec("LUKS", SectionKind.RECORDS, _field_specs(LuksDevice), since=3),
    SectionSpec("LVM_PV", SectionKind.RECORDS, _field_specs(LvmPv), since=3),
    SectionSpec("LVM_VG", SectionKind.RECORDS, _field_specs(LvmVg), since=3),
    SectionSpec("LVM_LV", SectionKind.RECORDS, _field_specs(LvmLv), since=3),
    SectionSpec("FILESYSTEMS", SectionKind.RECORDS, _field_specs(Filesystem)),
    SectionSpec("MOUNTS", SectionKind.RECORDS, _field_specs(Mount)),
    SectionSpec("SUBVOLUMES", SectionKind.RECORDS, _field_specs(Subvolume), since=2),
    SectionSpec("BOOTLOADER", SectionKind.SCALAR, _field_specs(Bootloader)),
    SectionSpec("BACKUP", SectionKind.SCALAR, _field_specs(BackupSet, skip=("archives",))),
    SectionSpec("ARCHIVES", SectionKind.RECORDS, _field_specs(Archive)),
    SectionSpec("COMMANDS", SectionKind.RECORDS, _field_specs(Command)),
)
"""The sections of ASR.SIF in their order (then [INTEGRITY]).  [BACKUP] and [ARCHIVES] are empty without a backup
set; every section of the file's format is always present (format 1 has no [SUBVOLUMES]; formats 1 and 2 have none
of [MD], [LUKS], [LVM_PV], [LVM_VG], [LVM_LV]: the storage graph, bottom up, between the partitions and the
filesystems on them)."""

PNP_SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("VERSION", SectionKind.SCALAR, _VERSION_FIELDS),
    SectionSpec("SYSTEM", SectionKind.SCALAR, {"hostname": FieldSpec("hostname", ValueKind.STR, True)}),
    SectionSpec("DEVICES", SectionKind.RECORDS, _field_specs(Device)),
)
"""The sections of ASRPNP.SIF in their order (then [INTEGRITY])."""


@dataclass(frozen=True)
class RawValue:
    items: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class RawRecord:
    """A record line (or a scalar section: its ``key = value`` lines) before conversion."""

    section: str
    number: int | None  # 1-based within the section; None for a scalar section
    line: int  # the record's line, or the section header's for a scalar section
    values: Mapping[str, RawValue]


@dataclass(frozen=True)
class SifDocument:
    """A SIF file split into sections, integrity checked, values still text."""

    file: str
    sections: Mapping[str, tuple[RawRecord, ...]]  # scalar sections: one RawRecord; record sections: one per line
    section_lines: Mapping[str, int]

    def line_of(self, section: str | None, record: int | None, field: str | None) -> int | None:
        """The line an error at (section, record, field) points at; None when the location is not in the file."""
        if section is None or section not in self.sections:
            return None
        recs = self.sections[section]
        rec = next((r for r in recs if r.number == record), None)  # record None: the scalar section's only one
        if rec is None:
            return self.section_lines.get(section)
        if field is not None and field in rec.values:
            return rec.values[field].line
        return rec.line


class _Cursor:
    """A position in a file for error messages."""

    def __init__(self, file: str, line: int, section: str | None, record: int | None = None) -> None:
        self.file, self.line, self.section, self.record = file, line, section, record

    def error(self, message: str, field: str | None = None) -> DescriptorError:
        return DescriptorError(
            message, file=self.file, line=self.line, section=self.section, record=self.record, field=field
        )


# --- integrity ---------------------------------------------------------------------------------------------------


def split_integrity(data: bytes) -> tuple[bytes, bytes | None]:
    """(body, integrity part): the bytes before the ``[INTEGRITY]`` line, and that line with what follows
    (None when the file has no such line)."""
    header = INTEGRITY_HEADER.encode()
    pos = 0
    while pos <= len(data):
        end = data.find(b"\n", pos)
        line = data[pos : end if end >= 0 else len(data)]
        if line.strip(b" \t") == header:
            return data[:pos], data[pos:]
        if end < 0:
            break
        pos = end + 1
    return data, None


def make_integrity_line(body: bytes) -> str:
    return f"sha256 = {hashlib.sha256(body).hexdigest()}"


def seal(body: str) -> str:
    """``body`` with its [INTEGRITY] section appended."""
    if body and not body.endswith("\n"):
        body += "\n"
    return f"{body}{INTEGRITY_HEADER}\n{make_integrity_line(body.encode('utf-8'))}\n"


def reseal(text: str) -> str:
    """The text with a freshly computed [INTEGRITY] section (after a deliberate edit).  No validation here."""
    body, _ = split_integrity(text.encode("utf-8"))
    return seal(body.decode("utf-8"))


def check_integrity(data: bytes, *, file: str) -> bytes:
    """The body of ``data`` if its [INTEGRITY] line matches; IntegrityError when damaged, edited or missing."""
    body, tail = split_integrity(data)
    if tail is None:
        raise IntegrityError(
            f"integrity check failed: no {INTEGRITY_HEADER} section (the file is damaged or truncated)",
            file=file,
        )
    header_line = body.count(b"\n") + 1
    lines = tail.split(b"\n")
    found: str | None = None
    for offset, raw in enumerate(lines[1:], start=1):
        text = raw.decode("utf-8", "replace").strip(" \t")
        if not text or text.startswith(";"):
            continue
        m = re.fullmatch(r"sha256\s*=\s*([0-9a-f]{64})", text)
        if m is None or found is not None:
            raise IntegrityError(
                f"integrity check failed: the integrity line is damaged ({text[:80]!r})",
                file=file,
                line=header_line + offset,
                section="INTEGRITY",
            )
        found = m.group(1)
    actual = hashlib.sha256(body).hexdigest()
    if found is None:
        raise IntegrityError(
            "integrity check failed: no sha256 line (the file is damaged or truncated)",
            file=file,
            line=header_line,
            section="INTEGRITY",
        )
    if found != actual:
        raise IntegrityError(
            f"integrity check failed: the file is damaged or was edited (sha256 {actual} expected {found});"
            " if you edited it on purpose, re-seal it with `asr inspect --reseal FILE`",
            file=file,
        )
    return body


# --- syntax ------------------------------------------------------------------------------------------------------


def read_document(
    data: bytes, sections: Sequence[SectionSpec], *, file: str, signature: str, versions: Sequence[int]
) -> SifDocument:
    """Check integrity, then split the body into sections and raw values (strict syntax, order and keys).
    The [VERSION] section (signature, format: one of ``versions``) is checked as soon as it is read, before the
    sections it governs; the sections expected are those of its format."""
    body = check_integrity(data, file=file)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = body[: e.start].count(b"\n") + 1
        raise DescriptorError(f"not UTF-8 text (byte {body[e.start]:#04x})", file=file, line=bad_line) from None
    specs = {s.name: s for s in sections}
    order = [s.name for s in sections if s.since <= 1]
    version = 1
    found: dict[str, list[RawRecord]] = {}
    section_lines: dict[str, int] = {}
    current: SectionSpec | None = None
    scalar: dict[str, RawValue] = {}

    def close_section() -> None:
        nonlocal version, order
        if current is not None and current.kind is SectionKind.SCALAR:
            found[current.name] = [RawRecord(current.name, None, section_lines[current.name], dict(scalar))]
            if current.name == "VERSION":
                version = _check_version(found["VERSION"][0], file, signature, versions)
                order = [s.name for s in sections if s.since <= version]

    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith("["):
            m = _SECTION_RE.match(line)
            cur = _Cursor(file, lineno, None)
            if m is None:
                raise cur.error(f"malformed section header {stripped[:40]!r}")
            name = m.group(1)
            if name not in specs:
                raise cur.error(f"unknown section [{name}] (expected one of {', '.join(f'[{n}]' for n in order)})")
            if name in section_lines:
                raise cur.error(f"duplicate section [{name}] (first on line {section_lines[name]})")
            close_section()
            if name not in order:
                since = specs[name].since
                raise cur.error(f"section [{name}] is not in format {version} (it came with format {since})")
            expected = order[len(section_lines)] if len(section_lines) < len(order) else "INTEGRITY"
            if name != expected:
                raise cur.error(f"section [{name}] out of order: expected [{expected}] here")
            current = specs[name]
            section_lines[name] = lineno
            found[name] = []
            scalar = {}
            continue
        if current is None:
            raise _Cursor(file, lineno, None).error(f"text before the first section: {stripped[:40]!r}")
        if current.kind is SectionKind.SCALAR:
            cur = _Cursor(file, lineno, current.name)
            key, items = _scan_scalar(line, cur)
            if key not in current.fields:
                raise cur.error(f"unknown key (expected one of {', '.join(current.fields)})", key)
            if key in scalar:
                raise cur.error(f"duplicate key (first on line {scalar[key].line})", key)
            scalar[key] = RawValue(items, lineno)
        else:
            number = len(found[current.name]) + 1
            cur = _Cursor(file, lineno, current.name, number)
            values: dict[str, RawValue] = {}
            for fname, items in _scan_record(line, cur):
                if fname not in current.fields:
                    raise cur.error(f"unknown field (expected one of {', '.join(current.fields)})", fname)
                if fname in values:
                    raise cur.error("duplicate field", fname)
                values[fname] = RawValue(items, lineno)
            found[current.name].append(RawRecord(current.name, number, lineno, values))
    close_section()
    missing = [n for n in order if n not in section_lines]
    if missing:
        raise DescriptorError(
            f"section [{missing[0]}] is missing", file=file, line=text.count("\n") + 1, section=missing[0]
        )
    return SifDocument(file, {k: tuple(v) for k, v in found.items()}, section_lines)


def _scan_scalar(line: str, cur: _Cursor) -> tuple[str, tuple[str, ...]]:
    m = _SCALAR_RE.match(line)
    if m is None:
        raise cur.error(f"expected 'key = value', got {line.strip()[:40]!r}")
    items, pos = _scan_value(line, m.end(), cur, m.group(1))
    _expect_end(line, pos, cur, m.group(1))
    return m.group(1), items


def _scan_record(line: str, cur: _Cursor) -> Iterator[tuple[str, tuple[str, ...]]]:
    pos = _skip_blanks(line, 0)
    while pos < len(line) and line[pos] != ";":
        m = _FIELD_RE.match(line, pos)
        if m is None:
            raise cur.error(f"expected field=value at column {pos + 1}, got {line[pos : pos + 20]!r}")
        items, pos = _scan_value(line, m.end(), cur, m.group(1))
        yield m.group(1), items
        pos = _skip_blanks(line, pos)


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _expect_end(line: str, pos: int, cur: _Cursor, field: str) -> None:
    pos = _skip_blanks(line, pos)
    if pos < len(line) and line[pos] != ";":
        raise cur.error(f"unexpected text after the value: {line[pos : pos + 20]!r}", field)


def _scan_value(line: str, pos: int, cur: _Cursor, field: str) -> tuple[tuple[str, ...], int]:
    """The items of the value starting at ``pos`` and the position after it."""
    items: list[str] = []
    while True:
        if pos < len(line) and line[pos] == '"':
            text, pos = _scan_quoted(line, pos, cur, field)
            items.append(text)
        else:
            start = pos
            while pos < len(line) and line[pos] in BARE_CHARS:
                pos += 1
            if pos == start:
                at_end = pos == len(line) or line[pos] in " \t;"
                if not items and at_end:
                    return (), pos
                if at_end:
                    raise cur.error("a list item is missing after ','", field)
                raise cur.error(f'unexpected character {line[pos]!r} in a value (quote such values: "...")', field)
            items.append(line[start:pos])
        if pos < len(line) and line[pos] == ",":
            pos += 1
            continue
        if pos < len(line) and line[pos] not in " \t;":
            raise cur.error(f'unexpected character {line[pos]!r} after a value (quote such values: "...")', field)
        return tuple(items), pos


def _scan_quoted(line: str, pos: int, cur: _Cursor, field: str) -> tuple[str, int]:
    out: list[str] = []
    pos += 1
    while pos < len(line):
        c = line[pos]
        if c == '"':
            return "".join(out), pos + 1
        if c == "\\":
            esc = line[pos + 1 : pos + 2]
            if esc in _UNESCAPES:
                out.append(_UNESCAPES[esc])
                pos += 2
                continue
            if esc in _HEX_ESCAPE_DIGITS:
                n = _HEX_ESCAPE_DIGITS[esc]
                digits = line[pos + 2 : pos + 2 + n]
                if len(digits) != n or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise cur.error(f"bad escape \\{esc}{digits} (needs {n} hex digits)", field)
                code = int(digits, 16)
                if code > 0x10FFFF:
                    raise cur.error(f"bad escape \\{esc}{digits} (not a character)", field)
                out.append(chr(code))
                pos += 2 + n
                continue
            raise cur.error(f"unknown escape \\{esc} in a quoted string", field)
        if not c.isprintable():
            raise cur.error(f"raw control character {c!r} in a quoted string (write it as an escape)", field)
        out.append(c)
        pos += 1
    raise cur.error("unterminated quoted string (a quote is missing)", field)


# --- conversion --------------------------------------------------------------------------------------------------


def _convert_fields(
    spec: SectionSpec, rec: RawRecord, file: str, *, skip_missing: tuple[str, ...] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in rec.values.items():
        fs = spec.fields[name]
        try:
            out[name] = fs.kind.convert(raw.items, fs.enum)
        except ValueError as e:
            raise DescriptorError(
                str(e), file=file, line=raw.line, section=spec.name, record=rec.number, field=name
            ) from None
    for name, fs in spec.fields.items():
        if fs.required and name not in out and name not in skip_missing:
            what = "key" if spec.kind is SectionKind.SCALAR else "field"
            raise DescriptorError(
                f"required {what} {name!r} is missing",
                file=file,
                line=rec.line,
                section=spec.name,
                record=rec.number,
                field=name,
            )
    return out


def _make(cls: Callable[..., T], spec: SectionSpec, rec: RawRecord, file: str, **extra: Any) -> T:
    return cls(**_convert_fields(spec, rec, file), **extra)


def _check_version(rec: RawRecord, file: str, signature: str, versions: Sequence[int]) -> int:
    """The file's format version, once its signature and version are known to be this asr's."""
    values = _convert_fields(ASR_SECTIONS[0], rec, file)
    where = rec.values
    if values["signature"] != signature:
        other = {SIGNATURE: "ASR.SIF", PNP_SIGNATURE: "ASRPNP.SIF"}.get(values["signature"])
        hint = f" (this is an {other})" if other else ""
        raise DescriptorError(
            f"signature {values['signature']!r} is not {signature!r}{hint}",
            file=file,
            line=where["signature"].line,
            section="VERSION",
            field="signature",
        )
    if values["format"] not in versions:
        raise DescriptorError(
            f"format {values['format']} is not supported (this asr reads format {', '.join(map(str, versions))})",
            file=file,
            line=where["format"].line,
            section="VERSION",
            field="format",
        )
    return int(values["format"])


def parse_asr_sif(text: str, *, file: str = "ASR.SIF") -> Descriptor:
    """The descriptor in ``text``: integrity checked, strictly parsed, validated (two passes).
    DescriptorError (IntegrityError for a damaged or edited file) naming file, line, section, record, field."""
    return parse_asr_sif_bytes(_encode(text, file), file=file)


def parse_asr_sif_bytes(data: bytes, *, file: str = "ASR.SIF") -> Descriptor:
    doc = read_document(data, ASR_SECTIONS, file=file, signature=SIGNATURE, versions=FORMAT_VERSIONS)
    head = _convert_fields(ASR_SECTIONS[0], doc.sections["VERSION"][0], file)
    tool: str = head["tool"]
    spec = {s.name: s for s in ASR_SECTIONS}
    sec = doc.sections
    system = _make(SystemInfo, spec["SYSTEM"], sec["SYSTEM"][0], file, tool_version=tool)
    disks = tuple(_make(Disk, spec["DISKS"], r, file) for r in sec["DISKS"])
    partitions = tuple(_make(Partition, spec["PARTITIONS"], r, file) for r in sec["PARTITIONS"])
    filesystems = tuple(_make(Filesystem, spec["FILESYSTEMS"], r, file) for r in sec["FILESYSTEMS"])
    mounts = tuple(_make(Mount, spec["MOUNTS"], r, file) for r in sec["MOUNTS"])
    bootloader = _make(Bootloader, spec["BOOTLOADER"], sec["BOOTLOADER"][0], file)
    archives = tuple(_make(Archive, spec["ARCHIVES"], r, file) for r in sec["ARCHIVES"])
    backup_rec = sec["BACKUP"][0]
    backup: BackupSet | None = None
    if backup_rec.values:
        backup = _make(BackupSet, spec["BACKUP"], backup_rec, file, archives=archives)
    elif archives:
        raise DescriptorError(
            "archives are listed but [BACKUP] is empty",
            file=file,
            line=sec["ARCHIVES"][0].line,
            section="ARCHIVES",
            record=1,
        )
    commands = tuple(_make(Command, spec["COMMANDS"], r, file) for r in sec["COMMANDS"])
    subvolumes = tuple(_make(Subvolume, spec["SUBVOLUMES"], r, file) for r in sec.get("SUBVOLUMES", ()))
    d = Descriptor(
        system,
        disks,
        partitions,
        filesystems,
        mounts,
        bootloader,
        backup,
        commands,
        subvolumes,
        head["format"],
        md_arrays=tuple(_make(MdArray, spec["MD"], r, file) for r in sec.get("MD", ())),
        luks=tuple(_make(LuksDevice, spec["LUKS"], r, file) for r in sec.get("LUKS", ())),
        lvm_pvs=tuple(_make(LvmPv, spec["LVM_PV"], r, file) for r in sec.get("LVM_PV", ())),
        lvm_vgs=tuple(_make(LvmVg, spec["LVM_VG"], r, file) for r in sec.get("LVM_VG", ())),
        lvm_lvs=tuple(_make(LvmLv, spec["LVM_LV"], r, file) for r in sec.get("LVM_LV", ())),
    )
    try:
        validate_descriptor(d, file=file)
    except DescriptorError as e:
        raise _with_line(e, doc) from None
    return d


def parse_asrpnp_sif(text: str, *, file: str = "ASRPNP.SIF") -> DeviceInventory:
    """The device inventory in ``text``: integrity checked, strictly parsed, validated."""
    return parse_asrpnp_sif_bytes(_encode(text, file), file=file)


def parse_asrpnp_sif_bytes(data: bytes, *, file: str = "ASRPNP.SIF") -> DeviceInventory:
    doc = read_document(data, PNP_SECTIONS, file=file, signature=PNP_SIGNATURE, versions=(PNP_FORMAT_VERSION,))
    spec = {s.name: s for s in PNP_SECTIONS}
    hostname: str = _convert_fields(spec["SYSTEM"], doc.sections["SYSTEM"][0], file)["hostname"]
    devices = tuple(_make(Device, spec["DEVICES"], r, file) for r in doc.sections["DEVICES"])
    inv = DeviceInventory(hostname, devices)
    try:
        validate_inventory(inv, file=file)
    except DescriptorError as e:
        raise _with_line(e, doc) from None
    return inv


def read_asr_sif(path: Path) -> Descriptor:
    """Read and validate the ASR.SIF at ``path`` (errors name the file by its name)."""
    return parse_asr_sif_bytes(path.read_bytes(), file=path.name)


def read_asrpnp_sif(path: Path) -> DeviceInventory:
    return parse_asrpnp_sif_bytes(path.read_bytes(), file=path.name)


def _encode(text: str, file: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = text[: e.start].count("\n") + 1
        raise DescriptorError(f"character {text[e.start]!r} cannot be written as UTF-8", file=file, line=line) from None


def _with_line(e: DescriptorError, doc: SifDocument) -> DescriptorError:
    return type(e)(
        e.reason,
        file=doc.file,
        line=doc.line_of(e.section, e.record, e.field),
        section=e.section,
        record=e.record,
        field=e.field,
    )
