"""Progress reports to a caller's callback."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

ProgressCallback = Callable[[int, int | None], Any]


class Progress:
    """Reports bytes done (and the total when known) to a sync or async callback."""

    def __init__(self, callback: ProgressCallback | None, total: int | None = None) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self._is_async = callback is not None and (
            inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(type(callback).__call__)
        )

    async def advance(self, n: int) -> None:
        self.done += n
        if self.callback is None:
            return
        result = self.callback(self.done, self.total)
        if self._is_async or inspect.isawaitable(result):
            await result

    async def rewind(self, n: int) -> None:
        """Take back bytes of a part that is going to be retried."""
        await self.advance(-n)


class PartProgress:
    """The share of one part in a transfer's :class:`Progress`, reported per slice while the part's body is
    sent (from inside the HTTP client, so a callback's error is kept and raised by :meth:`finish`, never seen by
    the client as a failed request). Each attempt at the part calls :meth:`restart` first, which takes back what
    an earlier, failed attempt reported, so a retried part never counts twice."""

    def __init__(self, report: Progress) -> None:
        self.report = report
        self.sent = 0
        self.failure: Exception | None = None

    async def restart(self) -> None:
        if self.sent and self.failure is None:
            sent, self.sent = self.sent, 0
            await self._report(-sent)

    async def advance(self, n: int) -> None:
        if self.failure is None:
            self.sent += n
            await self._report(n)

    async def _report(self, n: int) -> None:
        try:
            await self.report.advance(n)
        except Exception as error:
            self.failure = error

    async def finish(self, length: int) -> None:
        """The part of ``length`` bytes was sent: report what its slices did not, or raise the callback's error."""
        if self.failure is not None:
            raise self.failure
        if length != self.sent:
            await self.report.advance(length - self.sent)
            self.sent = length
