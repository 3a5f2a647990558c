"""The job store distrusts what is stored: planted pickles, corrupt records, foreign objects — on every backend.

Records are planted through ``store.backend`` (so they carry a valid checksum and reach the codec); objects
planted behind the backend's back (without the store's checksum) are covered by each backend's own tests.
"""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest

from aiojobstore import CorruptRecordError, Job, JobStoreError, NoSuchJobError, open_store
from aiojobstore.layout import job_key as _job_key
from tests.conftest import open_target


class _Exploit:
    """Unpickling this creates a file: the proof that a record ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


async def test_planted_pickle_in_a_json_store_is_refused_without_running(store, tmp_path):
    sentinel = tmp_path / "pwned"
    job = await store.create_job(Job(name="victim", data=1))
    await store.backend.put_bytes(_job_key(job.id), pickle.dumps(_Exploit(str(sentinel))))
    with pytest.raises(CorruptRecordError, match="pickle"):
        await store.load_job(job.id)
    assert [j async for j in store.jobs()] == []
    assert not sentinel.exists()


@pytest.mark.parametrize("record", [
    b"{\"id\": \"x\", \"name\": ",  # truncated
    b"\xff\xfe not text",
    b"[" * 100_000 + b"]" * 100_000,  # nested past the recursion limit
    b"[1, 2, 3]",
    b"{\"id\": \"x\", \"version\": 1, \"data\": 3}",  # no name
    b"{\"id\": 5, \"name\": \"n\", \"version\": 1, \"data\": 3}",
    b"{\"id\": \"x\", \"name\": \"n\", \"version\": \"1\", \"data\": 3}",
    b"",
], ids=["truncated", "not-utf8", "deep", "list", "no-name", "int-id", "str-version", "empty"])
async def test_corrupt_record_gives_the_hierarchy_error_and_jobs_goes_past_it(store, record):
    good = await store.create_job(Job(name="good", data=1))
    bad = await store.create_job(Job(name="bad", data=2))
    await store.backend.put_bytes(_job_key(bad.id), record)
    with pytest.raises(CorruptRecordError) as raised:
        await store.load_job(bad.id)
    assert _job_key(bad.id) in str(raised.value)
    assert [j.id async for j in store.jobs()] == [good.id]
    with pytest.raises(CorruptRecordError):
        await store.update_job(Job("bad", 3, bad.id, 1))


async def test_record_claiming_another_id_is_corrupt(store):
    a = await store.create_job(Job(name="a", data=1))
    b = await store.create_job(Job(name="b", data=2))
    await store.backend.put_bytes(_job_key(b.id), store.codec.encode(Job("a", 1, a.id, 1)))
    with pytest.raises(CorruptRecordError, match="says it is job"):
        await store.load_job(b.id)


async def test_missing_job_is_not_a_key_error(store):
    with pytest.raises(NoSuchJobError) as raised:
        await store.load_job("0" * 32)
    assert not isinstance(raised.value, KeyError)


async def test_corrupt_config_is_refused_with_its_key(store_target, store):
    await store.backend.put_bytes("config.json", b"{not json")
    again = open_target(store_target)
    with pytest.raises(CorruptRecordError, match=r"config\.json"):
        await again.resume()
    await again.close()


async def test_pickle_store_opens_only_with_codec_pickle(tmp_path):
    locator = f"file:{tmp_path}/pickled"
    async with open_store(locator, codec="pickle") as created:
        await created.initialize()
        job = await created.create_job(Job(name="p", data={1, 2}))
    async with open_store(locator) as default:
        with pytest.raises(JobStoreError, match="codec='pickle'"):
            await default.resume()
    async with open_store(locator, codec="json") as wrong:
        with pytest.raises(JobStoreError, match="codec='pickle'"):
            await wrong.resume()
    async with open_store(locator, codec="pickle") as right:
        await right.resume()
        assert (await right.load_job(job.id)).data == {1, 2}


async def test_export_into_a_directory_that_does_not_exist(store, tmp_path):
    source = tmp_path / "tool.sh"
    source.write_bytes(b"#!/bin/sh\necho hi\n")
    source.chmod(0o755)
    file_id = await store.write_file(source)
    target = tmp_path / "new" / "deeper" / "tool.sh"
    await store.export_file(file_id, target.as_uri())
    assert target.read_bytes() == source.read_bytes()
    assert os.stat(target).st_mode & stat.S_IXUSR


async def test_read_file_with_symlink_keeps_the_executable_bit(store, tmp_path):
    source = tmp_path / "run.sh"
    source.write_bytes(b"#!/bin/sh\n")
    source.chmod(0o755)
    file_id = await store.write_file(source)
    plain = tmp_path / "data.txt"
    plain.write_bytes(b"data")
    plain_id = await store.write_file(plain)
    out, out_plain = tmp_path / "out.sh", tmp_path / "out.txt"
    await store.read_file(file_id, out, symlink=True)
    await store.read_file(plain_id, out_plain, symlink=True)
    assert os.stat(out).st_mode & stat.S_IXUSR
    assert out.read_bytes() == b"#!/bin/sh\n" and out_plain.read_bytes() == b"data"
    assert not os.stat(out_plain).st_mode & stat.S_IXUSR


async def test_clean_deletes_jobs_unreachable_from_the_root(store):
    leaf = await store.create_job(Job(name="leaf", data={"successors": []}))
    middle = await store.create_job(Job(name="middle", data={"successors": [leaf.id]}))
    await store.create_root_job(Job(name="root", data={"successors": [middle.id, "0" * 32]}))
    orphan = await store.create_job(Job(name="orphan", data={"successors": [leaf.id]}))
    async with store.write_file_stream(job_id=orphan.id, cleanup=True) as (writer, orphan_file):
        await writer.write(b"orphan's file")
    report = await store.clean(lambda job: job.data["successors"])
    assert report.jobs_deleted == [orphan.id]
    assert not await store.job_exists(orphan.id) and not await store.file_exists(orphan_file)
    assert await store.job_exists(leaf.id) and await store.job_exists(middle.id)
    assert (await store.clean()).jobs_deleted == []  # without successors no job is deleted


async def test_clean_without_root_job_deletes_no_job(store):
    job = await store.create_job(Job(name="lonely"))
    report = await store.clean(lambda job: [])
    assert report.jobs_deleted == [] and await store.job_exists(job.id)


async def test_clean_reclaims_claims_of_vanished_logs_only_when_old(store):
    await store.backend.put_bytes("logs/claims/00000000000000000001-dead", json.dumps({"expires": 0}).encode())
    assert (await store.clean(older_than=3600)).debris.kinds.get("log-claim") is None
    report = await store.clean(older_than=0)
    assert report.debris.kinds["log-claim"] == 1
    assert [i.key async for i in store.backend.list("logs/claims/")] == []


async def test_import_and_export_follow_links_in_the_users_own_paths(store, tmp_path):
    real = tmp_path / "real.txt"
    real.write_bytes(b"linked input")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    file_id = await store.import_file(link.as_uri())
    async with store.read_file_stream(file_id) as reader:
        assert await reader.read() == b"linked input"
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    (tmp_path / "via").symlink_to(out_dir)
    await store.export_file(file_id, (tmp_path / "via" / "out.txt").as_uri())
    assert (out_dir / "out.txt").read_bytes() == b"linked input"
