"""The storage service's errors: one root, each carrying the upstream ``errorCode``, message and
details (reference §2.2, Appendix D). The HTTP status is chosen by class in :mod:`.api`.

:class:`ValueRejected` is what the pure validators raise: a code and a message, no parameter;
the use cases attach the parameter name (``details.type = parameter``) when they report it.
"""

from __future__ import annotations

from typing import Any, Final

VALIDATION: Final = "APPE-internal-request-validation-error"

# messages of reference Appendix D, verbatim (typos included: clients compare them)
GT: Final = "value must be greater than defined constraint"
GEQ: Final = "value must be greater than or equal to define constraint"
LT: Final = "value must be less than defined constraint"
LEQ: Final = "value must be less than or equal to defined constraint"
MISMATCH: Final = "value does not match defined constraint."
TYPE: Final = "invalid parameter type"
INFINITY: Final = "value cannot be infinity"
NAN: Final = "value cannot be nan"
BEFORE: Final = "date must be before the defined constraint"
AFTER: Final = "date must be after the defined constraint"
GEOJSON_PARSE: Final = "failed to parse the given GeoJSON object"
GEOJSON_INVALID: Final = "invalid GeoJSON object"
GEOMETRY_TYPE: Final = "unsupported geometry type"
GEOJSON_SUBTYPE: Final = "unsupported GeoJSON subtype"
GEOMETRY_SUBTYPE: Final = "unsupported geometry subtype"
RADIUS: Final = "missing radius parameter"
IMAGE_FORMAT: Final = "invalid image format"
IMAGE_DIMENSION: Final = "invalid image dimension"
IMAGE_WIDTH: Final = "invalid image width"
IMAGE_HEIGHT: Final = "invalid image height"
IMAGE_SIZE: Final = "invalid image size"
IMAGE: Final = "invalid image"


class ValueRejected(Exception):
    """A value (or output file) breaks its parameter type; no parameter attached yet."""

    def __init__(self, message: str, code: str = VALIDATION) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self, parameter: str) -> dict[str, Any]:
        return error_body(self.code, self.message, {"type": "parameter", "parameterName": parameter})


def dimensions() -> ValueRejected:
    return ValueRejected("invalid collection dimensions", "APPE-internal-invalid-dimensions")


def structure() -> ValueRejected:
    return ValueRejected("invalid provision structure", "APPE-internal-invalid-structure")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"errorCode": code, "message": message, "details": details or {"type": "empty"}}


class StorageError(Exception):
    """Root of the errors the storage service answers with; ``body()`` is the upstream body."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {"type": "empty"}


class Invalid(StorageError):
    """The request is wrong (HTTP 400)."""


class Refused(StorageError):
    """Not allowed in the run's state, or nothing to read yet (HTTP 403, no details as upstream)."""


class Missing(StorageError):
    """No such parameter or task (HTTP 404)."""


class TooLarge(StorageError):
    """A body beyond the configured limit (HTTP 413)."""


def parameter_rejected(parameter: str, error: ValueRejected) -> Invalid:
    return Invalid(error.code, error.message, {"type": "parameter", "parameterName": parameter})


def parameter_not_found(parameter: str) -> Missing:
    return Missing(
        "APPE-internal-parameter-not-found", "parameter not found", {"type": "parameter", "parameterName": parameter}
    )


def unprocessable(parameter: str | None, reason: str) -> Invalid:
    """A body that is not the JSON the endpoint takes (upstream: 403 "unable to process json")."""
    details: dict[str, Any] = {"type": "related", "parameterName": parameter or "", "description": reason}
    return Invalid(VALIDATION, "unable to process json", details)


def invalid_indexes(parameter: str, value: str) -> Invalid:
    return Invalid(
        "APPE-internal-invalid-indexes",
        "indexes don't match pattern {^(0(/[0-9]+)*|[1-9][0-9]*(/[0-9]+)*)$}",
        {"type": "related", "parameterName": parameter, "description": f"indexes [{value}] is not a valid"},
    )


def batch(errors: list[dict[str, Any]]) -> Invalid:
    return Invalid(
        "APPE-internal-batch-request-error",
        "Error(s) occurred during a handling of a batch request.",
        {"type": "batch", "errors": errors},
    )


def reading_failed(parameter: str, description: str) -> Invalid:
    return Invalid(
        "APPE-storage-reading-file-error",
        "failed to read file from storage service",
        {"type": "related", "parameterName": parameter, "description": description},
    )


def provisions_not_found() -> Refused:
    return Refused("APPE-internal-task-run-provisions-not-found", "provisions not found")


def state_refused() -> Refused:
    return Refused("APPE-internal-task-run-state-error", "run is in invalid state")
