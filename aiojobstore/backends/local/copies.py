"""Copies in the kernel, in parallel parts checksummed as they land: uploads of local files, downloads to local
files, and copies between keys; a source that is not a regular file is read as a stream."""

from __future__ import annotations

import functools
import io
import os
import stat as stat_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

from ...commit import run_uncancelled
from ...errors import IntegrityError, JobStoreError, NoSuchFileError
from ...transfer import Part, Progress, ProgressCallback, combine_part_crcs, plan_parts, run_parts
from ..base import META_KEY_SHA256, ObjectInfo, user_metadata
from .commit import Committed, Staged
from .files import STREAM_BUFFER, copy_range, os_errors
from .metadata import etag, verify
from .reading import Source
from .streams import Streams
from .threads import in_thread


class NotRegular(JobStoreError):
    """An upload's source is a device or a FIFO: it is read as a stream, not copied in parts."""


@dataclass
class Copy:
    """A copy in progress: its source and the staged destination."""

    source: Source
    staged: Staged
    expected: int | None  # the CRC32C recorded with the source
    label: str  # the source, for messages

    def copy_range(self, offset: int, length: int) -> int:
        """Copy one part; the CRC32C of what landed."""
        with os_errors(self.staged.key, self.staged.where):
            return copy_range(self.source.fd, self.staged.fd, offset, length)

    def release(self) -> None:
        try:
            self.staged.release()
        finally:
            self.source.release()


class Copies(Streams):
    """Kernel copies into and out of the store."""

    async def _kernel_copy(self, prepare: Callable[..., Copy], *args: Any, metadata: dict[str, str] | None,
                           progress: ProgressCallback | None) -> ObjectInfo:
        """Copy a source into a staged temp file in parallel parts (checksummed as written), verify it against
        the source's recorded CRC32C, then commit it."""
        job = await self._acquire(prepare, *args)
        committing = False
        try:
            size = job.source.st.st_size
            reporter = Progress(progress, size)

            async def copy_part(part: Part) -> tuple[int, int]:
                crc = await run_uncancelled(lambda: in_thread(job.copy_range, part.offset, part.length))
                await reporter.advance(part.length)
                return crc, part.length

            parts = plan_parts(size, self.transfer.part_size, max_parts=self.transfer.max_parts,
                               min_part_size=self.transfer.min_part_size)
            crcs = await run_parts(parts, copy_part, max_concurrency=self.transfer.max_concurrency)
            committing = True  # the commit owns job from here on
            return await self._run_commit(self._finish_copy, job, combine_part_crcs(crcs), metadata)
        finally:
            if not committing:
                await self._release(job.release)

    def _finish_copy(self, job: Copy, crc: int, metadata: dict[str, str] | None) -> Committed:
        try:
            with os_errors(job.staged.key, job.staged.where):
                if os.fstat(job.staged.fd).st_size != job.source.st.st_size:
                    raise IntegrityError(f"the copy of {job.label!r} came out at the wrong size")
            verify(job.label, job.expected, crc)
        except BaseException:
            job.release()
            raise
        job.source.release()
        job.staged.crc, job.staged.size = crc, job.source.st.st_size
        return self._commit(job.staged, metadata)

    def _prepare_upload(self, path: str, key: str, segments: Sequence[str]) -> Copy:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchFileError(path, "the local file to upload does not exist") from None
        try:
            st = os.fstat(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise JobStoreError(f"cannot upload {path!r}: it is a directory, not a file")
            if not stat_module.S_ISREG(st.st_mode):
                raise NotRegular(path)
        except BaseException:
            os.close(fd)
            raise
        return self._with_destination(Source(fd, st, {}), None, path, lambda: self._stage(key, segments))

    def _prepare_object_copy(self, key: str, segments: Sequence[str], stage: Callable[[], Staged]) -> Copy:
        source = self._open_object(key, segments)
        try:
            expected = self._expected_crc(key, source.metadata)
        except BaseException:
            source.release()
            raise
        return self._with_destination(source, expected, key, stage)

    @staticmethod
    def _with_destination(source: Source, expected: int | None, label: str, stage: Callable[[], Staged]) -> Copy:
        try:
            return Copy(source, stage(), expected, label)
        except BaseException:
            source.release()
            raise

    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        """Store a local file (parts copied in parallel, in the kernel). A source that is not a regular file — a
        character device such as ``/dev/null``, a FIFO — is read to its end as a stream instead."""
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        try:
            return await self._kernel_copy(self._prepare_upload, os.fspath(path), key, self._segments(key),
                                           metadata=meta, progress=progress)
        except NotRegular:
            return await self._upload_stream(os.fspath(path), key, metadata, encrypted, progress)

    async def _upload_stream(self, path: str, key: str, metadata: dict[str, str] | None, encrypted: bool,
                             progress: ProgressCallback | None) -> ObjectInfo:
        """Read a source that cannot be copied in parts (a device, a FIFO) to its end into ``key``."""
        reporter = Progress(progress, None)
        async with self.open_writer(key, metadata=metadata, encrypted=encrypted) as writer:
            source = await in_thread(io.FileIO, path, "r")
            try:
                while chunk := await in_thread(source.read, STREAM_BUFFER):
                    await writer.write(chunk)
                    await reporter.advance(len(chunk))
            finally:
                await run_uncancelled(functools.partial(in_thread, source.close))
        info = await self.stat(key)
        if info is None:
            raise NoSuchFileError(key, "the upload vanished right after it was written")
        return info

    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        segments = self._segments(key)
        target = os.path.abspath(path)
        info: list[ObjectInfo] = []

        def prepare() -> Copy:
            job = self._prepare_object_copy(key, segments, lambda: self._stage_local(target))
            st = job.source.st
            info.append(ObjectInfo(key, st.st_size, etag(st), st.st_mtime, job.source.metadata))
            return job

        await self._kernel_copy(prepare, metadata=None, progress=progress)
        return info[0]

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        src_segments, dst_segments = self._segments(src), self._segments(dst)
        kept: dict[str, str] = {}

        def prepare() -> Copy:
            job = self._prepare_object_copy(src, src_segments, lambda: self._stage(dst, dst_segments))
            kept.update(user_metadata(job.source.metadata))
            if META_KEY_SHA256 in job.source.metadata:
                kept[META_KEY_SHA256] = job.source.metadata[META_KEY_SHA256]
            kept.update(metadata or {})
            return job

        return await self._kernel_copy(prepare, metadata=kept, progress=None)
