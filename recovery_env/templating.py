"""The one jinja2 environment: every generated text (descriptor, boot configs, /init) is rendered here.

It lives in recovery_env because the boot media render ASR.SIF/ASRPNP.SIF too (the offline capture), from the
same templates; the host's builder renders its boot configs and /init through it.  jinja2 is imported when the
first text is rendered, never at import time: recovery_env imports with the standard library alone, and the
rescue system ships jinja2 deliberately (builder.media.python.HOST_PYTHON_PACKAGES) for that one use.
On the host the templates are the repository's ``templates/``; on the boot media, ``templates/`` beside the
``recovery_env`` package (builder.media.python.SHIPPED_TEMPLATES).
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    import jinja2  # here, not at the top: see the module docstring

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))  # one shell word (shell scripts)
    env.filters["shjoin"] = lambda argv: shlex.join(str(a) for a in argv)  # a whole command line
    return env


def render(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``; a missing variable is an error, never an empty string."""
    return environment().get_template(name).render(**context)
