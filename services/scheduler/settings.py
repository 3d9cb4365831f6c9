"""Settings of the scheduler service (environment variables; see the README)."""

from __future__ import annotations

from shared.settings import CommonSettings

DEFAULT_PORT = 8082


class SchedulerSettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the scheduler service reads from the environment."""
