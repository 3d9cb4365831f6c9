"""The executor's pure parts: container spec, Docker log framing, folder tars, settings."""

from __future__ import annotations

import asyncio
import struct

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from services.executor.runtime import ContainerSpec, LogChunk, demultiplex
from services.executor.settings import ExecutorSettings
from shared.settings import SettingsError, load_settings


def spec(**overrides: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "name": "appengine-run-1",
        "image_id": "sha256:" + "a" * 64,
        "labels": {"org.cytomine.appengine.run": "r"},
        "nano_cpus": 2_000_000_000,
        "memory_bytes": 512 * 1024**2,
        "gpus": 0,
        "internet": False,
        "pids_limit": 256,
    }
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]  # test data


def test_a_container_is_locked_down_and_limited() -> None:
    config = spec().create_config()
    host = config["HostConfig"]
    assert config["Image"] == "sha256:" + "a" * 64
    assert "Cmd" not in config and "Entrypoint" not in config  # the image's own
    assert host["NetworkMode"] == "none" and config["NetworkDisabled"] is True
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024**2
    assert host["NanoCpus"] == 2_000_000_000
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 256 and host["PortBindings"] == {}
    assert "DeviceRequests" not in host


def test_internet_and_gpus_when_the_task_asks() -> None:
    host = spec(internet=True, gpus=2, nano_cpus=None).create_config()["HostConfig"]
    assert host["NetworkMode"] == "bridge"
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}]
    assert "NanoCpus" not in host


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


async def lines_of(data: bytes) -> list[LogChunk]:
    reader = StreamReader(BaseProtocol(asyncio.get_running_loop()), 2**16)
    reader.feed_data(data)
    reader.feed_eof()
    return [chunk async for chunk in demultiplex(reader)]


async def test_log_frames_become_lines_by_stream() -> None:
    data = (
        frame(1, b"2024-01-01T00:00:00.1Z hello\n")
        + frame(2, b"2024-01-01T00:00:00.2Z oops\n")
        # a long line split by the engine across frames, each with its own timestamp
        + frame(1, b"2024-01-01T00:00:00.3Z part one, ")
        + frame(1, b"2024-01-01T00:00:00.4Z part two\n")
        + frame(1, b"2024-01-01T00:00:00.5Z no newline at the end")
    )
    assert await lines_of(data) == [
        LogChunk("stdout", "2024-01-01T00:00:00.1Z", "hello"),
        LogChunk("stderr", "2024-01-01T00:00:00.2Z", "oops"),
        LogChunk("stdout", "2024-01-01T00:00:00.3Z", "part one, part two"),
        LogChunk("stdout", "2024-01-01T00:00:00.5Z", "no newline at the end"),
    ]


async def test_a_truncated_log_stream_ends_cleanly() -> None:
    data = frame(1, b"2024-01-01T00:00:00Z ok\n") + frame(1, b"2024-01-01T00:00:00Z cut")[:12]
    assert await lines_of(data) == [LogChunk("stdout", "2024-01-01T00:00:00Z", "ok")]


def test_settings_defaults_and_validation() -> None:
    settings = load_settings(ExecutorSettings, {})
    assert settings.storage_url == "http://127.0.0.1:8083"
    assert settings.default_ram_bytes == 4 * 1024**3
    custom = load_settings(ExecutorSettings, {"DEFAULT_RAM": "512Mi", "EXECUTOR_SLOTS": "4"})
    assert custom.default_ram_bytes == 512 * 1024**2 and custom.executor_slots == 4


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("EXECUTOR_SLOTS", "0"),
        ("STORAGE_URL", "ftp://storage"),
        ("STOP_GRACE_SECONDS", "-1"),
        ("PIDS_LIMIT", "0"),
        ("DEFAULT_RAM", "lots"),
        ("DEFAULT_RAM", "1Mi"),
        ("LOG_CAP_BYTES", "10"),
        ("JOB_ACK_WAIT", "1"),
        ("WATCH_INTERVAL", "0"),
        ("EXECUTOR_ID", ""),
    ],
)
def test_bad_settings_name_their_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        load_settings(ExecutorSettings, {var: value})
