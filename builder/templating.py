"""The one jinja2 environment: every generated text (descriptor, boot configs, /init) is rendered here."""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
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
