"""The Jinja2 environment: templates live in ``codegen/templates``, one per kernel family."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def jsonliteral(value) -> str:
    """A Python expression that builds plain data from a JSON string parsed at import: a
    compiled module carries its manifest as one string constant, not as a dict literal
    (which Cython turns into hundreds of kilobytes of C). Deterministic, keys in order."""
    text = json.dumps(value, indent=1, ensure_ascii=True, allow_nan=True)
    if "'''" in text:
        raise ValueError("jsonliteral: the data holds a triple quote")
    return "__import__('json').loads(r'''" + text + "''')"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["jsonliteral"] = jsonliteral
    env.filters["add_suffix"] = lambda name: f"{name}_"   # index i -> its extent variable i_
    return env


def render(template: str, **context) -> str:
    text = environment().get_template(template).render(**context)
    # normalise trailing whitespace so output is byte-stable across Jinja versions
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n") + "\n"
