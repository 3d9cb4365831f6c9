"""The executor's errors: one root, and the class decides what happens to the run.

A :class:`Retryable` failure is the platform's fault (Docker, the blob store, the storage
service): the run goes back to the queue (``RetryRun``), or FAILED after its last attempt. Any
other failure of a task is the task's own (exit code, OOM, time limit) and is decided in
:mod:`services.executor.handlers`, not raised.
"""

from __future__ import annotations

from shared.domain.events import FailureCode


class ExecutorError(Exception):
    """Root of the executor's errors."""


class Retryable(ExecutorError):
    """An infrastructure failure: the run is handed back with ``code``."""

    code: FailureCode = FailureCode.INFRASTRUCTURE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EngineError(Retryable):
    """The Docker engine refused or failed a request (or does not answer)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class ContainerGone(EngineError):
    """The container does not exist (any more)."""


class ImageUnavailable(Retryable):
    """The task image is neither in the engine nor loadable from the blob store."""

    code = FailureCode.IMAGE_UNAVAILABLE


class StorageUnavailable(Retryable):
    """The storage service did not serve the inputs or did not take the outputs."""
