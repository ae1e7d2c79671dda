"""Render ASR.SIF and ASRPNP.SIF (format: see ``recovery_env.model.sif``) through jinja2, sealed with their
integrity line.

The templates (``templates/asr.sif.j2``, ``templates/asrpnp.sif.j2``) lay the sections out; values are written by
``recovery_env.model.sif.format_value``, the same module that parses them, so the escaping has one definition.  A
descriptor is validated before it is rendered and the rendered text is parsed back before it is returned: an
invalid or unreadable descriptor is never written.
"""

from __future__ import annotations

from pathlib import Path

from recovery_env import __version__
from recovery_env.errors import DescriptorError, InputError, InternalError
from recovery_env.model.descriptor import SIGNATURE, Descriptor, DeviceInventory
from recovery_env.model.sif import (
    PNP_SIGNATURE,
    format_hex,
    format_optional,
    format_value,
    parse_asr_sif,
    parse_asrpnp_sif,
    reseal,
    seal,
    split_integrity,
)
from recovery_env.model.validate import validate_descriptor, validate_inventory
from recovery_env.templating import render

TOOL = f"asr {__version__}"


def render_asr_sif(d: Descriptor) -> str:
    """The ASR.SIF text of ``d`` (validated first: DescriptorError naming section/record/field if invalid)."""
    validate_descriptor(d)
    text = seal(render("asr.sif.j2", d=d, signature=SIGNATURE, v=format_value, hex=format_hex, opt=format_optional))
    if parse_asr_sif(text) != d:
        raise InternalError("ASR.SIF does not read back as the descriptor it was rendered from")
    return text


def render_asrpnp_sif(inv: DeviceInventory) -> str:
    """The ASRPNP.SIF text of ``inv`` (validated first)."""
    validate_inventory(inv)
    text = seal(
        render("asrpnp.sif.j2", inv=inv, signature=PNP_SIGNATURE, tool=TOOL, v=format_value, opt=format_optional)
    )
    if parse_asrpnp_sif(text) != inv:
        raise InternalError("ASRPNP.SIF does not read back as the inventory it was rendered from")
    return text


def reseal_sif(text: str, *, file: str = "ASR.SIF") -> str:
    """The text of an ASR.SIF or ASRPNP.SIF that a sysadmin edited on purpose, with a new integrity line.

    The kind is told by the [VERSION] signature; the re-sealed text must parse and validate (DescriptorError
    otherwise), so re-sealing never blesses an invalid file."""
    body, _ = split_integrity(text.encode("utf-8"))
    sealed = reseal(text)
    if f'"{PNP_SIGNATURE}"' in body.decode("utf-8", "replace"):
        parse_asrpnp_sif(sealed, file=file)
    elif f'"{SIGNATURE}"' in body.decode("utf-8", "replace"):
        parse_asr_sif(sealed, file=file)
    else:
        raise DescriptorError(f"no [VERSION] signature {SIGNATURE!r} or {PNP_SIGNATURE!r}: not a SIF file", file=file)
    return sealed


def reseal_file(path: Path) -> str:
    """Re-seal the SIF file at ``path`` in place (only once it validates).  Returns the new text."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DescriptorError(f"not UTF-8 text (byte offset {e.start})", file=path.name) from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    sealed = reseal_sif(text, file=path.name)
    path.write_text(sealed, encoding="utf-8")
    return sealed
