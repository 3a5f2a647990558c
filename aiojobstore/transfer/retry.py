"""Retries: jittered exponential backoff (:class:`RetryPolicy`, :func:`with_retries`)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from .config import TransferConfig

log = logging.getLogger("aiojobstore.transfer")

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """Jittered exponential backoff ("full jitter") over at most ``max_attempts`` tries and ``deadline`` seconds."""

    max_attempts: int = 5
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    deadline: float = 300.0
    sleep: Callable[[float], Awaitable[None]] = field(default=anyio.sleep, repr=False)

    @classmethod
    def from_config(cls, config: TransferConfig) -> RetryPolicy:
        return cls(config.max_attempts, config.backoff_base, config.backoff_max, config.retry_deadline)

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1))))


async def with_retries(operation: Callable[[], Awaitable[T]], *, policy: RetryPolicy,
                       is_retryable: Callable[[BaseException], bool], what: str = "request") -> T:
    """Run ``operation`` until it succeeds, retrying the errors ``is_retryable`` accepts. The last error is
    raised as it is once attempts or the deadline run out; cancellation is never retried."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except Exception as error:
            if not is_retryable(error) or attempt >= policy.max_attempts:
                raise
            delay = policy.delay(attempt)
            if time.monotonic() - started + delay > policy.deadline:
                raise
            log.info("%s failed (attempt %d/%d): %r; retrying in %.2fs", what, attempt, policy.max_attempts, error,
                     delay)
            await policy.sleep(delay)
