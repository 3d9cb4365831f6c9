"""Settings from the environment: one frozen object per service, read in one function.

Each field of a settings Struct is read from the environment variable of the same name in upper
case (``database_url`` ← ``DATABASE_URL``). Values are converted leniently (``"8080"`` → 8080,
``"true"`` → True) and validated; a bad value stops the service at once with a message naming
the variable. Every variable is documented in the README.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

import msgspec


class SettingsError(Exception):
    """A setting is malformed; the message names the variable."""


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings every service has."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_prefix: str = "/app-engine/"
    api_version: str = "v1"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    database_schema: str = "appengine"
    database_pool_size: int = 10
    nats_url: str = "nats://127.0.0.1:4222"
    nats_subject_prefix: str = "appengine"
    data_dir: str = "./data"
    log_level: str = "info"
    log_format: str = "json"
    shutdown_timeout: float = 30.0
    relay_enabled: bool = True
    blob_backend: str = "local"
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""

    @property
    def route_prefix(self) -> str:
        """Where the HTTP API is mounted: ``/app-engine/v1`` by default."""
        return "/" + "/".join(p for p in (*self.api_prefix.split("/"), self.api_version) if p)

    def validate(self) -> None:
        """Cross-field checks beyond types; raise SettingsError naming the variable."""
        if not 0 < self.port < 65536:
            raise SettingsError(f"PORT: {self.port} is not a TCP port")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"LOG_LEVEL: {self.log_level!r} is not debug, info, warning or error")
        if self.log_format not in ("json", "console"):
            raise SettingsError(f"LOG_FORMAT: {self.log_format!r} is not json or console")
        if not self.database_url.startswith(("postgres://", "postgresql://")):
            raise SettingsError("DATABASE_URL: expected a postgresql:// URL")
        if not self.nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise SettingsError("NATS_URL: expected a nats:// URL")
        if self.shutdown_timeout < 0:
            raise SettingsError("SHUTDOWN_TIMEOUT: must not be negative")
        if self.blob_backend not in ("local", "s3"):
            raise SettingsError(f"BLOB_BACKEND: {self.blob_backend!r} is not local or s3")
        if self.blob_backend == "s3" and not self.s3_bucket:
            raise SettingsError("S3_BUCKET: required when BLOB_BACKEND is s3")


S = TypeVar("S", bound=CommonSettings)


def load_settings(cls: type[S], env: Mapping[str, str] | None = None, **defaults: object) -> S:
    """Read ``cls`` from ``env`` (default ``os.environ``); ``defaults`` override class defaults."""
    env = os.environ if env is None else env
    raw: dict[str, object] = dict(defaults)
    for name in cls.__struct_fields__:
        var = name.upper()
        if var in env:
            raw[name] = env[var]
    try:
        settings = msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$.port`": name the environment variable instead
        text = str(exc)
        field = text.rsplit("$.", 1)[-1].rstrip("`") if "$." in text else ""
        var = field.upper() or "settings"
        raise SettingsError(f"{var}: {text.split(' - at ')[0]} (got {raw.get(field)!r})") from exc
    settings.validate()
    return settings
