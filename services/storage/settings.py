"""Settings of the storage service (environment variables; see the README)."""

from __future__ import annotations

from shared.settings import CommonSettings

DEFAULT_PORT = 8083


class StorageSettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the storage service reads from the environment."""
