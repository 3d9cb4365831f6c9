"""Settings of the scheduler service (environment variables; see the README)."""

from __future__ import annotations

from shared.settings import CommonSettings, SettingsError

DEFAULT_PORT = 8082


class SchedulerSettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the scheduler reads from the environment."""

    queue_timeout: float = 86_400.0
    """``QUEUE_TIMEOUT``: seconds a run may wait QUEUED for an executor before it fails TIMEOUT."""
    default_time_limit: float = 0.0
    """``DEFAULT_TIME_LIMIT``: run time limit in seconds when the descriptor has none; 0 = none."""
    max_attempts: int = 3
    """``MAX_ATTEMPTS``: executions of a run before infrastructure failures make it FAILED."""
    watchdog_interval: float = 2.0
    """``WATCHDOG_INTERVAL``: seconds between checks of deadlines and lost executors."""
    executor_timeout: float = 30.0
    """``EXECUTOR_TIMEOUT``: seconds without a heartbeat after which an executor is lost."""

    def validate(self) -> None:
        super().validate()
        if self.queue_timeout <= 0:
            raise SettingsError("QUEUE_TIMEOUT: must be positive")
        if self.default_time_limit < 0:
            raise SettingsError("DEFAULT_TIME_LIMIT: must not be negative")
        if self.max_attempts < 1:
            raise SettingsError("MAX_ATTEMPTS: must be at least 1")
        if self.watchdog_interval <= 0:
            raise SettingsError("WATCHDOG_INTERVAL: must be positive")
        if self.executor_timeout <= 0:
            raise SettingsError("EXECUTOR_TIMEOUT: must be positive")
