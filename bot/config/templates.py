"""Admin-written reply and ping templates: sandboxed Jinja2, compiled once per config version."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False)


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    """Compile (cached by source text, so every config version shares unchanged templates)."""
    return _env.from_string(source)


def template_error(source: str) -> str | None:
    try:
        compile_template(source)
    except TemplateError as exc:
        return f"template does not compile: {exc}"
    return None


def render(source: str, context: dict[str, Any]) -> str:
    """Render; a template that refers to a missing variable renders with a visible marker rather than
    losing the message (a broken reply must not swallow a report)."""
    try:
        return compile_template(source).render(context).strip()
    except TemplateError as exc:
        return f"{source}\n[模板错误: {exc}]"
