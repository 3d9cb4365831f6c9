"""Validation of a task's image archive (the ``.tar`` of a bundle) without Docker.

:func:`inspect_image_archive` reads a tar file from disk, seeking over member data and reading only
the small JSON documents (manifests, indexes, config), so a multi-gigabyte image never sits in
memory. It accepts the two layouts ``docker save`` writes:

* ``docker save`` (legacy): ``manifest.json`` listing each image's ``Config`` and ``Layers``;
* OCI image layout: ``oci-layout`` + ``index.json`` pointing at manifests under ``blobs/``. Docker
  >= 25 writes both layouts in one tar (the OCI one is used then); Docker 29 points ``index.json``
  at an image *index* holding the platform manifest and an attestation manifest
  (``vnd.docker.reference.type: attestation-manifest``, platform ``unknown/unknown``) whose blobs
  may be absent. Attestations are skipped and the real platform manifest is used (upstream
  rejects these images, reference §3.1 FAQ).

Every blob the chosen image needs must be present with the declared size; the config and every
JSON document are checked against their digest, the layers only when ``verify_layers`` is set (it
reads every byte). The archive itself must be safe to extract: no absolute or ``..`` member
names, no links leaving the archive, no devices or FIFOs, no duplicate files. Any failure raises
:class:`ImageArchiveError` (HTTP 400 ``APPE-internal-bundle-image-validation-error``).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import tarfile
from typing import Any, BinaryIO, Final, Literal, TypeVar

import msgspec

MAX_MEMBERS: Final = 100_000
MAX_JSON_BYTES: Final = 8 * 1024 * 1024
MAX_LINK_HOPS: Final = 16
MAX_INDEX_DEPTH: Final = 4
ATTESTATION_ANNOTATION: Final = "vnd.docker.reference.type"

_INDEX_TYPES: Final = frozenset(
    {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
)
_MANIFEST_TYPES: Final = frozenset(
    {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
)
_DIGEST: Final = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HEX_NAME: Final = re.compile(r"(?:^|/)(?:blobs/sha256/)?([a-f0-9]{64})(?:\.json)?$")

_T = TypeVar("_T")


class ImageArchiveError(Exception):
    """The image archive is not a valid, safe ``docker save`` or OCI layout tar."""

    error_code: Final = "APPE-internal-bundle-image-validation-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"errorCode": self.error_code, "message": self.message, "details": {"type": "empty"}}


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the registry and the executors need to know about a valid image archive."""

    image_id: str
    """The config digest, ``sha256:...``: Docker's image id once loaded."""
    size: int
    """Bytes of the config and layers as stored in the archive."""
    layout: Literal["docker-save", "oci"]
    manifest_digest: str | None = None
    """The chosen manifest's digest (OCI layout only)."""
    layers: int
    repo_tags: tuple[str, ...] = ()
    os: str | None = None
    architecture: str | None = None


# --- the JSON documents -------------------------------------------------------------------------


class _SaveEntry(msgspec.Struct, frozen=True, rename="pascal"):
    config: str
    layers: list[str]
    repo_tags: list[str] | None = None


class _Platform(msgspec.Struct, frozen=True):
    architecture: str = ""
    os: str = ""
    variant: str | None = None


class _Blob(msgspec.Struct, frozen=True, rename="camel"):
    digest: str
    size: int
    media_type: str = ""
    annotations: dict[str, str] | None = None
    platform: _Platform | None = None


class _Index(msgspec.Struct, frozen=True, rename="camel"):
    manifests: list[_Blob]


class _Manifest(msgspec.Struct, frozen=True, rename="camel"):
    config: _Blob
    layers: list[_Blob]


class _Layout(msgspec.Struct, frozen=True, rename="camel"):
    image_layout_version: str


class _RootFs(msgspec.Struct, frozen=True):
    diff_ids: list[str] = []


class _Config(msgspec.Struct, frozen=True):
    architecture: str | None = None
    os: str | None = None
    rootfs: _RootFs | None = None


# --- the archive --------------------------------------------------------------------------------


def _inside(path: str) -> str | None:
    """A member name relative to the archive root; ``None`` if absolute or with a ``..`` part."""
    if path.startswith("/"):
        return None
    parts = [part for part in path.split("/") if part not in ("", ".")]
    return None if ".." in parts else "/".join(parts)


def _link_target(member: str, target: str) -> str | None:
    """Where a symbolic link of ``member`` leads, ``None`` if outside the archive.

    Relative targets may climb (``id2/layer.tar`` → ``../id1/layer.tar`` is what docker save
    writes for a layer shared by two images), as long as they stay inside.
    """
    if target.startswith("/"):
        return None
    normal = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    if normal == ".." or normal.startswith("../"):
        return None
    return "" if normal == "." else normal


def _reference(path: str) -> str:
    inside = _inside(path)
    if inside is None:
        raise ImageArchiveError(f"the path {path!r} points outside the archive")
    return inside


class _Archive:
    """The member index of an open tar, and safe reads of its files."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for count, member in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise ImageArchiveError(f"the image archive has more than {MAX_MEMBERS} members")
            self._add(member)
        self._check_links()

    def _add(self, member: tarfile.TarInfo) -> None:
        name = _inside(member.name)
        if name is None:
            raise ImageArchiveError(f"archive member {member.name!r} points outside the archive")
        if member.issym():
            if _link_target(name, member.linkname) is None:
                raise ImageArchiveError(f"symbolic link {member.name!r} points outside the archive")
        elif member.islnk():
            if _inside(member.linkname) is None:
                raise ImageArchiveError(f"hard link {member.name!r} points outside the archive")
        elif not (member.isreg() or member.isdir()):
            raise ImageArchiveError(f"archive member {member.name!r} is a device or FIFO")
        previous = self.members.get(name)
        if previous is not None and not (previous.isdir() and member.isdir()):
            # extraction keeps the last copy, validation would have checked another
            raise ImageArchiveError(f"archive member {name!r} appears twice")
        if name:
            self.members[name] = member

    def _check_links(self) -> None:
        """Links lead to files and nothing lies under a link: the lexical checks are then sound.

        A link to a directory would let ``d/../..`` look inside while leaving it on extraction.
        docker save only ever links layer files.
        """
        for name, member in self.members.items():
            parent = posixpath.dirname(name)
            while parent:
                above = self.members.get(parent)
                if above is not None and (above.issym() or above.islnk()):
                    raise ImageArchiveError(f"archive member {name!r} lies under the link {parent!r}")
                parent = posixpath.dirname(parent)
            if (member.issym() or member.islnk()) and self.file(name) is None:
                raise ImageArchiveError(f"link {member.name!r} does not lead to a file in the archive")

    def file(self, name: str) -> tarfile.TarInfo | None:
        """The regular file at ``name``, following links inside the archive."""
        name = _reference(name)
        for _ in range(MAX_LINK_HOPS):
            member = self.members.get(name)
            if member is None or member.isdir():
                return None
            if member.isreg():
                return member
            if member.issym():
                target = _link_target(name, member.linkname)
                assert target is not None  # checked when the member was indexed
                name = target
            else:
                name = _reference(member.linkname)
        raise ImageArchiveError(f"too many links to follow from {name!r}")

    def read(self, member: tarfile.TarInfo) -> bytes:
        if member.size > MAX_JSON_BYTES:
            raise ImageArchiveError(f"{member.name!r} is larger than {MAX_JSON_BYTES} bytes")
        stream = self.tar.extractfile(member)
        assert stream is not None  # regular files always have content
        with stream:
            return stream.read()

    def decode(self, member: tarfile.TarInfo, kind: type[_T]) -> _T:
        return _decode(self.read(member), kind, member.name)

    def digest(self, member: tarfile.TarInfo, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        stream = self.tar.extractfile(member)
        assert stream is not None
        with stream:
            while chunk := stream.read(1024 * 1024):
                hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"


def _decode(data: bytes, kind: type[_T], name: str) -> _T:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as err:
        raise ImageArchiveError(f"{name!r} is not a valid document: {err}") from None


# --- entry point --------------------------------------------------------------------------------


class _Window(io.RawIOBase):
    """The bytes ``[offset, offset + length)`` of a file, as a seekable file of their own."""

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        self._f, self._offset, self._length, self._pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def inspect_image_archive(
    path: str | os.PathLike[str],
    *,
    platform: str = "linux/amd64",
    verify_layers: bool = False,
    offset: int = 0,
    length: int | None = None,
) -> ImageInfo:
    """Validate the image archive at ``path`` and describe its image.

    ``platform`` (``os/arch[/variant]``) chooses among several platform manifests, when the
    archive holds more than one with its blobs. With ``offset``/``length`` the archive is that
    byte range of the file (an image stored uncompressed inside a bundle zip).
    """
    with open(path, "rb") as whole:
        if length is None:
            length = os.fstat(whole.fileno()).st_size - offset
        raw = io.BufferedReader(_Window(whole, offset, length), 1024 * 1024)
        if raw.read(2) == b"\x1f\x8b":
            raise ImageArchiveError("the image archive is compressed; use the tar that docker save writes")
        raw.seek(0)
        try:
            with tarfile.open(fileobj=raw, mode="r:") as tar:
                archive = _Archive(tar)
                if "index.json" in archive.members and "oci-layout" in archive.members:
                    return _OciLayout(archive, verify_layers).inspect(platform)
                if "manifest.json" in archive.members:
                    return _docker_save(archive, verify_layers)
        except (tarfile.TarError, EOFError) as err:
            raise ImageArchiveError(f"the image is not a readable tar archive: {err}") from None
    if "index.json" in archive.members:
        raise ImageArchiveError("the OCI image layout has no oci-layout file")
    raise ImageArchiveError(
        "the image archive has neither a manifest.json (docker save) nor an index.json (OCI image layout)"
    )


def _docker_save(archive: _Archive, verify_layers: bool) -> ImageInfo:
    manifest = archive.file("manifest.json")
    if manifest is None:
        raise ImageArchiveError("manifest.json is not a regular file")
    entries = archive.decode(manifest, list[_SaveEntry])
    if len(entries) != 1:
        raise ImageArchiveError(f"manifest.json lists {len(entries)} images; a task needs exactly one")
    entry = entries[0]
    config_member = archive.file(entry.config)
    if config_member is None:
        raise ImageArchiveError(f"the image config {entry.config!r} is missing from the archive")
    config_bytes = archive.read(config_member)
    image_id = f"sha256:{hashlib.sha256(config_bytes).hexdigest()}"
    named = _HEX_NAME.search(entry.config)
    if named and f"sha256:{named.group(1)}" != image_id:
        raise ImageArchiveError(f"the image config {entry.config!r} does not match its digest")
    config = _decode(config_bytes, _Config, entry.config)
    _check_layer_count(config, len(entry.layers), entry.config)
    size = config_member.size
    diff_ids = config.rootfs.diff_ids if config.rootfs else []
    for index, layer in enumerate(entry.layers):
        member = archive.file(layer)
        if member is None:
            raise ImageArchiveError(f"the layer {layer!r} is missing from the archive")
        size += member.size
        if verify_layers and archive.digest(member, "sha256") != _expected_layer_digest(layer, index, diff_ids):
            raise ImageArchiveError(f"the layer {layer!r} does not match its digest")
    return ImageInfo(
        image_id=image_id,
        size=size,
        layout="docker-save",
        layers=len(entry.layers),
        repo_tags=tuple(entry.repo_tags or ()),
        os=config.os,
        architecture=config.architecture,
    )


def _expected_layer_digest(name: str, index: int, diff_ids: list[str]) -> str | None:
    """A ``blobs/sha256/<hex>`` layer is named by its digest (it may be compressed); a legacy
    ``<id>/layer.tar`` is an uncompressed tar whose digest is the config's diff id."""
    named = _HEX_NAME.search(name)
    if named:
        return f"sha256:{named.group(1)}"
    return diff_ids[index] if index < len(diff_ids) else None


def _check_layer_count(config: _Config, layers: int, name: str) -> None:
    if config.rootfs is not None and len(config.rootfs.diff_ids) != layers:
        raise ImageArchiveError(
            f"the image config {name!r} describes {len(config.rootfs.diff_ids)} layers, the manifest {layers}"
        )


class _OciLayout:
    """An OCI image layout: ``index.json`` → (image indexes →) one image manifest → blobs."""

    def __init__(self, archive: _Archive, verify_layers: bool) -> None:
        self.archive = archive
        self.verify_layers = verify_layers

    def blob(self, blob: _Blob) -> tarfile.TarInfo | None:
        if not _DIGEST.match(blob.digest):
            raise ImageArchiveError(f"unsupported or malformed digest {blob.digest!r}")
        member = self.archive.file("blobs/" + blob.digest.replace(":", "/", 1))
        if member is not None and member.size != blob.size:
            raise ImageArchiveError(f"the blob {blob.digest} has {member.size} bytes, {blob.size} declared")
        return member

    def document(self, blob: _Blob, kind: type[_T]) -> _T:
        member = self.blob(blob)
        if member is None:
            raise ImageArchiveError(f"the blob {blob.digest} is missing from the archive")
        data = self.archive.read(member)
        algorithm, expected = blob.digest.split(":", 1)
        if hashlib.new(algorithm, data).hexdigest() != expected:
            raise ImageArchiveError(f"the blob {blob.digest} does not match its digest")
        return _decode(data, kind, blob.digest)

    def inspect(self, platform: str) -> ImageInfo:
        layout = self.archive.file("oci-layout")
        if layout is None:
            raise ImageArchiveError("oci-layout is not a regular file")
        self.archive.decode(layout, _Layout)
        index_member = self.archive.file("index.json")
        if index_member is None:
            raise ImageArchiveError("index.json is not a regular file")
        chosen = self._choose(self._manifests(self.archive.decode(index_member, _Index), 0), platform)
        manifest = self.document(chosen, _Manifest)
        config = self.document(manifest.config, _Config)
        _check_layer_count(config, len(manifest.layers), manifest.config.digest)
        size = manifest.config.size
        for layer in manifest.layers:
            member = self.blob(layer)
            if member is None:
                raise ImageArchiveError(f"the layer blob {layer.digest} is missing from the archive")
            size += layer.size
            algorithm = layer.digest.split(":", 1)[0]
            if self.verify_layers and self.archive.digest(member, algorithm) != layer.digest:
                raise ImageArchiveError(f"the layer blob {layer.digest} does not match its digest")
        return ImageInfo(
            image_id=manifest.config.digest,
            size=size,
            layout="oci",
            manifest_digest=chosen.digest,
            layers=len(manifest.layers),
            os=config.os,
            architecture=config.architecture,
        )

    def _manifests(self, index: _Index, depth: int) -> list[_Blob]:
        """Every image manifest the index leads to, attestations left out."""
        found: list[_Blob] = []
        for blob in index.manifests:
            if _is_attestation(blob):
                continue
            if blob.media_type in _INDEX_TYPES:
                if depth >= MAX_INDEX_DEPTH:
                    raise ImageArchiveError(f"image indexes nested deeper than {MAX_INDEX_DEPTH} levels")
                # an index of images that were not saved (other tags) has no blob: nothing to use
                if self.blob(blob) is not None:
                    found += self._manifests(self.document(blob, _Index), depth + 1)
            elif blob.media_type in _MANIFEST_TYPES:
                found.append(blob)
        return found

    def _choose(self, manifests: list[_Blob], platform: str) -> _Blob:
        unique = list({blob.digest: blob for blob in manifests}.values())
        # a multi-platform index lists every platform; docker save includes the pulled ones only
        present = [blob for blob in unique if self.blob(blob) is not None]
        if not present:
            if unique:
                raise ImageArchiveError(f"the image manifest blob {unique[0].digest} is missing from the archive")
            raise ImageArchiveError("index.json leads to no image manifest")
        if len(present) == 1:
            return present[0]
        matching = [blob for blob in present if _platform(blob) in (platform, platform.rsplit("/", 1)[0])]
        if len(matching) == 1:
            return matching[0]
        raise ImageArchiveError(
            f"the archive holds {len(present)} images, not exactly one for {platform}; a task needs one image"
        )


def _is_attestation(blob: _Blob) -> bool:
    annotations = blob.annotations or {}
    if annotations.get(ATTESTATION_ANNOTATION) == "attestation-manifest":
        return True
    return blob.platform is not None and (blob.platform.os, blob.platform.architecture) == (
        "unknown",
        "unknown",
    )


def _platform(blob: _Blob) -> str | None:
    if blob.platform is None:
        return None
    base = f"{blob.platform.os}/{blob.platform.architecture}"
    return f"{base}/{blob.platform.variant}" if blob.platform.variant else base
