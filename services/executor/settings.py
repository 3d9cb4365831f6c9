"""Settings of the executor service (environment variables; see the README)."""

from __future__ import annotations

import socket

from shared.descriptor.fields import memory_bytes
from shared.settings import CommonSettings, SettingsError

DEFAULT_PORT = 8084


class ExecutorSettings(CommonSettings, frozen=True, kw_only=True):
    """Everything the executor reads from the environment.

    ``docker_host`` empty means the engine named by ``DOCKER_HOST`` as Docker clients read it, or
    the default socket. ``executor_id`` must be stable across restarts of the same executor on
    the same Docker engine: it is how a restarted executor finds (and adopts) its containers.
    """

    docker_host: str = ""
    executor_id: str = socket.gethostname()
    executor_slots: int = 2
    """``EXECUTOR_SLOTS``: runs executed at once by this executor."""
    storage_url: str = "http://127.0.0.1:8083"
    """``STORAGE_URL``: the storage service, for ``/internal/runs/{id}/inputs.tar|outputs.tar``."""
    stop_grace_seconds: float = 10.0
    """``STOP_GRACE_SECONDS``: SIGTERM to SIGKILL delay when a run is cancelled or times out."""
    pids_limit: int = 1024
    """``PIDS_LIMIT``: most processes a task container may have."""
    default_ram: str = "4Gi"
    """``DEFAULT_RAM``: memory limit of tasks whose descriptor declares none (upstream: 4Gi)."""
    log_cap_bytes: int = 16 * 1024**2
    """``LOG_CAP_BYTES``: most bytes of a run's log kept in the log blob (the rest is dropped, said so)."""
    job_ack_wait: float = 30.0
    """``JOB_ACK_WAIT``: seconds JetStream waits for a progress ack before redelivering a job."""
    heartbeat_interval: float = 5.0
    """``HEARTBEAT_INTERVAL``: seconds between heartbeats; keep well under the scheduler's
    ``EXECUTOR_TIMEOUT`` (default 30)."""
    preload_images: bool = True
    """``PRELOAD_IMAGES``: load a task's image into the engine when the task is registered,
    ahead of its first run (otherwise the first run loads it)."""
    watch_interval: float = 2.0
    """``WATCH_INTERVAL``: seconds between checks of a running run's log (cancel, deadline) when
    no event arrives on NATS to wake the executor earlier."""

    @property
    def default_ram_bytes(self) -> int:
        value = memory_bytes(self.default_ram)
        assert value is not None, "validated"
        return value

    def validate(self) -> None:
        super().validate()
        if self.executor_slots < 1:
            raise SettingsError("EXECUTOR_SLOTS: must be at least 1")
        if not self.executor_id:
            raise SettingsError("EXECUTOR_ID: must not be empty")
        if not self.storage_url.startswith(("http://", "https://")):
            raise SettingsError(f"STORAGE_URL: expected an http(s):// URL, got {self.storage_url!r}")
        if self.stop_grace_seconds < 0:
            raise SettingsError("STOP_GRACE_SECONDS: must not be negative")
        if self.pids_limit < 1:
            raise SettingsError("PIDS_LIMIT: must be at least 1")
        ram = memory_bytes(self.default_ram)
        if ram is None or ram < 6 * 1024**2:
            # Docker refuses memory limits under 6 MiB
            raise SettingsError(
                f"DEFAULT_RAM: expected a memory size of at least 6Mi such as 4Gi, got {self.default_ram!r}"
            )
        if self.log_cap_bytes < 1024:
            raise SettingsError("LOG_CAP_BYTES: must be at least 1024")
        if self.job_ack_wait < 3:
            raise SettingsError("JOB_ACK_WAIT: must be at least 3 seconds")
        if self.heartbeat_interval <= 0:
            raise SettingsError("HEARTBEAT_INTERVAL: must be positive")
        if self.watch_interval <= 0:
            raise SettingsError("WATCH_INTERVAL: must be positive")
