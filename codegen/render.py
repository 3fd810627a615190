"""The Jinja2 environment: templates live in ``codegen/templates``, one per kernel family."""
from __future__ import annotations

import pprint
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def pyliteral(value) -> str:
    """A Python literal for plain data (dicts, lists, strings, numbers), deterministic and
    in insertion order: how generated modules carry their manifest."""
    return pprint.pformat(value, width=110, sort_dicts=False)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["pyliteral"] = pyliteral
    env.filters["add_suffix"] = lambda name: f"{name}_"   # index i -> its extent variable i_
    return env


def render(template: str, **context) -> str:
    text = environment().get_template(template).render(**context)
    # normalise trailing whitespace so output is byte-stable across Jinja versions
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n") + "\n"
