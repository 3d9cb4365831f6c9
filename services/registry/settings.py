"""Settings of the registry service (environment variables; see the README)."""

from __future__ import annotations

from shared.settings import CommonSettings, SettingsError

DEFAULT_PORT = 8081


class RegistrySettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the registry reads from the environment."""

    max_bundle_size: int = 16 * 1024**3
    """``MAX_BUNDLE_SIZE``: largest accepted upload in bytes (413 past it)."""
    max_bundle_entries: int = 10_000
    max_bundle_uncompressed_size: int = 64 * 1024**3
    max_bundle_compression_ratio: float = 200.0

    def validate(self) -> None:
        super().validate()
        for name in ("max_bundle_size", "max_bundle_entries", "max_bundle_uncompressed_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()}: must be positive")
        if self.max_bundle_compression_ratio < 1:
            raise SettingsError("MAX_BUNDLE_COMPRESSION_RATIO: must be at least 1")
