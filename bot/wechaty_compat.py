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
* grpclib (0.4.x, under python-wechaty) wakes a call whose connection was lost by cancelling the calling
  *task* and re-raising the cancellation as ``StreamTerminatedError``, without 3.11's ``Task.uncancel()``:
  the task stays "cancelling", and our loops that tell a stop from an error by ``task.cancelling()`` (the
  outbox sender) ended for good on the first send that met a dropped connection. We undo exactly the
  cancellations grpclib requested (:func:`_uncancel_grpclib_wakeups`).

Import :func:`load_wechaty` instead of ``wechaty`` anywhere in the project.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

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
    _uncancel_grpclib_wakeups()
    _patched = True


def _uncancel_grpclib_wakeups() -> None:
    """Make grpclib's ``Wrapper`` take back the task cancellations it uses as wake-ups.

    ``Wrapper.cancel(error)`` (connection lost, deadline passed) calls ``task.cancel()`` on every task inside
    the wrapper; ``Wrapper.__exit__`` then raises ``error`` in place of the ``CancelledError``. We count the
    cancels per task and, when that ``CancelledError`` arrives in ``__exit__``, ``uncancel()`` them, so that
    the task's ``cancelling()`` again counts only real cancellations (a stop arriving at the same moment is
    kept). Idempotent.
    """
    from grpclib import utils

    wrapper = utils.Wrapper
    if getattr(wrapper, "_gonghao_uncancels", False):
        return
    original_cancel = wrapper.cancel
    original_exit = wrapper.__exit__

    def cancel(self: Any, error: Exception) -> None:
        woken: dict[asyncio.Task[Any], int] = self.__dict__.setdefault("_gonghao_woken", {})
        for task in self._tasks:
            if not task.done():  # Task.cancel() counts only on a task that is not done
                woken[task] = woken.get(task, 0) + 1
        original_cancel(self, error)

    def exit_(self: Any, exc_type: type[BaseException] | None, exc_val: BaseException | None,
              exc_tb: TracebackType | None) -> None:
        # Only when the wake-up was delivered here: a cancel not delivered yet would still arrive later.
        # (Checked in this order because this runs on every gRPC call's every await.)
        if exc_type is asyncio.CancelledError and self._error is not None:
            task = asyncio.current_task()
            woken: dict[asyncio.Task[Any], int] = self.__dict__.get("_gonghao_woken", {})
            if task is not None and task in woken:
                for _ in range(woken.pop(task)):
                    if task.cancelling():
                        task.uncancel()
        original_exit(self, exc_type, exc_val, exc_tb)

    wrapper.cancel = cancel  # type: ignore[method-assign]
    wrapper.__exit__ = exit_  # type: ignore[method-assign,assignment]
    wrapper._gonghao_uncancels = True  # type: ignore[attr-defined]


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


def cached_contact(bot: Any, contact_id: str) -> Any | None:
    """The bot's Contact for ``contact_id`` if python-wechaty already holds one, without creating it:
    ``Contact.load`` caches a new object for every id it is asked about, forever (in a district, an object
    per resident that ever spoke, all of it for the garbage collector to walk)."""
    return bot.Contact._pool.get(contact_id)  # the per-bot pool isolate_bot gives each bot


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
