"""Commits: generations as preconditions, per-call write tokens, and the roll-back of a cancelled commit.

Concurrency control: ``if_absent`` sends ``ifGenerationMatch=0`` and ``if_match`` sends
``ifGenerationMatch=<generation>`` (``ObjectInfo.etag`` is the generation). Every conditional write also stores a
per-call token (``ajs-write-token``), which the retry wrapper (:meth:`GCSClient._request`) recognises after a lost
answer. The gcp-storage-emulator ignores preconditions, so against an emulator each attempt of a conditional
request checks the generation itself, and conditional writes are serialised per key within the process by an
asyncio lock: correct for one process on the emulator, and the real precondition is always sent too.

Cancellation and failure (see :mod:`aiojobstore.commit`): uploading parts, intermediate composes and backups are
staging; a failure or a cancellation there deletes what was staged (``run_uncancelled``). The one request that
makes an object visible — the simple upload, the final compose, the rewrite of a copy — is the commit and runs
under ``commit_or_roll_back``: after ``task.cancel()`` (or ``asyncio.timeout``) it completes and is rolled back,
conditionally on ``ifGenerationMatch`` of the generation it created, so a later writer's object is never
touched: a created key is deleted; ``update_object`` re-uploads the previous bytes it read; any other overwrite
restores a **backup**: before overwriting an existing key, the backend copies it server-side (a rewrite) to
``<root>.ajs-tmp/<id>/backup``. Cost: every write that is not create-only first reads the key's metadata (one
GET); overwriting an existing key also costs the rewrite and a delete of the backup, which runs in the background
once the write returned (``close()`` waits for it), so that a write that returned has nothing left to await and an
anyio cancel scope sees it return normally. The composed commit deletes the temporary parts itself, for the same
reason. Caveats: the restored version is a new generation with the old bytes and metadata; a writer that slipped
in between the backup and an unconditional overwrite is overwritten by the restore; an object encrypted with a
key this store lacks cannot be backed up (a roll-back then keeps the new object, and logs it). A part upload that
is still in the network when its writer cleans up can be applied afterwards: such debris (and what killed writers
leave) is what :meth:`GCSBackend.reclaim` deletes once it is older than its grace period.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ...commit import commit_or_roll_back, new_write_token, run_uncancelled
from ...errors import ConcurrentModificationError, EncryptionKeyError, IntegrityError
from ...transfer import crc32c_async
from .client import log
from .copy import GCSCopies
from .upload import GCSUploads

# Per-key locks for the emulator fallback of preconditions: (loop, endpoint, bucket, object) -> lock.
_KEY_LOCKS: weakref.WeakValueDictionary[tuple[int, str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()

#: ``write(params, token)``: the one request that makes an object visible, given the precondition parameters and
#: the call's write token (``None`` for an unconditional write); returns the new object's resource.
CommitWrite = Callable[[dict[str, str], str | None], Awaitable[dict[str, Any]]]


@dataclass
class Undo:
    """How to roll back one write: restore ``previous`` (bytes, metadata, encrypted: update_object has them in
    hand), else restore the ``backup`` copy made under ``.ajs-tmp/`` before the write, else (the key did not
    exist) delete what the write created. ``restorable`` is false when an existing object could not be backed up."""

    previous: tuple[bytes, dict[str, str], bool] | None = None
    backup: str | None = None
    backup_encrypted: bool = False
    restorable: bool = True


class GCSConditional(GCSUploads, GCSCopies):
    """Conditional writes and the commit of every write."""

    def _key_lock(self, name: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        ident = (id(loop), self.api_root, self.bucket, name)
        lock = _KEY_LOCKS.get(ident)
        if lock is None:
            lock = asyncio.Lock()
            _KEY_LOCKS[ident] = lock
        return lock

    @asynccontextmanager
    async def _conditional(self, name: str, if_absent: bool, if_match: str | None) -> AsyncIterator[dict[str, str]]:
        """Yield the precondition query parameters; on an emulator also hold the key's lock (each attempt of the
        write then checks the precondition itself, see :meth:`_request`)."""
        params: dict[str, str] = {}
        if if_absent:
            params["ifGenerationMatch"] = "0"
        elif if_match is not None:
            params["ifGenerationMatch"] = str(if_match)
        if not params or not self.emulated:
            yield params
            return
        async with self._key_lock(name):
            yield params

    async def _commit(self, key: str, name: str, write: CommitWrite, *, if_absent: bool = False,
                      if_match: str | None = None, previous: tuple[bytes, dict[str, str], bool] | None = None,
                      verify: Callable[[dict[str, Any]], str | None] | None = None,
                      after: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Make ``name`` visible with ``write(params, token)`` (the one request that does it: an upload, the final
        compose, a rewrite) under the store's cancellation contract; returns the new object's resource.

        Conditional writes get the precondition ``params`` and a fresh write token. The commit runs to completion
        in its own task (:func:`~aiojobstore.commit.commit_or_roll_back`); ``verify(resource)`` (a message: the
        result is bad) and ``after(resource)`` run inside it, so an error there undoes the write too. When the
        caller was cancelled with ``task.cancel()`` meanwhile, the write is rolled back (:meth:`_roll_back`):
        deleted if it created the key, else the previous version restored, each conditional on the object still
        being the one this call wrote. To restore, ``previous`` (bytes, metadata, encrypted) is used when the
        caller has them (``update_object``); otherwise an existing object is first copied server-side to a backup
        under ``.ajs-tmp/`` (:meth:`_back_up`), deleted again after the write (in the background once the write
        succeeded, so that a write that returns has nothing left to await).
        """
        undo = Undo(previous=previous)
        backup_name: str | None = None
        try:
            if previous is None and not if_absent:
                backup_name = self._tmp_name(uuid.uuid4().hex, "backup")
                undo = await self._back_up(key, name, backup_name, generation=if_match)
            async with self._conditional(name, if_absent, if_match) as params:
                token = new_write_token() if params else None

                async def commit() -> dict[str, Any]:
                    return await self._commit_checked(key, name, lambda: write(params, token), undo, verify, after)

                async def roll_back(resource: dict[str, Any]) -> None:
                    await self._roll_back(key, name, resource, undo)

                resource = await commit_or_roll_back(commit, roll_back)
        except BaseException:
            if backup_name is not None:
                await run_uncancelled(lambda: self._delete_quietly([backup_name]))
            raise
        if undo.backup is not None:
            backup = undo.backup
            self._in_background(lambda: self._delete_quietly([backup]))
        return resource

    async def _commit_checked(self, key: str, name: str, write: Callable[[], Awaitable[dict[str, Any]]], undo: Undo,
                              verify: Callable[[dict[str, Any]], str | None] | None,
                              after: Callable[[dict[str, Any]], Awaitable[None]] | None) -> dict[str, Any]:
        """The commit's ``write()``, then ``verify`` and ``after``; a failure of either rolls the write back."""
        resource = await write()
        try:
            problem = verify(resource) if verify is not None else None
            if problem is not None:
                raise IntegrityError(problem)
            if after is not None:
                await after(resource)
        except BaseException:
            await self._roll_back(key, name, resource, undo)
            raise
        return resource

    async def _back_up(self, key: str, name: str, backup_name: str, *, generation: str | None) -> Undo:
        """Before an overwrite of ``name``: copy its current version server-side (a rewrite, which GCS does
        without moving the bytes through us) to ``backup_name``, what a roll-back restores. Nothing to copy when
        the key does not exist. With ``generation`` (``if_match``), ``ConcurrentModificationError`` unless that
        generation is the current one (the write would fail anyway). An object encrypted with a key this store
        lacks cannot be copied: the write then goes ahead without a way back (logged if it has to roll back)."""
        current = await self._resource(name)
        if generation is not None and (current is None or str(current.get("generation")) != str(generation)):
            raise ConcurrentModificationError(f"{key!r} changed since it was read (precondition failed)")
        if current is None:
            return Undo()
        encrypted = self._is_encrypted(current)
        try:
            self._check_read_key(key, current)
        except EncryptionKeyError:
            return Undo(restorable=False)
        await self._rewrite(self.bucket, name, backup_name, source_headers=self._key_headers(encrypted, source=True),
                            dest_headers=self._key_headers(encrypted), metadata=None, key=key,
                            params={"sourceGeneration": str(current["generation"])})
        return Undo(backup=backup_name, backup_encrypted=encrypted)

    async def _roll_back(self, key: str, name: str, created: dict[str, Any], undo: Undo) -> None:
        """Undo a write that made generation ``created`` of ``name``: restore the previous version or delete the
        object, conditionally (``ifGenerationMatch`` of ``created``), so another writer's later object is never
        touched."""
        only_ours = {"ifGenerationMatch": str(created.get("generation"))}
        try:
            if undo.previous is not None:
                data, metadata, encrypted = undo.previous
                await self._upload_simple(name, data, crc=await crc32c_async(data), metadata=metadata,
                                          encrypted=encrypted, params=only_ours, key=key,
                                          write_token=new_write_token())
            elif undo.backup is not None:
                await self._rewrite(self.bucket, undo.backup, name,
                                    source_headers=self._key_headers(undo.backup_encrypted, source=True),
                                    dest_headers=self._key_headers(undo.backup_encrypted), metadata=None, key=key,
                                    params=only_ours)
            elif undo.restorable:
                await self._request("DELETE", self._object_url(name), what=f"roll back {key}", key=key,
                                    params=only_ours, ok=(200, 204), missing_ok=True, target=name)
            else:
                log.warning("%s was overwritten by a write that was then cancelled, but its previous version "
                            "(encrypted with a key this store lacks) could not be backed up: the new one stays", key)
        except ConcurrentModificationError:
            log.info("not rolling back %s: another writer has replaced it since", key)

    async def _put(self, key: str, data: bytes, *, metadata: dict[str, str] | None, if_absent: bool = False,
                   if_match: str | None = None, encrypted: bool = False,
                   previous: tuple[bytes, dict[str, str], bool] | None = None,
                   crc: int | None = None) -> dict[str, Any]:
        """One simple upload of ``data`` (whose CRC32C is ``crc``, computed here if not given) as the commit (see
        :meth:`_commit`)."""
        name = self._name(key)
        data = bytes(data)
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        if crc is None:
            crc = await crc32c_async(data)

        async def write(params: dict[str, str], token: str | None) -> dict[str, Any]:
            return await self._upload_simple(name, data, crc=crc, metadata=meta, encrypted=encrypted, params=params,
                                             key=key, write_token=token)

        return await self._commit(key, name, write, if_absent=if_absent, if_match=if_match, previous=previous)
