"""The committed AsyncAPI document is exactly what the message types define."""

from __future__ import annotations

import pathlib

from shared.asyncapi import render

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def test_asyncapi_document_is_current() -> None:
    assert DOC.read_text() == render(), "regenerate: python -m shared.asyncapi > docs/asyncapi.yaml"


def test_every_run_event_type_is_documented() -> None:
    text = DOC.read_text()
    for tag in ("created", "input_provisioned", "queued", "pending", "started", "finished", "failed", "retried"):
        assert f"const: {tag}" in text or f"- {tag}" in text or f"'{tag}'" in text, tag
