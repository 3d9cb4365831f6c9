"""The blob store a service uses, chosen by settings (``BLOB_BACKEND``: ``local`` or ``s3``)."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator

from shared.blobstore import BlobStore, LocalBlobStore
from shared.s3blobstore import S3BlobStore, S3Config
from shared.settings import CommonSettings


@contextlib.asynccontextmanager
async def open_blob_store(settings: CommonSettings) -> AsyncIterator[BlobStore]:
    """The configured backend for the lifetime of the block."""
    if settings.blob_backend == "s3":
        config = S3Config(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id or None,
            secret_access_key=settings.s3_secret_access_key or None,
        )
        async with S3BlobStore.open(config) as store:
            await store.ensure_bucket()
            yield store
    else:
        yield LocalBlobStore(pathlib.Path(settings.data_dir) / "blobs")
