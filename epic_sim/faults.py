"""Fault injection rules: error statuses, latency, dropped connections, truncated bodies.

A rule fires on a matching request either for the next `count` matches, with `probability`
(drawn from a seeded generator, so runs repeat), or always when neither is given.
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("429", "503", "500", "status", "latency", "drop", "truncate")


@dataclass
class FaultRule:
    kind: str
    status: int | None = None  # for kind "status"
    retry_after: str | None = None
    latency_ms: int = 0
    probability: float | None = None
    count: int | None = None  # remaining firings; None = unlimited
    path: str | None = None  # regular expression searched in the request path
    resource: str | None = None  # FHIR resource type named in the path
    method: str | None = None
    fired: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        kind = str(data.get("kind", ""))
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        unknown = set(data) - {f for f in cls.__dataclass_fields__ if f != "fired"}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        retry_after = data.get("retry_after")
        rule = cls(
            kind=kind,
            status=int(data["status"]) if data.get("status") is not None else None,
            retry_after=str(retry_after) if retry_after is not None else None,
            latency_ms=int(data.get("latency_ms", 0)),
            probability=float(data["probability"]) if data.get("probability") is not None else None,
            count=int(data["count"]) if data.get("count") is not None else None,
            path=data.get("path"),
            resource=data.get("resource"),
            method=str(data["method"]).upper() if data.get("method") else None,
        )
        if kind == "status" and rule.status is None:
            raise ValueError("kind 'status' needs a 'status'")
        if rule.path:
            re.compile(rule.path)
        return rule

    @property
    def http_status(self) -> int | None:
        if self.kind in ("429", "503", "500"):
            return int(self.kind)
        return self.status if self.kind == "status" else None

    def matches(self, method: str, path: str, resource: str | None) -> bool:
        if self.method and self.method != method:
            return False
        if self.resource and self.resource != resource:
            return False
        return not (self.path and not re.search(self.path, path))


@dataclass(frozen=True)
class Decision:
    latency_ms: int
    rule: FaultRule | None  # the non-latency rule that fired, if any


class FaultInjector:
    def __init__(self, rules: list[dict[str, Any]] | None = None, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._rng = random.Random(seed)
        self.configure({"rules": rules or [], "seed": seed})

    def configure(self, body: dict[str, Any]) -> None:
        """Replace the rules: body is {"rules": [...], "seed": n} or a single rule object."""
        raw_rules = body.get("rules") if "rules" in body else ([body] if body.get("kind") else [])
        if not isinstance(raw_rules, list):
            raise ValueError("'rules' must be a list")
        rules = [FaultRule.from_json(r) for r in raw_rules]
        with self._lock:
            self._rules = rules
            self._rng = random.Random(int(body.get("seed", 0)))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def decide(self, method: str, path: str, resource: str | None) -> Decision:
        latency = 0
        fired: FaultRule | None = None
        with self._lock:
            for rule in self._rules:
                if fired is not None and rule.kind != "latency":
                    continue
                if not rule.matches(method, path, resource):
                    continue
                if rule.count is not None and rule.count <= 0:
                    continue
                if rule.probability is not None and self._rng.random() >= rule.probability:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                rule.fired += 1
                if rule.kind == "latency":
                    latency += rule.latency_ms
                else:
                    fired = rule
        return Decision(latency, fired)
