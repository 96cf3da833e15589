"""The configuration reference (docs/configuration.md), generated from the pydantic models so the
documentation cannot drift from what the loader accepts. `python -m bridge.config.reference`."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bridge.config.models import ConnectionConfig
from bridge.config.settings import BridgeSettings
from bridge.kafka.context import KafkaSettings


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (list, tuple, set, frozenset):
        args = get_args(annotation)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        key, value = get_args(annotation)
        return f"map {_type_name(key)} → {_type_name(value)}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return "(defaults)"
        return f"`{value!r}`" if value not in ({}, []) else f"`{value}`"
    if info.default is PydanticUndefined:
        return ""
    if isinstance(info.default, Path):
        return f"`{info.default}`"
    return f"`{info.default!r}`"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """The model and every model its fields refer to, in first-use order."""
    found: list[type[BaseModel]] = []

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found.append(annotation)
                for info in annotation.model_fields.values():
                    visit(info.annotation)
            return
        for arg in get_args(annotation):
            visit(arg)

    visit(root)
    return found


def _table(model: type[BaseModel], env_prefix: str | None = None) -> list[str]:
    doc = (model.__doc__ or "").strip().splitlines()
    lines = [f"### {model.__name__}", ""]
    if doc and not doc[0].startswith(("Usage docs", "A base class")):
        lines += [doc[0], ""]
    name_column = "environment variable" if env_prefix else "field"
    lines += [f"| {name_column} | type | default | description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        shown = f"`{env_prefix}{name.upper()}`" if env_prefix else f"`{info.alias or name}`"
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {shown} | {_type_name(info.annotation)} | {_default(info)} | {description} |")
    return [*lines, ""]


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models by `python -m bridge.config.reference`; do not edit by hand.",
        "",
        "## Connection configs",
        "",
        "One JSON file per connection in `connect-configs/` (the file is named after the connection).",
        'Secrets are only ever references: `{"env": "VARIABLE"}` or `{"file": "path"}`.',
        "",
    ]
    for model in _models(ConnectionConfig):
        out += _table(model)
    out += ["## Process settings (environment)", ""]
    out += _table(BridgeSettings, "EPIC_BRIDGE_")
    out += _table(KafkaSettings, "EPIC_BRIDGE_")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
