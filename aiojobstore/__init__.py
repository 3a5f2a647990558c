"""aiojobstore: an async-first storage toolkit for workflow engines (local disk, S3, GCS).

>>> store = aiojobstore.open_store("file:/scratch/run1")              # a job store: jobs, files, logs
>>> objects = aiojobstore.open_object_store("s3://bucket/prefix")     # objects at keys you choose
"""

from .backends.base import CommonPrefix, ObjectInfo
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
from .jobstore import CleanReport, FileID, Job, JobStore, open_store
from .locator import parse_locator
from .objects import IfMatch, ObjectStore, PutMode, copy, open_object_store
from .transfer import TransferConfig

__version__ = "0.1.0"

__all__ = [
    "CleanReport",
    "CommonPrefix",
    "ConcurrentFileModificationException",
    "ConcurrentModificationError",
    "ConditionalWritesUnsupportedError",
    "CorruptRecordError",
    "EncryptionKeyError",
    "FileID",
    "IfMatch",
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
    "ObjectInfo",
    "ObjectStore",
    "PutMode",
    "StorageFullError",
    "TransferConfig",
    "TransferError",
    "copy",
    "open_object_store",
    "open_store",
    "parse_locator",
]
