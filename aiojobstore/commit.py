"""Commits that cancellation cannot tear, and the per-call tokens that make retried writes idempotent.

Every write of every backend has two phases. *Staging* (writing a temp file, sending parts) may be cancelled at
any await: what was staged is discarded and the store is as before. The *commit* is one step that makes the
object visible (a rename, a PutObject, a CompleteMultipartUpload, a compose). Once a commit has started it runs to
completion in a task of its own, which no cancellation of the caller reaches (not ``task.cancel()``, not
``asyncio.timeout``, not an anyio cancel scope). Then:

* if the caller was cancelled by ``task.cancel()`` (which is also how ``asyncio.timeout`` and ``wait_for``
  cancel) while the commit ran, the backend rolls the commit back — it deletes the object it created, or restores
  the version it replaced, conditionally, so a later writer's object is never touched — and the cancellation is
  re-raised: a write that raises leaves the store as it was;
* an anyio cancel scope (``move_on_after``, ``fail_after``, a cancelled task group) does not interrupt a
  shielded commit: the write returns normally and anyio delivers the cancellation at the caller's next
  checkpoint, which is exactly anyio's contract for shielded work.

Either way the promise holds: a write that returns took effect, a write that raises did not.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from .inline import inline_active

log = logging.getLogger("aiojobstore.commit")

T = TypeVar("T")

#: Metadata key holding the token of the call that wrote an object (see :func:`new_write_token`).
META_WRITE_TOKEN = "ajs-write-token"


def new_write_token() -> str:
    """A fresh token for one write call. A backend stores it with the object (metadata ``ajs-write-token``), so
    that a retry whose first attempt was applied but whose answer was lost recognises the object as its own
    instead of reporting a conflict with itself or applying twice."""
    return secrets.token_hex(12)


async def _run_to_completion(make: Callable[[], Awaitable[T]]) -> tuple[T, BaseException | None]:
    """Run ``make()`` in its own task to the end; return its result and the cancellation (if any) that hit the
    caller meanwhile. An error of the task itself is raised as it is."""
    task: asyncio.Future[T] = asyncio.ensure_future(make())
    interrupted: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                await asyncio.shield(task)
                break
            except asyncio.CancelledError as error:
                if task.done() and task.cancelled():  # the commit task itself was cancelled (loop shutting down)
                    raise
                interrupted = error
                if task.done():
                    break
            except BaseException as failure:
                if interrupted is not None:  # it failed, so nothing took effect: the caller's cancellation wins
                    raise interrupted from failure
                raise
    if task.done() and not task.cancelled() and task.exception() is not None:
        if interrupted is not None:
            raise interrupted from task.exception()
        raise task.exception()  # type: ignore[misc]
    return task.result(), interrupted


async def commit_or_roll_back(commit: Callable[[], Awaitable[T]],
                              roll_back: Callable[[T], Awaitable[None]] | None) -> T:
    """Run ``commit()`` to completion whatever cancellation arrives; if ``task.cancel()`` reached the caller
    meanwhile, run ``roll_back(result)`` (also to completion) and re-raise that cancellation.

    ``commit`` must itself leave nothing behind when it raises. ``roll_back`` undoes a successful commit (it
    should be conditional on the object still being the one ``commit`` wrote); a failing roll-back is logged,
    and the cancellation is still raised.
    """
    if inline_active():  # a blocking caller's thread: nothing can cancel it
        return await commit()
    result, interrupted = await _run_to_completion(commit)
    if interrupted is None:
        return result
    if roll_back is not None:
        try:
            await _run_to_completion(lambda: roll_back(result))
        except Exception:
            log.exception("could not roll back a write whose caller was cancelled during its commit")
    raise interrupted


async def run_uncancelled(operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation()`` to completion (clean-up that must not be torn: an abort, a delete of staged parts);
    a cancellation that reached the caller meanwhile is re-raised afterwards."""
    if inline_active():
        return await operation()
    result, interrupted = await _run_to_completion(operation)
    if interrupted is not None:
        raise interrupted
    return result


__all__ = ["META_WRITE_TOKEN", "commit_or_roll_back", "new_write_token", "run_uncancelled"]
