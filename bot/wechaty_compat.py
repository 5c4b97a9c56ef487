"""The one place that makes PyPI ``wechaty`` 0.10.7 importable on Python 3.11+.

python-wechaty is unmaintained; as published it fails to import on 3.11:

* ``WechatyOptions`` (a dataclass) has ``PuppetOptions()`` as a default value, and
  3.11's dataclasses reject unhashable defaults. Giving ``PuppetOptions`` an
  identity hash is enough; callers must still pass their own
  ``WechatyOptions(puppet_options=PuppetOptions(...))`` so that no default
  object is shared between bots.
* ``pyee>=9`` and ``urllib3>=2`` moved names it imports; ``pyproject.toml`` pins
  ``pyee<9`` and ``urllib3<2``.
* It opens ``$CACHE_DIR/job.db`` (default ``./.wechaty``) at import time, so the
  cache directory must be chosen before the first import.

Import :func:`load_wechaty` instead of ``wechaty`` anywhere in the project.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

_patched = False


def prepare(cache_dir: str | Path | None = None) -> None:
    """Apply the shims. Idempotent; must run before ``import wechaty``."""
    global _patched
    if _patched:
        return
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("CACHE_DIR", str(cache_dir))
    elif "CACHE_DIR" not in os.environ:
        default = Path("data") / ".wechaty"
        default.mkdir(parents=True, exist_ok=True)
        os.environ["CACHE_DIR"] = str(default)
    import wechaty_puppet

    wechaty_puppet.PuppetOptions.__hash__ = object.__hash__  # type: ignore[method-assign,assignment]
    _patched = True


def load_wechaty(cache_dir: str | Path | None = None) -> ModuleType:
    prepare(cache_dir)
    import wechaty

    return wechaty
