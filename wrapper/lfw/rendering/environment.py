"""The Jinja environment every rendered file comes from (train YAMLs, DeepSpeed JSON, export, slurm, cloud jobs).

Templates live in lfw/assets/templates and are the only source of rendered text. StrictUndefined: a context key
a template names but nobody set is an error, never an empty string.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from importlib import resources
from typing import Any

import jinja2

from lfw.recipe.lf_keys import cache_dir


def yaml_scalar(value: Any) -> str:
    """A value as YAML text: strings always quoted (JSON quoting is valid YAML), no surprises like 'no'."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        text = repr(value)  # YAML 1.1 (PyYAML) reads 3e-05 as a string: the mantissa needs a dot
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    return json.dumps(value, ensure_ascii=False)


_JINJA_OPTIONS: dict[str, Any] = {
    "undefined": jinja2.StrictUndefined,
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "autoescape": False,
}


class _TemplateCache(jinja2.FileSystemBytecodeCache):
    """Compiled templates on disk: parsing them was most of a render's own time. jinja2 checks each entry against
    the template's source; a cache it cannot read or write costs a recompile, never an error."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, EOFError, ValueError, TypeError):
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _template_cache() -> _TemplateCache | None:
    # The folder is keyed by jinja2's version and the options, which change the compiled code but not the source.
    tag = hashlib.sha256(repr((jinja2.__version__, sorted(_JINJA_OPTIONS.items()))).encode()).hexdigest()[:16]
    folder = cache_dir() / "jinja2" / tag
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return _TemplateCache(str(folder))


def environment() -> jinja2.Environment:
    """A fresh environment over lfw's templates, with the `yaml` filter (values as YAML scalars)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("lfw") / "assets" / "templates")),
        bytecode_cache=_template_cache(),
        **_JINJA_OPTIONS,
    )
    env.filters["yaml"] = yaml_scalar
    return env


def render_template(name: str, **context: Any) -> str:
    """Template `name` rendered with `context`."""
    return environment().get_template(name).render(**context)
