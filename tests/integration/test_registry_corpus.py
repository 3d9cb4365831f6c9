"""Every real descriptor of the reference corpus, uploaded in a real bundle (busybox image built
FROM scratch and saved with `docker save`): accepted where INDEX says it is valid against the
current schema, refused with 400 naming the fields where it is not."""

from __future__ import annotations

import pathlib
import zipfile
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Client, upload
from tests.unit.test_descriptor import FIXTURES, INDEX, _index_paths


def image_entry_name(descriptor: bytes) -> str:
    doc = yaml.safe_load(descriptor)
    configured = ((doc.get("configuration") or {}).get("image") or {}).get("file")
    if isinstance(configured, str) and configured.strip():
        return configured.strip().lstrip("/")
    return f"{doc.get('namespace')}-{doc.get('version')}.tar"


@pytest.mark.parametrize("entry", INDEX, ids=[f"{n:02d}" for n, _ in enumerate(INDEX, start=1)])
async def test_corpus_descriptor_uploads_as_index_says(
    registry: Client, busybox_tar: pathlib.Path, tmp_path: pathlib.Path, entry: dict[str, Any]
) -> None:
    descriptor = (FIXTURES / entry["file"]).read_bytes()
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("descriptor.yml", descriptor)
        z.write(busybox_tar, image_entry_name(descriptor))
    status, body = await upload(registry, bundle)
    expected = _index_paths(entry["validation"]["SHEAD"])
    assert isinstance(body, dict)
    if not expected:
        assert status == 200, body
        assert body["namespace"] == entry["validation"]["namespace"]
        return
    assert status == 400, body
    assert body["errorCode"] == "APPE-internal-bundle-schema-validation-error"
    named = [e["details"]["parameterName"] for e in body["details"]["errors"]]
    for path in expected:
        assert any(n == path or n.startswith(path + ".") for n in named), (path, named)
