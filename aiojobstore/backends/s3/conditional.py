"""Conditional writes and commits: the probe of If-None-Match / If-Match (and of SSE-C copies), the condition
headers, the recognition of a write of this call's own by its token, and the commit of a write with the
capture of what it replaces (in memory or a server-side backup) and its roll-back (see the package docstring).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ...commit import META_WRITE_TOKEN, commit_or_roll_back, new_write_token, run_uncancelled
from ...errors import (
    ConcurrentModificationError,
    ConditionalWritesUnsupportedError,
    EncryptionKeyError,
    JobStoreError,
    NoSuchFileError,
    TransferError,
)
from ...transfer import MiB
from ...transfer.verify import ReplacedWhileReading
from ..base import META_KEY_SHA256, ObjectInfo
from .client import _bare, _error_code, _quoted, log
from .read import S3Reads

#: Keys of the conditional-write probes: one per probing backend (a fresh token follows), never shared.
_PROBE_PREFIX = ".aiojobstore-conditional-probe-"

#: Temporary copies of objects being replaced, kept until the replacing commit is over (see ``_capture``).
_BACKUP_PREFIX = ".aiojobstore-backup/"

#: Previous versions up to this size are kept in memory by a replacing write (else copied server-side).
_KEEP_IN_MEMORY = 8 * MiB

#: The largest object one CopyObject copies (5 GiB): larger ones are copied part by part (UploadPartCopy).
MAX_COPY_OBJECT = 5 * 1024 * MiB


class S3Conditional(S3Reads):
    """Conditional writes (probed once), write tokens, and the commit of a write with its roll-back."""

    async def _conditions_honoured(self, *, required: bool = False) -> bool:
        """Whether the server honours If-None-Match / If-Match on PutObject, probed once per backend before the
        first write (so the If-Match form is known before any conditional request is built: Ceph RGW 16
        compares it without the quotes S3 returns). ``required``: a conditional write is about to rely on it, so a
        server that ignores conditions raises :class:`ConditionalWritesUnsupportedError` unless the store was
        opened with ``conditional_writes="unsafe-fallback"``."""
        if self._conditional_ok is None:
            if self._probe_lock is None:
                self._probe_lock = anyio.Lock()
            async with self._probe_lock:
                if self._conditional_ok is None:
                    self._conditional_refusal = await self._probe_conditions()
                    self._conditional_ok = self._conditional_refusal is None
        if not self._conditional_ok and required and self.conditional_writes != "unsafe-fallback":
            raise ConditionalWritesUnsupportedError(
                f"the S3 server behind {self.describe()} {self._conditional_refusal}, so updates from several "
                "processes could be lost. Use a server that honours If-None-Match/If-Match on PutObject, or open "
                "the store with conditional_writes='unsafe-fallback' to accept a racy HEAD-then-PUT check instead")
        return self._conditional_ok

    async def _probe_conditions(self) -> str | None:
        """Probe conditional PutObject on a key of this call's own (``_PROBE_PREFIX`` + a fresh token), which no
        other process writes or deletes, so no answer can be caused by another writer. Returns ``None`` when both
        conditions are honoured, else what the server does wrong."""
        probe_key = _PROBE_PREFIX + new_write_token()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(probe_key), "Body": b""}

        async def put(**condition: str) -> str | None:
            """The refusal of a conditional put: None (accepted), "412", or the error."""
            request: dict[str, Any] = {**params, **condition}
            try:
                await self._request("put_object", key=probe_key, **request)
            except ConcurrentModificationError:
                return "412"
            except TransferError as error:
                return f"{_error_code(error.__cause__) or error}"
            return None

        try:
            etag = (await self._request("put_object", key=probe_key, **params)).get("ETag") or ""
            refused = await put(IfNoneMatch="*")
            if refused is None:
                return "ignores If-None-Match: * on PutObject (a create of an existing key succeeded)"
            if refused != "412":
                return f"rejects If-None-Match: * on PutObject ({refused})"
            for form in (_quoted(etag), _bare(etag)):
                if await put(IfMatch=form) is None:
                    self._if_match_bare = form != _quoted(etag)
                    break
            else:
                return "refuses If-Match with the object's own ETag on PutObject"
            wrong = '"00000000000000000000000000000000"'
            if await put(IfMatch=_bare(wrong) if self._if_match_bare else wrong) is None:
                return "ignores If-Match on PutObject (a write with a wrong ETag succeeded)"
            return None
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(JobStoreError):
                await self._request("delete_object", key=probe_key, Bucket=self.bucket, Key=self._full(probe_key))

    async def _copies_sse_c(self) -> bool:
        """Whether the server copies SSE-C objects server-side (Ceph RGW 16 does not), probed once on a key of
        this backend's own."""
        if self._sse_copy_ok is None:
            probe = _PROBE_PREFIX + new_write_token()
            sse = self._sse(True)
            full = self._full(probe)
            try:
                await self._request("put_object", key=probe, Bucket=self.bucket, Key=full, Body=b"", **sse)
                try:
                    await self._request("copy_object", key=probe, Bucket=self.bucket, Key=full,
                                        CopySource={"Bucket": self.bucket, "Key": full}, MetadataDirective="REPLACE",
                                        Metadata={"probe": "1"}, CopySourceSSECustomerAlgorithm="AES256",
                                        CopySourceSSECustomerKey=sse["SSECustomerKey"], **sse)
                    self._sse_copy_ok = True
                except TransferError as error:
                    if _error_code(error.__cause__) != "NotImplemented":
                        raise
                    self._sse_copy_ok = False
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(JobStoreError):
                    await self._delete_quietly(probe)
        return self._sse_copy_ok

    async def _check_condition(self, key: str, if_absent: bool, if_match: str | None) -> None:
        """The fallback for servers that ignore conditional headers: check right before writing."""
        if not if_absent and if_match is None:
            return
        response = await self._head_raw_any(key)
        if if_absent and response is not None:
            raise ConcurrentModificationError(f"{key!r} already exists")
        if if_match is not None and (response is None or _bare(response.get("ETag")) != _bare(if_match)):
            raise ConcurrentModificationError(f"{key!r} changed since it was read")

    async def _head_raw_any(self, key: str) -> dict[str, Any] | None:
        try:
            return await self._head_raw(key)
        except JobStoreError:
            if self.sse_key is None:
                return {"ETag": None}
            return await self._head_raw(key, self._sse(True))

    def _condition_params(self, if_absent: bool, if_match: str | None) -> dict[str, str]:
        """The condition headers, in the form the server compares (call :meth:`_conditions_honoured` first)."""
        assert self._conditional_ok is not None, "the If-Match form is learned by _conditions_honoured()"
        params: dict[str, str] = {}
        if if_absent:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = _bare(if_match) if self._if_match_bare else _quoted(if_match)
        return params

    async def _own_write(self, key: str, meta: dict[str, str], encrypted: bool) -> ObjectInfo | None:
        """The stored object's info if it is the one this call wrote (its write token is ``meta``'s): a retried
        request whose first attempt was applied though its answer was lost."""
        token = meta.get(META_WRITE_TOKEN)
        if token is None:
            return None
        try:
            response = await self._head_raw(key, self._sse(encrypted))
        except JobStoreError:
            return None
        if response is None or response.get("Metadata", {}).get(META_WRITE_TOKEN) != token:
            return None
        return self._info(key, response)

    async def _capture(self, key: str, *, if_match: str | None = None) -> _Previous:
        """What a write of ``key`` is about to replace, kept so that a commit the caller's cancellation
        interrupts can be undone: nothing (the key is absent), the bytes and metadata (up to
        :data:`_KEEP_IN_MEMORY`), or a server-side copy under :data:`_BACKUP_PREFIX`. With ``if_match``, a stored
        object of another ETag raises ``ConcurrentModificationError`` (the write's own condition would fail)."""
        head = await self._head_for_capture(key)
        if head is None:
            if if_match is not None:
                raise ConcurrentModificationError(f"{key!r} no longer exists (it was deleted since it was read)")
            return _Previous(existed=False)
        response, sse = head
        etag = response.get("ETag")
        token = response.get("Metadata", {}).get(META_WRITE_TOKEN)
        if if_match is not None and _bare(etag) != _bare(if_match):
            raise ConcurrentModificationError(f"{key!r} changed (or was created) by someone else since it was read")
        size = int(response.get("ContentLength", 0))
        if size <= _KEEP_IN_MEMORY:
            try:
                data, info = await self._get_whole(key)
            except (ReplacedWhileReading, NoSuchFileError):
                data, info = b"", None
            except EncryptionKeyError:  # written with another key: replaceable, not restorable
                return _Previous(existed=True, etag=etag, restorable=False)
            if info is None or (if_match is not None and _bare(info.etag) != _bare(if_match)):
                raise ConcurrentModificationError(f"{key!r} changed (or was deleted) while this write read it")
            return _Previous(existed=True, etag=info.etag, data=data, metadata=info.metadata, encrypted=bool(sse),
                             token=info.metadata.get(META_WRITE_TOKEN))
        if size <= MAX_COPY_OBJECT:
            backup = _BACKUP_PREFIX + new_write_token()
            copy_sse = {"CopySourceSSECustomerAlgorithm": "AES256",
                        "CopySourceSSECustomerKey": sse["SSECustomerKey"]} if sse else {}
            try:
                await self._request("copy_object", key=backup, Bucket=self.bucket, Key=self._full(backup),
                                    CopySource={"Bucket": self.bucket, "Key": self._full(key)},
                                    CopySourceIfMatch=etag, MetadataDirective="COPY", **sse, **copy_sse)
                return _Previous(existed=True, etag=etag, backup_key=backup, encrypted=bool(sse), token=token)
            except ConcurrentModificationError:
                raise
            except JobStoreError as error:  # Ceph RGW 16 cannot copy SSE-C objects server-side
                log.warning("S3 %s: cannot back %r up before replacing it (%s); a cancellation while it is "
                            "replaced cannot restore it", self.describe(), key, error)
        return _Previous(existed=True, etag=etag, encrypted=bool(sse), restorable=False, token=token)

    async def _head_for_capture(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The raw HEAD of ``key`` and the SSE-C parameters its reads need (``None`` when missing)."""
        try:
            response, sse = await self._with_sse_retry(key, lambda sse: self._head_raw(key, sse))
        except EncryptionKeyError:
            return {"ETag": None, "ContentLength": MAX_COPY_OBJECT + 1}, {}  # not ours to read: not restorable
        return None if response is None else (response, sse)

    async def _commit(self, key: str, commit: Callable[[], Awaitable[tuple[ObjectInfo, _Previous]]]) -> ObjectInfo:
        """Run ``commit`` (which returns what it wrote and what it replaced) to completion whatever cancellation
        arrives (:func:`~aiojobstore.commit.commit_or_roll_back`); a caller cancelled by ``task.cancel()``
        meanwhile gets the previous state back. The backup a commit took is deleted either way."""
        async def roll_back(result: tuple[ObjectInfo, _Previous]) -> None:
            await self._roll_back(key, *result)

        info, previous = await commit_or_roll_back(commit, roll_back)
        if previous.backup_key:
            await run_uncancelled(lambda: self._delete_quietly(previous.backup_key or ""))
        return info

    async def _roll_back(self, key: str, written: ObjectInfo, previous: _Previous) -> None:
        """Undo a committed write of ``key`` if the stored object is still the one it wrote (its token):
        delete it, or put back the version it replaced."""
        try:
            if await self._own_write(key, written.metadata, META_KEY_SHA256 in written.metadata) is None:
                log.warning("S3 %s: %r was replaced by another writer before a cancelled write could be rolled "
                            "back; the newer object stays", self.describe(), key)
                return
            if not previous.existed:
                await self._delete_quietly(key)
            elif previous.data is not None:
                assert previous.metadata is not None
                await self._conditions_honoured()
                params = {"Bucket": self.bucket, "Key": self._full(key), "Body": previous.data,
                          "ContentLength": len(previous.data), "Metadata": previous.metadata,
                          **self._sse(previous.encrypted)}
                if self._conditional_ok:
                    params.update(self._condition_params(False, written.etag))
                await self._request("put_object", key=key, **params)
            elif previous.backup_key:
                sse = self._sse(previous.encrypted)
                copy_sse = {"CopySourceSSECustomerAlgorithm": "AES256",
                            "CopySourceSSECustomerKey": sse["SSECustomerKey"]} if sse else {}
                await self._request("copy_object", key=key, Bucket=self.bucket, Key=self._full(key),
                                    CopySource={"Bucket": self.bucket, "Key": self._full(previous.backup_key)},
                                    MetadataDirective="COPY", **sse, **copy_sse)
            else:
                log.warning("S3 %s: a cancelled write replaced %r, whose previous version could not be kept; it "
                            "stays replaced", self.describe(), key)
        except ConcurrentModificationError:
            log.warning("S3 %s: %r changed during the roll-back of a cancelled write; the newer object stays",
                        self.describe(), key)
        finally:
            if previous.backup_key:
                await self._delete_quietly(previous.backup_key)


@dataclass
class _Previous:
    """What a commit replaced, kept to put it back if the caller is cancelled during the commit: nothing
    (``existed`` False), its bytes and metadata, or a server-side copy at ``backup_key``."""

    existed: bool
    etag: str | None = None
    data: bytes | None = None
    metadata: dict[str, str] | None = None
    encrypted: bool = False
    backup_key: str | None = None
    restorable: bool = True
    token: str | None = None
