"""Settings of the executor service (environment variables; see the README)."""

from __future__ import annotations

import socket

from shared.settings import CommonSettings, SettingsError

DEFAULT_PORT = 8084


class ExecutorSettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the executor reads from the environment.

    ``docker_host`` empty means the engine named by ``DOCKER_HOST`` as Docker clients read it, or
    the default socket.
    """

    docker_host: str = ""
    executor_id: str = socket.gethostname()
    executor_slots: int = 2

    def validate(self) -> None:
        super().validate()
        if self.executor_slots < 1:
            raise SettingsError("EXECUTOR_SLOTS: must be at least 1")
        if not self.executor_id:
            raise SettingsError("EXECUTOR_ID: must not be empty")
