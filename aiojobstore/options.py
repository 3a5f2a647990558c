"""The keyword options of ``open_store`` and ``open_object_store``, typed, so that a type checker catches a
misspelt one (``part_sise=``) and a wrong type. At run time an unknown option raises ``InvalidOptionError``.

Sizes take bytes or strings such as ``"50MiB"`` (see :func:`aiojobstore.units.parse_size`).
"""

from __future__ import annotations

from typing import Literal, TypedDict


class TransferOptions(TypedDict, total=False):
    """How a store moves data (:class:`aiojobstore.transfer.TransferConfig`), on every backend."""

    part_size: int | str
    max_concurrency: int
    max_requests: int
    max_memory: int | str
    max_parts: int
    min_part_size: int | str
    max_attempts: int
    backoff_base: float
    backoff_max: float
    retry_deadline: float
    io_slice_size: int | str
    direct_io: bool


class S3Options(TypedDict, total=False):
    """The S3 backend's own options; anything not given comes from the AWS environment and profiles."""

    endpoint_url: str
    region_name: str
    aws_access_key_id: str
    aws_secret_access_key: str
    aws_session_token: str
    profile_name: str
    conditional_writes: Literal["require", "unsafe-fallback"]
    direct_receive: bool
    direct_requests: bool


class GCSOptions(TypedDict, total=False):
    """The GCS backend's own options; anything not given comes from the Google environment."""

    project: str
    service_file: str
    emulator_host: str
    request_timeout: float


class LocalOptions(TypedDict, total=False):
    """The ``file:`` backend's own option."""

    fsync: bool


class ObjectStoreOptions(TransferOptions, S3Options, GCSOptions, LocalOptions, total=False):
    """Every option of :func:`aiojobstore.open_object_store` (each backend takes the transfer options and its
    own; ``sse_key`` is for S3 and GCS, which encrypt at rest)."""

    sse_key: bytes | str


class StoreOptions(ObjectStoreOptions, total=False):
    """Every option of :func:`aiojobstore.open_store`: the object store's, and the job store's own."""

    codec: Literal["json", "pickle"]
    public_url_expires: int
    require_checksums: bool
    http_idle_timeout: float


__all__ = ["GCSOptions", "LocalOptions", "ObjectStoreOptions", "S3Options", "StoreOptions", "TransferOptions"]
