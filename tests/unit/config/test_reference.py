"""docs/configuration.md is what the models say, field for field."""

from __future__ import annotations

from pathlib import Path

from bridge.config.models import ConnectionConfig
from bridge.config.reference import render

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_committed_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "regenerate: python -m bridge.config.reference > docs/configuration.md"
    )


def test_every_connection_field_is_documented() -> None:
    text = render()
    for name in ConnectionConfig.model_fields:
        assert f"| `{name}` |" in text
