"""Settings of the registry service (environment variables; see the README)."""

from __future__ import annotations

from shared.settings import CommonSettings

DEFAULT_PORT = 8081


class RegistrySettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the registry service reads from the environment."""
