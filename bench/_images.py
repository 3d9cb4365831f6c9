"""Task images for benchmarks that do not need Docker: ``docker save`` archives written directly."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile


def add_manifest_and_config(tar: tarfile.TarFile, layer_digest: str, tag: str) -> str:
    """Write the ``manifest.json`` and image config of a one-layer ``docker save`` archive whose
    layer (sha256 ``layer_digest``) the caller adds as the returned entry name."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        }
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    layer_name = f"{layer_digest}/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]).encode()
    for name, data in (("manifest.json", manifest), (config_name, config)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return layer_name
