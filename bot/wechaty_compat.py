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
* Its loggers are configured at import from ``WECHATY_LOG`` (default info, very chatty), and
  ``PuppetService`` logs the puppet token in a warning whenever token and endpoint are both set: we default
  ``WECHATY_LOG`` to warn and redact tokens from its records.

Import :func:`load_wechaty` instead of ``wechaty`` anywhere in the project.
"""

from __future__ import annotations

import logging
import os
import re
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
    os.environ.setdefault("WECHATY_LOG", "warn")
    import wechaty_puppet

    wechaty_puppet.PuppetOptions.__hash__ = object.__hash__  # type: ignore[method-assign,assignment]
    import wechaty_puppet_service  # noqa: F401  (creates the PuppetService logger)

    logging.getLogger("PuppetService").addFilter(_redact_tokens)
    _patched = True


_secrets: set[str] = set()
_TOKEN_IN_ANGLES = re.compile(r"(token[^<]{0,40}<)[^>]*(>)", re.IGNORECASE)


def register_secret(secret: str) -> None:
    """A value (a puppet token) that must never appear in python-wechaty's log lines."""
    if secret:
        _secrets.add(secret)


def _redact_tokens(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    redacted = _TOKEN_IN_ANGLES.sub(r"\1***\2", message)
    for secret in _secrets:
        redacted = redacted.replace(secret, "***")
    if redacted != message:
        record.msg, record.args = redacted, ()
    return True


def load_wechaty(cache_dir: str | Path | None = None) -> ModuleType:
    prepare(cache_dir)
    import wechaty

    return wechaty


async def _nothing(*_args: object, **_kwargs: object) -> None:
    return None


def isolate_bot(bot: object) -> None:
    """Make one ``Wechaty`` instance safe to run beside (or after) another in the same process.

    Call after ``bot.init_puppet()``, which creates the per-bot user classes.

    * ``Contact``, ``Room`` and ``Tag`` keep class-level caches that every bot's subclasses share, and a
      cached object stays bound to the bot that loaded it: a second bot (a reconnect, another station,
      the next test) would send through a dead puppet. Each bot gets its own caches.
    * On login python-wechaty starts its plugin web server: it probes 127.0.0.1:5000 and refuses to log
      in if anything listens there, and starts an APScheduler. We use no plugins, so both are disabled,
      and so is the per-event plugin dispatch.
    """
    for name in ("Contact", "ContactSelf", "Room", "Tag"):
        cls = getattr(bot, name, None)
        if cls is not None:
            cls._pool = {}
    manager = bot._plugin_manager  # type: ignore[attr-defined]
    manager.start = _nothing
    manager.emit_events = _nothing
