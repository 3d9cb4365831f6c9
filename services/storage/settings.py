"""Settings of the storage service (environment variables; see the README)."""

from __future__ import annotations

from shared.settings import CommonSettings, SettingsError

DEFAULT_PORT = 8083


class StorageSettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the storage service reads from the environment."""

    max_input_file_size: int = 16 * 1024**3
    """``MAX_INPUT_FILE_SIZE``: largest file or image part of a binary provision, bytes (413)."""
    max_output_size: int = 64 * 1024**3
    """``MAX_OUTPUT_SIZE``: largest outputs tar an executor may hand over, bytes (run FAILED)."""
    max_output_entries: int = 100_000
    """``MAX_OUTPUT_ENTRIES``: most entries in an outputs tar (run FAILED past it)."""
    max_json_body: int = 16 * 1024**2
    """``MAX_JSON_BODY``: largest JSON provisioning body, bytes (413)."""
    max_array_size: int = 100_000
    """``MAX_ARRAY_SIZE``: most items of an array input, also bounding item indexes (400)."""
    max_batch_size: int = 1_000
    """``MAX_BATCH_SIZE``: most items in a batch provisioning request (400)."""

    def validate(self) -> None:
        super().validate()
        for name in (
            "max_input_file_size",
            "max_output_size",
            "max_output_entries",
            "max_json_body",
            "max_array_size",
            "max_batch_size",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()}: must be positive")
