"""Locators: the strings that name a job store, parsed into a backend and its root.

| locator                     | backend | root                               |
|-----------------------------|---------|------------------------------------|
| ``file:/abs/path``, ``/abs/path``, ``rel/path`` | local | a directory            |
| ``memory:`` / ``memory:NAME`` | memory | an in-process store shared by name |
| ``s3://bucket/prefix``      | S3      | bucket + key prefix                |
| ``aws:REGION:BUCKET``       | S3      | bucket in REGION                   |
| ``gs://bucket/prefix``      | GCS     | bucket + object prefix             |
| ``google:PROJECT:BUCKET``   | GCS     | bucket in PROJECT                  |
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailableError, InvalidKeyError, InvalidLocatorError

if TYPE_CHECKING:
    from .backends.base import Backend

ACCEPTED_FORMS = (
    "file:/absolute/path, a plain path, memory:NAME, s3://bucket/prefix, aws:REGION:BUCKET, "
    "gs://bucket/prefix or google:PROJECT:BUCKET"
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.S)
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$|^[a-z0-9-]+$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.:-]+$")
_MEMORY_NAME = re.compile(r"^[A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Locator:
    """A parsed locator. ``scheme`` is ``file``, ``memory``, ``s3`` or ``gs``."""

    scheme: str
    text: str
    path: str = ""  # file: absolute directory
    name: str = ""  # memory: store name
    bucket: str = ""  # s3/gs
    prefix: str = ""  # s3/gs: key prefix without slashes at either end
    region: str | None = None  # aws:
    project: str | None = None  # google:

    def __str__(self) -> str:
        return self.text


def _bad(locator: str, why: str) -> InvalidLocatorError:
    return InvalidLocatorError(f"invalid job store locator {locator!r}: {why}. Accepted forms: {ACCEPTED_FORMS}")


def _check_s3_bucket(locator: str, bucket: str) -> None:
    if not _S3_BUCKET.match(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket:
        raise _bad(locator, f"{bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase letters, "
                            "digits, '.' and '-', starting and ending with a letter or digit)")
    try:
        ipaddress.ip_address(bucket)
    except ValueError:
        return
    raise _bad(locator, f"an S3 bucket name may not look like an IP address ({bucket!r})")


def _check_gcs_bucket(locator: str, bucket: str) -> None:
    if not _GCS_BUCKET.match(bucket) or ".." in bucket or bucket.startswith("goog"):
        raise _bad(locator, f"{bucket!r} is not a valid GCS bucket name (3-63 characters: lowercase letters, "
                            "digits, '-', '_' and '.', starting and ending with a letter or digit)")
    if "." not in bucket and len(bucket) > 63:
        raise _bad(locator, f"GCS bucket name {bucket!r} is longer than 63 characters")


def _split_bucket(locator: str, rest: str) -> tuple[str, str]:
    if not rest.startswith("//"):
        raise _bad(locator, "expected '//' after the scheme")
    bucket, _, prefix = rest[2:].partition("/")
    prefix = prefix.strip("/")
    if prefix:
        from .backends.base import validate_key

        try:
            validate_key(prefix)
        except InvalidKeyError as error:
            raise _bad(locator, f"bad prefix: {error}") from None
    return bucket, prefix


def parse_locator(locator: str | os.PathLike[str]) -> Locator:
    """Parse a locator string; raise :class:`InvalidLocatorError` saying which forms are accepted."""
    if isinstance(locator, os.PathLike):
        locator = os.fspath(locator)
    if not isinstance(locator, str) or not locator.strip():
        raise _bad(str(locator), "empty")
    text = locator
    match = _SCHEME.match(locator)
    if match is None or len(match.group(1)) == 1:  # a plain path (a single letter would be a drive)
        return Locator("file", text, path=os.path.abspath(os.path.expanduser(locator)))
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        if rest.startswith("//"):
            rest = rest[2:]
            if rest and not rest.startswith("/"):
                raise _bad(text, "a file:// URL needs an absolute path (file:///abs/path)")
        if not rest:
            raise _bad(text, "file: needs a directory path")
        return Locator("file", text, path=os.path.abspath(os.path.expanduser(rest)))
    if scheme == "memory":
        if not _MEMORY_NAME.match(rest):
            raise _bad(text, "a memory store name may use only letters, digits, '.', '_' and '-'")
        return Locator("memory", text, name=rest or "default")
    if scheme == "s3":
        bucket, prefix = _split_bucket(text, rest)
        _check_s3_bucket(text, bucket)
        return Locator("s3", text, bucket=bucket, prefix=prefix)
    if scheme in ("gs", "gcs"):
        bucket, prefix = _split_bucket(text, rest)
        _check_gcs_bucket(text, bucket)
        return Locator("gs", text, bucket=bucket, prefix=prefix)
    if scheme == "aws":
        region, sep, bucket = rest.partition(":")
        if not sep or not region or not _REGION.match(region):
            raise _bad(text, "expected aws:REGION:BUCKET, e.g. aws:us-west-2:my-workflow")
        _check_s3_bucket(text, bucket)
        return Locator("s3", text, bucket=bucket, region=region)
    if scheme == "google":
        project, sep, bucket = rest.partition(":")
        if not sep or not project or not _PROJECT.match(project):
            raise _bad(text, "expected google:PROJECT:BUCKET, e.g. google:my-project:my-workflow")
        _check_gcs_bucket(text, bucket)
        return Locator("gs", text, bucket=bucket, project=project)
    raise _bad(text, f"unknown scheme {scheme!r}")


_BACKEND_MODULES = {"memory": "memory", "file": "local", "s3": "s3", "gs": "gcs"}


def open_backend(locator: str | Locator, **options: Any) -> Backend:
    """Create the backend a locator names (no I/O). ``options`` are the backend's keyword options."""
    parsed = locator if isinstance(locator, Locator) else parse_locator(locator)
    module_name = f"{__package__}.backends.{_BACKEND_MODULES[parsed.scheme]}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise BackendUnavailableError(
            f"the {parsed.scheme} backend cannot be loaded ({error}); install aiojobstore with its dependencies"
        ) from error
    backend: Backend = module.from_locator(parsed, **options)
    return backend
