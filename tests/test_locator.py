"""Locator parsing: every accepted form, and a clear error for everything else."""

from __future__ import annotations

import os

import pytest

from aiojobstore import InvalidLocatorError, open_store
from aiojobstore.locator import parse_locator


@pytest.mark.parametrize(("text", "scheme", "fields"), [
    ("file:/data/run1", "file", {"path": "/data/run1"}),
    ("file:///data/run1", "file", {"path": "/data/run1"}),
    ("/data/run1", "file", {"path": "/data/run1"}),
    ("memory:", "memory", {"name": "default"}),
    ("memory:abc", "memory", {"name": "abc"}),
    ("s3://my-bucket/some/prefix/", "s3", {"bucket": "my-bucket", "prefix": "some/prefix"}),
    ("s3://my-bucket", "s3", {"bucket": "my-bucket", "prefix": ""}),
    ("aws:us-west-2:my-run", "s3", {"bucket": "my-run", "region": "us-west-2"}),
    ("gs://bucket_1/p", "gs", {"bucket": "bucket_1", "prefix": "p"}),
    ("google:my-project:my-run", "gs", {"bucket": "my-run", "project": "my-project"}),
])
def test_accepted_forms(text, scheme, fields):
    parsed = parse_locator(text)
    assert parsed.scheme == scheme
    for name, value in fields.items():
        assert getattr(parsed, name) == value


def test_relative_path_is_made_absolute():
    assert parse_locator("runs/one").path == os.path.abspath("runs/one")


@pytest.mark.parametrize("text", [
    "ftp://host/x", "redis:thing", "", "s3://", "s3://UPPER/x", "s3://a/x", "s3://bad..name", "s3://192.168.1.1",
    "s3://b-ok/../up", "aws:nocolon", "aws::bucket", "gs://ab", "google:p:", "memory:bad/name", "file:",
    "file://relative/path",
])
def test_bad_locators_are_refused_with_the_accepted_forms(text):
    with pytest.raises(InvalidLocatorError, match="Accepted forms"):
        parse_locator(text)


def test_open_store_refuses_unknown_locator_before_any_io():
    with pytest.raises(InvalidLocatorError, match="unknown scheme"):
        open_store("azure://container/x")


@pytest.mark.parametrize("locator", ["memory:x", "file:/tmp/never-created-by-this-test"])
def test_unknown_backend_option_is_a_clear_error(locator):
    from aiojobstore import JobStoreError

    with pytest.raises(JobStoreError, match=r"unknown option.*endpoint_url"):
        open_store(locator, endpoint_url="http://127.0.0.1:9000")


@pytest.mark.parametrize("locator", ["memory:x", "file:/tmp/never-created-by-this-test"])
@pytest.mark.parametrize("option", ["direct_receive", "direct_requests"])
def test_s3_only_switches_are_unknown_options_elsewhere(locator, option):
    from aiojobstore import JobStoreError

    with pytest.raises(JobStoreError, match=rf"unknown option.*{option}"):
        open_store(locator, **{option: False})
