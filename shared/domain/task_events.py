"""Task events: what the registry records and publishes about tasks (``<p>.task.<id>.<type>``).

They carry what other services need to act on a task without asking the registry: the scheduler
creates runs from ``inputs`` and ``time_limit_seconds``, the executor runs ``image_name`` with
``resources`` and the folders.
"""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec


class TaskParameter(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str
    optional: bool = False


class TaskResources(msgspec.Struct, frozen=True, kw_only=True):
    cpus: float | None = None
    ram_bytes: int | None = None
    gpus: int = 0
    internet: bool = False


class _TaskEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class TaskRegistered(_TaskEvent, frozen=True, kw_only=True, tag="registered"):
    """A bundle was validated and stored: the task can be run."""

    task_id: uuid.UUID
    namespace: str
    version: str
    name: str
    image_name: str
    image_id: str
    image_size: int
    image_key: str
    resources: TaskResources
    input_folder: str
    output_folder: str
    inputs: tuple[TaskParameter, ...]
    outputs: tuple[TaskParameter, ...]
    time_limit_seconds: float | None = None
    at: dt.datetime
    # the image is bytes [image_offset, image_offset + image_length) of the blob at image_key
    # (an image zipped uncompressed stays inside the stored bundle); None: the whole blob
    image_offset: int = 0
    image_length: int | None = None


class TaskDeleted(_TaskEvent, frozen=True, kw_only=True, tag="deleted"):
    """The task was deleted: its files go, its history stays; its active runs are cancelled."""

    task_id: uuid.UUID
    namespace: str
    version: str
    at: dt.datetime


TaskEvent = TaskRegistered | TaskDeleted
