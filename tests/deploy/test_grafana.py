"""deploy/grafana-dashboard.json: every query names a series the orchestrator exports."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import Metrics
from tests.deploy.parts import DEPLOY


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return loaded


def exported() -> set[str]:
    """Every sample name /metrics can show (histogram buckets, sums and counts included)."""
    names = set()
    for family in text_string_to_metric_families(Metrics().exposition().decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_every_query_uses_exported_series_only() -> None:
    """A renamed metric breaks this test, not a dashboard in production."""
    queries = [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]
    assert queries
    used = {name for query in queries for name in re.findall(r"orchestrator_[a-z_]+", query)}
    assert used <= exported(), used - exported()


def test_the_never_polls_figure_sits_beside_the_wakeups() -> None:
    """The dashboard shows status_checks_total (always 0) and the timer heap's wake-ups."""
    queries = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    assert "orchestrator_status_checks_total" in queries
    assert "orchestrator_wakeups_total" in queries


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    """Grafana needs distinct panel ids; each panel fits in the 24-column grid."""
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
