"""What the server says it supports, from its CapabilityStatement (read once per connection).

Layers above ask before sending anything: Epic silently ignores unsupported search parameters,
so sending one would quietly return everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Profile = Literal["epic", "generic"]


@dataclass(frozen=True)
class ResourceCapabilities:
    type: str
    interactions: frozenset[str] = frozenset()
    search_params: frozenset[str] = frozenset()
    operations: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Capabilities:
    software_name: str | None
    fhir_version: str | None
    resources: dict[str, ResourceCapabilities] = field(default_factory=dict)
    system_interactions: frozenset[str] = frozenset()

    @classmethod
    def from_statement(cls, doc: dict[str, Any]) -> Capabilities:
        software: dict[str, Any] = doc["software"] if isinstance(doc.get("software"), dict) else {}
        resources: dict[str, ResourceCapabilities] = {}
        system: set[str] = set()
        rests: list[Any] = doc["rest"] if isinstance(doc.get("rest"), list) else []
        for rest in rests:
            if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
                continue
            system |= {str(i.get("code")) for i in rest.get("interaction") or [] if isinstance(i, dict)}
            for res in rest.get("resource") or []:
                if not isinstance(res, dict) or not isinstance(res.get("type"), str):
                    continue
                rtype = res["type"]
                inter = {str(i.get("code")) for i in res.get("interaction") or [] if isinstance(i, dict)}
                params = {str(p.get("name")) for p in res.get("searchParam") or [] if isinstance(p, dict)}
                ops = {
                    str(o.get("name")).lstrip("$") for o in res.get("operation") or [] if isinstance(o, dict)
                }
                prev = resources.get(rtype)
                if prev is not None:
                    inter |= prev.interactions
                    params |= prev.search_params
                    ops |= prev.operations
                resources[rtype] = ResourceCapabilities(
                    rtype, frozenset(inter), frozenset(params), frozenset(ops)
                )
        return cls(
            software_name=software.get("name") if isinstance(software.get("name"), str) else None,
            fhir_version=doc.get("fhirVersion") if isinstance(doc.get("fhirVersion"), str) else None,
            resources=resources,
            system_interactions=frozenset(system),
        )

    @property
    def is_epic(self) -> bool:
        return (self.software_name or "").strip().lower() == "epic"

    def profile(self, configured: str = "auto") -> Profile:
        if configured == "epic":
            return "epic"
        if configured == "generic":
            return "generic"
        return "epic" if self.is_epic else "generic"

    def supports_resource(self, resource: str) -> bool:
        return resource in self.resources

    def supports_interaction(self, resource: str, interaction: str) -> bool:
        """``interaction``: a FHIR code (read, search-type, create, ...); ``search`` means search-type."""
        code = "search-type" if interaction == "search" else interaction
        res = self.resources.get(resource)
        return res is not None and code in res.interactions

    def supports_search_param(self, resource: str, param: str) -> bool:
        """Only listed parameters count. Modifiers (``date:ge``...) are checked by their base name."""
        res = self.resources.get(resource)
        if res is None:
            return False
        base = param.split(":", 1)[0]
        return base in res.search_params

    def supports_create(self, resource: str) -> bool:
        return self.supports_interaction(resource, "create")

    def supports_read(self, resource: str) -> bool:
        return self.supports_interaction(resource, "read")

    def supports_search(self, resource: str) -> bool:
        return self.supports_interaction(resource, "search-type")

    def supports_operation(self, resource: str, operation: str) -> bool:
        res = self.resources.get(resource)
        return res is not None and operation.lstrip("$") in res.operations
