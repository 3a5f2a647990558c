"""Server-side copies (``rewriteTo``) and signed URLs.

A copy records an ``ajs-crc32c`` like every object this backend makes visible: the source's, or, for a foreign
object that has none, the CRC32C GCS reports for it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ...commit import META_WRITE_TOKEN
from ...errors import JobStoreError
from ..base import META_CRC32C
from .client import CONTENT_TYPE, GCSClient


class GCSCopies(GCSClient):
    """Rewrites and presigned URLs."""

    async def _rewrite(self, src_bucket: str, src_name: str, dst_name: str, *, source_headers: dict[str, str],
                       dest_headers: dict[str, str], metadata: dict[str, str] | None, key: str,
                       params: dict[str, str] | None = None) -> dict[str, Any]:
        """A server-side copy; ``metadata`` (if given) replaces the destination's, else the source's is kept.
        ``params`` may carry ``sourceGeneration`` and a destination ``ifGenerationMatch``."""
        url = (f"{self.api_root}/storage/v1/b/{quote(src_bucket, safe='')}/o/{quote(src_name, safe='')}"
               f"/rewriteTo/b/{quote(self.bucket, safe='')}/o/{quote(dst_name, safe='')}")
        body = {"contentType": CONTENT_TYPE, "metadata": metadata} if metadata is not None else None
        query = dict(params or {})
        resource: dict[str, Any]
        while True:
            _, result, _ = await self._request("POST", url, what=f"copy to {dst_name}", key=key, params=query,
                                               json_body=body, headers={**source_headers, **dest_headers},
                                               target=dst_name)
            if result.get("done"):
                resource = result["resource"]
                break
            query = {**(params or {}), "rewriteToken": result["rewriteToken"]}
        if metadata is not None and self.emulated and (resource.get("metadata") or {}) != metadata:
            resource = await self._patch_metadata(dst_name, resource, metadata, key)
        return resource

    async def _patch_metadata(self, name: str, resource: dict[str, Any], metadata: dict[str, str],
                              key: str) -> dict[str, Any]:
        """Set ``name``'s metadata to exactly ``metadata`` (the emulator ignores the destination resource of a
        rewrite, so it is set afterwards there)."""
        patch = {"metadata": {**{k: None for k in resource.get("metadata") or {}}, **metadata}}
        _, patched, _ = await self._request("PATCH", self._object_url(name), what=f"patch {name}", key=key,
                                            json_body=patch)
        patched["metadata"] = {k: v for k, v in (patched.get("metadata") or {}).items() if v is not None}
        return dict(patched)

    def _copy_metadata(self, source: dict[str, Any], metadata: dict[str, str] | None) -> dict[str, str]:
        """The metadata of a copy of ``source``: its own, updated with ``metadata``, with an ``ajs-crc32c`` (the
        CRC32C GCS reports for the source when the source has none: a foreign object gets one on import)."""
        merged = {**(source.get("metadata") or {}), **(metadata or {})}
        merged.pop(META_WRITE_TOKEN, None)
        if META_CRC32C not in merged and source.get("crc32c"):
            merged[META_CRC32C] = source["crc32c"]
        return merged

    async def presign(self, key: str, expires: int = 3600) -> str:
        """A V4 signed URL (needs a service-account key); on an emulator its direct media URL."""
        name = self._name(key)
        if self.emulated:
            return f"{self.api_root}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}" \
                   "?alt=media"
        if not (self._ensure_token().service_data or {}).get("private_key"):
            raise JobStoreError(
                "cannot sign a URL: the Google credentials in use have no private key (signing needs a service "
                "account key file in GOOGLE_APPLICATION_CREDENTIALS or service_file=)"
            )
        from gcloud.aio.storage import Bucket, Storage
        from gcloud.aio.storage.blob import Blob

        if self._storage is None:
            # gcloud-aio's annotation names requests.Session (its REST build's), but the aio build takes aiohttp's
            self._storage = Storage(session=self._session_now(), token=self._token)  # type: ignore[arg-type]
        blob = Blob(Bucket(self._storage, self.bucket), name, {"size": 0})
        return await blob.get_signed_url(min(int(expires), 604800), token=self._token)
