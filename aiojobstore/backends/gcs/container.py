"""The store's container: the bucket, the marker object that makes a prefix a store (``.ajs-container``),
destruction, the reclaiming of what dead writers left under ``.ajs-tmp/``, and closing the session."""

from __future__ import annotations

import asyncio
import time

from ...commit import new_write_token, run_uncancelled
from ...errors import ConcurrentModificationError, JobStoreError, NoSuchFileError
from ..base import ReclaimReport
from .client import CONTAINER_MARKER, TMP_DIR, parse_time
from .upload import GCSUploads


class GCSContainer(GCSUploads):
    """Bucket and marker, destroy, reclaim, close."""

    async def create(self) -> bool:
        """Create the bucket if it is missing and mark the location as a store; True if this call created it."""
        status, _, _ = await self._request("GET", self._bucket_url(), what=f"get bucket {self.bucket}",
                                           missing_ok=True)
        bucket_created = False
        if status == 404:
            project = self.project or ("test" if self.emulated else None)
            if project is None:
                project = await self._ensure_token().get_project()
            if not project:
                raise JobStoreError(f"cannot create bucket {self.bucket!r} without a project: use the locator "
                                    f"google:PROJECT:{self.bucket} or pass project=")
            status, _, _ = await self._request("POST", f"{self.api_root}/storage/v1/b", what="create bucket",
                                               params={"project": project}, json_body={"name": self.bucket},
                                               ok=(200, 409))
            bucket_created = status == 200
        marker = self.root + CONTAINER_MARKER
        if await self._resource(marker) is not None:
            return False
        try:
            await self._upload_simple(marker, b"", crc=0, metadata={"ajs-bucket-created": str(bucket_created)},
                                      encrypted=False, params={"ifGenerationMatch": "0"},
                                      write_token=new_write_token())
        except ConcurrentModificationError:
            return False
        return True

    async def exists(self) -> bool:
        """Whether this location has been created (its marker object is present)."""
        try:
            return await self._resource(self.root + CONTAINER_MARKER) is not None
        except JobStoreError as error:
            if "does not exist" in str(error):
                return False
            raise

    async def destroy(self) -> None:
        """Delete everything under the prefix (temporary parts included); delete the bucket too if this store
        created it and it is empty now. Idempotent."""
        marker = self.root + CONTAINER_MARKER
        try:
            status, _, _ = await self._request("GET", self._bucket_url(), what="get bucket", missing_ok=True)
            if status == 404:
                return
            resource = await self._resource(marker)
            owned = resource is not None and (resource.get("metadata") or {}).get("ajs-bucket-created") == "True"
        except NoSuchFileError:
            return
        names = [r["name"] async for r in self._list_resources(self.root) if r["name"] != marker]
        await self._delete_names(names)
        await self._delete_names([marker])
        if owned:
            remaining = [r async for r in self._list_resources("")]
            if not remaining:
                await self._request("DELETE", self._bucket_url(), what="delete bucket", ok=(200, 204, 409),
                                    missing_ok=True)

    async def reclaim(self, older_than: float = 3600.0) -> ReclaimReport:
        """Delete what writers that died left under ``<prefix>/.ajs-tmp/`` (temporary parts, intermediate
        composes, backups of overwritten objects), each only if it was created more than ``older_than`` seconds
        ago, so that live writers are not touched, and conditionally on its generation."""
        report = ReclaimReport()
        cutoff = time.time() - older_than
        async for resource in self._list_resources(self.root + TMP_DIR):
            created = parse_time(resource.get("timeCreated"))
            if created is None or created > cutoff:
                continue
            name = resource["name"]
            try:
                status, _, _ = await self._request(
                    "DELETE", self._object_url(name), what=f"reclaim {name}", key=name, ok=(200, 204),
                    missing_ok=True, params={"ifGenerationMatch": str(resource.get("generation"))}, target=name)
            except ConcurrentModificationError:  # written again since it was listed: not debris
                continue
            if status != 404:
                report.add("backup" if name.endswith("/backup") else "temporary-part", int(resource.get("size") or 0))
        return report

    async def close(self) -> None:
        if self._background:  # deletions of backups that writes which returned left to the background
            await run_uncancelled(lambda: asyncio.gather(*self._background, return_exceptions=True))
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
