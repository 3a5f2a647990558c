"""How a store moves data: :class:`TransferConfig` and the sizes it defaults to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError
from ..units import parse_size

MiB = 1 << 20
DEFAULT_PART_SIZE = 50 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
IO_SLICE_SIZE = MiB
#: Worker threads one store hashes local files with (:meth:`TransferLimits.file_crc32c`), queued in arrival order.
CHECKSUM_THREADS = max(2, os.cpu_count() or 2)


_SIZE_FIELDS = ("part_size", "max_memory", "min_part_size", "io_slice_size")


@dataclass(frozen=True)
class TransferConfig:
    """How a store moves data. Every field is a keyword argument of ``open_store``.

    ``part_size`` bytes per part (grown so no object needs more than ``max_parts``); ``max_concurrency`` parts in
    flight per transfer; ``max_requests`` requests in flight and ``max_memory`` bytes buffered for the whole store;
    each request is tried ``max_attempts`` times with jittered exponential backoff from ``backoff_base`` up to
    ``backoff_max`` seconds, giving up once ``retry_deadline`` seconds have passed. With ``direct_io``, downloads
    of at least one part write to disk with ``O_DIRECT`` where the filesystem allows it (see
    :class:`DownloadTarget`); ``False`` keeps every download in the page cache. Progress is reported per
    ``io_slice_size`` bytes sent or received. Switches of one service (S3's ``direct_receive``,
    ``direct_requests``) are that backend's options, not these.
    """

    part_size: int = DEFAULT_PART_SIZE
    max_concurrency: int = 8
    max_requests: int = 64
    max_memory: int = 1024 * MiB
    max_parts: int = MAX_PARTS
    min_part_size: int = MIN_PART_SIZE
    max_attempts: int = 5
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    retry_deadline: float = 300.0
    io_slice_size: int = IO_SLICE_SIZE
    direct_io: bool = True

    def __post_init__(self) -> None:
        for name in _SIZE_FIELDS:  # "50MiB" as well as 52428800
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                try:
                    object.__setattr__(self, name, parse_size(value))
                except ValueError as error:
                    raise InvalidOptionError(f"{name}: {error}") from None
        if self.part_size < 1:
            raise InvalidOptionError(f"part_size must be a positive number of bytes, not {self.part_size}")
        if self.max_concurrency < 1 or self.max_requests < 1:
            raise InvalidOptionError("max_concurrency and max_requests must be at least 1")
        if self.max_attempts < 1:
            raise InvalidOptionError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.max_parts < 1:
            raise InvalidOptionError(f"max_parts must be at least 1, not {self.max_parts}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TransferConfig:
        """Build a config from the transfer options in ``options``, removing them from the dict."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: options.pop(k) for k in list(options) if k in names})
