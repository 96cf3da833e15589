"""The result of ``epic-bridge check``: rows per step and per resource x capability, and how to print it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "missing scope", "not supported by server", "unreachable", "failed", "skipped"]
FAILING: frozenset[str] = frozenset({"missing scope", "not supported by server", "unreachable", "failed"})


@dataclass
class CheckRow:
    subject: str
    capability: str
    status: Status
    detail: str = ""
    fix: str | None = None
    needed_by: str = ""


@dataclass
class CheckReport:
    connection: str
    steps: list[CheckRow] = field(default_factory=list)
    resources: list[CheckRow] = field(default_factory=list)
    profile: str | None = None
    granted_scope: str | None = None

    @property
    def ok(self) -> bool:
        return not any(r.status in FAILING for r in (*self.steps, *self.resources))

    def failures(self) -> list[CheckRow]:
        return [r for r in (*self.steps, *self.resources) if r.status in FAILING]

    def to_json(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "ok": self.ok,
            "profile": self.profile,
            "granted_scope": self.granted_scope,
            "steps": [asdict(r) for r in self.steps],
            "resources": [asdict(r) for r in self.resources],
        }


def render(report: CheckReport, console: Any) -> None:
    """Print the report as rich tables (``console`` is a rich Console)."""
    from rich.table import Table

    colour = {"ok": "green", "skipped": "dim"}
    steps = Table(title=f"connection {report.connection}", show_lines=False)
    for col in ("step", "result", "detail"):
        steps.add_column(col)
    for r in report.steps:
        steps.add_row(r.subject, f"[{colour.get(r.status, 'red')}]{r.status}[/]", r.detail)
    console.print(steps)
    table = Table(title="resources x capabilities")
    for col in ("resource", "capability", "needed by", "result", "detail"):
        table.add_column(col)
    for r in report.resources:
        table.add_row(
            r.subject, r.capability, r.needed_by, f"[{colour.get(r.status, 'red')}]{r.status}[/]", r.detail
        )
    console.print(table)
    failures = report.failures()
    if failures:
        console.print("[bold red]What to fix:[/]")
        seen: set[str] = set()
        for r in failures:
            if r.fix and r.fix not in seen:
                seen.add(r.fix)
                what = f"{r.subject} {r.capability}".strip()
                console.print(f" • [bold]{what}[/] ({r.status}): {r.fix}", markup=True, highlight=False)
    else:
        console.print("[bold green]All enabled resources can do what the config asks.[/]")
