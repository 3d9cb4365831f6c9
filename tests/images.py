"""Real task images for tests: ``FROM scratch`` with Debian's static busybox, saved with ``docker save``.

No image registry is reachable here, so every image is built locally from ``/bin/busybox``.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import shutil
import subprocess
import zipfile

import pytest

BUSYBOX = pathlib.Path("/bin/busybox")


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def require_docker() -> None:
    if not docker_available():
        pytest.skip("no Docker engine (CI installs docker.io and starts dockerd)")
    if not BUSYBOX.exists():
        pytest.skip("no /bin/busybox (apt-get install busybox-static)")


def build_image(tag: str, workdir: pathlib.Path, cmd: str | None = None) -> None:
    """Build ``tag`` FROM scratch with busybox installed; ``cmd`` is run by ``sh -c``."""
    context = workdir / f"ctx-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, context / "busybox")
    lines = [
        "FROM scratch",
        "COPY busybox /bin/busybox",
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
    ]
    if cmd is not None:
        lines.append(f"CMD {json.dumps(['/bin/sh', '-c', cmd])}")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True, timeout=300)


def save_image(tag: str, target: pathlib.Path) -> pathlib.Path:
    subprocess.run(["docker", "save", "-o", str(target), tag], check=True, capture_output=True, timeout=300)
    return target


def make_bundle(
    target: pathlib.Path,
    descriptor: bytes,
    image_tar: pathlib.Path | None,
    image_name: str = "image.tar",
    extra: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> pathlib.Path:
    """A task bundle zip: descriptor.yml, the image tar under ``image_name``, extra entries."""
    with zipfile.ZipFile(target, "w", compression=compression) as z:
        z.writestr("descriptor.yml", descriptor)
        if image_tar is not None:
            z.write(image_tar, image_name)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return target


def tiny_png() -> bytes:
    """A valid 1x1 PNG (no imaging library needed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00\xff\x00\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()
