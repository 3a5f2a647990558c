"""The one exception hierarchy of aiojobstore.

Every error the library raises on purpose is a :class:`JobStoreError`. Toil's names are kept as aliases so
that code written against Toil's job stores catches the same conditions.
"""

from __future__ import annotations


class JobStoreError(Exception):
    """Base class of every error raised by aiojobstore."""


class InvalidLocatorError(JobStoreError, ValueError):
    """A locator string (or URL) names no store aiojobstore can open."""


class InvalidOptionError(JobStoreError, ValueError):
    """An option of ``open_store`` / ``open_object_store`` is unknown or has a bad value."""


class InvalidKeyError(JobStoreError, ValueError):
    """A file ID, key, shared-file name or state key is malformed or points outside the store."""


class NoSuchJobStoreError(JobStoreError):
    """The store was expected to exist (``resume``) but has not been initialized."""

    def __init__(self, locator: str, detail: str = "") -> None:
        self.locator = locator
        msg = f"no job store at {locator!r}: call initialize() to create one"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class JobStoreExistsError(JobStoreError):
    """``initialize`` was called on a store that already exists."""

    def __init__(self, locator: str) -> None:
        self.locator = locator
        super().__init__(
            f"a job store already exists at {locator!r}: call resume() to use it, or destroy() it first"
        )


class NoSuchJobError(JobStoreError):
    """No job with that ID is in the store. (Not a ``KeyError``: a bug raising ``KeyError`` inside a caller's
    code must not pass for a missing job.)"""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} in the store (deleted, or never created)")


class NoSuchFileError(JobStoreError, FileNotFoundError):
    """No file with that ID (or shared-file name) is in the store."""

    def __init__(self, file_id: str, detail: str = "") -> None:
        self.file_id = file_id
        msg = f"no file {file_id!r} in the store"
        super().__init__(msg + (f": {detail}" if detail else " (deleted, or never written)"))

    def __str__(self) -> str:
        return str(self.args[0])


class ConcurrentModificationError(JobStoreError):
    """A conditional write lost a race: the stored object changed since it was read."""


class CorruptRecordError(JobStoreError):
    """A stored record (a job, the config, a state entry) cannot be decoded: it is truncated, malformed, of the
    wrong shape, or in another codec than the store's. ``key`` names the object."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        super().__init__(f"the record {key!r} is corrupt or was not written by this store ({detail}); delete it, "
                         "or restore it from a backup")


class StorageFullError(JobStoreError):
    """The device or quota under the store is full; ``path`` names where the write failed."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        super().__init__(f"no space left to write {path!r}{': ' + detail if detail else ''}; free space (or "
                         "raise the quota) and retry; nothing partial was left behind")


class ConditionalWritesUnsupportedError(JobStoreError):
    """The server ignores conditional writes (``If-None-Match``/``If-Match``), so updates from several processes
    could be lost; the store refuses to run on it unless the user opts in to the racy fallback."""


class IntegrityError(JobStoreError):
    """Data read back does not match the size or checksum recorded when it was written."""


class EncryptionKeyError(JobStoreError):
    """An encrypted object was read without its key, with the wrong key, or encryption was asked for without one."""


class TransferError(JobStoreError):
    """A transfer failed after all its retries; the cause is chained."""


class BackendUnavailableError(JobStoreError):
    """The backend a locator names cannot be used here (a missing dependency, or bad credentials)."""


# Toil's names.
NoSuchJobException = NoSuchJobError
NoSuchFileException = NoSuchFileError
ConcurrentFileModificationException = ConcurrentModificationError
JobStoreExistsException = JobStoreExistsError
NoSuchJobStoreException = NoSuchJobStoreError
InvalidImportExportUrlException = InvalidLocatorError

__all__ = [
    "BackendUnavailableError",
    "ConcurrentFileModificationException",
    "ConcurrentModificationError",
    "ConditionalWritesUnsupportedError",
    "CorruptRecordError",
    "EncryptionKeyError",
    "IntegrityError",
    "InvalidImportExportUrlException",
    "InvalidKeyError",
    "InvalidLocatorError",
    "InvalidOptionError",
    "JobStoreError",
    "JobStoreExistsError",
    "JobStoreExistsException",
    "NoSuchFileError",
    "NoSuchFileException",
    "NoSuchJobError",
    "NoSuchJobException",
    "NoSuchJobStoreError",
    "NoSuchJobStoreException",
    "StorageFullError",
    "TransferError",
]
