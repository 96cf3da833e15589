"""The dashboard and the alert rules only use metrics the bridge exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bridge.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def exported_series() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bepic_bridge_[a-z_]+", text))


@pytest.mark.parametrize("path", ["grafana/dashboards/epic-bridge.json", "prometheus/alerts.yml"])
def test_every_referenced_metric_exists(path: str) -> None:
    text = (DEPLOY / path).read_text()
    missing = referenced(text) - exported_series()
    assert not missing, f"{path} uses metrics the bridge does not export: {sorted(missing)}"


def test_dashboard_panels_have_queries_and_unique_ids() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/epic-bridge.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
