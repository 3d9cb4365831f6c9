"""Image archive validation on tars built here: docker save, OCI layouts (Docker 25 and 29), broken ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pathlib
import tarfile
from collections.abc import Callable
from typing import Any

import pytest

from services.registry.image import ImageArchiveError, ImageInfo, inspect_image_archive

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

LAYERS = [b"layer one: /bin/busybox", b"layer two: /app/run.sh"]
NO_MANIFEST = "the image archive has neither a manifest.json (docker save) nor an index.json (OCI image layout)"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_for(layers: list[bytes], arch: str = "amd64") -> bytes:
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": ["/app/run.sh"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(layer)}" for layer in layers]},
    }
    return json.dumps(config).encode()


class TarBuilder:
    """Members in order; files, symlinks and other special members."""

    def __init__(self) -> None:
        self.members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def file(self, name: str, data: bytes) -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.members.append((info, data))
        return self

    def json(self, name: str, value: object) -> TarBuilder:
        return self.file(name, json.dumps(value).encode())

    def special(self, name: str, kind: bytes, linkname: str = "") -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        self.members.append((info, None))
        return self

    def blob(self, data: bytes) -> str:
        self.file(f"blobs/sha256/{sha(data)}", data)
        return f"sha256:{sha(data)}"

    def without(self, name: str) -> TarBuilder:
        self.members = [(info, data) for info, data in self.members if info.name != name]
        return self

    def write(self, path: pathlib.Path) -> pathlib.Path:
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self.members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return path


def docker_save(layers: list[bytes] = LAYERS) -> tuple[TarBuilder, bytes]:
    """The classic ``docker save`` layout: ``<id>/layer.tar``, ``<config>.json``, ``manifest.json``."""
    builder = TarBuilder()
    config = config_for(layers)
    paths = []
    for index, layer in enumerate(layers):
        layer_id = sha(f"v1 id {index}".encode())
        builder.file(f"{layer_id}/VERSION", b"1.0").file(f"{layer_id}/layer.tar", layer)
        paths.append(f"{layer_id}/layer.tar")
    builder.file(f"{sha(config)}.json", config)
    builder.json("manifest.json", [{"Config": f"{sha(config)}.json", "RepoTags": ["task:1.0.0"], "Layers": paths}])
    builder.json("repositories", {"task": {"1.0.0": "x"}})
    return builder, config


def manifest_for(builder: TarBuilder, layers: list[bytes], arch: str = "amd64") -> tuple[dict[str, Any], bytes]:
    config = config_for(layers, arch)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": builder.blob(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": builder.blob(layer), "size": len(layer)} for layer in layers],
    }
    return manifest, config


def descriptor(data: bytes, media_type: str, **extra: object) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{sha(data)}", "size": len(data), **extra}


def oci(attestation: bool | None = None, legacy_manifest: bool = False) -> tuple[TarBuilder, bytes, bytes]:
    """An OCI layout. ``attestation`` None: Docker 25 (index.json → manifest); True/False: Docker 29
    (index.json → image index → platform manifest + attestation manifest, its blob present or not)."""
    builder = TarBuilder()
    builder.json("oci-layout", {"imageLayoutVersion": "1.0.0"})
    manifest, config = manifest_for(builder, LAYERS)
    manifest_bytes = json.dumps(manifest).encode()
    builder.blob(manifest_bytes)
    if attestation is None:
        top = descriptor(manifest_bytes, OCI_MANIFEST, annotations={"org.opencontainers.image.ref.name": "1.0.0"})
    else:
        statement = b'{"predicateType": "https://slsa.dev/provenance/v0.2"}'
        att_config = b"{}"
        att_manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(att_config, OCI_CONFIG),
                "layers": [descriptor(statement, "application/vnd.in-toto+json")],
            }
        ).encode()
        if attestation:
            builder.blob(statement)
            builder.blob(att_config)
            builder.blob(att_manifest)
        image_index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    descriptor(manifest_bytes, OCI_MANIFEST, platform={"architecture": "amd64", "os": "linux"}),
                    descriptor(
                        att_manifest,
                        OCI_MANIFEST,
                        platform={"architecture": "unknown", "os": "unknown"},
                        annotations={
                            "vnd.docker.reference.digest": f"sha256:{sha(manifest_bytes)}",
                            "vnd.docker.reference.type": "attestation-manifest",
                        },
                    ),
                ],
            }
        ).encode()
        builder.blob(image_index)
        top = descriptor(
            image_index, OCI_INDEX, annotations={"io.containerd.image.name": "docker.io/library/task:1.0.0"}
        )
    builder.json("index.json", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    if legacy_manifest:
        layer_paths = [f"blobs/sha256/{sha(layer)}" for layer in LAYERS]
        entry = {"Config": f"blobs/sha256/{sha(config)}", "RepoTags": ["task:1.0.0"], "Layers": layer_paths}
        builder.json("manifest.json", [entry])
    return builder, config, manifest_bytes


def failure(tmp_path: pathlib.Path, builder: TarBuilder, **kwargs: Any) -> str:
    path = builder.write(tmp_path / "image.tar")
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path, **kwargs)
    return caught.value.message


# --- accepted layouts --------------------------------------------------------------------------


def test_docker_save(tmp_path: pathlib.Path) -> None:
    builder, config = docker_save()
    info = inspect_image_archive(builder.write(tmp_path / "image.tar"), verify_layers=True)
    assert info == ImageInfo(
        image_id=f"sha256:{sha(config)}",
        size=len(config) + sum(map(len, LAYERS)),
        layout="docker-save",
        layers=2,
        repo_tags=("task:1.0.0",),
        os="linux",
        architecture="amd64",
    )


def test_docker_save_with_a_shared_layer_symlink(tmp_path: pathlib.Path) -> None:
    builder, config = docker_save([LAYERS[0], LAYERS[0]])
    first, second = (f"{sha(f'v1 id {i}'.encode())}/layer.tar" for i in (0, 1))
    builder.without(second).special(second, tarfile.SYMTYPE, f"../{first}")
    info = inspect_image_archive(builder.write(tmp_path / "image.tar"), verify_layers=True)
    assert (info.image_id, info.size) == (f"sha256:{sha(config)}", len(config) + 2 * len(LAYERS[0]))


def test_oci_layout_of_docker_25(tmp_path: pathlib.Path) -> None:
    builder, config, manifest = oci(legacy_manifest=True)
    info = inspect_image_archive(builder.write(tmp_path / "image.tar"), verify_layers=True)
    assert info == ImageInfo(
        image_id=f"sha256:{sha(config)}",
        size=len(config) + sum(map(len, LAYERS)),
        layout="oci",
        manifest_digest=f"sha256:{sha(manifest)}",
        layers=2,
        os="linux",
        architecture="amd64",
    )


@pytest.mark.parametrize("blob_present", [True, False], ids=["attestation-saved", "attestation-absent"])
def test_oci_layout_of_docker_29_with_attestation(tmp_path: pathlib.Path, blob_present: bool) -> None:
    builder, config, manifest = oci(attestation=blob_present)
    info = inspect_image_archive(builder.write(tmp_path / "image.tar"))
    assert (info.image_id, info.manifest_digest, info.layers) == (
        f"sha256:{sha(config)}",
        f"sha256:{sha(manifest)}",
        2,
    )


def _multi_platform(tmp_path: pathlib.Path, with_arm: bool, with_amd: bool) -> tuple[pathlib.Path, dict[str, str]]:
    builder = TarBuilder().json("oci-layout", {"imageLayoutVersion": "1.0.0"})
    entries, ids = [], {}
    for arch, present in (("amd64", with_amd), ("arm64", with_arm)):
        layers = [f"{arch} layer".encode()]
        scratch = TarBuilder()
        manifest, config = manifest_for(scratch if not present else builder, layers, arch)
        data = json.dumps(manifest).encode()
        if present:
            builder.blob(data)
        entries.append(descriptor(data, OCI_MANIFEST, platform={"architecture": arch, "os": "linux"}))
        ids[arch] = f"sha256:{sha(config)}"
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    builder.blob(index)
    builder.json("index.json", {"schemaVersion": 2, "manifests": [descriptor(index, OCI_INDEX)]})
    return builder.write(tmp_path / "image.tar"), ids


def test_platform_is_chosen_among_several(tmp_path: pathlib.Path) -> None:
    path, ids = _multi_platform(tmp_path, with_arm=True, with_amd=True)
    assert inspect_image_archive(path).image_id == ids["amd64"]
    assert inspect_image_archive(path, platform="linux/arm64").image_id == ids["arm64"]
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path, platform="linux/s390x")
    assert caught.value.message == "the archive holds 2 images, not exactly one for linux/s390x; a task needs one image"


def test_the_only_saved_platform_is_used(tmp_path: pathlib.Path) -> None:
    path, ids = _multi_platform(tmp_path, with_arm=True, with_amd=False)
    assert inspect_image_archive(path).image_id == ids["arm64"]


# --- rejected archives -------------------------------------------------------------------------


def test_not_a_tar(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "image.tar"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a tar" * 40)
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path)
    assert caught.value.message.startswith("the image is not a readable tar archive: ")


def test_empty_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "image.tar"
    path.write_bytes(b"")
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path)
    assert caught.value.message == "the image is not a readable tar archive: empty file"


def test_compressed_tar(tmp_path: pathlib.Path) -> None:
    builder, _ = docker_save()
    plain = builder.write(tmp_path / "plain.tar")
    path = tmp_path / "image.tar.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path)
    assert caught.value.message == "the image archive is compressed; use the tar that docker save writes"


def test_truncated_tar(tmp_path: pathlib.Path) -> None:
    builder, _ = docker_save([b"x" * 100_000])
    path = builder.write(tmp_path / "image.tar")
    path.write_bytes(path.read_bytes()[:60_000])
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path)
    assert caught.value.message.startswith("the image is not a readable tar archive: ")


Case = tuple[str, Callable[[], TarBuilder], str]


def _missing_manifest() -> TarBuilder:
    return docker_save()[0].without("manifest.json")


def _missing_layer() -> TarBuilder:
    return docker_save()[0].without(f"{sha(b'v1 id 1')}/layer.tar")


def _missing_config() -> TarBuilder:
    builder, config = docker_save()
    return builder.without(f"{sha(config)}.json")


def _two_images() -> TarBuilder:
    builder, config = docker_save()
    entry = {"Config": f"{sha(config)}.json", "Layers": []}
    return builder.without("manifest.json").json("manifest.json", [entry, entry])


def _tampered_config() -> TarBuilder:
    builder, config = docker_save()
    return builder.without(f"{sha(config)}.json").file(f"{sha(config)}.json", config.replace(b"amd64", b"arm64"))


def _layer_count() -> TarBuilder:
    builder, config = docker_save()
    manifest = [{"Config": f"{sha(config)}.json", "Layers": [f"{sha(b'v1 id 0')}/layer.tar"]}]
    return builder.without("manifest.json").json("manifest.json", manifest)


def _oci_missing_layer() -> TarBuilder:
    return oci(attestation=False)[0].without(f"blobs/sha256/{sha(LAYERS[1])}")


def _oci_missing_config() -> TarBuilder:
    builder, config, _ = oci()
    return builder.without(f"blobs/sha256/{sha(config)}")


def _oci_missing_manifest() -> TarBuilder:
    builder, _, manifest = oci(attestation=True)
    return builder.without(f"blobs/sha256/{sha(manifest)}")


def _oci_wrong_size() -> TarBuilder:
    builder, _, _ = oci()
    return builder.without(f"blobs/sha256/{sha(LAYERS[0])}").file(f"blobs/sha256/{sha(LAYERS[0])}", LAYERS[0] + b"!")


def _oci_without_layout_file() -> TarBuilder:
    return oci()[0].without("oci-layout")


def _bad_json() -> TarBuilder:
    return docker_save()[0].without("manifest.json").file("manifest.json", b"[not json")


def _wrong_json() -> TarBuilder:
    return docker_save()[0].without("manifest.json").json("manifest.json", [{"Config": 3, "Layers": []}])


REJECTED: list[Case] = [
    ("no manifest", _missing_manifest, NO_MANIFEST),
    ("missing layer", _missing_layer, f"the layer '{sha(b'v1 id 1')}/layer.tar' is missing from the archive"),
    (
        "missing config",
        _missing_config,
        f"the image config '{sha(config_for(LAYERS))}.json' is missing from the archive",
    ),
    ("two images", _two_images, "manifest.json lists 2 images; a task needs exactly one"),
    (
        "tampered config",
        _tampered_config,
        f"the image config '{sha(config_for(LAYERS))}.json' does not match its digest",
    ),
    (
        "layer count",
        _layer_count,
        f"the image config '{sha(config_for(LAYERS))}.json' describes 2 layers, the manifest 1",
    ),
    (
        "oci missing layer",
        _oci_missing_layer,
        f"the layer blob sha256:{sha(LAYERS[1])} is missing from the archive",
    ),
    (
        "oci missing config",
        _oci_missing_config,
        f"the blob sha256:{sha(config_for(LAYERS))} is missing from the archive",
    ),
    (
        "oci wrong size",
        _oci_wrong_size,
        f"the blob sha256:{sha(LAYERS[0])} has {len(LAYERS[0]) + 1} bytes, {len(LAYERS[0])} declared",
    ),
    ("oci no oci-layout", _oci_without_layout_file, "the OCI image layout has no oci-layout file"),
    (
        "bad json",
        _bad_json,
        "'manifest.json' is not a valid document: JSON is malformed: invalid character (byte 5)",
    ),
    (
        "wrong json",
        _wrong_json,
        "'manifest.json' is not a valid document: Expected `str`, got `int` - at `$[0].Config`",
    ),
    (
        "path traversal",
        lambda: docker_save()[0].file("../evil", b"x"),
        "archive member '../evil' points outside the archive",
    ),
    (
        "nested traversal",
        lambda: docker_save()[0].file("a/../../evil", b"x"),
        "archive member 'a/../../evil' points outside the archive",
    ),
    (
        "absolute name",
        lambda: docker_save()[0].file("/etc/cron.d/evil", b"x"),
        "archive member '/etc/cron.d/evil' points outside the archive",
    ),
    (
        "escaping symlink",
        lambda: docker_save()[0].special("evil", tarfile.SYMTYPE, "../../etc/passwd"),
        "symbolic link 'evil' points outside the archive",
    ),
    (
        "absolute symlink",
        lambda: docker_save()[0].special("evil", tarfile.SYMTYPE, "/etc/passwd"),
        "symbolic link 'evil' points outside the archive",
    ),
    (
        "directory symlink",
        lambda: docker_save()[0].special("sub/d", tarfile.SYMTYPE, "..").special("sub/e", tarfile.SYMTYPE, "d/../x"),
        "link 'sub/d' does not lead to a file in the archive",
    ),
    (
        "member under a symlink",
        lambda: docker_save()[0].special("d", tarfile.SYMTYPE, "manifest.json").file("d/x", b"x"),
        "archive member 'd/x' lies under the link 'd'",
    ),
    (
        "escaping hard link",
        lambda: docker_save()[0].special("evil", tarfile.LNKTYPE, "../etc/passwd"),
        "hard link 'evil' points outside the archive",
    ),
    (
        "device",
        lambda: docker_save()[0].special("dev", tarfile.CHRTYPE),
        "archive member 'dev' is a device or FIFO",
    ),
    (
        "fifo",
        lambda: docker_save()[0].special("pipe", tarfile.FIFOTYPE),
        "archive member 'pipe' is a device or FIFO",
    ),
    (
        "duplicate",
        lambda: docker_save()[0].json("manifest.json", []),
        "archive member 'manifest.json' appears twice",
    ),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected(tmp_path: pathlib.Path, make: Callable[[], TarBuilder], message: str) -> None:
    assert failure(tmp_path, make()) == message


def test_oci_missing_manifest(tmp_path: pathlib.Path) -> None:
    _, _, manifest = oci(attestation=True)
    assert failure(tmp_path, _oci_missing_manifest()) == (
        f"the image manifest blob sha256:{sha(manifest)} is missing from the archive"
    )


def test_corrupt_layer_is_found_only_when_verifying(tmp_path: pathlib.Path) -> None:
    builder, _ = docker_save()
    name = f"{sha(b'v1 id 0')}/layer.tar"
    builder.without(name).file(name, b"Layer one: /bin/busybox")  # same size, other bytes
    path = builder.write(tmp_path / "image.tar")
    assert inspect_image_archive(path).layers == 2
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path, verify_layers=True)
    assert caught.value.message == f"the layer '{name}' does not match its digest"


def test_corrupt_oci_layer_is_found_when_verifying(tmp_path: pathlib.Path) -> None:
    builder, _, _ = oci()
    name = f"blobs/sha256/{sha(LAYERS[0])}"
    builder.without(name).file(name, b"L" + LAYERS[0][1:])
    assert (
        failure(tmp_path, builder, verify_layers=True)
        == f"the layer blob sha256:{sha(LAYERS[0])} does not match its digest"
    )


def test_error_body(tmp_path: pathlib.Path) -> None:
    path = _missing_manifest().write(tmp_path / "image.tar")
    with pytest.raises(ImageArchiveError) as caught:
        inspect_image_archive(path)
    assert caught.value.body() == {
        "errorCode": "APPE-internal-bundle-image-validation-error",
        "message": NO_MANIFEST,
        "details": {"type": "empty"},
    }


def test_docker_25_tar_without_oci_layout_uses_manifest_json(tmp_path: pathlib.Path) -> None:
    builder, config, _ = oci(legacy_manifest=True)
    info = inspect_image_archive(builder.without("oci-layout").write(tmp_path / "image.tar"), verify_layers=True)
    assert (info.layout, info.image_id, info.repo_tags) == (
        "docker-save",
        f"sha256:{sha(config)}",
        ("task:1.0.0",),
    )
