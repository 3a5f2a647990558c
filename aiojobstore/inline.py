"""Running the async code in the caller's thread, without an event loop, where nothing in it has to wait.

The blocking facade (:mod:`aiojobstore.sync`) hands most calls to its event-loop thread. For small operations of
backends that keep data in memory or on local disk (a job load, a stat, a small write), that hand-off costs more
than the operation. Such a backend sets ``Backend.runs_inline``; the facade then drives the *same* coroutine of
the job store in the caller's thread with :func:`run_inline`, in inline mode: a backend's blocking work
(:func:`to_thread`) runs right there instead of in a worker thread, and a commit needs no shielding (no
cancellation can reach a caller that is not on an event loop). One implementation of every operation serves both
paths; only where the work runs differs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")

_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("aiojobstore_inline", default=False)


class SuspendedError(RuntimeError):
    """A coroutine run inline tried to wait for something: a bug of the backend's ``runs_inline`` claim."""


def inline_active() -> bool:
    """Whether the current code runs inline (in a blocking caller's thread, with no event loop)."""
    return _INLINE.get()


def run_inline(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` to its end in this thread, in inline mode. It must not suspend: every await in
    it completes at once (the backend's work runs here through :func:`to_thread`); if it does suspend,
    :class:`SuspendedError` is raised after the coroutine is closed."""
    token = _INLINE.set(True)
    try:
        coroutine = make()
        try:
            coroutine.send(None)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]
        coroutine.close()
        raise SuspendedError(f"{getattr(coroutine, '__qualname__', coroutine)!r} waited for something while run "
                             "inline; its backend's runs_inline promise does not hold for it")
    finally:
        _INLINE.reset(token)


async def to_thread(func: Callable[..., T], *args: Any, limiter: anyio.CapacityLimiter | None = None) -> T:
    """``func(*args)`` in a worker thread — or, inline, right here."""
    if _INLINE.get():
        return func(*args)
    return await anyio.to_thread.run_sync(func, *args, limiter=limiter)


__all__ = ["SuspendedError", "inline_active", "run_inline", "to_thread"]
