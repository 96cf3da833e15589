"""Load connection configs from a folder, with errors that name the file, the field and the fix.

Live configs are the ``*.json`` files directly in the folder. ``examples/`` (and any other
sub-folder) and files whose name starts with ``_`` or ``.`` are not loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.config.models import ConnectionConfig
from bridge.config.secrets import find_inline_secrets
from bridge.errors import BridgeError


class ConfigError(BridgeError):
    """One or more config problems; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_HINTS: dict[str, str] = {
    "missing": "add this field",
    "extra_forbidden": "remove it or fix its spelling (unknown field)",
    "literal_error": "use one of the allowed values",
    "union_tag_invalid": "use one of the allowed values",
    "union_tag_not_found": "add the discriminating field",
    "string_pattern_mismatch": "use lowercase letters, digits, '-' or '_'",
    "greater_than": "use a larger number",
    "greater_than_equal": "use a larger number",
    "less_than_equal": "use a smaller number",
    "too_short": "add at least one entry",
    "too_long": "use fewer entries",
    "json_invalid": "fix the JSON syntax",
    "model_type": "this must be a JSON object",
    "dict_type": "this must be a JSON object",
    "list_type": "this must be a JSON list",
    "string_type": "this must be a string",
    "float_parsing": "this must be a number",
    "int_parsing": "this must be a whole number",
    "bool_parsing": "this must be true or false",
}


_UNION_TAGS = {
    "auth": {"backend_services", "authorization_code"},
    "roster": {"static", "group", "seen-patients"},
}


def _strip_union_noise(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop what pydantic inserts for unions (member names, discriminator values, ``[key]``)."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str):
            if part in ("EnvSecretRef", "FileSecretRef", "[key]") or part.startswith("function-"):
                continue
            if out and isinstance(out[-1], str) and part in _UNION_TAGS.get(out[-1], ()):
                continue
        out.append(part)
    return tuple(out)


def format_validation_error(source: str, exc: ValidationError) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False, include_input=False):
        loc = _strip_union_noise(tuple(err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        hint = _HINTS.get(err["type"], "")
        if err["type"] == "literal_error":
            hint = msg.replace("Input should be", "use")
        line = f"{source}: {_loc(loc)}: {msg}" + (f" (fix: {hint})" if hint and hint not in msg else "")
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


def parse_connection(
    data: Any, *, source: str, source_dir: Path | None = None, expected_name: str | None = None
) -> ConnectionConfig:
    """Validate raw JSON data; raise ConfigError naming ``source``, the field and the fix."""
    problems = [f"{source}: {_loc(loc)}: {why}" for loc, why in find_inline_secrets(data)]
    if problems:
        raise ConfigError(problems)
    if isinstance(data, dict) and expected_name is not None and "name" not in data:
        data = {**data, "name": expected_name}
    try:
        cfg = ConnectionConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    if expected_name is not None and cfg.name != expected_name:
        raise ConfigError(
            [
                f"{source}: name: {cfg.name!r} differs from the file name (fix: rename the file to "
                f"{cfg.name}.json or set name to {expected_name!r})"
            ]
        )
    return cfg.with_source_dir(source_dir)


def load_connection_file(path: Path) -> ConnectionConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [
                f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg} "
                "(fix: correct the JSON syntax)"
            ]
        ) from None
    return parse_connection(data, source=str(path), source_dir=path.parent.resolve(), expected_name=path.stem)


def config_files(config_dir: Path) -> list[Path]:
    if not config_dir.is_dir():
        raise ConfigError([f"{config_dir}: no such config folder (fix: create it or pass --config-dir)"])
    return sorted(p for p in config_dir.glob("*.json") if p.is_file() and not p.name.startswith(("_", ".")))


def load_connections(config_dir: Path) -> dict[str, ConnectionConfig]:
    """All live configs in a folder; collects the problems of every file before raising."""
    problems: list[str] = []
    out: dict[str, ConnectionConfig] = {}
    for path in config_files(config_dir):
        try:
            cfg = load_connection_file(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        out[cfg.name] = cfg
    if problems:
        raise ConfigError(problems)
    return out


def load_connection(config_dir: Path, name: str) -> ConnectionConfig:
    path = config_dir / f"{name}.json"
    if not path.is_file():
        try:
            available = ", ".join(p.stem for p in config_files(config_dir)) or "none"
        except ConfigError:
            available = "none"
        raise ConfigError(
            [
                f"{path}: no such connection (available: {available}; "
                f"examples live in {config_dir / 'examples'})"
            ]
        )
    return load_connection_file(path)
