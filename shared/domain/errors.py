"""Domain errors of the run lifecycle.

Each error carries the upstream ``errorCode`` and message it maps to (reference Appendix D), so
any adapter (HTTP, NATS request-reply) reports it the same way; the HTTP status is chosen in one
place, the error middleware, by error class.
"""

from __future__ import annotations


class DomainError(Exception):
    """Root of every error a decide function raises. Never retryable: the command is wrong."""

    error_code: str = "APPE-internal-server-error"
    default_message: str = "Server error."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class RunNotFound(DomainError):
    error_code = "APPE-internal-run-not-found-error"
    default_message = "Run not found."


class InvalidRunState(DomainError):
    """The command is not allowed in the run's current state (HTTP 403 upstream)."""

    error_code = "APPE-internal-task-run-state-error"
    default_message = "run is in invalid state"


class UnknownDesiredState(InvalidRunState):
    default_message = "unknown state in transition request"


class NotProvisioned(DomainError):
    """RUNNING was requested while inputs are missing (HTTP 403 upstream)."""

    error_code = "APPE-internal-task-run-provisions-not-found"
    default_message = "not provisioned"


class UnknownParameter(DomainError):
    error_code = "APPE-internal-parameter-not-found"
    default_message = "parameter not found"

    def __init__(self, parameter: str) -> None:
        self.parameter = parameter
        super().__init__()
