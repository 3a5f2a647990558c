"""The transfer engine, shared by every backend that moves data in parts.

Planning (:func:`plan_parts`) is separate from executing (:class:`PartWindow`, :func:`run_parts`,
:func:`with_retries`) and from reporting (:class:`Progress`). Store-wide limits on requests in flight and bytes
held in memory live in :class:`TransferLimits`, one per store. Checksums are CRC32C, computed in worker threads,
and combined arithmetically so that parts can be hashed in parallel and in any order.

A backend plugs its service's primitives into the engine's algorithms, each written once here:

- :mod:`.reader`: the read-ahead reader over "get bytes [start, end) of this version";
- :mod:`.writer`: the part-buffered atomic write stream over "put a small object / start / send a part /
  complete / abort";
- :mod:`.download`: parallel resumable ranged GETs into a :class:`DownloadTarget`;
- :mod:`.verify`: checksum mismatch -> retry once -> ``IntegrityError``.
"""

from .budget import MemoryBudget, PartBuffer, PartBuffers, TransferLimits, TransferShare
from .checksums import (
    combine_part_crcs,
    crc32c,
    crc32c_async,
    crc32c_combine,
    crc32c_from_b64,
    crc32c_to_b64,
    file_range_crc32c,
)
from .config import (
    CHECKSUM_THREADS,
    DEFAULT_PART_SIZE,
    IO_SLICE_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    MiB,
    TransferConfig,
)
from .download import RECEIVE_BUFFER_SIZE, DownloadRange, RangeSink, download_ranges
from .files import (
    DIRECT_IO_ALIGN,
    DownloadTarget,
    RangeWriter,
    iter_buffer_slices,
    iter_file_slices,
    preallocate,
    read_file_range,
    unlink_quietly,
    write_file_range,
)
from .plan import Part, PartWindow, byte_ranges, choose_part_size, clamp_range, plan_parts, run_parts
from .progress import PartProgress, Progress, ProgressCallback
from .retry import RetryPolicy, with_retries

__all__ = [
    "CHECKSUM_THREADS", "DEFAULT_PART_SIZE", "DIRECT_IO_ALIGN", "IO_SLICE_SIZE", "MAX_PARTS", "MIN_PART_SIZE",
    "RECEIVE_BUFFER_SIZE", "DownloadRange", "DownloadTarget", "MemoryBudget", "MiB", "Part", "PartBuffer",
    "PartBuffers", "PartProgress", "PartWindow", "Progress", "ProgressCallback", "RangeSink", "RangeWriter",
    "RetryPolicy",
    "TransferConfig", "TransferLimits", "TransferShare", "byte_ranges", "choose_part_size", "clamp_range",
    "combine_part_crcs", "crc32c", "crc32c_async", "crc32c_combine", "crc32c_from_b64", "crc32c_to_b64",
    "download_ranges", "file_range_crc32c", "iter_buffer_slices", "iter_file_slices", "plan_parts", "preallocate",
    "read_file_range", "run_parts", "unlink_quietly", "with_retries", "write_file_range",
]
