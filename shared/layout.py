"""Where things live in the blob store: one function per kind of blob, used by every service.

``tasks/<task_id>/descriptor.yml|logo.png|image.tar`` (registry),
``runs/<run_id>/inputs/<parameter>[/<index>...]`` and ``runs/<run_id>/outputs/...`` (storage),
``runs/<run_id>/logs/task.log`` (executor).
"""

from __future__ import annotations

import re
import uuid
from typing import Final

# an array's metadata file, ``size: N`` (task contract; tasks write it with ``yaml.dump``)
_ARRAY_SIZE: Final = re.compile(r"\s*size\s*:\s*([0-9]{1,9})\s*")
ARRAY_METADATA: Final = "array.yml"


def task_prefix(task_id: uuid.UUID) -> str:
    return f"tasks/{task_id}"


def task_descriptor(task_id: uuid.UUID) -> str:
    return f"tasks/{task_id}/descriptor.yml"


def task_logo(task_id: uuid.UUID) -> str:
    return f"tasks/{task_id}/logo.png"


def task_image(task_id: uuid.UUID) -> str:
    return f"tasks/{task_id}/image.tar"


def run_prefix(run_id: uuid.UUID) -> str:
    return f"runs/{run_id}"


def run_inputs(run_id: uuid.UUID) -> str:
    return f"runs/{run_id}/inputs"


def run_outputs(run_id: uuid.UUID) -> str:
    return f"runs/{run_id}/outputs"


def run_log(run_id: uuid.UUID) -> str:
    return f"runs/{run_id}/logs/task.log"


def run_input(run_id: uuid.UUID, parameter: str) -> str:
    return f"runs/{run_id}/inputs/{parameter}"


def array_size(metadata: bytes) -> int | None:
    """The ``N`` of an ``array.yml`` holding ``size: N``, or None if it says anything else."""
    match = _ARRAY_SIZE.fullmatch(metadata.decode("utf-8", "replace"))
    return int(match.group(1)) if match else None
