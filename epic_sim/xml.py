"""FHIR-XML rendering of FHIR JSON (what Epic answers when the client does not ask for JSON)."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

FHIR_NS = "http://hl7.org/fhir"


def _primitive(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _element(name: str, value: Any, out: list[str]) -> None:
    if isinstance(value, list):
        for item in value:
            _element(name, item, out)
        return
    if isinstance(value, dict):
        if "resourceType" in value:
            out.append(f"<{name}>")
            _resource(value, out, namespaced=False)
            out.append(f"</{name}>")
        else:
            out.append(f"<{name}>")
            _children(value, out)
            out.append(f"</{name}>")
        return
    if name == "div":
        out.append(str(value))
        return
    out.append(f"<{name} value={quoteattr(_primitive(value))}/>")


def _children(obj: dict[str, Any], out: list[str]) -> None:
    for key, value in obj.items():
        if key == "resourceType" or key.startswith("_"):
            continue
        _element(key, value, out)


def _resource(resource: dict[str, Any], out: list[str], *, namespaced: bool) -> None:
    rtype = escape(str(resource.get("resourceType", "Resource")))
    out.append(f'<{rtype} xmlns="{FHIR_NS}">' if namespaced else f"<{rtype}>")
    _children(resource, out)
    out.append(f"</{rtype}>")


def to_xml(resource: dict[str, Any]) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    _resource(resource, out, namespaced=True)
    return "".join(out)
