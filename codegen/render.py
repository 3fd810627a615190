"""The Jinja2 environment: templates live in ``codegen/templates``, one per kernel family."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False)


def render(template: str, **context) -> str:
    text = environment().get_template(template).render(**context)
    # normalise trailing whitespace so output is byte-stable across Jinja versions
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n") + "\n"
