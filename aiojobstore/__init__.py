"""aiojobstore: an async-first job store for workflow engines (local disk, S3, GCS).

>>> store = aiojobstore.open_store("file:/scratch/run1")
"""

from .errors import (
    ConcurrentFileModificationException,
    ConcurrentModificationError,
    ConditionalWritesUnsupportedError,
    CorruptRecordError,
    EncryptionKeyError,
    IntegrityError,
    InvalidKeyError,
    InvalidLocatorError,
    InvalidOptionError,
    JobStoreError,
    JobStoreExistsError,
    JobStoreExistsException,
    NoSuchFileError,
    NoSuchFileException,
    NoSuchJobError,
    NoSuchJobException,
    NoSuchJobStoreError,
    NoSuchJobStoreException,
    StorageFullError,
    TransferError,
)
from .jobstore import FileID, Job, JobStore, open_store
from .locator import parse_locator
from .transfer import TransferConfig

__version__ = "0.1.0"

__all__ = [
    "ConcurrentFileModificationException",
    "ConcurrentModificationError",
    "ConditionalWritesUnsupportedError",
    "CorruptRecordError",
    "EncryptionKeyError",
    "FileID",
    "IntegrityError",
    "InvalidKeyError",
    "InvalidLocatorError",
    "InvalidOptionError",
    "Job",
    "JobStore",
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
    "TransferConfig",
    "TransferError",
    "open_store",
    "parse_locator",
]
